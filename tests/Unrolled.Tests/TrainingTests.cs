using System;
using System.Collections.Generic;
using System.Linq;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>
/// Training against PyTorch's float64 truth (../shared/reference/README.md), with its tolerances:
/// logits and loss within 1e-3 relative; each gradient within max(2e-3, 5 x fp32err) relative L2.
/// </summary>
public class TrainingTests(ITestOutputHelper output)
{
    internal static double RelativeL2(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            diff += Math.Pow((double)actual[i] - expected[i], 2);
            norm += Math.Pow(expected[i], 2);
        }
        return Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 1e-30);
    }

    internal static IResNet Load(string name)
    {
        IResNet net = name == "tiny18" ? new Tiny18() : new Tiny50();
        net.LoadWeights(Reference.Fixture(name + ".safetensors"));
        return net;
    }

    internal static int[] Labels(Dictionary<string, (float[] Data, long[] Shape)> io) => io["target"].Data.Select(v => (int)v).ToArray();

    [Theory]
    [InlineData("tiny18")]
    [InlineData("tiny50")]
    public void LossLogitsAndEveryGradientMatchPyTorch(string name)
    {
        var net = Load(name);
        var io = Reference.Load(Reference.Fixture(name + "_io.safetensors"));
        net.Train();
        var logits = new float[20];
        float loss = net.ForwardBackward(io["input"].Data, Labels(io), logits);

        double logitError = Reference.MaxRelative(logits, io["logits_train"].Data);
        double lossError = Math.Abs(loss - io["loss"].Data[0]) / Math.Abs(io["loss"].Data[0]);
        output.WriteLine($"{name}: logits {logitError:E2}, loss {lossError:E2} ({loss} vs {io["loss"].Data[0]})");
        Assert.True(logitError <= 1e-3);
        Assert.True(lossError <= 1e-3);

        int checkedCount = 0;
        double worstRatio = 0;
        string worst = "";
        foreach (string key in net.StateKeys)
        {
            if (!io.TryGetValue("grad." + key, out var expected)) continue;
            double error = RelativeL2(net.GetGradient(key), expected.Data);
            double fp32 = io["fp32err.grad." + key].Data[0];
            double tolerance = Math.Max(2e-3, 5 * fp32);
            Assert.True(error <= tolerance, $"{name} grad {key}: relative L2 {error:E3} > {tolerance:E3} (PyTorch fp32: {fp32:E2})");
            if (error / tolerance > worstRatio) (worstRatio, worst) = (error / tolerance, $"{key} {error:E2} (tolerance {tolerance:E2}, PyTorch fp32 {fp32:E2})");
            checkedCount++;
        }
        output.WriteLine($"{name}: {checkedCount} gradients checked; closest to its tolerance: {worst}");
        Assert.Equal(net.StateKeys.Count(k => !k.Contains("running") && !k.Contains("num_batches")), checkedCount);
    }
}
