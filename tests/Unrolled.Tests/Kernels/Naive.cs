using System;

namespace Unrolled.Tests.Kernels;

/// <summary>Plain, obviously-correct reference implementations in double, NCHW.</summary>
internal static class Naive
{
    public static double[] Conv(double[] x, double[] weight, int n, int cin, int h, int w, int cout, int k, int stride, int pad, out int oh, out int ow)
    {
        oh = (h + 2 * pad - k) / stride + 1;
        ow = (w + 2 * pad - k) / stride + 1;
        var y = new double[n * cout * oh * ow];
        for (int b = 0; b < n; b++)
        for (int co = 0; co < cout; co++)
        for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++)
        {
            double sum = 0;
            for (int ci = 0; ci < cin; ci++)
            for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
            {
                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                sum += weight[((co * cin + ci) * k + ky) * k + kx] * x[((b * cin + ci) * h + iy) * w + ix];
            }
            y[((b * cout + co) * oh + oy) * ow + ox] = sum;
        }
        return y;
    }

    public static double[] MaxPool(double[] x, int planes, int h, int w, int k, int stride, int pad, out int oh, out int ow)
    {
        oh = (h + 2 * pad - k) / stride + 1;
        ow = (w + 2 * pad - k) / stride + 1;
        var y = new double[planes * oh * ow];
        for (int p = 0; p < planes; p++)
        for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++)
        {
            double best = double.NegativeInfinity;
            for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
            {
                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w) best = Math.Max(best, x[(p * h + iy) * w + ix]);
            }
            y[(p * oh + oy) * ow + ox] = best;
        }
        return y;
    }

    /// <summary>BatchNorm over [n, c, hw]: eval uses the running statistics; train the batch's (biased variance) and updates them.</summary>
    public static void BatchNorm(double[] x, int n, int c, int hw, double[] gamma, double[] beta, double[] mean, double[] variance, bool train)
    {
        for (int ch = 0; ch < c; ch++)
        {
            double m = mean[ch], v = variance[ch];
            if (train)
            {
                double s = 0, sq = 0;
                for (int b = 0; b < n; b++) for (int i = 0; i < hw; i++) s += x[(b * c + ch) * hw + i];
                m = s / (n * hw);
                for (int b = 0; b < n; b++) for (int i = 0; i < hw; i++) sq += Math.Pow(x[(b * c + ch) * hw + i] - m, 2);
                v = sq / (n * hw);
                mean[ch] = 0.9 * mean[ch] + 0.1 * m;
                variance[ch] = 0.9 * variance[ch] + 0.1 * v * (n * hw) / (n * hw - 1);
            }
            for (int b = 0; b < n; b++)
            for (int i = 0; i < hw; i++)
            {
                ref double e = ref x[(b * c + ch) * hw + i];
                e = (e - m) / Math.Sqrt(v + 1e-5) * gamma[ch] + beta[ch];
            }
        }
    }

    public static double[] ToDouble(ReadOnlySpan<float> x)
    {
        var r = new double[x.Length];
        for (int i = 0; i < r.Length; i++) r[i] = x[i];
        return r;
    }

    public static float[] RandomFloats(Random rng, int count, double scale = 1)
    {
        var r = new float[count];
        for (int i = 0; i < count; i++) r[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return r;
    }
}
