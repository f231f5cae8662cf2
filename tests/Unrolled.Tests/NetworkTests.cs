using System;
using System.IO;
using System.Linq;
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
