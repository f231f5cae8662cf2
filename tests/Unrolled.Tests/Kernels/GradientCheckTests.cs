using System;
using Unrolled.Cpu;

namespace Unrolled.Tests.Kernels;

/// <summary>
/// Finite-difference checks of each backward kernel: L = sum(r * y) for a fixed random r, so dL/dy = r; every
/// analytic gradient is compared with (L(x + e) - L(x - e)) / 2e, the losses summed in double.
/// </summary>
public unsafe class GradientCheckTests
{
    private static double Loss(ReadOnlySpan<float> y, float[] r)
    {
        double sum = 0;
        for (int i = 0; i < y.Length; i++) sum += (double)y[i] * r[i];
        return sum;
    }

    /// <summary>Compares analytic[i] with the central difference of <paramref name="loss"/> in x[i], for every i.</summary>
    private static void Check(float[] x, float[] analytic, Func<double> loss, float eps, double tolerance, string what)
    {
        double scale = 1e-3;
        foreach (float a in analytic) scale = Math.Max(scale, Math.Abs(a));
        for (int i = 0; i < x.Length; i++)
        {
            float saved = x[i];
            x[i] = saved + eps;
            double up = loss();
            x[i] = saved - eps;
            double down = loss();
            x[i] = saved;
            double numeric = (up - down) / (2 * eps);
            Assert.True(Math.Abs(numeric - analytic[i]) <= tolerance * scale,
                $"{what}[{i}]: analytic {analytic[i]:G6}, finite difference {numeric:G6}");
        }
    }

    [Theory]
    [InlineData(2, 3, 7, 6, 5, 3, 1, 1)]
    [InlineData(1, 4, 9, 9, 8, 3, 2, 1)]
    [InlineData(2, 6, 5, 4, 9, 1, 1, 0)]
    [InlineData(1, 5, 8, 8, 4, 1, 2, 0)]
    [InlineData(1, 2, 11, 9, 3, 7, 2, 3)]
    [InlineData(1, 3, 5, 21, 14, 3, 1, 1)] // rows of 21: the vector col2im path and its tail; 27 rows of W^T: both kernels
    [InlineData(2, 4, 5, 35, 3, 3, 1, 1)]  // K = 36, rows of 35: the filter panel's 16-pixel path, its padding and tail
    [InlineData(1, 4, 5, 41, 2, 3, 2, 1)]  // the same at stride 2 (rows of 21 outputs)
    [InlineData(1, 33, 2, 17, 2, 1, 1, 0)] // 1x1: one whole panel of 32 channels and one of 1
    [InlineData(3, 70, 3, 11, 40, 1, 1, 0)] // 1x1, more channels in than out: 40 output channels as one whole panel and a part
    [InlineData(1, 32, 4, 18, 3, 3, 1, 1)] // K = 288: nine whole panels
    [InlineData(2, 64, 3, 16, 13, 3, 1, 1)] // padded rows of 18: the 16-pixel pack and its tail; two whole channel panels, 12 + 1 rows
    [InlineData(3, 40, 6, 3, 9, 3, 1, 1)]  // padded rows of 5 (the scalar pack), a part-filled channel panel
    public void ConvolutionDataAndFilterGradients(int batch, int cin, int h, int w, int cout, int k, int stride, int pad)
    {
        var rng = new Random(cin * 100 + k);
        int oh = (h + 2 * pad - k) / stride + 1, ow = (w + 2 * pad - k) / stride + 1;
        int kk = cin * k * k, hw = oh * ow;
        var x = Naive.RandomFloats(rng, batch * cin * h * w);
        var weight = Naive.RandomFloats(rng, cout * kk);
        var r = Naive.RandomFloats(rng, batch * cout * hw);
        var y = new float[r.Length];
        double Forward()
        {
            Conv.Forward(x, y, default, weight, default, default, batch, cin, h, w, cout, oh, ow, k, stride, pad, relu: false);
            return Loss(y, r);
        }

        var dw = new float[weight.Length];
        var dx = new float[x.Length];
        var cols = new float[Backward.FilterPanelFloats(hw, kk)]; // the filter gradient's column panels (K padded), then the data gradient's columns
        fixed (float* px = x, pr = r, pdw = dw, pdx = dx, pw = weight, pc = cols)
        {
            for (int n = 0; n < batch; n++)
            {
                Backward.ConvFilter(px + n * cin * h * w, pr + n * cout * hw, pdw, pc, cin, h, w, cout, oh, ow, k, stride, pad);
                Backward.ConvData(pr + n * cout * hw, pw, pdx + n * cin * h * w, pc, cin, h, w, cout, oh, ow, k, stride, pad);
            }
        }
        Check(weight, dw, Forward, 0.25f, 1e-4, "dW");
        Check(x, dx, Forward, 0.25f, 1e-4, "dx");

        // The same with the batch folded into one GEMM (what small maps use).
        var dwFolded = new float[weight.Length];
        var dxFolded = new float[x.Length];
        var colsFolded = new float[Backward.FilterPanelFloats(batch * hw, kk)];
        var rows = new float[cout * batch * hw];
        fixed (float* px = x, pr = r, pdw = dwFolded, pdx = dxFolded, pw = weight, pc = colsFolded, prow = rows)
        {
            Backward.ConvFilterFolded(px, pr, pdw, pc, prow, batch, cin, h, w, cout, oh, ow, k, stride, pad);
            Backward.ConvDataFolded(pr, pw, pdx, pc, prow, batch, cin, h, w, cout, oh, ow, k, stride, pad);
        }
        Check(weight, dwFolded, Forward, 0.25f, 1e-4, "dW (batch folded)");
        Check(x, dxFolded, Forward, 0.25f, 1e-4, "dx (batch folded)");

        // 1x1 with more input than output channels: the filter gradient as its transpose (gz packed, x in place).
        if (Backward.PointwiseApplies(k, stride, pad, cin, cout))
        {
            var dwPointwise = new float[weight.Length];
            var scratch = new float[Backward.PointwiseFloats(cin, hw, cout)];
            scratch.AsSpan().Fill(float.NaN);
            fixed (float* px = x, pr = r, pdw = dwPointwise, ps = scratch)
                Backward.ConvFilterPointwise(px, pr, pdw, ps, batch, cin, hw, cout);
            Check(weight, dwPointwise, Forward, 0.25f, 1e-4, "dW (transposed)");
            for (int i = 0; i < dw.Length; i++)
                Assert.True(Math.Abs(dwPointwise[i] - dw[i]) <= 1e-4f * (1 + Math.Abs(dw[i])), $"dW (transposed)[{i}]: {dwPointwise[i]} against {dw[i]} per image");
        }

        // 3x3 stride 1 padding 1: the filter gradient over padded planes, nine shifted GEMMs (what larger maps use).
        if (Backward.PlanesApply(k, stride, pad))
        {
            var dwPlanes = new float[weight.Length];
            var scratch = new float[Backward.PlanesFloats(cin, h, w, cout)];
            // NaN where nothing may read: the scratch's stale contents must not leak into the gradient.
            scratch.AsSpan().Fill(float.NaN);
            fixed (float* px = x, pr = r, pdw = dwPlanes, ps = scratch)
                Backward.ConvFilterPlanes(px, pr, pdw, ps, batch, cin, h, w, cout);
            Check(weight, dwPlanes, Forward, 0.25f, 1e-4, "dW (padded planes)");
            for (int i = 0; i < dw.Length; i++)
                Assert.True(Math.Abs(dwPlanes[i] - dw[i]) <= 1e-4f * (1 + Math.Abs(dw[i])), $"dW (padded planes)[{i}]: {dwPlanes[i]} against {dw[i]} per image");
        }
    }

    [Theory]
    [InlineData(true, false, true, 5)]
    [InlineData(true, true, false, 5)]
    [InlineData(false, true, true, 5)]
    [InlineData(true, true, true, 37)]  // vectors and a scalar tail
    [InlineData(true, false, true, 300)] // partial sums over more than one run of 256 (no ReLU: with 3,600 values some sit within the finite difference of its kink)
    [InlineData(true, true, true, 3, 19)] // maps under 16 pixels go 16 channels per item: one full group and one of 3 (a vector and a tail)
    [InlineData(false, false, true, 1, 17)]
    [InlineData(true, true, true, 16, 18)] // a 4x4 map: the per-channel kernel, one vector per image
    public void BatchNormGradientsWithResidualAndRelu(bool batchStatistics, bool relu, bool withResidual, int hw, int channels = 4)
    {
        // Fewer planes for the long ones: the finite differences of a float forward get noisier with every value.
        int n = hw > 100 ? 1 : 3, c = hw > 100 ? 2 : channels;
        var rng = new Random(relu ? 1 : 2);
        var z = Naive.RandomFloats(rng, n * c * hw, 2);
        var residual = withResidual ? Naive.RandomFloats(rng, z.Length) : Array.Empty<float>();
        var bn = Naive.RandomFloats(rng, 4 * c);
        for (int i = 3 * c; i < 4 * c; i++) bn[i] = 0.5f + Math.Abs(bn[i]);
        var r = Naive.RandomFloats(rng, z.Length);
        var a = new float[z.Length];
        var mean = new float[c];
        var invStd = new float[c];
        double Forward()
        {
            var stats = (float[])bn.Clone(); // running statistics are updated by the forward; keep the originals
            Unrolled.Cpu.Kernels.BatchNormForward(z, a, residual, stats, mean, invStd, n, c, hw, relu, batchStatistics);
            return Loss(a, r);
        }

        Forward();
        var g = (float[])r.Clone();
        var gResidual = new float[z.Length];
        var dParams = new float[2 * c];
        var sums = new double[2 * c + 1];
        fixed (float* pz = z, pa = a, pg = g, pgr = gResidual, pbn = bn, pm = mean, pi = invStd, pd = dParams)
        fixed (double* ps = sums)
            Backward.BatchNorm(pz, pa, pg, withResidual ? pgr : null, pbn, pm, pi, pd, pd + c, n, c, hw, relu, batchStatistics, ps);

        Check(z, g, Forward, 1e-3f, 2e-3, "dz");
        var gamma = bn.AsSpan(0, 2 * c).ToArray();
        Check(gamma, dParams, () => { gamma.CopyTo(bn, 0); return Forward(); }, 1e-3f, 2e-3, "dgamma/dbeta");
        if (withResidual) Check(residual, gResidual, Forward, 1e-3f, 2e-3, "dresidual");
    }

    [Fact]
    public void MaxPoolAveragePoolLinearAndLossGradients()
    {
        var rng = new Random(9);
        // Max-pool: random values have no ties.
        const int planes = 3, h = 7, w = 6;
        var x = Naive.RandomFloats(rng, planes * h * w);
        int oh = (h + 2 - 3) / 2 + 1, ow = (w + 2 - 3) / 2 + 1;
        var r = Naive.RandomFloats(rng, planes * oh * ow);
        var y = new float[r.Length];
        double Pool()
        {
            Unrolled.Cpu.Kernels.MaxPool(x, y, planes, h, w, oh, ow, 3, 2, 1);
            return Loss(y, r);
        }
        var dx = new float[x.Length];
        fixed (float* px = x, pr = r, pdx = dx) Backward.MaxPool(px, pr, pdx, planes, h, w, oh, ow, 3, 2, 1);
        Check(x, dx, Pool, 1e-3f, 1e-3, "maxpool dx");

        // Average pool.
        var ra = Naive.RandomFloats(rng, planes);
        var ya = new float[planes];
        var dxa = new float[x.Length];
        Backward.GlobalAveragePool(ra, dxa, planes, h * w);
        Check(x, dxa, () => { Unrolled.Cpu.Kernels.GlobalAveragePool(x, ya, planes, h * w); return Loss(ya, ra); }, 0.1f, 1e-4, "avgpool dx");

        // Linear.
        const int batch = 2, inputs = 5, outputs = 4;
        var xl = Naive.RandomFloats(rng, batch * inputs);
        var wl = Naive.RandomFloats(rng, outputs * inputs);
        var bl = Naive.RandomFloats(rng, outputs);
        var rl = Naive.RandomFloats(rng, batch * outputs);
        var yl = new float[rl.Length];
        double Lin()
        {
            Unrolled.Cpu.Kernels.Linear(xl, yl, wl, bl, batch, inputs, outputs);
            return Loss(yl, rl);
        }
        var dW = new float[wl.Length];
        var dB = new float[bl.Length];
        var dX = new float[xl.Length];
        Backward.Linear(xl, rl, wl, dW, dB, dX, batch, inputs, outputs);
        Check(wl, dW, Lin, 0.1f, 1e-4, "linear dW");
        Check(bl, dB, Lin, 0.1f, 1e-4, "linear db");
        Check(xl, dX, Lin, 0.1f, 1e-4, "linear dx");

        // Cross-entropy.
        var logits = Naive.RandomFloats(rng, 3 * 5, 3);
        var labels = new[] { 4, 0, 2 };
        var gl = new float[logits.Length];
        Backward.CrossEntropy(logits, labels, gl, 3, 5);
        var scratch = new float[logits.Length];
        Check(logits, gl, () => Backward.CrossEntropy(logits, labels, scratch, 3, 5), 1e-2f, 2e-3, "cross-entropy");
    }
}
