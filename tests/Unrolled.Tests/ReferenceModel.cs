using System;
using System.Linq;
using Unrolled.Tests.Kernels;

namespace Unrolled.Tests;

/// <summary>
/// An independent ResNet forward in double, written from torchvision's resnet.py over a network's state_dict
/// (read with GetTensor): shares no code with the generator or the kernels.
/// </summary>
internal sealed class ReferenceModel(IResNet net, int depth)
{
    private double[] T(string key) => Naive.ToDouble(net.GetTensor(key));

    private double[] ConvBn(double[] x, int n, ref int c, ref int h, ref int w, string conv, string bn, int stride, bool train)
    {
        var shape = net.GetShape(conv + ".weight");
        int cout = shape[0], k = shape[2];
        var y = Naive.Conv(x, T(conv + ".weight"), n, c, h, w, cout, k, stride, k / 2, out int oh, out int ow);
        Naive.BatchNorm(y, n, cout, oh * ow, T(bn + ".weight"), T(bn + ".bias"), T(bn + ".running_mean"), T(bn + ".running_var"), train);
        (c, h, w) = (cout, oh, ow);
        return y;
    }

    private static double[] Relu(double[] x) => x.Select(v => Math.Max(0, v)).ToArray();

    public double[] Forward(float[] input, bool train)
    {
        var (channels, height, width) = net.InputShape;
        int n = input.Length / (channels * height * width);
        int c = channels, h = height, w = width;
        var x = Relu(ConvBn(Naive.ToDouble(input), n, ref c, ref h, ref w, "conv1", "bn1", 2, train));
        x = Naive.MaxPool(x, n * c, h, w, 3, 2, 1, out h, out w);
        bool bottleneck = depth >= 50;
        int[] blocks = depth switch { 18 => new[] { 2, 2, 2, 2 }, 34 or 50 => new[] { 3, 4, 6, 3 }, 101 => new[] { 3, 4, 23, 3 }, _ => new[] { 3, 8, 36, 3 } };
        for (int s = 0; s < 4; s++)
        for (int b = 0; b < blocks[s]; b++)
        {
            string p = $"layer{s + 1}.{b}.";
            int stride = s > 0 && b == 0 ? 2 : 1;
            int c1 = c, h1 = h, w1 = w;
            double[] y;
            if (bottleneck)
            {
                y = Relu(ConvBn(x, n, ref c1, ref h1, ref w1, p + "conv1", p + "bn1", 1, train));
                y = Relu(ConvBn(y, n, ref c1, ref h1, ref w1, p + "conv2", p + "bn2", stride, train));
                y = ConvBn(y, n, ref c1, ref h1, ref w1, p + "conv3", p + "bn3", 1, train);
            }
            else
            {
                y = Relu(ConvBn(x, n, ref c1, ref h1, ref w1, p + "conv1", p + "bn1", stride, train));
                y = ConvBn(y, n, ref c1, ref h1, ref w1, p + "conv2", p + "bn2", 1, train);
            }
            var identity = x;
            if (net.StateKeys.Contains(p + "downsample.0.weight"))
            {
                int c2 = c, h2 = h, w2 = w;
                identity = ConvBn(x, n, ref c2, ref h2, ref w2, p + "downsample.0", p + "downsample.1", stride, train);
            }
            x = Relu(y.Zip(identity, (a, i) => a + i).ToArray());
            (c, h, w) = (c1, h1, w1);
        }

        var fcW = T("fc.weight");
        var fcB = T("fc.bias");
        int classes = fcB.Length;
        var logits = new double[n * classes];
        for (int b = 0; b < n; b++)
        for (int o = 0; o < classes; o++)
        {
            double sum = fcB[o];
            for (int i = 0; i < c; i++)
            {
                double pooled = 0;
                for (int j = 0; j < h * w; j++) pooled += x[(b * c + i) * h * w + j];
                sum += fcW[o * c + i] * pooled / (h * w);
            }
            logits[b * classes + o] = sum;
        }
        return logits;
    }
}
