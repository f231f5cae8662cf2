using System;
using System.IO;
using System.Linq;
using Unrolled.Tests.Kernels;
using Xunit.Abstractions;

namespace Unrolled.Tests;

public class OptimizerTests(ITestOutputHelper output)
{
    /// <summary>
    /// Two steps of torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4), each zero_grad, train-mode forward,
    /// backward, step; the update (after - before) of every entry with fp32err <= 1e-2 within max(1e-2, 5 x fp32err).
    /// </summary>
    [Theory]
    [InlineData("tiny18")]
    [InlineData("tiny50")]
    public void TwoSgdStepsMatchPyTorch(string name)
    {
        var net = TrainingTests.Load(name);
        var io = Reference.Load(Reference.Fixture(name + "_io.safetensors"));
        var before = net.StateKeys.ToDictionary(k => k, net.GetTensor);
        var sgd = new Sgd(net, learningRate: 0.1f, momentum: 0.9f, weightDecay: 1e-4f);
        net.Train();
        var logits = new float[20];
        for (int step = 0; step < 2; step++)
        {
            sgd.ZeroGrad();
            net.ForwardBackward(io["input"].Data, TrainingTests.Labels(io), logits);
            sgd.Step();
        }

        int checkedCount = 0, skipped = 0;
        foreach (string key in net.StateKeys)
        {
            if (!io.TryGetValue("after2steps." + key, out var after)) continue;
            double fp32 = io["fp32err.after2steps." + key].Data[0];
            if (fp32 > 1e-2) { skipped++; continue; } // PyTorch's own float32 trajectory diverges there
            var expectedUpdate = after.Data.Zip(before[key], (a, b) => a - b).ToArray();
            var actualUpdate = net.GetTensor(key).Zip(before[key], (a, b) => a - b).ToArray();
            double error = TrainingTests.RelativeL2(actualUpdate, expectedUpdate);
            double tolerance = Math.Max(1e-2, 5 * fp32);
            Assert.True(error <= tolerance, $"{name} {key}: update relative L2 {error:E3} > {tolerance:E3}");
            checkedCount++;
        }
        output.WriteLine($"{name}: {checkedCount} updates checked, {skipped} ill-conditioned entries skipped (PyTorch fp32err > 1e-2)");
        Assert.True(checkedCount >= 90, $"only {checkedCount} entries were well-conditioned enough to check");
        Assert.Equal(9f, net.GetTensor("bn1.num_batches_tracked")[0]); // 7 + 2 train-mode forwards
    }

    /// <summary>The optimizers against their torch.optim definitions, evaluated here in double on the same gradients.</summary>
    [Theory]
    [InlineData("sgd-plain")]
    [InlineData("sgd-dampening")]
    [InlineData("sgd-nesterov")]
    [InlineData("adamw")]
    public void OptimizersFollowTorchOptimDefinitions(string kind)
    {
        var net = new ZeroInit18();
        Optimizer opt = kind switch
        {
            "sgd-plain" => new Sgd(net, 0.05f),
            "sgd-dampening" => new Sgd(net, 0.05f, momentum: 0.8f, dampening: 0.3f, weightDecay: 1e-3f),
            "sgd-nesterov" => new Sgd(net, 0.05f, momentum: 0.9f, weightDecay: 1e-3f, nesterov: true),
            _ => new AdamW(net, 1e-2f, weightDecay: 0.05f),
        };
        var input = Naive.RandomFloats(new Random(3), 4 * 3 * 32 * 32);
        var labels = new[] { 0, 1, 2, 1 };
        var logits = new float[12];
        net.Train();
        const string key = "layer1.0.conv1.weight";
        var p = Naive.ToDouble(net.GetTensor(key));
        var buf = new double[p.Length];
        var m = new double[p.Length];
        var v = new double[p.Length];
        for (int t = 1; t <= 3; t++)
        {
            opt.ZeroGrad();
            net.ForwardBackward(input, labels, logits);
            var g = Naive.ToDouble(net.GetGradient(key));
            for (int i = 0; i < p.Length; i++)
            {
                switch (kind)
                {
                    case "adamw":
                        p[i] *= 1 - 1e-2 * 0.05;
                        m[i] = 0.9 * m[i] + 0.1 * g[i];
                        v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                        p[i] -= 1e-2 / (1 - Math.Pow(0.9, t)) * m[i] / (Math.Sqrt(v[i]) / Math.Sqrt(1 - Math.Pow(0.999, t)) + 1e-8);
                        break;
                    case "sgd-plain":
                        p[i] -= 0.05 * g[i];
                        break;
                    default:
                    {
                        bool nesterov = kind == "sgd-nesterov";
                        double mom = nesterov ? 0.9 : 0.8, damp = nesterov ? 0 : 0.3;
                        double d = g[i] + 1e-3 * p[i];
                        buf[i] = t == 1 ? d : mom * buf[i] + (1 - damp) * d;
                        p[i] -= 0.05 * (nesterov ? d + mom * buf[i] : buf[i]);
                        break;
                    }
                }
            }
            opt.Step();
            var actual = net.GetTensor(key);
            double error = TrainingTests.RelativeL2(actual, p.Select(x => (float)x).ToArray());
            Assert.True(error < 1e-5, $"{kind} step {t}: relative L2 {error:E2}");
            p = Naive.ToDouble(actual); // follow our own trajectory: the check is per step
        }
        Assert.Equal(3, opt.Steps);
    }

    [Fact]
    public void InvalidOptimizerSettingsAreRefused()
    {
        var net = new ZeroInit18();
        Assert.Throws<ArgumentException>(() => new Sgd(net, 0.1f, momentum: 0, nesterov: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sgd(net, -1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => new AdamW(net, beta1: 1f));
    }

    [Fact]
    public void SchedulesFollowTorchLrSchedulers()
    {
        static double[] Run(LearningRateSchedule s, int epochs) => Enumerable.Range(0, epochs).Select(e => s.At(1.0, e)).ToArray();
        Assert.Equal(new[] { 1, 1, 0.1, 0.1, 0.01 }, Run(Schedules.Step(2), 5), new Tolerance());
        Assert.Equal(new[] { 1, 1, 0.5, 0.5, 0.5, 0.25 }, Run(Schedules.MultiStep(new[] { 2, 5 }, 0.5), 6), new Tolerance());
        Assert.Equal(new[] { 1, 0.5, 0, 0.5, 1 }, Run(Schedules.Cosine(2), 5), new Tolerance()); // continues the cosine past tMax, as the closed form
        Assert.Equal(new[] { 0.25, 0.5, 0.75, 1, 1 }, Run(Schedules.LinearWarmup(3, 0.25), 5), new Tolerance());
        var warmupThenCosine = Schedules.LinearWarmup(2, 0.5).Then(2, Schedules.Cosine(4));
        Assert.Equal(new[] { 0.5, 0.75, 1, (1 + Math.Cos(Math.PI / 4)) / 2, 0.5 }, Run(warmupThenCosine, 5), new Tolerance());

        var net = new ZeroInit18();
        var sgd = new Sgd(net, 0.2f);
        var scheduler = new LearningRateScheduler(sgd, Schedules.Cosine(4, etaMin: 0.02));
        Assert.Equal(0.2f, sgd.LearningRate);
        scheduler.Step();
        scheduler.Step();
        Assert.Equal(0.11f, sgd.LearningRate, 6);
    }

    private sealed class Tolerance : System.Collections.Generic.IEqualityComparer<double>
    {
        public bool Equals(double a, double b) => Math.Abs(a - b) < 1e-12;
        public int GetHashCode(double x) => 0;
    }
}

/// <summary>Training-state checkpoints, and what a training step promises.</summary>
public sealed class TrainingStepTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static (float[] Input, int[] Labels) Batch(int seed)
    {
        var rng = new Random(seed);
        return (Naive.RandomFloats(rng, 4 * 3 * 32 * 32), Enumerable.Range(0, 4).Select(_ => rng.Next(3)).ToArray());
    }

    private static void TrainSteps(ZeroInit18 net, Optimizer opt, LearningRateScheduler sched, int from, int count)
    {
        var logits = new float[12];
        for (int s = from; s < from + count; s++)
        {
            var (x, y) = Batch(s);
            opt.ZeroGrad();
            net.ForwardBackward(x, y, logits);
            opt.Step();
            sched.Step();
        }
    }

    [Theory]
    [InlineData("sgd")]
    [InlineData("adamw")]
    public void ResumingFromACheckpointIsBitIdentical(string kind)
    {
        Optimizer Make(ZeroInit18 n) => kind == "sgd" ? new Sgd(n, 0.05f, momentum: 0.9f, weightDecay: 5e-4f, nesterov: true) : new AdamW(n, 1e-3f);
        var a = new ZeroInit18();
        a.Train();
        var optA = Make(a);
        var schedA = new LearningRateScheduler(optA, Schedules.LinearWarmup(2, 0.5).Then(2, Schedules.Cosine(6)));
        TrainSteps(a, optA, schedA, 0, 3);
        string path = Path.Combine(_dir, "ckpt.safetensors");
        Checkpoint.Save(path, a, optA, schedA, epoch: 1, step: 3, extra: new System.Collections.Generic.Dictionary<string, string> { ["note"] = "hello" });
        TrainSteps(a, optA, schedA, 3, 3);

        var b = new ZeroInit18();
        b.Train();
        var optB = Make(b);
        var schedB = new LearningRateScheduler(optB, Schedules.LinearWarmup(2, 0.5).Then(2, Schedules.Cosine(6)));
        var info = Checkpoint.Load(path, b, optB, schedB);
        Assert.Equal((1, 3L, "hello"), (info.Epoch, info.Step, info.Metadata["note"]));
        TrainSteps(b, optB, schedB, 3, 3);

        foreach (string key in a.StateKeys) Assert.Equal(a.GetTensor(key), b.GetTensor(key)); // bit for bit
        Assert.Equal(optA.LearningRate, optB.LearningRate);
        Assert.Single(Directory.GetFiles(_dir));
    }

    [Fact]
    public void AFailedCheckpointLoadChangesNothing()
    {
        var net = new ZeroInit18();
        var sgd = new Sgd(net, 0.1f, momentum: 0.9f);
        string plain = Path.Combine(_dir, "weights.safetensors");
        net.SaveWeights(plain);
        var before = net.GetTensor("fc.weight");
        var e = Assert.Throws<WeightsFileException>(() => Checkpoint.Load(plain, net, sgd));
        Assert.Contains("not an Unrolled training checkpoint", e.Message);
        string ckpt = Path.Combine(_dir, "adam.safetensors");
        Checkpoint.Save(ckpt, net, new AdamW(net));
        Assert.Contains("optimizer 'AdamW'", Assert.Throws<WeightsFileException>(() => Checkpoint.Load(ckpt, net, sgd)).Message);
        Assert.Equal(before, net.GetTensor("fc.weight"));
    }

    [Fact]
    public void LabelsAreCheckedBeforeAnyWork()
    {
        var net = new ZeroInit18();
        net.Train();
        var (x, _) = Batch(1);
        var logits = new float[12];
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => net.ForwardBackward(x, new[] { 0, 1, 3, 0 }, logits));
        Assert.Contains("label 2 is 3", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => net.ForwardBackward(x, new[] { 0, -1, 2, 0 }, logits));
        Assert.Contains("3 labels for a batch of 4", Assert.Throws<ArgumentException>(() => net.ForwardBackward(x, new[] { 0, 1, 2 }, logits)).Message);
        Assert.Equal(0f, net.GetTensor("bn1.num_batches_tracked")[0]); // no forward ran
        Assert.All(net.GetGradient("fc.weight"), g => Assert.Equal(0f, g));
        Assert.Throws<ArgumentException>(() => net.GetGradient("bn1.running_mean"));
    }

    [Fact]
    public void GradientsAccumulateUntilZeroGrad()
    {
        var net = new ZeroInit18();
        net.Train();
        var (x, y) = Batch(2);
        var logits = new float[12];
        net.ForwardBackward(x, y, logits);
        var once = net.GetGradient("layer2.0.conv1.weight");
        net.ForwardBackward(x, y, logits); // batch statistics: the same gradients again
        var twice = net.GetGradient("layer2.0.conv1.weight");
        for (int i = 0; i < once.Length; i++) Assert.Equal(2 * once[i], twice[i], Math.Abs(once[i]) * 1e-5f + 1e-12f);
        net.ZeroGrad();
        Assert.All(net.GetGradient("layer2.0.conv1.weight"), g => Assert.Equal(0f, g));
    }

    /// <summary>
    /// ZeroGrad clears each layer's gradients only when backward first writes them (or when they are read), and a
    /// folded filter gradient then stores instead of adding: two backwards add up exactly, and after ZeroGrad and
    /// backward again every gradient is exactly that of one backward from zero, whether or not a gradient was read in
    /// between. A 32x32
    /// Bottleneck network: folded maps, and layer4's one-pixel maps whose centre-tap gradients are added.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AfterZeroGradOneBackwardGivesExactlyTheGradientsOfOne(bool readInBetween)
    {
        var x = Naive.RandomFloats(new Random(17), 4 * Bottleneck32.InputSize);
        var y = new[] { 0, 3, 1, 4 };
        var logits = new float[4 * Bottleneck32.NumClasses];
        var fresh = new Bottleneck32();
        fresh.Eval();
        fresh.ForwardBackward(x, y, logits);
        var expected = ((IResNet)fresh).State.Gradients.ToArray();

        var net = new Bottleneck32();
        net.Eval();
        net.ForwardBackward(x, y, logits);
        net.ForwardBackward(x, y, logits);
        // Without ZeroGrad the second backward adds (up to the rounding of sums taken in another order).
        var twice = ((IResNet)net).State.Gradients.ToArray();
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(2.0 * expected[i] - twice[i]) <= 1e-5 * Math.Abs(2.0 * expected[i]), $"gradient {i} after two backwards: {twice[i]}, twice one is {2 * expected[i]}");
        net.ZeroGrad();
        if (readInBetween) Assert.All(net.GetGradient("layer4.1.conv2.weight"), g => Assert.Equal(0f, g));
        net.ForwardBackward(x, y, logits);
        var actual = ((IResNet)net).State.Gradients.ToArray();
        Assert.Contains(net.GetGradient("layer4.1.conv2.weight"), g => g != 0);
        for (int i = 0; i < expected.Length; i++) Assert.True(expected[i] == actual[i], $"gradient {i}: {actual[i]}, one backward gives {expected[i]}");
    }

    private static float[][] Snapshot(IResNet net) => net.StateKeys.Select(net.GetTensor).ToArray();

    [Fact]
    public void ANaNBatchStopsTheRunNamingTheStepAndChangesNothing()
    {
        var net = new ZeroInit18();
        net.Train();
        var sgd = new Sgd(net, 0.05f, momentum: 0.9f);
        TrainSteps(net, sgd, new LearningRateScheduler(sgd, Schedules.Constant()), 0, 2);
        var before = Snapshot(net);

        var (x, y) = Batch(7);
        x[123] = float.NaN;
        var logits = new float[12];
        sgd.ZeroGrad();
        float loss = net.ForwardBackward(x, y, logits);
        Assert.True(float.IsNaN(loss));
        var e = Assert.Throws<NonFiniteException>(() => sgd.Step());

        Assert.Equal(3, e.Step);
        Assert.Equal("conv1.weight", e.Key); // the first parameter, in state_dict order
        Assert.Contains("training step 3", e.Message);
        Assert.Contains("NonFinitePolicy.SkipBatch", e.Message);
        Assert.Equal(2, sgd.Steps);
        var after = Snapshot(net);
        for (int i = 0; i < before.Length; i++) Assert.Equal(before[i], after[i]); // weights, running statistics, counters
    }

    [Fact]
    public void SkippingABadBatchTrainsExactlyAsIfItHadNeverComeAndNamesTheParameter()
    {
        var skipping = new ZeroInit18();
        var clean = new ZeroInit18();
        var sgdA = new Sgd(skipping, 0.05f, momentum: 0.9f, weightDecay: 1e-4f) { OnNonFinite = NonFinitePolicy.SkipBatch };
        var sgdB = new Sgd(clean, 0.05f, momentum: 0.9f, weightDecay: 1e-4f);
        skipping.Train();
        clean.Train();
        var logits = new float[12];
        for (int s = 0; s < 4; s++)
        {
            if (s == 2)
            {
                // An infinite input: the loss is not finite; the batch is skipped.
                var (bad, labels) = Batch(99);
                bad[5] = float.PositiveInfinity;
                sgdA.ZeroGrad();
                skipping.ForwardBackward(bad, labels, logits);
                Assert.False(sgdA.Step());
            }
            var (x, y) = Batch(s);
            sgdA.ZeroGrad();
            skipping.ForwardBackward(x, y, logits);
            Assert.True(sgdA.Step());
            sgdB.ZeroGrad();
            clean.ForwardBackward(x, y, logits);
            sgdB.Step();
        }
        Assert.Equal(1, sgdA.SkippedSteps);
        Assert.Equal(sgdB.Steps, sgdA.Steps);
        var a = Snapshot(skipping);
        var b = Snapshot(clean);
        for (int i = 0; i < a.Length; i++) Assert.Equal(b[i], a[i]);

        // A finite loss with one bad gradient (as an overflow in backward would leave): the parameter is named.
        var sgdC = new Sgd(clean, 0.05f);
        ((IResNet)clean).State.Gradients[(int)((IResNet)clean).State.Entry("layer3.1.conv2.weight").Offset + 17] = float.NegativeInfinity;
        var e = Assert.Throws<NonFiniteException>(() => sgdC.Step());
        Assert.Equal("layer3.1.conv2.weight", e.Key);
        Assert.Contains("is infinite", e.Message);
    }

    [Fact]
    public void LossFallsOnASmallSyntheticProblem()
    {
        // Three classes told apart by which colour channel is brightest.
        var net = new ZeroInit18();
        net.Train();
        var sgd = new Sgd(net, 0.05f, momentum: 0.9f);
        var rng = new Random(5);
        var logits = new float[24];
        float first = 0, last = 0;
        for (int step = 0; step < 30; step++)
        {
            var labels = Enumerable.Range(0, 8).Select(_ => rng.Next(3)).ToArray();
            var x = new float[8 * 3 * 32 * 32];
            for (int n = 0; n < 8; n++)
            for (int c = 0; c < 3; c++)
            for (int i = 0; i < 1024; i++)
                x[(n * 3 + c) * 1024 + i] = (float)rng.NextDouble() * 0.5f + (c == labels[n] ? 0.5f : 0f);
            sgd.ZeroGrad();
            float loss = net.ForwardBackward(x, labels, logits);
            sgd.Step();
            if (step == 0) first = loss;
            last = loss;
        }
        output.WriteLine($"loss {first:F4} -> {last:F4}");
        Assert.True(last < first * 0.3, $"loss {first} -> {last}");
    }
}

[Collection(nameof(AllocationTests))]
public class TrainingAllocationTests
{
    [Fact]
    public void ATrainingStepAllocatesNothingAfterTheFirst()
    {
        foreach (IResNet net in new IResNet[] { new Tiny50(), new Basic72x88() })
        {
            var (c, h, w) = net.InputShape;
            var x = Naive.RandomFloats(new Random(1), 2 * c * h * w);
            var labels = new[] { 1, 0 };
            var logits = new float[2 * net.OutputSize];
            net.Train();
            foreach (Optimizer opt in new Optimizer[] { new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 1e-4f), new AdamW(net) })
            {
                opt.ZeroGrad();
                net.ForwardBackward(x, labels, logits);
                opt.Step();
                SteadyState.AssertAllocatesNothing($"{net.GetType().Name} training step with {opt.GetType().Name}", () =>
                {
                    opt.ZeroGrad();
                    net.ForwardBackward(x, labels, logits);
                    opt.Step();
                });
            }
        }
    }
}

/// <summary>
/// The same network with the Winograd convolutions and with the direct ones: eval logits, a training step's loss and
/// gradients (through Winograd forwards and data gradients), and the logits after an SGD step (the transformed weights
/// made again) agree to float rounding. The
/// Winograd kernel itself is checked against the naive convolution in KernelTests; this checks the network's use of it.
/// Runs alone: it switches Winograd off for the whole process for a while.
/// </summary>
[Collection(nameof(AllocationTests))]
public class WinogradNetworkTests
{
    [Fact]
    public void WinogradGivesTheDirectConvolutionsNumbersInEvalAndTraining()
    {
        const int batch = 4;
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
        {
            Assert.False(Unrolled.Cpu.Winograd.Pays(batch, 64, 16, 16, 64)); // AVX-512 code: without it every convolution is direct
            return;
        }
        Assert.True(Unrolled.Cpu.Winograd.Pays(batch, 64, 16, 16, 64), "layer1's 3x3 convolutions must take the Winograd path here");
        var x = Naive.RandomFloats(new Random(3), batch * Wide18.InputSize);
        var labels = Enumerable.Range(0, batch).Select(i => i % 3).ToArray();

        // Maps of 16x16 take F(2x2, 3x3) as chosen; this network's use of F(4x4, 3x3) is checked by choosing it there.
        Assert.Equal(Unrolled.Cpu.Winograd.Tiles.F2, Unrolled.Cpu.Winograd.Choose(3, 1, 1, batch, 64, 16, 16, 64));
        (float[] Eval, float Loss, float[] Gradient, float[] Stem, float[] After) Run(bool direct, bool smallTiles = false)
        {
            Unrolled.Cpu.Winograd.Off = direct;
            Unrolled.Cpu.Winograd.SmallTilesOnly = smallTiles;
            Unrolled.Cpu.Winograd.LargeTilesFrom = 16;
            try
            {
                Assert.Equal(direct ? Unrolled.Cpu.Winograd.Tiles.None : smallTiles ? Unrolled.Cpu.Winograd.Tiles.F2 : Unrolled.Cpu.Winograd.Tiles.F4,
                    Unrolled.Cpu.Winograd.Choose(3, 1, 1, batch, 64, 16, 16, 64));
                var net = new Wide18();
                var eval = new float[batch * 3];
                net.Eval();
                net.Forward(x, eval);
                net.Train();
                var sgd = new Sgd(net, 0.05f, momentum: 0.9f);
                var logits = new float[batch * 3];
                sgd.ZeroGrad();
                float loss = net.ForwardBackward(x, labels, logits);
                // layer1.0.conv1's gradient comes through layer1's data gradients; the stem's through every layer's.
                var gradient = net.GetGradient("layer1.0.conv1.weight");
                var stem = net.GetGradient("conv1.weight");
                sgd.Step();
                var after = new float[batch * 3];
                net.Eval();
                net.Forward(x, after);
                return (eval, loss, gradient, stem, after);
            }
            finally
            {
                Unrolled.Cpu.Winograd.Off = false;
                Unrolled.Cpu.Winograd.SmallTilesOnly = false;
                Unrolled.Cpu.Winograd.LargeTilesFrom = 28;
            }
        }

        var direct = Run(direct: true);
        Compare(Run(direct: false), direct);                  // F(4x4, 3x3) in layer1 (16x16 maps, batch 4: 64 tiles)
        Compare(Run(direct: false, smallTiles: true), direct); // F(2x2, 3x3)
    }

    private static void Compare((float[] Eval, float Loss, float[] Gradient, float[] Stem, float[] After) winograd,
        (float[] Eval, float Loss, float[] Gradient, float[] Stem, float[] After) direct)
    {
        Assert.True(Reference.MaxRelative(winograd.Eval, direct.Eval) <= 1e-4, $"eval logits {Reference.MaxRelative(winograd.Eval, direct.Eval):E2}");
        Assert.True(Math.Abs(winograd.Loss - direct.Loss) <= 1e-4 * Math.Abs(direct.Loss), $"loss {winograd.Loss} vs {direct.Loss}");
        Assert.True(TrainingTests.RelativeL2(winograd.Gradient, direct.Gradient) <= 1e-3, $"gradient {TrainingTests.RelativeL2(winograd.Gradient, direct.Gradient):E2}");
        Assert.True(TrainingTests.RelativeL2(winograd.Stem, direct.Stem) <= 1e-3, $"stem gradient {TrainingTests.RelativeL2(winograd.Stem, direct.Stem):E2}");
        Assert.True(Reference.MaxRelative(winograd.After, direct.After) <= 1e-3, $"logits after a step {Reference.MaxRelative(winograd.After, direct.After):E2}");
        Assert.NotEqual(winograd.Eval, winograd.After); // the step changed the weights, and the transformed ones followed
    }
}
