using System;
using System.IO;
using System.Linq;
using Unrolled.Runtime;
using Unrolled.Tests.Kernels;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>Generated networks against the independent reference model, and the behaviour of the public contract.</summary>
public class NetworkTests(ITestOutputHelper output)
{
    private static void RandomizeBatchNorm(IResNet net, int seed)
    {
        var rng = new Random(seed);
        foreach (string key in net.StateKeys)
        {
            bool isBn = key.Contains(".bn") || key.StartsWith("bn1", StringComparison.Ordinal) || key.Contains("downsample.1");
            if (!isBn || key.EndsWith("num_batches_tracked", StringComparison.Ordinal)) continue;
            var t = net.GetTensor(key);
            for (int i = 0; i < t.Length; i++)
            {
                double u = rng.NextDouble();
                t[i] = key.EndsWith("running_var", StringComparison.Ordinal) ? (float)(0.5 + u)
                    : key.EndsWith("weight", StringComparison.Ordinal) ? (float)(0.5 + u)
                    : (float)(u - 0.5);
            }
            net.SetTensor(key, t);
        }
    }

    [Theory]
    [InlineData(18, false)]
    [InlineData(18, true)]
    [InlineData(50, false)]
    [InlineData(50, true)]
    public void NonSquareNetworksMatchTheReferenceModel(int depth, bool train)
    {
        IResNet net = depth == 18 ? new Basic72x88() : new Bottleneck72x88();
        RandomizeBatchNorm(net, depth);
        AssertMatchesReferenceModel(net, depth, Naive.RandomFloats(new Random(7), 2 * 3 * 72 * 88), train, $"ResNet-{depth} 72x88");
    }

    /// <summary>The logits of <paramref name="net"/> (in train or eval mode) against <see cref="ReferenceModel"/>'s, to 1e-4.</summary>
    private void AssertMatchesReferenceModel(IResNet net, int depth, float[] input, bool train, string what)
    {
        var expected = new ReferenceModel(net, depth).Forward(input, train); // reads the state before our forward updates it
        if (train) net.Train(); else net.Eval();
        var logits = new float[expected.Length];
        net.Forward(input, logits);
        double error = Reference.MaxRelative(logits, expected.Select(v => (float)v).ToArray());
        output.WriteLine($"{what} {(train ? "train" : "eval")}: max relative error {error:E2}");
        Assert.True(error <= 1e-4, $"relative error {error:E3}");
    }

    /// <summary>Maps of one pixel (layer4 at 32x32), whose 3x3 convolutions run as 1x1 ones of their centre taps.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OnePixelMapsMatchTheReferenceModel(bool train)
    {
        IResNet net = new Bottleneck32();
        RandomizeBatchNorm(net, 32);
        // 16 images: train-mode BatchNorm over a handful of values per channel amplifies float rounding (at 4 images
        // the logits differ from the double reference by 9e-4, with or without the centre-tap path).
        AssertMatchesReferenceModel(net, 50, Naive.RandomFloats(new Random(5), 16 * 3 * 32 * 32), train, "ResNet-50 32x32");
    }

    /// <summary>
    /// The gradients of a map of one pixel's 3x3 convolution, taken as those of a 1x1 convolution of the centre taps:
    /// its filter gradient (the other eight taps' stay zero) and, through its data gradient, the filter gradient of
    /// the convolution before it; the stride-2 3x3 from 2x2 to 1x1, which reads four taps, takes the ordinary path.
    /// </summary>
    [Theory]
    [InlineData("layer4.1.conv2.weight")]
    [InlineData("layer4.1.conv1.weight")]
    [InlineData("layer4.0.conv2.weight")]
    public void OnePixelMapGradientsMatchFiniteDifferences(string key)
    {
        IResNet net = new Bottleneck32();
        RandomizeBatchNorm(net, 32);
        var gradient = CheckFilterGradient(net, key, Naive.RandomFloats(new Random(13), 2 * 3 * 32 * 32));
        if (key == "layer4.1.conv2.weight")
        {
            for (int i = 0; i < gradient.Length; i++)
                if (i % 9 != 4) Assert.True(gradient[i] == 0, $"{key}[{i}] is off the centre tap but has gradient {gradient[i]}");
        }
    }

    /// <summary>
    /// The filter gradients that larger maps take through their own kernels (3x3 stride 1 over padded planes; 1x1
    /// with more input than output channels as the transpose), checked through the whole network against central
    /// differences of its loss: at 72x88, layer1's maps have 18x22 pixels, more than are folded into one GEMM.
    /// Eval mode, so that each image's loss depends on its own input only and the differences are smooth.
    /// </summary>
    [Theory]
    [InlineData("layer1.0.conv2.weight")] // 3x3 stride 1, 4 -> 4 channels (BaseWidth 4 narrows every layer 16-fold)
    [InlineData("layer1.1.conv2.weight")]
    [InlineData("layer1.1.conv1.weight")] // 1x1, 16 -> 4 channels: the transposed filter gradient
    [InlineData("layer1.0.conv3.weight")] // 1x1, 4 -> 16 channels: the direct one, for comparison
    public void LargeMapFilterGradientsMatchFiniteDifferences(string key)
    {
        IResNet net = new Bottleneck72x88();
        RandomizeBatchNorm(net, 50);
        CheckFilterGradient(net, key, Naive.RandomFloats(new Random(11), 2 * 3 * 72 * 88));
    }

    /// <summary>
    /// The gradient of <paramref name="key"/> after ForwardBackward over a batch of two images (eval mode) against
    /// central differences of the loss at its largest entries and a few at random; returns the gradient.
    /// </summary>
    private static float[] CheckFilterGradient(IResNet net, string key, float[] input)
    {
        net.Eval();
        const int batch = 2;
        var labels = new[] { 1, 3 };
        var logits = new float[batch * net.OutputSize];
        net.ZeroGrad();
        net.ForwardBackward(input, labels, logits);
        var gradient = net.GetGradient(key);
        var weights = net.GetTensor(key);
        double largest = gradient.Max(v => Math.Abs((double)v));
        Assert.True(largest > 0, $"{key}: the gradient is zero everywhere");

        var rng = new Random(key.Length);
        float Loss()
        {
            net.ZeroGrad();
            return net.ForwardBackward(input, labels, logits);
        }
        // The largest entries, where a difference stands out of the float32 loss's rounding, and a few at random.
        var indices = Enumerable.Range(0, gradient.Length).OrderByDescending(i => Math.Abs(gradient[i])).Take(4)
            .Concat(Enumerable.Range(0, 4).Select(_ => rng.Next(gradient.Length))).ToArray();
        foreach (int i in indices)
        {
            const float eps = 1e-4f;
            var probe = (float[])weights.Clone();
            probe[i] = weights[i] + eps;
            net.SetTensor(key, probe);
            double up = Loss();
            probe[i] = weights[i] - eps;
            net.SetTensor(key, probe);
            double down = Loss();
            net.SetTensor(key, weights);
            double numeric = (up - down) / (2 * eps);
            Assert.True(Math.Abs(numeric - gradient[i]) <= 0.05 * Math.Abs(gradient[i]) + 0.02 * largest,
                $"{key}[{i}]: analytic {gradient[i]:G6}, finite difference {numeric:G6} (largest |gradient| {largest:G3})");
        }
        return gradient;
    }

    [Theory]
    [InlineData("tiny18")]
    [InlineData("tiny50")]
    public void TrainModeLogitsMatchPyTorchAndUpdateRunningStatistics(string name)
    {
        IResNet net = name == "tiny18" ? new Tiny18() : new Tiny50();
        net.LoadWeights(Reference.Fixture(name + ".safetensors"));
        var io = Reference.Load(Reference.Fixture(name + "_io.safetensors"));
        var meanBefore = net.GetTensor("bn1.running_mean");
        net.Train();
        Assert.True(net.IsTraining);
        var logits = new float[20];
        net.Forward(io["input"].Data, logits);
        double error = Reference.MaxRelative(logits, io["logits_train"].Data);
        output.WriteLine($"{name} train-mode logits: max relative error {error:E2}");
        Assert.True(error <= 1e-3);
        Assert.Equal(8f, net.GetTensor("bn1.num_batches_tracked")[0]); // 7 in the file, +1
        Assert.NotEqual(meanBefore, net.GetTensor("bn1.running_mean"));

        // Back in eval mode, the updated running statistics are used (and folded anew).
        net.Eval();
        var evalLogits = new float[20];
        net.Forward(io["input"].Data, evalLogits);
        var reference = new ReferenceModel(net, name == "tiny18" ? 18 : 50).Forward(io["input"].Data, train: false);
        Assert.True(Reference.MaxRelative(evalLogits, reference.Select(v => (float)v).ToArray()) <= 1e-4);
    }

    [Fact]
    public void WrongLengthsThrowClearErrors()
    {
        var net = new Tiny18();
        var e = Assert.Throws<ArgumentException>(() => net.Forward(new float[100], new float[10]));
        Assert.Contains("3 x 64 x 64 = 12288", e.Message);
        e = Assert.Throws<ArgumentException>(() => net.Forward(new float[2 * 12288], new float[10]));
        Assert.Contains("2 x 10 = 20", e.Message);
        Assert.Throws<ArgumentException>(() => net.Forward(ReadOnlySpan<float>.Empty, new float[10]));
    }

    [Fact]
    public void UnknownKeysAndDevicesAreClearErrors()
    {
        var net = new Tiny18();
        var e = Assert.Throws<System.Collections.Generic.KeyNotFoundException>(() => net.GetTensor("layer9.0.conv1.weight"));
        Assert.Contains("'layer9.0.conv1.weight' is not a state_dict key", e.Message);
        Assert.Equal(Device.Cpu, new Tiny18(Device.Auto).Device);
        var cuda = Assert.Throws<PlatformNotSupportedException>(() => new Tiny18(Device.Cuda));
        Assert.Contains("Device.Cuda", cuda.Message);
    }

    [Fact]
    public void NewNetworksAreInitialisedAsTorchvisionDoes()
    {
        var a = new Tiny50();
        var b = new Tiny50();
        Assert.Equal(a.GetTensor("layer1.0.conv2.weight"), b.GetTensor("layer1.0.conv2.weight")); // deterministic
        var w = a.GetTensor("layer3.0.conv2.weight"); // kaiming normal, fan_out = 32 * 3 * 3
        double std = Math.Sqrt(w.Select(v => (double)v * v).Average());
        Assert.InRange(std, Math.Sqrt(2.0 / 288) * 0.9, Math.Sqrt(2.0 / 288) * 1.1);
        Assert.All(a.GetTensor("bn1.weight"), v => Assert.Equal(1f, v));
        Assert.All(a.GetTensor("bn1.running_var"), v => Assert.Equal(1f, v));
        Assert.All(a.GetTensor("fc.bias"), v => Assert.InRange(v, -1 / 16f, 1 / 16f)); // fan_in 256
        Assert.All(new ZeroInit18().GetTensor("layer2.1.bn2.weight"), v => Assert.Equal(0f, v));
        Assert.All(new ZeroInit18().GetTensor("layer2.1.bn1.weight"), v => Assert.Equal(1f, v));
        Assert.Contains("Total params: 376,722", Tiny50.Summary());
        Assert.Contains("layer4.2.conv3 (Conv2d)", Tiny50.Summary());
    }
}

/// <summary>
/// Allocation is measured with no other test running: a thread that first contends for the shared worker pool
/// allocates the lock's wait event once, which is not the steady state this test is about.
/// </summary>
[CollectionDefinition(nameof(AllocationTests), DisableParallelization = true)]
[Collection(nameof(AllocationTests))]
public class AllocationTests
{
    [Fact]
    public void ForwardAllocatesNothingAfterTheFirstCall()
    {
        foreach (var (net, batch) in new (IResNet, int)[] { (new Tiny50(), 2), (new Basic72x88(), 3), (new ResNet50(), 1) })
        {
            var (c, h, w) = net.InputShape;
            var input = Naive.RandomFloats(new Random(1), batch * c * h * w);
            var logits = new float[batch * net.OutputSize];
            net.Forward(input, logits); // first call: arena and packed weights
            SteadyState.AssertAllocatesNothing($"{net.GetType().Name} forward, batch {batch}", () => net.Forward(input, logits));
        }
    }
}

/// <summary>
/// The batch-1 eval forward's layout plan (<see cref="LayoutPlan"/>): the first batch-1 forward runs in NCHW and is
/// traced; from the second on, the activations that only transposed convolutions and the average pool touch are kept
/// pixel-major. Either way every value is computed by the same operations in the same order.
/// </summary>
[Collection(nameof(AllocationTests))] // it switches the plan off for the process and reads the runtime's clock
public class LayoutPlanTests
{
    private static (float[] Logits, (bool In, bool Out)[] Layouts) Forward(IResNet net, float[] input)
    {
        var logits = new float[net.OutputSize];
        var clock = new NetworkState.ConvClock(256);
        NetworkState.Clock = clock;
        try
        {
            net.Forward(input, logits);
        }
        finally
        {
            NetworkState.Clock = null;
        }
        return (logits, clock.PixelMajor);
    }

    private static float[] InNchw(IResNet net, float[] input)
    {
        LayoutPlan.Off = true;
        try
        {
            var (logits, layouts) = Forward(net, input);
            Assert.DoesNotContain(layouts, l => l.In || l.Out);
            return logits;
        }
        finally
        {
            LayoutPlan.Off = false;
        }
    }

    /// <summary>The network in eval mode, a random image and its logits with every activation in NCHW.</summary>
    private static (float[] Input, float[] Expected) InEvalMode(IResNet net, int seed)
    {
        net.Eval();
        var (c, h, w) = net.InputShape;
        var input = Naive.RandomFloats(new Random(seed), c * h * w);
        return (input, InNchw(net, input));
    }

    [Fact]
    public void ResNet50KeepsTheLayer3AndLayer4TensorsPixelMajorWithTheSameBits()
    {
        var net = new ResNet50();
        var (input, expected) = InEvalMode(net, 5);
        Assert.True(expected.Distinct().Count() > 100, "the logits must tell the images' classes apart");

        var (first, traced) = Forward(net, input); // traced, in NCHW
        Assert.Equal(expected, first);
        Assert.DoesNotContain(traced, l => l.In || l.Out);
        for (int call = 0; call < 2; call++)
        {
            var (logits, layouts) = Forward(net, input);
            Assert.Equal(expected, logits);
            if (!Unrolled.Cpu.Winograd.Pays(1, 256, 14, 14, 256))
            {
                // Without AVX-512 layer3's 3x3 convolutions are transposed too, and more is pixel-major.
                Assert.True(layouts[27].In && layouts[27].Out);
                continue;
            }
            // Worked out by hand from the generated forward (conv indices as in the snapshot): layer3's downsample (24)
            // and its blocks' last convolutions (27, 30, ..., 42) write its trunk, read by the next blocks' first
            // convolutions and residual adds; layer3.0's strided 3x3 (26) feeds its conv3 (27); every convolution of
            // layer4 (43-52) is transposed. layer3's first convolutions (28, 31, ...) feed Winograd (NCHW), conv 25 is
            // a 28x28 one in the normal orientation.
            int[] writes = [24, 26, 27, 30, 33, 36, 39, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52];
            int[] reads = [27, 28, 31, 34, 37, 40, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52];
            Assert.Equal(writes, Enumerable.Range(0, layouts.Length).Where(i => layouts[i].Out));
            Assert.Equal(reads, Enumerable.Range(0, layouts.Length).Where(i => layouts[i].In));
        }
    }

    // A synthetic forward for the planner alone: regions of the arena in floats, (start, length).
    private record Step(int Conv, (long, long) X, (long, long) Y, (long, long) R, bool CanWrite, bool CanRead);

    private static (bool In, bool Out)[] Plan(params Step[] steps)
    {
        var plan = new LayoutPlan(steps.Length);
        for (int pass = 0; pass < 2; pass++)
        {
            plan.Begin();
            Assert.Equal(pass == 1, plan.Ready);
            var layouts = new (bool In, bool Out)[steps.Length];
            foreach (var s in steps)
                layouts[s.Conv] = plan.Conv(s.Conv, s.X.Item1, s.X.Item2, s.Y.Item1, s.Y.Item2, s.R.Item1, s.R.Item2, s.CanWrite, s.CanRead);
            bool pooled = plan.AveragePool(900, 100);
            plan.End();
            if (pass == 1) return layouts;
            Assert.False(pooled);
            Assert.DoesNotContain(layouts, l => l.In || l.Out);
        }
        throw new InvalidOperationException();
    }

    private static readonly (long, long) Input = (-1, 100), None = (-1, 0);

    [Fact]
    public void PlannerKeepsATensorPixelMajorOnlyWhereItsWriterAndEveryReaderTakeIt()
    {
        // 0 writes A; 1 reads A and writes B; 2 reads B, adds A, writes C; 3 reads C and writes the pooled D.
        var layouts = Plan(
            new Step(0, Input, (0, 100), None, true, false),
            new Step(1, (0, 100), (100, 100), None, true, true),
            new Step(2, (100, 100), (200, 100), (0, 100), true, true),
            new Step(3, (200, 100), (900, 100), None, true, true));
        Assert.Equal([(false, true), (true, true), (true, true), (true, true)], layouts);

        // A reader that cannot take pixel-major input (2) keeps its input's writer (1) in NCHW.
        layouts = Plan(
            new Step(0, Input, (0, 100), None, true, false),
            new Step(1, (0, 100), (100, 100), None, true, true),
            new Step(2, (100, 100), (200, 100), (0, 100), true, false),
            new Step(3, (200, 100), (900, 100), None, true, true));
        Assert.Equal([(false, true), (true, false), (false, true), (true, true)], layouts);
    }

    [Fact]
    public void PlannerGivesAResidualTheLayoutOfTheOutputItIsAddedTo()
    {
        // 2 cannot write pixel-major: A, added to its output, stays NCHW; so does 3's output, to which A is added too,
        // and then 4's, to which 3's is added. B (1's output, read by 2) alone is pixel-major.
        var layouts = Plan(
            new Step(0, Input, (0, 100), None, true, false),
            new Step(1, (0, 100), (100, 100), None, true, true),
            new Step(2, (100, 100), (200, 100), (0, 100), false, true),
            new Step(3, (200, 100), (300, 100), (0, 100), true, true),
            new Step(4, (300, 100), (900, 100), (300, 100), true, true));
        Assert.Equal([(false, false), (false, true), (true, false), (false, false), (false, false)], layouts);
    }

    [Fact]
    public void PlannerKeepsARegionReadInPartOrOverwrittenInPartInNchw()
    {
        // 1 reads half of A: A stays NCHW. 2 writes over half of B before 3 reads B's region: 3's input is half of B and
        // half of 2's output, so both stay NCHW.
        var layouts = Plan(
            new Step(0, Input, (0, 100), None, true, true),
            new Step(1, (50, 50), (100, 100), None, true, true),
            new Step(2, Input, (150, 100), None, true, true),
            new Step(3, (100, 100), (900, 100), None, true, true));
        Assert.Equal([(false, false), (false, false), (false, false), (false, true)], layouts);
    }

    [Fact]
    public void PlannedForwardOutOfTheTracedOrderThrows()
    {
        var plan = new LayoutPlan(2);
        plan.Begin();
        plan.Conv(0, -1, 100, 0, 100, -1, 0, true, true);
        plan.Conv(1, 0, 100, 900, 100, -1, 0, true, true);
        plan.AveragePool(900, 100);
        plan.End();
        plan.Begin();
        Assert.True(plan.Ready);
        Assert.Throws<InvalidOperationException>(() => plan.Conv(1, 0, 100, 900, 100, -1, 0, true, true));

        // A trace that never reached the pool (a forward that threw half way) is not planned from.
        var broken = new LayoutPlan(2);
        broken.Begin();
        broken.Conv(0, -1, 100, 0, 100, -1, 0, true, true);
        broken.End();
        broken.Begin();
        Assert.False(broken.Ready);
    }

    [Fact]
    public void BasicBlocksKeepTheSameBitsToo()
    {
        // ResNet-18's layer4 at 7x7: 3x3 convolutions, transposed, read pixel-major input through their packed rows.
        var net = new ResNet18();
        var (input, expected) = InEvalMode(net, 6);
        Forward(net, input);
        var (logits, layouts) = Forward(net, input);
        Assert.Equal(expected, logits);
        Assert.Contains(layouts, l => l.In && l.Out);
        Assert.False(layouts[0].Out, "the stem feeds the max pool, which reads NCHW");
    }
}
