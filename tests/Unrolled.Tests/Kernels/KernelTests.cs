using System;
using System.Threading;
using Unrolled.Cpu;

namespace Unrolled.Tests.Kernels;

/// <summary>Each CPU kernel against <see cref="Naive"/> over many shapes, odd ones included.</summary>
public class KernelTests
{
    private static void AssertClose(double[] expected, ReadOnlySpan<float> actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double scale = 1;
        foreach (double e in expected) scale = Math.Max(scale, Math.Abs(e));
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance * scale, $"{what}: element {i}: expected {expected[i]}, got {actual[i]}");
    }

    /// <summary>The reference convolution's output [n, cout, hw] with the fused epilogue: y * scale + bias + residual, then ReLU.</summary>
    private static double[] WithEpilogue(double[] conv, int hw, int cout, float[]? scale, float[]? bias, float[]? residual, bool relu)
    {
        var want = (double[])conv.Clone();
        for (int i = 0; i < want.Length; i++)
        {
            if (scale is not null) want[i] *= scale[i / hw % cout];
            if (bias is not null) want[i] += bias[i / hw % cout];
            if (residual is not null) want[i] += residual[i];
            if (relu) want[i] = Math.Max(0, want[i]);
        }
        return want;
    }

    public static TheoryData<int, int, int, int, int, int, int, int> ConvShapes => new()
    {
        // batch, cin, h, w, cout, kernel, stride, pad
        { 1, 3, 17, 23, 8, 7, 2, 3 },
        { 2, 3, 32, 32, 16, 7, 2, 3 },
        { 1, 3, 40, 37, 10, 7, 2, 3 },  // the stem's split into even and odd columns: an odd width, rows of 16 by vectors and 2 after
        { 2, 4, 21, 26, 6, 5, 2, 2 },   // the same for a 5x5 kernel, batch 2 folded (11 x 13 outputs per image)
        { 2, 3, 40, 37, 8, 7, 2, 3 },   // the stem's split at batch 2, not folded: one row panel, both images' items in one job
        { 1, 16, 14, 14, 32, 1, 1, 0 },
        { 3, 5, 9, 7, 13, 1, 1, 0 },
        { 2, 16, 15, 15, 24, 1, 2, 0 },
        { 1, 16, 45, 67, 24, 1, 2, 0 }, // 1x1 stride 2 over a 23 x 34 output: the input subsampled first, rows of 16 by vectors and 2 after
        { 2, 8, 40, 36, 12, 1, 2, 0 },  // the same at batch 2 with 360 output pixels per image (not folded)
        { 1, 8, 11, 13, 8, 3, 1, 1 },
        { 2, 7, 10, 9, 3, 3, 2, 1 },
        { 1, 4, 5, 5, 9, 5, 1, 2 },
        { 1, 2, 6, 4, 1, 3, 3, 0 },
        { 2, 33, 7, 7, 65, 3, 1, 1 },
        { 1, 64, 3, 3, 40, 3, 1, 1 },
        { 1, 1, 1, 1, 1, 1, 1, 0 },
        { 4, 6, 2, 3, 17, 3, 1, 1 },
        { 1, 9, 6, 6, 23, 3, 1, 1 }, // 12 + 8 + 3 rows: both kernels and a part-filled remainder panel
        { 2, 4, 9, 75, 20, 3, 2, 1 }, // rows of 75 at stride 2: the AVX-512 even-element gather and its scalar ends
        { 2, 40, 20, 16, 30, 1, 1, 0 }, // 1x1 over 320 pixels per image (not folded): ten whole column panels each, read in place
        { 2, 24, 9, 30, 20, 1, 1, 0 },  // 1x1 over 270 pixels: eight panels read in place and a ninth of 14 columns packed
        { 6, 8, 3, 3, 12, 1, 1, 0 }, // 1x1 folded over maps of 9 pixels: a column panel takes runs from four images
        { 3, 24, 7, 7, 20, 1, 1, 0 },  // 1x1 folded over maps of 49 pixels (panels across image boundaries), residual through the scatter
        { 8, 16, 14, 14, 40, 1, 1, 0 }, // 1x1 folded over 8 maps of 196 pixels: 49 panels exactly
        { 2, 8, 8, 8, 12, 1, 1, 0 },    // 1x1 folded over maps of 64 pixels: two panels per image
        { 40, 3, 1, 1, 5, 1, 1, 0 }, // 1x1 folded over single pixels: one run per image, the second panel part-filled
        { 34, 21, 1, 1, 14, 3, 1, 1 }, // a map of one pixel: only the centre tap meets it (a 1x1 convolution of those weights)
        { 1, 5, 1, 1, 30, 3, 2, 1 },   // the same, one image, stride 2
        { 3, 4, 1, 1, 6, 5, 1, 2 },    // a 5x5 kernel's centre tap
        { 1, 64, 14, 14, 20, 3, 1, 1 }, // K = 576: seven column panels in blocks of three, the last block one part-filled panel
        { 1, 16, 40, 40, 12, 3, 1, 1 }, // one row panel: each item gathers its own block (50 panels in blocks of 13 and 11)
        { 1, 24, 7, 7, 70, 1, 1, 0 },   // 49 pixels: transposed, read in place, rows 3 x 12 + 2 x 8, a part-filled channel panel
        { 1, 20, 14, 14, 40, 3, 2, 1 }, // 14x14 -> 7x7 at stride 2: transposed, the pixel rows gathered
        { 1, 16, 14, 14, 33, 3, 1, 1 }, // 196 pixels: transposed, 15 x 12 + 2 x 8 rows
        { 1, 256, 30, 30, 48, 1, 1, 0 }, // read in place in blocks of 8 panels, two row chunks: the last one's tiles prefetch the next block
        { 2, 256, 20, 20, 96, 1, 1, 0 }, // the same for both images in one job (four row chunks), the next block ending in a part-filled panel
        { 1, 600, 7, 7, 256, 1, 1, 0 },  // transposed, one weight panel per item: tiles prefetch the next item's panel
    };

    [Theory]
    [MemberData(nameof(ConvShapes))]
    public void ConvMatchesReferenceWithEveryEpilogue(int batch, int cin, int h, int w, int cout, int k, int stride, int pad)
    {
        var rng = new Random(batch * 1000 + cin * 31 + h * 7 + cout);
        var x = Naive.RandomFloats(rng, batch * cin * h * w);
        var weight = Naive.RandomFloats(rng, cout * cin * k * k, 1.0 / Math.Sqrt(cin * k * k));
        var bias = Naive.RandomFloats(rng, cout);
        var expected = Naive.Conv(Naive.ToDouble(x), Naive.ToDouble(weight), batch, cin, h, w, cout, k, stride, pad, out int oh, out int ow);
        var scale = Naive.RandomFloats(rng, cout);
        var residual = Naive.RandomFloats(rng, expected.Length);

        foreach (var (useScale, useBias, useResidual, relu) in new[]
                 { (false, false, false, false), (true, true, false, true), (false, true, true, true), (true, false, true, false) })
        {
            var y = new float[expected.Length];
            y.AsSpan().Fill(float.NaN); // every element must be written
            Conv.Forward(x, y, useResidual ? residual : default, weight, useScale ? scale : default, useBias ? bias : default,
                batch, cin, h, w, cout, oh, ow, k, stride, pad, relu);
            var want = WithEpilogue(expected, oh * ow, cout, useScale ? scale : null, useBias ? bias : null, useResidual ? residual : null, relu);
            AssertClose(want, y, 1e-5, $"conv scale={useScale} bias={useBias} residual={useResidual} relu={relu}");

            // The same from packed weights (eval mode's): the same arithmetic, so the same bits.
            var packed = new float[Gemm.PackedRows(cout) * cin * k * k];
            Gemm.PackA(weight, cout, cin * k * k, packed);
            var yPacked = new float[expected.Length];
            Conv.Forward(x, yPacked, useResidual ? residual : default, packed, useScale ? scale : default, useBias ? bias : default,
                batch, cin, h, w, cout, oh, ow, k, stride, pad, relu, packedWeights: true);
            Assert.Equal(y, yPacked);

            // The first image transposed (pixels as the GEMM's rows): the same sums, so the same bits.
            var panels = new float[Gemm.TransposedBFloats(cout, cin * k * k)];
            Gemm.PackTransposedB(weight, cout, cin * k * k, panels);
            int inImage = cin * h * w, outImage = cout * oh * ow;
            var yT = new float[outImage];
            yT.AsSpan().Fill(float.NaN);
            Conv.ForwardTransposed(x.AsSpan(0, inImage), yT, useResidual ? residual.AsSpan(0, outImage) : default, panels,
                useScale ? scale : default, useBias ? bias : default, cin, h, w, cout, oh, ow, k, stride, pad, relu);
            Assert.Equal(y.AsSpan(0, outImage).ToArray(), yT);

            // The same with a pixel-major input, output and residual ([pixel][channel], as a batch-1 forward's layout
            // plan keeps them): the same sums, read and stored in the other layout, so the same bits.
            var xPixels = PixelMajor(x.AsSpan(0, inImage), cin, h * w);
            var residualPixels = PixelMajor(residual.AsSpan(0, outImage), cout, oh * ow);
            foreach (var (pixelsIn, pixelsOut) in new[] { (true, false), (false, true), (true, true) })
            {
                var yP = new float[outImage];
                yP.AsSpan().Fill(float.NaN);
                ReadOnlySpan<float> input = pixelsIn ? xPixels : x.AsSpan(0, inImage);
                ReadOnlySpan<float> added = !useResidual ? default : pixelsOut ? residualPixels : residual.AsSpan(0, outImage);
                Conv.ForwardTransposed(input, yP, added, panels, useScale ? scale : default, useBias ? bias : default,
                    cin, h, w, cout, oh, ow, k, stride, pad, relu, pixelsIn, pixelsOut);
                Assert.Equal(yT, pixelsOut ? Planes(yP, cout, oh * ow) : yP);
            }
        }
    }

    /// <summary>One image [c, hw] as pixel-major [hw, c].</summary>
    private static float[] PixelMajor(ReadOnlySpan<float> planes, int channels, int hw)
    {
        var pixels = new float[channels * hw];
        for (int c = 0; c < channels; c++)
            for (int p = 0; p < hw; p++) pixels[p * channels + c] = planes[c * hw + p];
        return pixels;
    }

    /// <summary>One pixel-major image [hw, c] as [c, hw].</summary>
    private static float[] Planes(ReadOnlySpan<float> pixels, int channels, int hw)
    {
        var planes = new float[channels * hw];
        for (int c = 0; c < channels; c++)
            for (int p = 0; p < hw; p++) planes[c * hw + p] = pixels[p * channels + c];
        return planes;
    }

    [Theory]
    [InlineData(2048, 49)] // ResNet-50's last map
    [InlineData(40, 7)]    // fewer pixels than a vector; a part-filled block of channels
    [InlineData(24, 1100)] // more than one run of 64 vectors per plane, and pixels past the last whole vector
    public void AveragePoolOfPixelMajorMatchesThePlanesBitForBit(int channels, int hw)
    {
        var x = Naive.RandomFloats(new Random(channels + hw), channels * hw);
        var expected = new float[channels];
        Unrolled.Cpu.Kernels.GlobalAveragePool(x, expected, channels, hw);
        var mean = new double[channels];
        for (int i = 0; i < x.Length; i++) mean[i / hw] += x[i] / (double)hw;
        AssertClose(mean, expected, 1e-6, "average pool");
        var actual = new float[channels];
        Unrolled.Cpu.Kernels.GlobalAveragePoolPixels(PixelMajor(x, channels, hw), actual, channels, hw);
        Assert.Equal(expected, actual);
    }

    [Theory]
    [InlineData(1, 8, 11, 13, 8)]   // odd height and width: the last tiles are cut
    [InlineData(2, 33, 7, 7, 65)]   // both GEMM kernels, several tiles in the last panel
    [InlineData(1, 64, 56, 56, 64)] // a ResNet-50 layer1 shape: 784 tiles
    [InlineData(4, 6, 2, 3, 17)]
    [InlineData(1, 3, 1, 1, 5)]     // one pixel: one tile, mostly padding
    [InlineData(3, 20, 9, 38, 13)]  // F(4x4, 3x3): a row of tiles longer than 16 lanes, cut at both edges
    [InlineData(2, 128, 28, 28, 24)] // a ResNet-50 layer2 shape with many input channels
    [InlineData(1, 5, 6, 70, 7)]    // tile rows of 18 (F(4x4, 3x3)) and 35 tiles: a run fills a vector of 16 and goes on
    public void WinogradMatchesReferenceWithEveryEpilogue(int batch, int cin, int h, int w, int cout)
    {
        foreach (var tiles in new[] { Winograd.Tiles.F2, Winograd.Tiles.F4 }) WinogradMatchesReference(batch, cin, h, w, cout, tiles);
    }

    private static void WinogradMatchesReference(int batch, int cin, int h, int w, int cout, Winograd.Tiles tiles)
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
        {
            Assert.False(Winograd.Enabled); // its transforms are AVX-512 code: without it every convolution is direct
            return;
        }
        var rng = new Random(batch * 1000 + cin * 31 + h * 7 + cout);
        var x = Naive.RandomFloats(rng, batch * cin * h * w);
        var weight = Naive.RandomFloats(rng, cout * cin * 9, 1.0 / Math.Sqrt(cin * 9));
        var bias = Naive.RandomFloats(rng, cout);
        var scale = Naive.RandomFloats(rng, cout);
        var expected = Naive.Conv(Naive.ToDouble(x), Naive.ToDouble(weight), batch, cin, h, w, cout, 3, 1, 1, out int oh, out int ow);
        var residual = Naive.RandomFloats(rng, expected.Length);
        var u = new float[Winograd.TransformedSize(cout, cin, tiles)];
        Winograd.TransformWeights(weight, u, cout, cin, tiles);

        foreach (var (useScale, useBias, useResidual, relu) in new[]
                 { (false, false, false, false), (true, true, false, true), (false, true, true, true), (true, false, true, false) })
        {
            var y = new float[expected.Length];
            y.AsSpan().Fill(float.NaN); // every element must be written
            Winograd.Forward(x, y, useResidual ? residual : default, u, useScale ? scale : default, useBias ? bias : default,
                batch, cin, h, w, cout, relu, tiles);
            var want = WithEpilogue(expected, oh * ow, cout, useScale ? scale : null, useBias ? bias : null, useResidual ? residual : null, relu);
            AssertClose(want, y, 1e-5, $"winograd {tiles} scale={useScale} bias={useBias} residual={useResidual} relu={relu}");
        }
    }

    [Theory]
    [InlineData(3, 112, 112, 3, 2, 1)]
    [InlineData(5, 7, 9, 3, 2, 1)]
    [InlineData(2, 1, 1, 3, 2, 1)]
    [InlineData(4, 6, 5, 2, 2, 0)]
    [InlineData(2, 35, 69, 3, 2, 1)] // the AVX-512 path's rows end at odd and even widths, with scalar outputs after them
    [InlineData(2, 9, 66, 3, 2, 1)]
    [InlineData(1, 4, 34, 3, 2, 1)]
    [InlineData(2, 8, 34, 3, 2, 1)]  // 17 outputs: one vector of 16, nothing left over
    [InlineData(2, 8, 33, 3, 2, 1)]  // 17 outputs too, but the vector would read a column past the row: scalar
    [InlineData(2, 6, 40, 3, 2, 1)]  // 20 outputs: a vector, then the last 16 overlapping it
    [InlineData(1, 5, 32, 3, 2, 1)]  // 16 outputs: the first 16 read past the row's end, all scalar
    public void MaxPoolMatchesReference(int planes, int h, int w, int k, int stride, int pad)
    {
        var x = Naive.RandomFloats(new Random(h * w), planes * h * w);
        var expected = Naive.MaxPool(Naive.ToDouble(x), planes, h, w, k, stride, pad, out int oh, out int ow);
        var y = new float[expected.Length];
        Unrolled.Cpu.Kernels.MaxPool(x, y, planes, h, w, oh, ow, k, stride, pad);
        AssertClose(expected, y, 0, "maxpool");
    }

    [Fact]
    public void MaxPoolPropagatesNaNAsPyTorchDoes()
    {
        const int planes = 2, h = 20, w = 112;
        var x = Naive.RandomFloats(new Random(7), planes * h * w);
        foreach (int at in new[] { 0, 5 * w + 40, 11 * w + 77, h * w + 3 * w + 111, h * w + 19 * w + 64 }) x[at] = float.NaN;
        var expected = Naive.MaxPool(Naive.ToDouble(x), planes, h, w, 3, 2, 1, out int oh, out int ow);
        var y = new float[expected.Length];
        Unrolled.Cpu.Kernels.MaxPool(x, y, planes, h, w, oh, ow, 3, 2, 1);
        int nans = 0;
        for (int i = 0; i < y.Length; i++)
        {
            if (double.IsNaN(expected[i])) nans++;
            Assert.True(double.IsNaN(expected[i]) ? float.IsNaN(y[i]) : y[i] == expected[i], $"maxpool with NaNs: element {i}: expected {expected[i]}, got {y[i]}");
        }
        Assert.True(nans >= 5, $"the NaNs reached {nans} outputs");
    }

    [Theory]
    [InlineData(2, 8, 49, false)]
    [InlineData(3, 13, 5, true)]
    [InlineData(1, 4, 2, true)]
    [InlineData(16, 3, 1, false)]
    [InlineData(4, 37, 4, true)]   // maps under 16 pixels: 16 channels per item, three groups, the last of 5
    [InlineData(2, 20, 15, false)] // runs of 240 and 60 floats per image
    [InlineData(32, 40, 1, true)]
    [InlineData(3, 18, 49, true)]  // a 7x7 map (layer4 at 224x224)
    [InlineData(2, 16, 16, false)] // the smallest map of the per-channel kernel
    public void TrainModeBatchNormMatchesReferenceAndUpdatesRunningStatistics(int n, int c, int hw, bool relu)
    {
        var rng = new Random(n * c + hw);
        var x = Naive.RandomFloats(rng, n * c * hw, 3);
        for (int i = 0; i < x.Length; i++) x[i] += 5; // a large mean: the variance must not cancel
        var residual = Naive.RandomFloats(rng, x.Length);
        var bn = Naive.RandomFloats(rng, 4 * c);
        for (int i = 3 * c; i < 4 * c; i++) bn[i] = Math.Abs(bn[i]) + 0.5f;

        var expected = Naive.ToDouble(x);
        double[] gamma = Naive.ToDouble(bn.AsSpan(0, c)), beta = Naive.ToDouble(bn.AsSpan(c, c));
        double[] mean = Naive.ToDouble(bn.AsSpan(2 * c, c)), variance = Naive.ToDouble(bn.AsSpan(3 * c, c));
        Naive.BatchNorm(expected, n, c, hw, gamma, beta, mean, variance, train: true);
        for (int i = 0; i < expected.Length; i++)
        {
            expected[i] += residual[i];
            if (relu) expected[i] = Math.Max(0, expected[i]);
        }

        var y = new float[x.Length];
        var usedMean = new float[c];
        var usedInvStd = new float[c];
        Unrolled.Cpu.Kernels.BatchNormForward(x, y, residual, bn, usedMean, usedInvStd, n, c, hw, relu, batchStatistics: true);
        AssertClose(expected, y, 1e-5, "batchnorm output");
        AssertClose(mean, bn.AsSpan(2 * c, c), 1e-6, "running_mean");
        AssertClose(variance, bn.AsSpan(3 * c, c), 1e-6, "running_var");
    }

    [Theory]
    [InlineData(1, 2048, 1000)]
    [InlineData(3, 37, 5)]
    public void LinearAndAveragePoolMatchReference(int batch, int inputs, int outputs)
    {
        var rng = new Random(inputs);
        var x = Naive.RandomFloats(rng, batch * inputs * 9);
        var pooled = new float[batch * inputs];
        Unrolled.Cpu.Kernels.GlobalAveragePool(x, pooled, batch * inputs, 9);
        var expectedPool = new double[pooled.Length];
        for (int p = 0; p < pooled.Length; p++) for (int i = 0; i < 9; i++) expectedPool[p] += x[p * 9 + i] / 9.0;
        AssertClose(expectedPool, pooled, 1e-6, "avgpool");

        var weight = Naive.RandomFloats(rng, outputs * inputs);
        var bias = Naive.RandomFloats(rng, outputs);
        var y = new float[batch * outputs];
        Unrolled.Cpu.Kernels.Linear(pooled, y, weight, bias, batch, inputs, outputs);
        var expected = new double[y.Length];
        for (int b = 0; b < batch; b++)
        for (int o = 0; o < outputs; o++)
        {
            double s = bias[o];
            for (int i = 0; i < inputs; i++) s += (double)weight[o * inputs + i] * pooled[b * inputs + i];
            expected[b * outputs + o] = s;
        }
        AssertClose(expected, y, 1e-5, "linear");
    }

    private static int[]? s_hits;

    private static unsafe void CountHit(void* context, int item) => Interlocked.Increment(ref s_hits![item]);

    private static unsafe void Throw(void* context, int item)
    {
        if (item == 7) throw new InvalidOperationException("item 7");
    }

    [Fact]
    public unsafe void WorkerPoolRunsEveryItemOnceAndPropagatesExceptions()
    {
        var pool = new WorkerPool(3);
        foreach (int count in new[] { 1, 2, 5, 1000 })
        {
            s_hits = new int[count];
            pool.Run(&CountHit, null, count);
            Assert.All(s_hits, h => Assert.Equal(1, h));
        }
        var e = Assert.Throws<InvalidOperationException>(() => pool.Run(&Throw, null, 50));
        Assert.Equal("item 7", e.Message);
        s_hits = new int[10];
        pool.Run(&CountHit, null, 10); // still usable after an exception
        Assert.All(s_hits, h => Assert.Equal(1, h));
    }
}

public class WorkerPoolStartTests
{
    private static int s_count;

    private static unsafe void Count(void* context, int item) => System.Threading.Interlocked.Increment(ref s_count);

    private static unsafe void RunOnce(Unrolled.Cpu.WorkerPool pool) => pool.Run(&Count, null, 16);

    /// <summary>A job given to a brand-new pool, before its threads have started, must still complete.</summary>
    [Fact]
    public void AJobGivenBeforeTheWorkersStartCompletes()
    {
        s_count = 0;
        Unrolled.Cpu.WorkerPool.WorkerStarting = () => System.Threading.Thread.Sleep(100);
        try
        {
            using var done = new System.Threading.ManualResetEventSlim();
            // On a thread of its own, so that a hang fails this test instead of stopping the run.
            var thread = new System.Threading.Thread(() =>
            {
                RunOnce(new Unrolled.Cpu.WorkerPool(2)); // the job is published while the worker still sleeps
                done.Set();
            }) { IsBackground = true };
            thread.Start();
            Assert.True(done.Wait(TimeSpan.FromSeconds(10)), "the pool hung on its first job");
            Assert.Equal(16, s_count);
        }
        finally
        {
            Unrolled.Cpu.WorkerPool.WorkerStarting = null;
        }
    }

    /// <summary>
    /// A worker the OS does not schedule (held here before it starts) must not hold up the jobs: the caller runs
    /// the items itself and returns when they are done; the worker, once it runs, takes no item of a finished job.
    /// </summary>
    [Fact]
    public void JobsCompleteWhileAWorkerIsHeldAndItJoinsLater()
    {
        s_count = 0;
        // Not disposed: a pool another test class makes meanwhile may have a worker waiting on it too (the hook is
        // static); it is set before the test ends, so such a worker goes on.
        var hold = new System.Threading.ManualResetEventSlim();
        Unrolled.Cpu.WorkerPool.WorkerStarting = () => hold.Wait();
        try
        {
            var pool = new Unrolled.Cpu.WorkerPool(2);
            using var done = new System.Threading.ManualResetEventSlim();
            var thread = new System.Threading.Thread(() =>
            {
                for (int i = 0; i < 20; i++) RunOnce(pool);
                done.Set();
            }) { IsBackground = true };
            thread.Start();
            Assert.True(done.Wait(TimeSpan.FromSeconds(10)), "the jobs waited for a worker that was not running");
            Assert.Equal(20 * 16, s_count);

            hold.Set();
            for (int i = 0; i < 20; i++) RunOnce(pool);
            Assert.Equal(40 * 16, s_count);
        }
        finally
        {
            Unrolled.Cpu.WorkerPool.WorkerStarting = null;
            hold.Set();
        }
    }

    private static unsafe void Hit(void* context, int item) => System.Threading.Interlocked.Increment(ref ((int*)context)[item]);

    /// <summary>
    /// Jobs of alternating sizes back to back, on more threads than cores, so that a worker can be descheduled between
    /// any two of its instructions: every item of every job runs exactly once and every job returns. (A worker that
    /// read a finished job's last ticket, then the next job's larger count before that job's ticket was published,
    /// could once claim items that did not exist, run them under the next job's context, and count them into its
    /// done items: the caller then waited forever. Found as a hang of the whole suite.)
    /// </summary>
    [Fact]
    public unsafe void BackToBackJobsOfChangingSizeRunEveryItemExactlyOnce()
    {
        var pool = new Unrolled.Cpu.WorkerPool(2 * Environment.ProcessorCount + 1);
        const int Jobs = 300_000, MaxItems = 48;
        string? failure = null;
        int finished = 0;
        using var done = new System.Threading.ManualResetEventSlim();
        var thread = new System.Threading.Thread(() =>
        {
            int* hits = stackalloc int[MaxItems];
            for (int job = 0; job < Jobs && failure is null; job++)
            {
                int count = job % 3 == 0 ? MaxItems : 2 + job % 5;
                new Span<int>(hits, MaxItems).Clear();
                pool.Run(&Hit, hits, count);
                for (int i = 0; i < MaxItems; i++)
                    if (hits[i] != (i < count ? 1 : 0)) failure = $"job {job} of {count} items: item {i} ran {hits[i]} times";
                finished = job + 1;
            }
            done.Set();
        }) { IsBackground = true };
        thread.Start();
        Assert.True(done.Wait(TimeSpan.FromSeconds(60)), $"a job never returned, after {finished} jobs had");
        Assert.Null(failure);
        Assert.Equal(Jobs, finished);
    }
}
