using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Unrolled.Runtime;

namespace Unrolled.Benchmarks;

/// <summary>
/// `--layer-profile` [`--batch8`]: where the time of a ResNet-50 forward goes, convolution shape by convolution shape
/// (and the pools and the classifier), for Unrolled and for ONNX Runtime side by side. Unrolled's time per convolution comes from the runtime's own clock
/// (<see cref="NetworkState.Clock"/>), ONNX Runtime's from its profiler (each Conv node's kernel time); each is the
/// median over many forwards after a warm-up, summed over the layers of a shape. Both engines run in this process,
/// one after the other, not interleaved: the machine may change between them, so compare the shapes' shares.
/// </summary>
internal static class LayerProfile
{
    private const int Calls = 200;

    public static int Run(int batch)
    {
        string? model = OnnxPeer.FindModel();
        if (model is null)
        {
            Console.Error.WriteLine("--layer-profile needs ../shared/reference/resnet50_zero_weights.onnx (the ONNX Runtime peer); not found above " + AppContext.BaseDirectory);
            return 1;
        }
        var input = new float[batch * ResNet50.InputSize];
        for (int i = 0; i < input.Length; i++) input[i] = (i % 255) / 255f;

        var ours = Unrolled(batch, input, out double ourForward);
        var theirs = OnnxRuntime(model, batch, input, out double theirForward);

        Console.WriteLine($"ResNet-50 at batch {batch}, per convolution shape and the other layers: count, Unrolled ms, ONNX Runtime ms, ratio (medians of {Calls} forwards, summed over the shape's layers)");
        double ourSum = 0, theirSum = 0;
        foreach (var (shape, (count, ms)) in ours.OrderByDescending(p => p.Value.Ms))
        {
            double their = theirs.TryGetValue(shape, out var t) ? t.Ms : double.NaN;
            ourSum += ms;
            if (!double.IsNaN(their)) theirSum += their;
            Console.WriteLine($"  {shape,-26} x{count,-2} {ms,7:F3} {their,7:F3}  {ms / their,5:F2}");
        }
        foreach (var (shape, (count, ms)) in theirs.Where(p => !ours.ContainsKey(p.Key)))
            Console.WriteLine($"  {shape,-26} x{count,-2} (ONNX Runtime only) {ms,7:F3}");
        Console.WriteLine($"  all layers: Unrolled {ourSum:F2} ms, ONNX Runtime {theirSum:F2} ms; whole forward (median): Unrolled {ourForward:F2} ms, ONNX Runtime {theirForward:F2} ms");
        return 0;
    }

    private const string MaxPool = "max pool 3x3/2", AveragePool = "average pool", Classifier = "fully connected";

    private static string Key(int cin, int size, int cout, int kernel, int stride) =>
        $"{cin}x{size}x{size} -> {cout} {kernel}x{kernel}/{stride}";

    private static Dictionary<string, (int Count, double Ms)> Unrolled(int batch, float[] input, out double forwardMs)
    {
        var net = new ResNet50();
        var logits = new float[batch * ResNet50.NumClasses];
        var warming = Stopwatch.StartNew();
        while (warming.Elapsed.TotalSeconds < 3) net.Forward(input, logits);
        var perCall = new List<long[]>();
        var forwards = new List<double>();
        var clock = new NetworkState.ConvClock(256);
        for (int call = 0; call < Calls; call++)
        {
            var (ms, ticks) = Clocked(net, input, logits, clock);
            forwards.Add(ms);
            perCall.Add(ticks);
        }
        forwardMs = Median(forwards);
        double Ms(int at) => Median(perCall.Select(t => t[at] * 1000.0 / Stopwatch.Frequency).ToList());
        var byShape = new Dictionary<string, (int Count, double Ms)>
        {
            [MaxPool] = (1, Ms(clock.Ticks.Length)), [AveragePool] = (1, Ms(clock.Ticks.Length + 1)), [Classifier] = (1, Ms(clock.Ticks.Length + 2)),
        };
        for (int layer = 0; layer < clock.Ticks.Length; layer++)
        {
            if (clock.Shapes[layer].Cin == 0) continue;
            var (cin, size, cout, kernel, stride) = clock.Shapes[layer];
            double ms = Ms(layer);
            string key = Key(cin, size, cout, kernel, stride);
            var (count, sum) = byShape.GetValueOrDefault(key);
            byShape[key] = (count + 1, sum + ms);
        }
        return byShape;
    }

    /// <summary>
    /// One forward with the runtime's clock on: its wall time in ms, and the ticks of every convolution (by index),
    /// then of the max pool, the average pool and the classifier.
    /// </summary>
    internal static (double Ms, long[] Ticks) Clocked(ResNet50 net, float[] input, float[] logits, NetworkState.ConvClock clock)
    {
        Array.Clear(clock.Ticks);
        clock.MaxPool = clock.AveragePool = clock.Linear = 0;
        NetworkState.Clock = clock;
        long start = Stopwatch.GetTimestamp();
        try
        {
            net.Forward(input, logits);
        }
        finally
        {
            NetworkState.Clock = null;
        }
        return (Stopwatch.GetElapsedTime(start).TotalMilliseconds, [.. clock.Ticks, clock.MaxPool, clock.AveragePool, clock.Linear]);
    }

    private static Dictionary<string, (int Count, double Ms)> OnnxRuntime(string model, int batch, float[] input, out double forwardMs)
    {
        var tensor = new DenseTensor<float>(input, new[] { batch, 3, 224, 224 });
        string prefix = Path.Combine(Path.GetTempPath(), $"unrolled-ort-profile-{Environment.ProcessId}");
        var options = new SessionOptions
        {
            IntraOpNumThreads = 2, InterOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
            EnableProfiling = true, ProfileOutputPathPrefix = prefix,
        };
        string file;
        using (var session = new InferenceSession(model, options))
        {
            var inputs = new[] { NamedOnnxValue.CreateFromTensor("input", tensor) };
            var warming = Stopwatch.StartNew();
            while (warming.Elapsed.TotalSeconds < 3) session.Run(inputs).Dispose();
            for (int call = 0; call < Calls; call++) session.Run(inputs).Dispose();
            file = session.EndProfiling();
        }
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllBytes(file));
            var durations = new Dictionary<string, List<double>>();
            var shapes = new Dictionary<string, string>();
            var runs = new List<double>();
            foreach (var e in json.RootElement.EnumerateArray())
            {
                string cat = e.GetProperty("cat").GetString() ?? "", name = e.GetProperty("name").GetString() ?? "";
                double ms = e.GetProperty("dur").GetDouble() / 1000;
                if (cat == "Session" && name == "model_run") runs.Add(ms);
                if (cat != "Node" || !name.EndsWith("_kernel_time", StringComparison.Ordinal)) continue;
                var args = e.GetProperty("args");
                string op = args.GetProperty("op_name").GetString() ?? "";
                string? other = op switch { "MaxPool" => MaxPool, "GlobalAveragePool" => AveragePool, "Gemm" => Classifier, _ => null };
                if (other is not null)
                {
                    shapes[name] = other;
                    if (!durations.TryGetValue(name, out var times)) durations[name] = times = new List<double>();
                    times.Add(ms);
                }
                if (op != "Conv") continue;
                // input_type_shape: [{"float": [n, cin, h, w]}, {"float": [cout, cin, k, k]}, ...]; output: [{"float": [n, cout, oh, ow]}]
                int[] Dims(JsonElement list, int i) => list[i].EnumerateObject().First().Value.EnumerateArray().Select(d => d.GetInt32()).ToArray();
                var x = Dims(args.GetProperty("input_type_shape"), 0);
                var w = Dims(args.GetProperty("input_type_shape"), 1);
                var y = Dims(args.GetProperty("output_type_shape"), 0);
                shapes[name] = Key(x[1], x[2], w[0], w[2], x[2] / y[2]);
                if (!durations.TryGetValue(name, out var list)) durations[name] = list = new List<double>();
                list.Add(ms);
            }
            // The profiler also saw the warm-up: only the last Calls runs count (each node runs once per run).
            List<double> Measured(List<double> all) => all.Skip(Math.Max(0, all.Count - Calls)).ToList();
            forwardMs = Median(Measured(runs));
            var byShape = new Dictionary<string, (int Count, double Ms)>();
            foreach (var (node, list) in durations)
            {
                var (count, sum) = byShape.GetValueOrDefault(shapes[node]);
                byShape[shapes[node]] = (count + 1, sum + Median(Measured(list)));
            }
            return byShape;
        }
        finally
        {
            File.Delete(file);
        }
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
