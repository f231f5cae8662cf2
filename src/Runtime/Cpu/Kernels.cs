using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Unrolled.Cpu;

/// <summary>The element-wise and pooling kernels of a ResNet, NCHW float32, parallel over planes.</summary>
internal static unsafe class Kernels
{
    public const double BatchNormEpsilon = 1e-5;
    public const double BatchNormMomentum = 0.1;

    /// <summary>True when no value is NaN or infinite (x - x is 0 exactly for finite x, NaN otherwise).</summary>
    public static bool AllFinite(ReadOnlySpan<float> values)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var acc = Vector<float>.Zero;
            var v = MemoryMarshal.Cast<float, Vector<float>>(values);
            foreach (var x in v) acc += x - x;
            if (!Vector.EqualsAll(acc, Vector<float>.Zero)) return false;
            i = v.Length * Vector<float>.Count;
        }
        for (; i < values.Length; i++)
            if (!float.IsFinite(values[i])) return false;
        return true;
    }

    /// <summary>
    /// Eval-mode BatchNorm as y = x * scale + shift per channel, from <paramref name="bn"/> = [gamma, beta,
    /// running_mean, running_var] (each [C]): scale = gamma / sqrt(var + eps), shift = beta - mean * scale.
    /// </summary>
    public static void BatchNormScaleShift(ReadOnlySpan<float> bn, Span<float> scale, Span<float> shift)
    {
        int c = scale.Length;
        for (int m = 0; m < c; m++)
        {
            double s = bn[m] / Math.Sqrt(bn[3 * c + m] + BatchNormEpsilon);
            scale[m] = (float)s;
            shift[m] = (float)(bn[c + m] - bn[2 * c + m] * s);
        }
    }

    private struct BnJob
    {
        public float* Z, A, Residual, Bn, Mean, InvStd;
        public int Batch, C, Hw;
        public bool Relu, BatchStatistics;
        // Synchronized BatchNorm: [mean (C)][total count][variance (C)] over every process's batch, or null.
        public double* Synced;
    }

    /// <summary>
    /// BatchNorm forward from z into a (which may be z itself), then the residual and ReLU:
    /// a = relu?(gamma (z - mean) invStd + beta + residual). With <paramref name="batchStatistics"/> (train mode)
    /// mean and the biased variance come from the batch (accumulated in double) and running_mean/running_var
    /// (unbiased) are updated with momentum 0.1, as torch.nn.BatchNorm2d does; otherwise the running statistics
    /// are used. The mean and 1/sqrt(var + eps) used are written to <paramref name="mean"/> and <paramref name="invStd"/>.
    /// </summary>
    public static void BatchNormForward(ReadOnlySpan<float> z, Span<float> a, ReadOnlySpan<float> residual, Span<float> bn,
        Span<float> mean, Span<float> invStd, int batch, int c, int hw, bool relu, bool batchStatistics,
        Span<double> syncScratch = default, Action<Span<double>>? reduce = null)
    {
        fixed (float* pz = z, pa = a, pr = residual, pbn = bn, pm = mean, pi = invStd)
        fixed (double* ps = syncScratch)
        {
            var job = new BnJob
            {
                Z = pz, A = pa, Residual = residual.IsEmpty ? null : pr, Bn = pbn, Mean = pm, InvStd = pi,
                Batch = batch, C = c, Hw = hw, Relu = relu, BatchStatistics = batchStatistics,
            };
            if (batchStatistics && reduce is not null)
            {
                // SyncBatchNorm: the mean, then the variance about it, each summed over every process's batch.
                var stats = syncScratch.Slice(0, 2 * c + 1);
                job.Synced = ps;
                WorkerPool.Shared.Run(&ChannelSum, &job, c);
                stats[c] = (double)batch * hw;
                reduce(stats.Slice(0, c + 1));
                for (int ch = 0; ch < c; ch++) stats[ch] /= stats[c];
                WorkerPool.Shared.Run(&ChannelSquares, &job, c);
                reduce(stats.Slice(c + 1, c));
                for (int ch = 0; ch < c; ch++) stats[c + 1 + ch] /= stats[c];
            }
            // Maps of fewer pixels than a vector (layer3 and layer4 at small image sizes): a channel's values are runs of
            // hw < 16 floats, one per image, too short for vectors; each item takes 16 adjacent channels, whose runs
            // are contiguous within an image, so that the vectors run across channels.
            if (hw < SmallMap) WorkerPool.Shared.Run(&BatchNormGroup, &job, (c + SmallMap - 1) / SmallMap);
            else WorkerPool.Shared.Run(&BatchNormChannel, &job, c);
        }
    }

    /// <summary>Maps of fewer pixels than this go through the channel-group BatchNorm kernels (16 channels per item).</summary>
    internal const int SmallMap = 16;

    private static void ChannelSum(void* context, int ch)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        j.Synced[ch] = ChannelSumOf(ref j, ch);
    }

    private static void ChannelSquares(void* context, int ch)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        j.Synced[j.C + 1 + ch] = ChannelSquaresOf(ref j, ch, j.Synced[ch]);
    }

    /// <summary>The sum of channel <paramref name="ch"/> of z over the batch.</summary>
    private static double ChannelSumOf(ref BnJob j, int ch)
    {
        double sum = 0;
        for (int n = 0; n < j.Batch; n++) sum += Sum(new ReadOnlySpan<float>(j.Z + ((long)n * j.C + ch) * j.Hw, j.Hw));
        return sum;
    }

    /// <summary>The sum of squared deviations from <paramref name="mean"/> of channel <paramref name="ch"/> of z over the batch.</summary>
    private static double ChannelSquaresOf(ref BnJob j, int ch, double mean)
    {
        // In double, as the deviations of a channel with a large mean lose digits in float (four lanes at a time).
        var vm = new Vector<double>(mean);
        var acc = Vector<double>.Zero;
        double sq = 0;
        for (int n = 0; n < j.Batch; n++)
        {
            float* p = j.Z + ((long)n * j.C + ch) * j.Hw;
            int i = 0;
            for (; i <= j.Hw - Vector<float>.Count; i += Vector<float>.Count)
            {
                Vector.Widen(Unsafe.ReadUnaligned<Vector<float>>(p + i), out var lo, out var hi);
                lo -= vm;
                hi -= vm;
                acc += lo * lo + hi * hi;
            }
            for (; i < j.Hw; i++)
            {
                double d = p[i] - mean;
                sq += d * d;
            }
        }
        sq += Vector.Sum(acc);
        return sq;
    }

    private static void BatchNormChannel(void* context, int ch)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        double mean = 0, variance = 0;
        if (j.BatchStatistics && j.Synced == null)
        {
            mean = ChannelSumOf(ref j, ch) / ((double)j.Batch * j.Hw);
            variance = ChannelSquaresOf(ref j, ch, mean) / ((double)j.Batch * j.Hw);
        }
        var (scale, shift) = ChannelAffine(ref j, ch, mean, variance);
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + ch) * j.Hw;
            ScaleShift(j.Z + at, j.A + at, j.Residual == null ? null : j.Residual + at, j.Hw, scale, shift, j.Relu);
        }
    }

    /// <summary>
    /// Channel <paramref name="ch"/>'s normalization as a scale and shift. In train mode from the batch's
    /// <paramref name="mean"/> and biased <paramref name="variance"/> (or, with SyncBatchNorm, every process's, summed
    /// beforehand), updating the running statistics; in eval mode from the running statistics. Writes the mean and
    /// 1/sqrt(var + eps) used to the job's Mean and InvStd.
    /// </summary>
    private static (float Scale, float Shift) ChannelAffine(ref BnJob j, int ch, double mean, double variance)
    {
        float* runningMean = j.Bn + 2 * j.C;
        float* runningVar = j.Bn + 3 * j.C;
        if (j.BatchStatistics)
        {
            double count = (double)j.Batch * j.Hw;
            if (j.Synced != null)
            {
                count = j.Synced[j.C];
                mean = j.Synced[ch];
                variance = j.Synced[j.C + 1 + ch];
            }
            runningMean[ch] = (float)((1 - BatchNormMomentum) * runningMean[ch] + BatchNormMomentum * mean);
            runningVar[ch] = (float)((1 - BatchNormMomentum) * runningVar[ch] + BatchNormMomentum * variance * count / (count - 1));
        }
        else
        {
            mean = runningMean[ch];
            variance = runningVar[ch];
        }

        double invStd = 1.0 / Math.Sqrt(variance + BatchNormEpsilon);
        j.Mean[ch] = (float)mean;
        j.InvStd[ch] = (float)invStd;
        return ((float)(j.Bn[ch] * invStd), (float)(j.Bn[j.C + ch] - mean * j.Bn[ch] * invStd));
    }

    /// <summary>
    /// BatchNorm forward of the channels [16 * group, 16 * group + 16) of a map of hw &lt; 16 pixels. Within an
    /// image their values are one contiguous run of 16 * hw floats, position f holding channel f / hw; the batch
    /// statistics are summed per position over the images (in double, as the per-channel kernel), then per channel.
    /// </summary>
    [SkipLocalsInit]
    private static void BatchNormGroup(void* context, int group)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        int c0 = group * SmallMap, channels = Math.Min(SmallMap, j.C - c0), hw = j.Hw, run = channels * hw;
        double* moments = stackalloc double[2 * SmallMap];
        if (j.BatchStatistics && j.Synced == null)
        {
            double* acc = stackalloc double[SmallMap * SmallMap];
            ColumnSums(j.Z + (long)c0 * hw, (long)j.C * hw, j.Batch, run, acc, null);
            double count = (double)j.Batch * hw;
            for (int k = 0; k < channels; k++) moments[k] = PositionSum(acc, k, hw) / count;
            // The squared deviations about each position's channel mean.
            double* mean = stackalloc double[SmallMap * SmallMap];
            for (int f = 0; f < run; f++) mean[f] = moments[f / hw];
            ColumnSums(j.Z + (long)c0 * hw, (long)j.C * hw, j.Batch, run, acc, mean);
            for (int k = 0; k < channels; k++) moments[SmallMap + k] = PositionSum(acc, k, hw) / count;
        }
        float* scale = stackalloc float[SmallMap * SmallMap];
        float* shift = stackalloc float[SmallMap * SmallMap];
        for (int k = 0; k < channels; k++)
        {
            var (s, t) = ChannelAffine(ref j, c0 + k, moments[k], moments[SmallMap + k]);
            for (int p = 0; p < hw; p++) (scale[k * hw + p], shift[k * hw + p]) = (s, t);
        }
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + c0) * hw;
            float* z = j.Z + at, y = j.A + at, r = j.Residual == null ? null : j.Residual + at;
            int f = 0;
            for (; f <= run - Vector<float>.Count; f += Vector<float>.Count)
            {
                var v = Unsafe.ReadUnaligned<Vector<float>>(z + f) * Unsafe.ReadUnaligned<Vector<float>>(scale + f) + Unsafe.ReadUnaligned<Vector<float>>(shift + f);
                if (r != null) v += Unsafe.ReadUnaligned<Vector<float>>(r + f);
                if (j.Relu) v = Vector.Max(v, Vector<float>.Zero);
                Unsafe.WriteUnaligned(y + f, v);
            }
            for (; f < run; f++)
            {
                float v = z[f] * scale[f] + shift[f];
                if (r != null) v += r[f];
                if (j.Relu && v < 0f) v = 0f;
                y[f] = v;
            }
        }
    }

    /// <summary>
    /// acc[f] = sum over the <paramref name="rows"/> runs x + i * stride of x[f] (or, with <paramref name="mean"/>, of
    /// (x[f] - mean[f])^2), f &lt; <paramref name="run"/>, in double.
    /// </summary>
    internal static void ColumnSums(float* x, long stride, int rows, int run, double* acc, double* mean)
    {
        for (int f = 0; f < run; f++) acc[f] = 0;
        for (int i = 0; i < rows; i++)
        {
            float* row = x + i * stride;
            int f = 0;
            for (; f <= run - Vector<float>.Count; f += Vector<float>.Count)
            {
                Vector.Widen(Unsafe.ReadUnaligned<Vector<float>>(row + f), out var lo, out var hi);
                if (mean != null)
                {
                    lo -= Unsafe.ReadUnaligned<Vector<double>>(mean + f);
                    hi -= Unsafe.ReadUnaligned<Vector<double>>(mean + f + Vector<double>.Count);
                    lo *= lo;
                    hi *= hi;
                }
                Unsafe.WriteUnaligned(acc + f, Unsafe.ReadUnaligned<Vector<double>>(acc + f) + lo);
                Unsafe.WriteUnaligned(acc + f + Vector<double>.Count, Unsafe.ReadUnaligned<Vector<double>>(acc + f + Vector<double>.Count) + hi);
            }
            for (; f < run; f++)
            {
                double v = row[f];
                if (mean != null) v = (v - mean[f]) * (v - mean[f]);
                acc[f] += v;
            }
        }
    }

    /// <summary>The sum of acc[k * hw .. k * hw + hw): channel k's share of a run of channels of hw pixels each.</summary>
    internal static double PositionSum(double* acc, int k, int hw)
    {
        double sum = 0;
        for (int p = 0; p < hw; p++) sum += acc[k * hw + p];
        return sum;
    }

    private static double Sum(ReadOnlySpan<float> values)
    {
        double total = 0;
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            // Partial sums in float over short runs, accumulated in double: accurate and vectorized.
            var vs = MemoryMarshal.Cast<float, Vector<float>>(values);
            for (int start = 0; start < vs.Length; start += 64)
            {
                var acc = Vector<float>.Zero;
                int end = Math.Min(vs.Length, start + 64);
                for (int v = start; v < end; v++) acc += vs[v];
                total += Vector.Sum(acc);
            }
            i = vs.Length * Vector<float>.Count;
        }
        for (; i < values.Length; i++) total += values[i];
        return total;
    }

    private static void ScaleShift(float* z, float* y, float* residual, int count, float scale, float shift, bool relu)
    {
        int i = 0;
        var s = new Vector<float>(scale);
        var t = new Vector<float>(shift);
        for (; i <= count - Vector<float>.Count; i += Vector<float>.Count)
        {
            var v = Unsafe.ReadUnaligned<Vector<float>>(z + i) * s + t;
            if (residual != null) v += Unsafe.ReadUnaligned<Vector<float>>(residual + i);
            if (relu) v = Vector.Max(v, Vector<float>.Zero);
            Unsafe.WriteUnaligned(y + i, v);
        }
        for (; i < count; i++)
        {
            float v = z[i] * scale + shift;
            if (residual != null) v += residual[i];
            if (relu && v < 0f) v = 0f;
            y[i] = v;
        }
    }

    private struct PoolJob
    {
        public float* X, Y;
        public int H, W, OH, OW, Kernel, Stride, Pad;
    }

    /// <summary>Max pooling over every plane of x [planes, h, w] (padding never wins, as in PyTorch).</summary>
    public static void MaxPool(ReadOnlySpan<float> x, Span<float> y, int planes, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        fixed (float* px = x, py = y)
        {
            var job = new PoolJob { X = px, Y = py, H = h, W = w, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad };
            WorkerPool.Shared.Run(&MaxPoolPlane, &job, planes);
        }
    }

    private static void MaxPoolPlane(void* context, int plane)
    {
        ref PoolJob j = ref Unsafe.AsRef<PoolJob>(context);
        float* x = j.X + (long)plane * j.H * j.W;
        float* y = j.Y + (long)plane * j.OH * j.OW;
        bool vectorized = Avx512F.IsSupported && j.Kernel == 3 && j.Stride == 2 && j.Pad == 1;
        for (int oy = 0; oy < j.OH; oy++)
        {
            int ox = 0;
            if (vectorized) ox = MaxPoolRow3x3s2(x, y + oy * j.OW, j.H, j.W, j.OW, oy);
            for (; ox < j.OW; ox++)
                y[oy * j.OW + ox] = x[WindowArgMax(x, j.H, j.W, oy, ox, j.Kernel, j.Stride, j.Pad)];
        }
    }

    private static readonly Vector512<int> s_evenLanes = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> s_oddLanes = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);

    /// <summary>
    /// The 3x3 stride-2 pad-1 max pool (ResNet's stem) of output row <paramref name="oy"/>: output 0 (its window starts
    /// in the padding) by <see cref="WindowArgMax"/>, then 16 outputs at a time while every window lies inside the row,
    /// and a last 16 that overlap the ones before where the row's end leaves fewer (the 56 outputs of a 112-pixel row:
    /// 1 + 3 x 16 + 7; the 7 by the scalar path cost 3.5 times the whole row's vectors, 0.39 against 0.09 ms for
    /// ResNet-50's pool at batch 1 in ONNX Runtime); returns the first output left to the scalar path. Each maximum
    /// takes the earlier operand on ties (Max(later, earlier)), so the result is the window's first maximum in scan
    /// order, as the scalar path's; from the first 16 outputs whose windows hold a NaN on, the row is left to the
    /// scalar path (it returns the first NaN, as PyTorch).
    /// </summary>
    private static int MaxPoolRow3x3s2(float* plane, float* y, int h, int w, int ow, int oy)
    {
        int y0 = Math.Max(2 * oy - 1, 0), y1 = Math.Min(2 * oy + 2, h);
        y[0] = plane[WindowArgMax(plane, h, w, oy, 0, 3, 2, 1)];
        int ox = 1;
        // Outputs start .. start + 15 read columns 2 start - 1 .. 2 start + 31: two loads of 16 and one more element.
        while (ox < ow)
        {
            int start = ox + 15 < ow ? ox : ow - 16; // the last 16 outputs overlap the ones before: the same values again
            if (start < 1 || 2 * start + 31 >= w) break;
            Vector512<float> best = default, poison = default;
            for (int iy = y0; iy < y1; iy++)
            {
                float* from = plane + (long)iy * w + 2 * start - 1;
                var lo = Vector512.Load(from);
                var hi = Vector512.Load(from + 16);
                var left = Avx512F.PermuteVar16x32x2(lo, s_evenLanes, hi);   // column 2 start - 1
                var middle = Avx512F.PermuteVar16x32x2(lo, s_oddLanes, hi);  // column 2 start
                var right = Avx512F.PermuteVar16x32x2(left, s_nextLanes, Vector512.CreateScalar(from[32])); // 2 start + 1
                var row = Avx512F.Max(right, Avx512F.Max(middle, left));
                poison += left + middle + right; // NaN if any input is (vmaxps drops a NaN in its first operand)
                best = iy == y0 ? row : Avx512F.Max(row, best);
            }
            if (!Vector512.EqualsAll(poison, poison)) break; // a NaN (or infinities of both signs): the scalar path decides
            best.Store(y + start);
            ox = start + 16;
        }
        return ox;
    }

    // Lanes 1..15 of the first operand, then lane 0 of the second.
    private static readonly Vector512<int> s_nextLanes = Vector512.Create(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);

    /// <summary>
    /// The index in a plane of the maximum of output (oy, ox)'s window, padding excluded: the first maximum in scan
    /// order, or the first NaN (as PyTorch). Max-pool forward reads it; backward routes the gradient to it.
    /// </summary>
    internal static int WindowArgMax(float* plane, int h, int w, int oy, int ox, int kernel, int stride, int pad)
    {
        int y0 = Math.Max(oy * stride - pad, 0), y1 = Math.Min(oy * stride - pad + kernel, h);
        int x0 = Math.Max(ox * stride - pad, 0), x1 = Math.Min(ox * stride - pad + kernel, w);
        float best = float.NegativeInfinity;
        int arg = y0 * w + x0;
        for (int iy = y0; iy < y1; iy++)
        {
            for (int ix = x0; ix < x1; ix++)
            {
                float v = plane[iy * w + ix];
                if (float.IsNaN(v)) return iy * w + ix;
                if (v > best)
                {
                    best = v;
                    arg = iy * w + ix;
                }
            }
        }
        return arg;
    }

    /// <summary>Adaptive average pooling to 1x1: y[p] = mean of plane p of x [planes, hw].</summary>
    public static void GlobalAveragePool(ReadOnlySpan<float> x, Span<float> y, int planes, int hw)
    {
        for (int p = 0; p < planes; p++) y[p] = (float)(Sum(x.Slice(p * hw, hw)) / hw);
    }

    /// <summary>
    /// <see cref="GlobalAveragePool"/> of one image's pixel-major x [hw, channels] (each pixel's channels side by
    /// side): y[c] = mean over the pixels of channel c, summed as <see cref="Sum"/> sums a plane, term for term (a
    /// float partial sum per lane of <see cref="Vector{T}"/>, each run of 64 vectors reduced by
    /// <see cref="Vector.Sum{T}(Vector{T})"/> into a double, the pixels past the last whole vector added in double),
    /// so the means are the NCHW pool's to the bit; sixteen channels per work item, each pixel's run of them read whole.
    /// </summary>
    public static void GlobalAveragePoolPixels(ReadOnlySpan<float> x, Span<float> y, int channels, int hw)
    {
        if (x.Length < (long)channels * hw || y.Length < channels)
            throw new ArgumentException("internal: pooling of mismatched sizes");
        fixed (float* px = x, py = y)
        {
            // On all cores, each taking the channels it wrote (the convolutions split their outputs by channels in order).
            var job = new PixelPoolJob { X = px, Y = py, Channels = channels, Hw = hw };
            WorkerPool.Shared.Run(&PoolPixelBlock, &job, (channels + PoolBlock - 1) / PoolBlock);
        }
    }

    private const int PoolBlock = 16;

    private struct PixelPoolJob
    {
        public float* X, Y;
        public int Channels, Hw;
    }

    [SkipLocalsInit]
    private static void PoolPixelBlock(void* context, int block)
    {
        ref PixelPoolJob j = ref Unsafe.AsRef<PixelPoolJob>(context);
        int c0 = block * PoolBlock, count = Math.Min(PoolBlock, j.Channels - c0), channels = j.Channels, hw = j.Hw;
        int lanes = Vector.IsHardwareAccelerated ? Vector<float>.Count : 1, vectors = Vector.IsHardwareAccelerated ? hw / lanes : 0;
        // partial[l * PoolBlock + i]: lane l of the vector accumulator of channel c0 + i.
        float* partial = stackalloc float[Vector<float>.Count * PoolBlock];
        double* total = stackalloc double[PoolBlock];
        float* lane = stackalloc float[Vector<float>.Count];
        for (int i = 0; i < count; i++) total[i] = 0;
        for (int start = 0; start < vectors; start += 64)
        {
            int end = Math.Min(vectors, start + 64);
            new Span<float>(partial, lanes * PoolBlock).Clear();
            for (int v = start; v < end; v++)
                for (int l = 0; l < lanes; l++)
                {
                    float* src = j.X + (long)(v * lanes + l) * channels + c0, to = partial + l * PoolBlock;
                    if (Vector512.IsHardwareAccelerated && count == PoolBlock) (Vector512.Load(to) + Vector512.Load(src)).Store(to);
                    else for (int i = 0; i < count; i++) to[i] += src[i];
                }
            for (int i = 0; i < count; i++)
            {
                for (int l = 0; l < lanes; l++) lane[l] = partial[l * PoolBlock + i];
                total[i] += Vector.Sum(Unsafe.ReadUnaligned<Vector<float>>(lane));
            }
        }
        for (int p = vectors * lanes; p < hw; p++)
        {
            float* src = j.X + (long)p * channels + c0;
            for (int i = 0; i < count; i++) total[i] += src[i];
        }
        for (int i = 0; i < count; i++) j.Y[c0 + i] = (float)(total[i] / hw);
    }

    /// <summary>y[n, o] = bias[o] + sum_i W[o, i] x[n, i] (torch.nn.Linear, W row-major [outputs, inputs]).</summary>
    public static void Linear(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias,
        int batch, int inputs, int outputs)
    {
        fixed (float* px = x, py = y, pw = weight, pb = bias)
        {
            var job = new LinearJob { X = px, Y = py, W = pw, B = pb, Batch = batch, Inputs = inputs, Outputs = outputs };
            // By rows of W: each row is read once for every image (ResNet-50's is 8 MB, streamed by both cores).
            WorkerPool.Shared.Run(&LinearRow, &job, outputs);
        }
    }

    private struct LinearJob
    {
        public float* X, Y, W, B;
        public int Batch, Inputs, Outputs;
    }

    private static void LinearRow(void* context, int o)
    {
        ref LinearJob j = ref Unsafe.AsRef<LinearJob>(context);
        var row = new ReadOnlySpan<float>(j.W + (long)o * j.Inputs, j.Inputs);
        for (int n = 0; n < j.Batch; n++)
            j.Y[(long)n * j.Outputs + o] = j.B[o] + Dot(row, new ReadOnlySpan<float>(j.X + (long)n * j.Inputs, j.Inputs));
    }

    private static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        var va = MemoryMarshal.Cast<float, Vector<float>>(a);
        var vb = MemoryMarshal.Cast<float, Vector<float>>(b);
        var acc = Vector<float>.Zero;
        for (int i = 0; i < va.Length; i++) acc = Vector.FusedMultiplyAdd(va[i], vb[i], acc);
        float sum = Vector.Sum(acc);
        for (int i = va.Length * Vector<float>.Count; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }
}
