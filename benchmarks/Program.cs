using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Unrolled;

namespace Unrolled.Benchmarks;

[ResNet(50)]
public partial class ResNet50;

/// <summary>The quickstart's network: ResNet-50 on 32x32 digits, 10 classes.</summary>
[ResNet(50, NumClasses = 10, ImageSize = 32)]
public partial class Digits50;

/// <summary>ONNX Runtime on torchvision's ResNet-50 graph (../shared/reference/resnet50_zero_weights.onnx), 2 intra-op threads.</summary>
public sealed class OnnxPeer : IDisposable
{
    private readonly InferenceSession _session;

    public OnnxPeer(string path, int threads)
    {
        var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        _session = new InferenceSession(path, options);
    }

    public void Run(DenseTensor<float> input) =>
        _session.Run(new[] { NamedOnnxValue.CreateFromTensor("input", input) }).Dispose();

    public void Dispose() => _session.Dispose();

    public static string? FindModel()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "reference", "resnet50_zero_weights.onnx");
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }
}

[MemoryDiagnoser]
public class ForwardBenchmarks
{
    private ResNet50 _net = null!;
    private OnnxPeer _onnx = null!;
    private float[] _input = null!;
    private float[] _logits = null!;
    private DenseTensor<float> _onnxInput = null!;

    [Params(1, 8)]
    public int Batch { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _net = new ResNet50();
        _input = new float[Batch * ResNet50.InputSize];
        for (int i = 0; i < _input.Length; i++) _input[i] = (i % 255) / 255f;
        _logits = new float[Batch * ResNet50.NumClasses];
        _onnx = new OnnxPeer(OnnxPeer.FindModel() ?? throw new FileNotFoundException("../shared/reference/resnet50_zero_weights.onnx"), 2);
        _onnxInput = new DenseTensor<float>(_input, new[] { Batch, 3, 224, 224 });
    }

    [Benchmark(Baseline = true)]
    public void OnnxRuntime() => _onnx.Run(_onnxInput);

    [Benchmark]
    public void Unrolled() => _net.Forward(_input, _logits);

    [GlobalCleanup]
    public void Cleanup() => _onnx.Dispose();
}

public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Contains("--compare")) return Compare(training: true);
        if (args.Contains("--inference")) return Compare(training: false);
        if (args.Contains("--train")) return TrainStep(new ResNet50());
        if (args.Contains("--digits-step")) return DigitsStep();
        if (args.Contains("--kernel")) return MicroKernel.Run();
        if (args.Contains("--forward-loop")) return ForwardLoop(args.Contains("--batch8") ? 8 : 1, abTiles: false);
        if (args.Contains("--ab-tiles")) return ForwardLoop(args.Contains("--batch8") ? 8 : 1, abTiles: true);
        if (args.Contains("--bandwidth")) return Bandwidth.Run();
        if (args.Contains("--ab-layout")) return AbLayout.Run(args.Contains("--batch8") ? 8 : 1);
        if (args.Contains("--layer-profile")) return LayerProfile.Run(args.Contains("--batch8") ? 8 : 1);
        if (args.Contains("--layers")) return ConvLayers.Run(args.Contains("--batch8") ? 8 : 1);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }

    /// <summary>
    /// Unrolled's forward alone, repeated for 20 s (for a profiler such as dotnet-trace); prints the median. With
    /// <paramref name="abTiles"/>: an A/B in one process, Winograd as chosen (F(4x4, 3x3) where it pays) against
    /// F(2x2, 3x3) only, alternating in blocks of 20 calls for 40 s so that both see the same machine (the first 5
    /// calls of each block, which meet the caches the other arm left, are not counted); prints both medians.
    /// </summary>
    private static int ForwardLoop(int batch, bool abTiles)
    {
        var net = new ResNet50();
        var input = new float[batch * ResNet50.InputSize];
        for (int i = 0; i < input.Length; i++) input[i] = (i % 255) / 255f;
        var logits = new float[batch * ResNet50.NumClasses];
        var times = new[] { new List<double>(), new List<double>() };
        var clock = Stopwatch.StartNew();
        for (int call = 0; clock.Elapsed.TotalSeconds < (abTiles ? 40 : 20); call++)
        {
            int arm = abTiles ? call / 20 % 2 : 0;
            Unrolled.Cpu.Winograd.SmallTilesOnly = arm == 1;
            long start = Stopwatch.GetTimestamp();
            net.Forward(input, logits);
            if (call >= 4 && (!abTiles || call % 20 >= 5)) times[arm].Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        Unrolled.Cpu.Winograd.SmallTilesOnly = false;
        foreach (var t in times) t.Sort();
        double Median(List<double> t) => t[t.Count / 2];
        Console.WriteLine(abTiles
            ? $"forward b{batch}: as chosen {Median(times[0]):F1} ms, F(2x2, 3x3) only {Median(times[1]):F1} ms (medians of {times[0].Count} calls each, in alternating blocks)"
            : $"forward b{batch}: median {Median(times[0]):F1} ms over {times[0].Count} calls");
        return 0;
    }

    private static double Median(Action run, int warmup, int runs) => Median(run, warmup, runs, out _);

    /// <summary>
    /// The least warm-up per measurement, for both engines: long enough for .NET's tiered compilation to have replaced
    /// the first, quickly compiled code of every method on the path (a few calls are not: ResNet-50 at batch 1 measured
    /// 32.7 and 36.4 ms after 3 warm-up calls, 30.8 and 31.1 ms with every method optimized from the start).
    /// </summary>
    private const double WarmupSeconds = 3;

    /// <summary>
    /// The median time of <paramref name="runs"/> calls after a warm-up of at least <paramref name="warmup"/> calls and
    /// <see cref="WarmupSeconds"/>, and the bytes the measured calls allocated (every thread), per call.
    /// </summary>
    private static double Median(Action run, int warmup, int runs, out long allocatedPerRun)
    {
        var warming = Stopwatch.StartNew();
        for (int i = 0; i < warmup || warming.Elapsed.TotalSeconds < WarmupSeconds; i++) run();
        var times = new double[runs];
        long allocatedBefore = GC.GetTotalAllocatedBytes(precise: true);
        for (int i = 0; i < runs; i++)
        {
            long start = Stopwatch.GetTimestamp();
            run();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        allocatedPerRun = (GC.GetTotalAllocatedBytes(precise: true) - allocatedBefore) / runs;
        Array.Sort(times);
        return times[times.Length / 2];
    }

    /// <summary>The quick side-by-side: median of several runs after warm-up, both engines in this process.</summary>
    private static int Compare(bool training)
    {
        string? model = OnnxPeer.FindModel();
        if (model is null)
        {
            Console.Error.WriteLine("../shared/reference/resnet50_zero_weights.onnx was not found above " + AppContext.BaseDirectory);
            return 2;
        }
        using var onnx = new OnnxPeer(model, 2);
        var net = new ResNet50();
        var allocations = new List<string>();
        foreach (int batch in new[] { 1, 8 })
        {
            var input = new float[batch * ResNet50.InputSize];
            for (int i = 0; i < input.Length; i++) input[i] = (i % 255) / 255f;
            var logits = new float[batch * ResNet50.NumClasses];
            var tensor = new DenseTensor<float>(input, new[] { batch, 3, 224, 224 });
            int runs = batch == 1 ? 15 : 5;
            double ours = Median(() => net.Forward(input, logits), 3, runs, out long allocated);
            double theirs = Median(() => onnx.Run(tensor), 3, runs);
            Console.WriteLine($"compare resnet50-b{batch}: unrolled {ours:F1} ms, onnxruntime {theirs:F1} ms, ratio {ours / theirs:F2}");
            allocations.Add($"inference b{batch} {allocated} B");
        }

        int result = training ? TrainStep(net, allocations) : 0;
        using var self = Process.GetCurrentProcess();
        Console.WriteLine($"memory: allocated per steady-state call: {string.Join(", ", allocations)}; " +
            $"process peak working set {self.PeakWorkingSet64 / (1024 * 1024)} MB (Unrolled's ResNet-50 with its training buffers and ONNX Runtime's session together)");
        return result;
    }

    /// <summary>
    /// The quickstart's training step (ResNet-50, 32x32, 10 classes, batch 32, SGD with momentum and weight decay),
    /// repeated for 30 s (for a profiler); prints the median.
    /// </summary>
    private static int DigitsStep()
    {
        const int batch = 32;
        var net = new Digits50();
        var input = new float[batch * Digits50.InputSize];
        for (int i = 0; i < input.Length; i++) input[i] = (i % 251) / 251f - 0.5f;
        var labels = new int[batch];
        for (int i = 0; i < batch; i++) labels[i] = i % Digits50.NumClasses;
        var logits = new float[batch * Digits50.NumClasses];
        var sgd = new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 5e-4f);
        net.Train();
        var times = new List<double>();
        var clock = Stopwatch.StartNew();
        for (int step = 0; clock.Elapsed.TotalSeconds < 30; step++)
        {
            long start = Stopwatch.GetTimestamp();
            sgd.ZeroGrad();
            net.ForwardBackward(input, labels, logits);
            sgd.Step();
            if (step >= 3) times.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        times.Sort();
        Console.WriteLine($"digits training step b{batch}: median {times[times.Count / 2]:F1} ms over {times.Count} steps");
        return 0;
    }

    /// <summary>A training step: forward + backward + SGD (momentum, weight decay) at batch 16, 224x224.</summary>
    private static int TrainStep(ResNet50 net, List<string>? allocations = null)
    {
        {
            const int batch = 16;
            var input = new float[batch * ResNet50.InputSize];
            for (int i = 0; i < input.Length; i++) input[i] = (i % 251) / 251f - 0.5f;
            var labels = new int[batch];
            for (int i = 0; i < batch; i++) labels[i] = i * 37 % ResNet50.NumClasses;
            var logits = new float[batch * ResNet50.NumClasses];
            var sgd = new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
            net.Train();
            double ms = Median(() =>
            {
                sgd.ZeroGrad();
                net.ForwardBackward(input, labels, logits);
                sgd.Step();
            }, 1, 3, out long allocated);
            Console.WriteLine($"compare resnet50-train-b{batch}: unrolled {batch * 1000 / ms:F2} img/s ({ms:F0} ms per step)");
            allocations?.Add($"training step b{batch} {allocated} B");
        }
        return 0;
    }
}
