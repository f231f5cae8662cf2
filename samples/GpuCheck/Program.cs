using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using Unrolled;
using Unrolled.Gpu;
using Unrolled.IO;

// gpucheck [--reference DIR] [--quick]: on a machine with an NVIDIA GPU, runs PyTorch's reference cases on Device.Cuda and
// compares them with PyTorch's numbers (the CPU tolerance: max |ours - torch| <= 1e-3 max |torch|, same top-1),
// then the train-mode gradients and two SGD steps of tiny18 and tiny50 (the CPU tests' tolerances), then measures
// inference and training throughput. DIR holds ../shared/reference's files (default: found above this program).
// --quick runs the tiny networks' cases only (no ResNet-50, no throughput): FakeCudaTests run it against a CPU
// stand-in of the CUDA libraries. Exit code: 0 when every reference case passes, 1 when one fails, 2 when CUDA cannot be used.
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
            int at = Array.IndexOf(args, "--reference");
            string? reference = at >= 0 && at + 1 < args.Length ? args[at + 1] : FindReference();
            bool quick = Array.IndexOf(args, "--quick") >= 0;
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
            var auto = new Tiny18(Device.Auto);
            Console.WriteLine($"Device.Auto chose {auto.Device}");
            if (auto.Device != Device.Cuda) failures++;
            failures += Case("tiny18", () => new Tiny18(Device.Cuda), () => new Tiny18(), reference, "tiny18.safetensors", "tiny18_io.safetensors", 10);
            failures += Case("tiny50", () => new Tiny50(Device.Cuda), () => new Tiny50(), reference, "tiny50.safetensors", "tiny50_io.safetensors", 10);
            if (!quick)
                failures += Case("resnet50", () => new ResNet50(Device.Cuda), () => new ResNet50(), reference, "resnet50_seed1.pth", "resnet50_seed1_io.safetensors", 1000);
            failures += Gradients("tiny18", () => new Tiny18(Device.Cuda), reference);
            failures += Gradients("tiny50", () => new Tiny50(Device.Cuda), reference);
            failures += TwoSteps("tiny18", () => new Tiny18(Device.Cuda), reference);
            failures += TwoSteps("tiny50", () => new Tiny50(Device.Cuda), reference);
            failures += SteadyState("tiny50", () => new Tiny50(Device.Cuda), reference);
            failures += HostOptimizer("tiny18", () => new Tiny18(Device.Cuda), () => new Tiny18(), reference);
            failures += NonFinite("tiny18", () => new Tiny18(Device.Cuda), reference);
            failures += EvalModeGradients("tiny50", () => new Tiny50(Device.Cuda), () => new Tiny50(), reference);

            if (!quick)
            {
                foreach (int batch in new[] { 1, 32, 256 }) Throughput(batch);
                // A training step keeps 22.4 M floats per 224x224 image for backward; the generated code addresses them
                // with int offsets, so one ForwardBackward holds at most 95 images. Batch 128 is two of 64, accumulated.
                TrainingThroughput(64, 1);
                TrainingThroughput(64, 2);
            }
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

        /// <summary>Runs one check; an exception fails it with its type and message instead of ending the program.</summary>
        private static int Guarded(string title, Func<int> check)
        {
            try
            {
                return check();
            }
            catch (Exception e)
            {
                Console.WriteLine($"{title}: FAIL: {e.GetType().Name}: {e.Message}");
                return 1;
            }
        }

        /// <summary>The same tiny network on the CPU, from the same weights file, to compare the GPU with.</summary>
        private static IResNet OnCpu(string name, Func<IResNet> onCpu, string dir)
        {
            var cpu = onCpu();
            cpu.LoadWeights(Path.Combine(dir, name + ".safetensors"));
            return cpu;
        }

        private static IResNet? LoadTiny(string name, Func<IResNet> onGpu, string dir, out Dictionary<string, float[]> io)
        {
            string weightsPath = Path.Combine(dir, name + ".safetensors"), ioPath = Path.Combine(dir, name + "_io.safetensors");
            io = new Dictionary<string, float[]>();
            if (!File.Exists(weightsPath) || !File.Exists(ioPath))
            {
                Console.WriteLine($"{name} training: FAIL: {weightsPath} or {ioPath} is missing");
                return null;
            }
            io = Read(ioPath);
            var net = onGpu();
            net.LoadWeights(weightsPath);
            net.Train();
            return net;
        }

        private static int[] Labels(Dictionary<string, float[]> io) => Array.ConvertAll(io["target"], v => (int)v);

        /// <summary>Train-mode logits, loss and every parameter's gradient against PyTorch's (the CPU test's tolerances).</summary>
        private static int Gradients(string name, Func<IResNet> onGpu, string dir) => Guarded($"{name} gradients", () =>
        {
            var net = LoadTiny(name, onGpu, dir, out var io);
            if (net is null) return 1;
            var logits = new float[io["logits_train"].Length];
            float loss = net.ForwardBackward(io["input"], Labels(io), logits);
            double logitError = MaxRelative(logits, io["logits_train"]);
            double lossError = Math.Abs(loss - io["loss"][0]) / Math.Abs(io["loss"][0]);
            bool pass = logitError <= 1e-3 && lossError <= 1e-3;
            int checkedCount = 0, failed = 0;
            double worstRatio = 0;
            string worst = "";
            foreach (string key in net.StateKeys)
            {
                if (!io.TryGetValue("grad." + key, out var expected)) continue;
                double error = RelativeL2(net.GetGradient(key), expected);
                double tolerance = Math.Max(2e-3, 5 * io["fp32err.grad." + key][0]);
                if (!(error <= tolerance))
                {
                    failed++;
                    if (failed <= 5) Console.WriteLine($"  {name} grad {key}: relative L2 {error:E3} > {tolerance:E3}");
                }
                if (error / tolerance > worstRatio) (worstRatio, worst) = (error / tolerance, $"{key} {error:E2} (tolerance {tolerance:E2})");
                checkedCount++;
            }
            pass &= failed == 0 && checkedCount > 0;
            Console.WriteLine($"{name} gradients: {(pass ? "PASS" : "FAIL")}: train-mode logits {logitError:E3}, loss {lossError:E3}, " +
                $"{checkedCount - failed}/{checkedCount} gradients within tolerance; closest: {worst}");
            return pass ? 0 : 1;
        });

        /// <summary>Two steps of SGD(lr 0.1, momentum 0.9, weight decay 1e-4): each update against PyTorch's where PyTorch's own fp32 run is stable.</summary>
        private static int TwoSteps(string name, Func<IResNet> onGpu, string dir) => Guarded($"{name} two SGD steps", () =>
        {
            var net = LoadTiny(name, onGpu, dir, out var io);
            if (net is null) return 1;
            var before = new Dictionary<string, float[]>();
            foreach (string key in net.StateKeys) before[key] = net.GetTensor(key);
            var sgd = new Sgd(net, learningRate: 0.1f, momentum: 0.9f, weightDecay: 1e-4f);
            var logits = new float[io["logits_train"].Length];
            for (int step = 0; step < 2; step++)
            {
                sgd.ZeroGrad();
                net.ForwardBackward(io["input"], Labels(io), logits);
                sgd.Step();
            }
            int checkedCount = 0, failed = 0;
            foreach (string key in net.StateKeys)
            {
                if (!io.TryGetValue("after2steps." + key, out var after)) continue;
                double fp32 = io["fp32err.after2steps." + key][0];
                if (fp32 > 1e-2) continue; // PyTorch's own float32 trajectory diverges there
                var now = net.GetTensor(key);
                var expectedUpdate = new float[after.Length];
                var actualUpdate = new float[after.Length];
                for (int i = 0; i < after.Length; i++)
                {
                    expectedUpdate[i] = after[i] - before[key][i];
                    actualUpdate[i] = now[i] - before[key][i];
                }
                double error = RelativeL2(actualUpdate, expectedUpdate), tolerance = Math.Max(1e-2, 5 * fp32);
                if (!(error <= tolerance))
                {
                    failed++;
                    if (failed <= 5) Console.WriteLine($"  {name} {key}: update relative L2 {error:E3} > {tolerance:E3}");
                }
                checkedCount++;
            }
            float tracked = net.GetTensor("bn1.num_batches_tracked")[0];
            bool pass = failed == 0 && checkedCount >= 90 && tracked == 9f;
            Console.WriteLine($"{name} two SGD steps: {(pass ? "PASS" : "FAIL")}: {checkedCount - failed}/{checkedCount} updates within tolerance, " +
                $"bn1.num_batches_tracked {tracked} (expected 9)");
            return pass ? 0 : 1;
        });

        /// <summary>
        /// Managed bytes allocated by an inference call and by a training step (ZeroGrad, ForwardBackward, SGD step) on
        /// the GPU once warmed up: the least over four windows of two calls (the runtime may allocate once on its own).
        /// </summary>
        private static int SteadyState(string name, Func<IResNet> onGpu, string dir) => Guarded($"{name} steady state", () =>
        {
            var net = LoadTiny(name, onGpu, dir, out var io);
            if (net is null) return 1;
            var sgd = new Sgd(net, learningRate: 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
            float[] input = io["input"];
            int[] labels = Labels(io);
            var logits = new float[io["logits_train"].Length];
            long training = Least(() =>
            {
                sgd.ZeroGrad();
                net.ForwardBackward(input, labels, logits);
                sgd.Step();
            });
            net.Eval();
            long inference = Least(() => net.Forward(input, logits));
            bool pass = training == 0 && inference == 0;
            Console.WriteLine($"{name} steady state: {(pass ? "PASS" : "FAIL")}: {inference} B allocated per inference call, {training} B per training step");
            return pass ? 0 : 1;
        });

        /// <summary>
        /// AdamW (which steps on the host) over two steps of two accumulated ForwardBackward each, on the GPU and on the
        /// CPU from the same weights: the updates agree where PyTorch's own fp32 run is stable. This exercises the
        /// gradients coming down, the values going up after a host step, and accumulation on the device.
        /// </summary>
        private static int HostOptimizer(string name, Func<IResNet> onGpu, Func<IResNet> onCpu, string dir) =>
            Guarded($"{name} AdamW on the host, accumulated batches", () =>
        {
            var gpu = LoadTiny(name, onGpu, dir, out var io);
            if (gpu is null) return 1;
            var cpu = OnCpu(name, onCpu, dir);
            cpu.Train();
            var before = new Dictionary<string, float[]>();
            foreach (string key in gpu.StateKeys) before[key] = gpu.GetTensor(key);
            var logits = new float[io["logits_train"].Length];
            int accumulatedFailed = 0;
            foreach (var net in new[] { gpu, cpu })
            {
                var adamw = new AdamW(net, learningRate: 1e-3f);
                for (int step = 0; step < 2; step++)
                {
                    adamw.ZeroGrad();
                    net.ForwardBackward(io["input"], Labels(io), logits);
                    net.ForwardBackward(io["input"], Labels(io), logits);
                    if (step == 0 && net == gpu)
                        // The same batch twice in train mode: twice PyTorch's gradients.
                        foreach (string key in net.StateKeys)
                        {
                            if (!io.TryGetValue("grad." + key, out var expected)) continue;
                            double error = RelativeL2(net.GetGradient(key), Array.ConvertAll(expected, v => 2 * v));
                            if (!(error <= Math.Max(2e-3, 5 * io["fp32err.grad." + key][0])) && ++accumulatedFailed <= 5)
                                Console.WriteLine($"  {name} accumulated grad {key}: relative L2 {error:E3} against twice PyTorch's");
                        }
                    adamw.Step();
                }
            }
            int checkedCount = 0, failed = accumulatedFailed;
            double worst = 0;
            foreach (string key in gpu.StateKeys)
            {
                if (!io.TryGetValue("fp32err.after2steps." + key, out var fp32) || fp32[0] > 1e-2) continue;
                float[] g = gpu.GetTensor(key), c = cpu.GetTensor(key), b = before[key];
                var gpuUpdate = new float[b.Length];
                var cpuUpdate = new float[b.Length];
                for (int i = 0; i < b.Length; i++)
                {
                    gpuUpdate[i] = g[i] - b[i];
                    cpuUpdate[i] = c[i] - b[i];
                }
                double error = RelativeL2(gpuUpdate, cpuUpdate);
                worst = Math.Max(worst, error);
                if (!(error <= 1e-2))
                {
                    failed++;
                    if (failed <= 5) Console.WriteLine($"  {name} {key}: GPU update vs CPU update relative L2 {error:E3} > 1E-2");
                }
                checkedCount++;
            }
            bool pass = failed == 0 && checkedCount >= 90;
            Console.WriteLine($"{name} AdamW on the host, accumulated batches: {(pass ? "PASS" : "FAIL")}: {checkedCount - failed}/{checkedCount} updates " +
                $"agree with the CPU's (worst relative L2 {worst:E2}); accumulated gradients {(accumulatedFailed == 0 ? "twice PyTorch's" : "WRONG")}");
            return pass ? 0 : 1;
        });

        /// <summary>
        /// A batch with a NaN: the loss is NaN, the step refuses (NonFiniteException naming a parameter), and the
        /// weights, the running statistics and num_batches_tracked are as they were before the batch.
        /// </summary>
        private static int NonFinite(string name, Func<IResNet> onGpu, string dir) => Guarded($"{name} non-finite batch", () =>
        {
            var net = LoadTiny(name, onGpu, dir, out var io);
            if (net is null) return 1;
            var sgd = new Sgd(net, learningRate: 0.1f, momentum: 0.9f);
            var logits = new float[io["logits_train"].Length];
            sgd.ZeroGrad();
            net.ForwardBackward(io["input"], Labels(io), logits);
            sgd.Step(); // a good step first: momentum and values on the device
            var before = new Dictionary<string, float[]>();
            foreach (string key in net.StateKeys) before[key] = net.GetTensor(key);
            var bad = (float[])io["input"].Clone();
            bad[5] = float.NaN;
            sgd.ZeroGrad();
            float loss = net.ForwardBackward(bad, Labels(io), logits);
            string refused = "no exception";
            try
            {
                sgd.Step();
            }
            catch (NonFiniteException e)
            {
                refused = e.Message;
            }
            int changed = 0;
            foreach (string key in net.StateKeys)
            {
                float[] now = net.GetTensor(key), then = before[key];
                for (int i = 0; i < now.Length; i++)
                    if (BitConverter.SingleToInt32Bits(now[i]) != BitConverter.SingleToInt32Bits(then[i])) { changed++; break; }
            }
            bool pass = float.IsNaN(loss) && refused.Contains("NaN") && changed == 0;
            Console.WriteLine($"{name} non-finite batch: {(pass ? "PASS" : "FAIL")}: loss {loss}, {changed} tensors changed; step: {refused}");
            return pass ? 0 : 1;
        });

        /// <summary>
        /// Gradients in eval mode (BatchNorm with its running statistics, as when fine-tuning with frozen BatchNorm) on
        /// the GPU against the CPU's, which the CPU tests check by finite differences: relative L2 within 2e-3.
        /// </summary>
        private static int EvalModeGradients(string name, Func<IResNet> onGpu, Func<IResNet> onCpu, string dir) =>
            Guarded($"{name} eval-mode gradients", () =>
        {
            var gpu = LoadTiny(name, onGpu, dir, out var io);
            if (gpu is null) return 1;
            var cpu = OnCpu(name, onCpu, dir);
            var gpuLogits = new float[io["logits_eval"].Length];
            var cpuLogits = new float[gpuLogits.Length];
            gpu.Eval();
            cpu.Eval();
            float gpuLoss = gpu.ForwardBackward(io["input"], Labels(io), gpuLogits);
            float cpuLoss = cpu.ForwardBackward(io["input"], Labels(io), cpuLogits);
            int checkedCount = 0, failed = 0;
            double worst = 0;
            foreach (string key in gpu.StateKeys)
            {
                if (!io.ContainsKey("grad." + key)) continue; // the parameters
                double error = RelativeL2(gpu.GetGradient(key), cpu.GetGradient(key));
                worst = Math.Max(worst, error);
                if (!(error <= 2e-3) && ++failed <= 5) Console.WriteLine($"  {name} eval-mode grad {key}: relative L2 {error:E3} against the CPU's");
                checkedCount++;
            }
            double logitError = MaxRelative(gpuLogits, io["logits_eval"]);
            bool pass = failed == 0 && checkedCount > 0 && logitError <= 1e-3 && Math.Abs(gpuLoss - cpuLoss) <= 1e-3 * Math.Abs(cpuLoss);
            Console.WriteLine($"{name} eval-mode gradients: {(pass ? "PASS" : "FAIL")}: logits {logitError:E3} against PyTorch's eval logits, " +
                $"loss {gpuLoss} (cpu {cpuLoss}), {checkedCount - failed}/{checkedCount} gradients agree with the CPU's (worst {worst:E2})");
            return pass ? 0 : 1;
        });

        private static long Least(Action call)
        {
            for (int i = 0; i < 2; i++) call(); // descriptors, algorithm search, buffers
            long least = long.MaxValue;
            for (int window = 0; window < 4 && least > 0; window++)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                call();
                call();
                least = Math.Min(least, GC.GetAllocatedBytesForCurrentThread() - before);
            }
            return least;
        }

        /// <summary>ResNet-50 training img/s: ZeroGrad, <paramref name="microBatches"/> ForwardBackward of <paramref name="batch"/>, an SGD step.</summary>
        private static void TrainingThroughput(int batch, int microBatches)
        {
            string what = microBatches == 1 ? $"batch {batch}" : $"batch {batch * microBatches} ({microBatches} x {batch} accumulated)";
            try
            {
                var net = new ResNet50(Device.Cuda);
                net.Train();
                var sgd = new Sgd(net, learningRate: 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
                var input = new float[batch * ResNet50.InputSize];
                for (int i = 0; i < input.Length; i++) input[i] = (i % 251) / 251f - 0.5f;
                var labels = new int[batch];
                for (int i = 0; i < batch; i++) labels[i] = i * 7 % ResNet50.NumClasses;
                var logits = new float[batch * ResNet50.NumClasses];
                void Step()
                {
                    sgd.ZeroGrad();
                    for (int m = 0; m < microBatches; m++) net.ForwardBackward(input, labels, logits);
                    sgd.Step();
                }
                for (int i = 0; i < 2; i++) Step(); // algorithm search, uploads
                int steps = Math.Max(3, 256 / (batch * microBatches));
                var clock = Stopwatch.StartNew();
                for (int i = 0; i < steps; i++) Step();
                double seconds = clock.Elapsed.TotalSeconds;
                Console.WriteLine($"training resnet50 {what}: {batch * microBatches * steps / seconds:F0} img/s ({seconds * 1000 / steps:F1} ms per step, SGD on the host)");
            }
            catch (Exception e)
            {
                Console.WriteLine($"training resnet50 {what}: FAIL: {e.GetType().Name}: {e.Message}");
            }
        }

        private static double RelativeL2(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
        {
            double diff = 0, norm = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                diff += Math.Pow(actual[i] - expected[i], 2);
                norm += Math.Pow(expected[i], 2);
            }
            return Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
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
                var data = new float[t.Count];
                if (t.DType == DType.F32) file.ReadFloat32(t, data);
                else if (t.DType == DType.I64 && file is SafeTensorsFile safetensors)
                {
                    var values = new long[t.Count];
                    safetensors.ReadInt64(t, values);
                    data = Array.ConvertAll(values, v => (float)v);
                }
                else continue;
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
