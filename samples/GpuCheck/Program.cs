using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using Unrolled;
using Unrolled.Gpu;
using Unrolled.IO;

// gpucheck [--reference DIR]: on a machine with an NVIDIA GPU, runs PyTorch's reference cases on Device.Cuda and
// compares them with PyTorch's numbers (the CPU tolerance: max |ours - torch| <= 1e-3 max |torch|, same top-1),
// then measures inference throughput. DIR holds ../shared/reference's files (default: found above this program).
// Exit code: 0 when every reference case passes, 1 when one fails, 2 when CUDA cannot be used.
namespace Unrolled.GpuCheck
{
    [ResNet(18, NumClasses = 10, BaseWidth = 8, ImageSize = 64)]
    public partial class Tiny18;

    [ResNet(50, NumClasses = 10, BaseWidth = 8, ImageSize = 64)]
    public partial class Tiny50;

    [ResNet(50)]
    public partial class ResNet50;

    public static class Program
    {
        public static int Main(string[] args)
        {
            string? reference = args.Length == 2 && args[0] == "--reference" ? args[1] : FindReference();
            var probe = CudaLibraries.Probe();
            Console.WriteLine($"probe: {probe.Reason}");
            if (!probe.Usable) return 2;
            try
            {
                Console.WriteLine(CudaBackend.Describe());
            }
            catch (Exception e)
            {
                // A check program reports what went wrong (a missing entry point, a driver too old) instead of crashing.
                Console.WriteLine($"cannot ask the GPU: {e.GetType().Name}: {e.Message}");
                return 2;
            }
            if (reference is null)
            {
                Console.WriteLine("the reference folder (../shared/reference) was not found; give --reference DIR");
                return 2;
            }

            int failures = 0;
            failures += Case("tiny18", () => new Tiny18(Device.Cuda), () => new Tiny18(), reference, "tiny18.safetensors", "tiny18_io.safetensors", 10);
            failures += Case("tiny50", () => new Tiny50(Device.Cuda), () => new Tiny50(), reference, "tiny50.safetensors", "tiny50_io.safetensors", 10);
            failures += Case("resnet50", () => new ResNet50(Device.Cuda), () => new ResNet50(), reference, "resnet50_seed1.pth", "resnet50_seed1_io.safetensors", 1000);
            Console.WriteLine("training on the GPU: not implemented yet (the CUDA backend runs eval-mode Forward only)");

            foreach (int batch in new[] { 1, 32, 256 }) Throughput(batch);
            Console.WriteLine(failures == 0 ? "all reference cases pass" : $"{failures} reference case(s) failed");
            return failures == 0 ? 0 : 1;
        }

        private static string? FindReference()
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "shared", "reference");
                if (File.Exists(Path.Combine(candidate, "tiny18_io.safetensors"))) return candidate;
            }
            return null;
        }

        /// <summary>Eval-mode logits on the GPU against PyTorch's; the CPU's error beside them for scale.</summary>
        private static int Case(string name, Func<IResNet> onGpu, Func<IResNet> onCpu, string dir, string weights, string io, int classes)
        {
            string weightsPath = Path.Combine(dir, weights), ioPath = Path.Combine(dir, io);
            if (!File.Exists(weightsPath) || !File.Exists(ioPath))
            {
                Console.WriteLine($"{name}: FAIL: {weightsPath} or {ioPath} is missing");
                return 1;
            }
            try
            {
                var tensors = Read(ioPath);
                float[] input = tensors["input"], expected = tensors["logits_eval"];
                var logits = new float[expected.Length];
                var cpuLogits = new float[expected.Length];
                var gpu = onGpu();
                gpu.LoadWeights(weightsPath);
                gpu.Eval();
                gpu.Forward(input, logits);
                var cpu = onCpu();
                cpu.LoadWeights(weightsPath);
                cpu.Eval();
                cpu.Forward(input, cpuLogits);
                double error = MaxRelative(logits, expected), cpuError = MaxRelative(cpuLogits, expected);
                bool sameTop = SameArgMax(logits, expected, classes);
                bool pass = error <= 1e-3 && sameTop;
                Console.WriteLine($"{name}: {(pass ? "PASS" : "FAIL")}: max |gpu - torch| / max |torch| = {error:E3} (cpu {cpuError:E3}), top-1 {(sameTop ? "same" : "DIFFERENT")}");
                return pass ? 0 : 1;
            }
            catch (Exception e)
            {
                Console.WriteLine($"{name}: FAIL: {e.GetType().Name}: {e.Message}");
                return 1;
            }
        }

        /// <summary>ResNet-50 forward img/s from host memory to host memory (input upload and logits download included).</summary>
        private static void Throughput(int batch)
        {
            try
            {
                var net = new ResNet50(Device.Cuda);
                net.Eval();
                var input = new float[batch * ResNet50.InputSize];
                for (int i = 0; i < input.Length; i++) input[i] = (i % 251) / 251f - 0.5f;
                var logits = new float[batch * ResNet50.NumClasses];
                for (int i = 0; i < 3; i++) net.Forward(input, logits); // algorithm search, uploads
                int runs = Math.Max(5, 512 / batch);
                var clock = Stopwatch.StartNew();
                for (int i = 0; i < runs; i++) net.Forward(input, logits);
                double seconds = clock.Elapsed.TotalSeconds;
                Console.WriteLine($"inference resnet50 batch {batch}: {batch * runs / seconds:F0} img/s ({seconds * 1000 / runs:F2} ms per batch)");
            }
            catch (Exception e)
            {
                Console.WriteLine($"inference resnet50 batch {batch}: FAIL: {e.GetType().Name}: {e.Message}");
            }
        }

        private static Dictionary<string, float[]> Read(string path)
        {
            var result = new Dictionary<string, float[]>();
            using var file = TensorFile.Open(path);
            foreach (var t in file.Tensors)
            {
                if (t.DType != DType.F32) continue;
                var data = new float[t.Count];
                file.ReadFloat32(t, data);
                result[t.Key] = data;
            }
            return result;
        }

        private static double MaxRelative(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
        {
            double worst = 0, scale = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
                scale = Math.Max(scale, Math.Abs(expected[i]));
            }
            return worst / scale; // NaN when a logit is NaN (Math.Max propagates it), and NaN fails the check
        }

        private static bool SameArgMax(ReadOnlySpan<float> a, ReadOnlySpan<float> b, int classes)
        {
            for (int image = 0; image < a.Length / classes; image++)
                if (ArgMax(a.Slice(image * classes, classes)) != ArgMax(b.Slice(image * classes, classes))) return false;
            return true;
        }

        private static int ArgMax(ReadOnlySpan<float> v)
        {
            int best = 0;
            for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
            return best;
        }
    }
}
