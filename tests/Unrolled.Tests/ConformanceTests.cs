using System;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>Eval-mode logits against PyTorch's (float64 truth, ../shared/reference/README.md): max |ours - torch| <= 1e-3 max |torch|, same argmax.</summary>
public class ConformanceTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-3;

    private void Check(IResNet net, string weights, string io, int classes)
    {
        net.LoadWeights(weights);
        net.Eval();
        var reference = Reference.Load(io);
        var input = reference["input"].Data;
        var expected = reference["logits_eval"].Data;
        var logits = new float[expected.Length];
        net.Forward(input, logits);
        double error = Reference.MaxRelative(logits, expected);
        output.WriteLine($"{System.IO.Path.GetFileName(weights)}: max |ours - torch| / max |torch| = {error:E3}");
        Assert.True(error <= Tolerance, $"{weights}: relative error {error:E3} > {Tolerance:E0}");
        Assert.Equal(Reference.ArgMax(expected, classes), Reference.ArgMax(logits, classes));
    }

    [Theory]
    [InlineData("tiny18.pth")]
    [InlineData("tiny18.safetensors")]
    public void Tiny18EvalLogitsMatchPyTorch(string weights) =>
        Check(new Tiny18(), Reference.Fixture(weights), Reference.Fixture("tiny18_io.safetensors"), 10);

    [Theory]
    [InlineData("tiny50.pth")]
    [InlineData("tiny50.safetensors")]
    public void Tiny50EvalLogitsMatchPyTorch(string weights) =>
        Check(new Tiny50(), Reference.Fixture(weights), Reference.Fixture("tiny50_io.safetensors"), 10);

    [Fact]
    public void ResNet50OnTwoPhotosMatchesPyTorch() =>
        Check(new ResNet50(), Reference.SharedOrSkip("resnet50_seed1.pth"), Reference.SharedOrSkip("resnet50_seed1_io.safetensors"), 1000);

    /// <summary>
    /// Each photo alone: batch 1 takes other paths than batch 2 (no folded small maps; the 7x7 and 14x14 maps'
    /// convolutions computed transposed, pixels as the GEMM's rows).
    /// </summary>
    [Fact]
    public void ResNet50AtBatchOneMatchesPyTorch()
    {
        var net = new ResNet50();
        net.LoadWeights(Reference.SharedOrSkip("resnet50_seed1.pth"));
        net.Eval();
        var io = Reference.Load(Reference.SharedOrSkip("resnet50_seed1_io.safetensors"));
        var logits = new float[1000];
        for (int image = 0; image < 2; image++)
        {
            net.Forward(io["input"].Data.AsSpan(image * ResNet50.InputSize, ResNet50.InputSize), logits);
            var expected = io["logits_eval"].Data.AsSpan(image * 1000, 1000).ToArray();
            double error = Reference.MaxRelative(logits, expected);
            output.WriteLine($"resnet50_seed1, image {image} alone: max |ours - torch| / max |torch| = {error:E3}");
            Assert.True(error <= Tolerance, $"image {image}: relative error {error:E3} > {Tolerance:E0}");
            Assert.Equal(Reference.ArgMax(expected, 1000), Reference.ArgMax(logits, 1000));
        }
    }

    /// <summary>From the photo files through our preprocessing to PyTorch's top-1 (the inputs differ by the resampler only).</summary>
    [Fact]
    public void ResNet50FromPhotoFilesGivesPyTorchsTopClass()
    {
        var net = new ResNet50();
        net.LoadWeights(Reference.SharedOrSkip("resnet50_seed1.pth"));
        var io = Reference.Load(Reference.SharedOrSkip("resnet50_seed1_io.safetensors"));
        var input = new float[2 * ResNet50.InputSize];
        Unrolled.Vision.Preprocess.ImageNetEval(Reference.Fixture("chelsea.png")).CopyTo(input, 0);
        Unrolled.Vision.Preprocess.ImageNetEval(Reference.Fixture("coffee.png")).CopyTo(input, ResNet50.InputSize);
        var logits = new float[2000];
        net.Forward(input, logits);
        double error = Reference.MaxRelative(logits, io["logits_eval"].Data);
        output.WriteLine($"resnet50_seed1 from the photo files: max |ours - torch| / max |torch| = {error:E3}");
        Assert.Equal(Reference.ArgMax(io["logits_eval"].Data, 1000), Reference.ArgMax(logits, 1000));
        Assert.True(error <= 5e-3, $"relative error {error:E3}");
    }
}
