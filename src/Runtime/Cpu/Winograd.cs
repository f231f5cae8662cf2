using System;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Unrolled.Cpu;

/// <summary>
/// 3x3 stride-1 pad-1 convolution by Winograd's F(2x2, 3x3) (Lavin and Gray, 2015), for inference: every 2x2 block of
/// outputs comes from a 4x4 block of inputs with 16 multiplications per (output channel, input channel) pair instead
/// of 36. In matrix form, with the 4x4 input tile d and the 3x3 kernel g,
/// <code>
///   V = B^T d B,   U = G g G^T,   Y = A^T (sum over input channels of U . V) A
///   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1]
/// </code>
/// so that the sum over input channels is 16 independent GEMMs, one per position xi of the 4x4 tile:
/// M[xi] [Cout x T] = U[xi] [Cout x Cin] . V[xi] [Cin x T], T being the number of tiles. The input transform writes
/// V straight into the GEMM's packed column panels; the output transform applies the epilogue (eval-mode BatchNorm's
/// scale and bias, the residual, ReLU) as it writes y. The transformed weights U are made once per weights version
/// (<see cref="TransformWeights"/>; 16/9 of the weights' size).
/// </summary>
internal static unsafe class Winograd
{
    /// <summary>
    /// With AVX-512 (the transforms work 16 tiles at a time), unless UNROLLED_WINOGRAD=0 (then every convolution is the
    /// direct one: for comparisons).
    /// </summary>
    public static readonly bool Enabled = Avx512F.IsSupported && Environment.GetEnvironmentVariable("UNROLLED_WINOGRAD") != "0";

    /// <summary>Tests only: the direct convolution everywhere (to compare a network both ways in one process).</summary>
    internal static volatile bool Off;

    /// <summary>Floats of the transformed weights of a [cout x cin x 3 x 3] convolution.</summary>
    public static long TransformedSize(int cout, int cin) => 16L * cout * cin;

    /// <summary>U[xi][k][c] = (G g G^T)[xi] for every kernel g = W[k, c], an output channel per item on every core.</summary>
    public static void TransformWeights(ReadOnlySpan<float> weights, Span<float> transformed, int cout, int cin)
    {
        if (weights.Length != cout * cin * 9 || transformed.Length != TransformedSize(cout, cin))
            throw new ArgumentException("internal: Winograd weight transform of mismatched sizes");
        fixed (float* pw = weights, pu = transformed)
        {
            var job = new WeightJob { W = pw, U = pu, Cout = cout, Cin = cin };
            WorkerPool.Shared.Run(&TransformKernels, &job, cout);
        }
    }

    /// <summary>
    /// The transform of the weights of the data gradient's convolution: W'[c][k] = W[k][c] rotated by 180 degrees, so
    /// that dL/dx = conv3x3(dL/dz, W') for a 3x3 stride-1 pad-1 convolution. <paramref name="transformed"/> is then
    /// [16][cin][cout].
    /// </summary>
    public static void TransformTransposedWeights(ReadOnlySpan<float> weights, Span<float> transformed, int cout, int cin)
    {
        if (weights.Length != cout * cin * 9 || transformed.Length != TransformedSize(cout, cin))
            throw new ArgumentException("internal: Winograd weight transform of mismatched sizes");
        fixed (float* pw = weights, pu = transformed)
        {
            var job = new WeightJob { W = pw, U = pu, Cout = cin, Cin = cout, Transposed = true };
            WorkerPool.Shared.Run(&TransformKernels, &job, cin);
        }
    }

    private struct WeightJob
    {
        public float* W, U;
        public int Cout, Cin; // of the convolution the transformed weights compute
        public bool Transposed;
    }

    private static void TransformKernels(void* context, int k)
    {
        ref WeightJob j = ref Unsafe.AsRef<WeightJob>(context);
        long plane = (long)j.Cout * j.Cin;
        double* gg = stackalloc double[12];
        float* flipped = stackalloc float[9];
        int c = 0;
        if (Avx512F.IsSupported)
            for (; c + Lanes <= j.Cin; c += Lanes) TransformKernels16(ref j, k, c);
        for (; c < j.Cin; c++)
        {
            float* g;
            if (j.Transposed)
            {
                // Kernel (k, c) of the data gradient's convolution is the forward's kernel (c, k), rotated.
                float* forward = j.W + ((long)c * j.Cout + k) * 9;
                for (int i = 0; i < 9; i++) flipped[i] = forward[8 - i];
                g = flipped;
            }
            else g = j.W + ((long)k * j.Cin + c) * 9;
            // G g: 4 rows of 3 (in double: the transform adds halves of three taps).
            for (int col = 0; col < 3; col++)
            {
                double g0 = g[col], g1 = g[3 + col], g2 = g[6 + col];
                gg[col] = g0;
                gg[3 + col] = 0.5 * (g0 + g1 + g2);
                gg[6 + col] = 0.5 * (g0 - g1 + g2);
                gg[9 + col] = g2;
            }
            // (G g) G^T: the same combination along each row.
            float* u = j.U + (long)k * j.Cin + c;
            for (int row = 0; row < 4; row++)
            {
                double r0 = gg[row * 3], r1 = gg[row * 3 + 1], r2 = gg[row * 3 + 2];
                u[(row * 4 + 0) * plane] = (float)r0;
                u[(row * 4 + 1) * plane] = (float)(0.5 * (r0 + r1 + r2));
                u[(row * 4 + 2) * plane] = (float)(0.5 * (r0 - r1 + r2));
                u[(row * 4 + 3) * plane] = (float)r2;
            }
        }
    }

    /// <summary>
    /// As the scalar loop of <see cref="TransformKernels"/> for kernels (k, c0) .. (k, c0 + 15) at once: their taps
    /// gathered one per lane, G g G^T in float (one rounding of the half of three taps), U stored 16 input channels
    /// at a time.
    /// </summary>
    private static void TransformKernels16(ref WeightJob j, int k, int c0)
    {
        // Tap t of lane i: W[k, c0 + i, t], or for the data gradient W[c0 + i, k, 8 - t] (the kernel rotated).
        float* first;
        int laneStride, tapStep;
        if (j.Transposed)
        {
            first = j.W + ((long)c0 * j.Cout + k) * 9 + 8;
            laneStride = j.Cout * 9;
            tapStep = -1;
        }
        else
        {
            first = j.W + ((long)k * j.Cin + c0) * 9;
            laneStride = 9;
            tapStep = 1;
        }
        var index = Vector256.Create(laneStride) * Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
        long upper = 8L * laneStride; // lanes 8..15
        var half = Vector512.Create(0.5f);
        var g = stackalloc Vector512<float>[9];
        for (int t = 0; t < 9; t++)
        {
            float* tap = first + t * tapStep;
            g[t] = Vector512.Create(Avx2.GatherVector256(tap, index, 4), Avx2.GatherVector256(tap + upper, index, 4));
        }
        // G g: rows g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2 of each column.
        var gg = stackalloc Vector512<float>[12];
        for (int col = 0; col < 3; col++)
        {
            Vector512<float> g0 = g[col], g1 = g[3 + col], g2 = g[6 + col];
            gg[col] = g0;
            gg[3 + col] = (g0 + g1 + g2) * half;
            gg[6 + col] = (g0 - g1 + g2) * half;
            gg[9 + col] = g2;
        }
        long plane = (long)j.Cout * j.Cin;
        float* u = j.U + (long)k * j.Cin + c0;
        for (int row = 0; row < 4; row++)
        {
            Vector512<float> r0 = gg[row * 3], r1 = gg[row * 3 + 1], r2 = gg[row * 3 + 2];
            r0.Store(u + (row * 4 + 0) * plane);
            ((r0 + r1 + r2) * half).Store(u + (row * 4 + 1) * plane);
            ((r0 - r1 + r2) * half).Store(u + (row * 4 + 2) * plane);
            r2.Store(u + (row * 4 + 3) * plane);
        }
    }

    private struct Job
    {
        public float* X, Y, Residual, U, Scale, Bias;
        public int Batch, Cin, Cout, H, W, TilesY, TilesX, T;
        public bool Relu;
    }

    /// <summary>Tiles transformed together: one per lane of a 512-bit vector.</summary>
    private const int Lanes = 16;

    // Each thread's transformed inputs V [16][Cin][NR] (each V[xi] is already a packed B panel) and products
    // M [16][Cout][NR] for one chunk of NR tiles: the whole chunk stays in the core's cache.
    [ThreadStatic] private static Gemm.Scratch t_v, t_m;

    /// <summary>
    /// y = relu?(conv3x3(x, W) * scale + bias + residual) with stride 1 and padding 1, from the transformed weights
    /// <paramref name="u"/>; shapes and epilogue as <see cref="Conv.Forward"/>. The tiles are taken
    /// <see cref="Gemm.NR"/> at a time (one GEMM column panel), each chunk transformed, multiplied and transformed
    /// back by one core.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual, ReadOnlySpan<float> u,
        ReadOnlySpan<float> scale, ReadOnlySpan<float> bias, int batch, int cin, int h, int w, int cout, bool relu)
    {
        int tilesY = (h + 1) / 2, tilesX = (w + 1) / 2;
        int t = batch * tilesY * tilesX;
        fixed (float* px = x, py = y, pr = residual, pu = u, ps = scale, pb = bias)
        {
            var job = new Job
            {
                X = px, Y = py, Residual = residual.IsEmpty ? null : pr, U = pu, Scale = scale.IsEmpty ? null : ps, Bias = bias.IsEmpty ? null : pb,
                Batch = batch, Cin = cin, Cout = cout, H = h, W = w, TilesY = tilesY, TilesX = tilesX, T = t, Relu = relu,
            };
            WorkerPool.Shared.Run(&Chunk, &job, (t + Gemm.NR - 1) / Gemm.NR);
        }
    }

    /// <summary>
    /// Worth it for this layer: a 3x3 stride-1 pad-1 convolution with at least two chunks of tiles (ResNet-50's 7x7
    /// maps at batch 1 have one: the direct convolution, on every core, is faster there) and enough input channels to
    /// repay the transforms (measured with `--layers` on two cores). The choice does not depend on the number of cores, so neither do the results.
    /// </summary>
    public static bool Pays(int kernel, int stride, int pad, int batch, int cin, int h, int w) =>
        kernel == 3 && stride == 1 && pad == 1 && Pays(batch, cin, h, w);

    /// <summary>As above for a 3x3 stride-1 pad-1 convolution.</summary>
    public static bool Pays(int batch, int cin, int h, int w) =>
        Enabled && !Off && cin >= 64 && (batch * ((h + 1) / 2) * ((w + 1) / 2) + Gemm.NR - 1) / Gemm.NR >= 2;

    private static void Chunk(void* context, int chunk)
    {
        ref Job j = ref Unsafe.AsRef<Job>(context);
        int first = chunk * Gemm.NR, count = Math.Min(Gemm.NR, j.T - first);
        float* v = t_v.Get(16L * j.Cin * Gemm.NR);
        float* m = t_m.Get(16L * j.Cout * Gemm.NR + Lanes); // a vector may read past the last lane
        // The chunk's tiles, as runs along tile rows.
        for (int done = 0; done < count;)
        {
            int t = first + done;
            int row = t / j.TilesX, tx = t % j.TilesX, length = Math.Min(count - done, j.TilesX - tx);
            TransformInput(ref j, row / j.TilesY, row % j.TilesY, tx, length, v + done);
            done += length;
        }
        if (count < Gemm.NR)
            for (int xi = 0; xi < 16; xi++)
                for (int c = 0; c < j.Cin; c++) new Span<float>(v + ((long)xi * j.Cin + c) * Gemm.NR + count, Gemm.NR - count).Clear();
        // M[xi] = U[xi] . V[xi]: 16 GEMMs of [Cout x Cin] . [Cin x NR].
        int rowPanels = Gemm.RowPanelCount(j.Cout);
        for (int xi = 0; xi < 16; xi++)
        {
            float* a = j.U + (long)xi * j.Cout * j.Cin, b = v + (long)xi * j.Cin * Gemm.NR, mx = m + (long)xi * j.Cout * Gemm.NR;
            for (int rp = 0; rp < rowPanels; rp++)
            {
                int m0 = Gemm.PanelStart(j.Cout, rp), height = Gemm.PanelHeight(j.Cout, rp);
                Gemm.Tile(j.Cin, a + (long)m0 * j.Cin, Gemm.Layout.RowMajor(j.Cin), b, mx + (long)m0 * Gemm.NR, Gemm.NR,
                    Math.Min(height, j.Cout - m0), Gemm.NR, null, null, null, false);
            }
        }
        for (int done = 0; done < count;)
        {
            int t = first + done;
            int row = t / j.TilesX, tx = t % j.TilesX, length = Math.Min(count - done, j.TilesX - tx);
            TransformOutput(ref j, row / j.TilesY, row % j.TilesY, tx, length, m + done);
            done += length;
        }
    }

    /// <summary>
    /// V = B^T d B for tiles [tx, tx + length) of tile row ty of image n, every input channel, into lanes of the
    /// chunk's panels (<paramref name="v"/> points at the first tile's lane). The four input rows are split into even
    /// and odd columns with the padding (E[i] = column 2i - 1, O[i] = column 2i), so that tile tx's columns are
    /// E[tx], O[tx], E[tx + 1], O[tx + 1]: contiguous runs over the tiles, transformed 16 at a time.
    /// </summary>
    private static void TransformInput(ref Job j, int n, int ty, int tx0, int length, float* v)
    {
        int half = length + 1, stride = half + Lanes; // room for a whole vector past the last tile
        float* e = stackalloc float[4 * stride];
        float* o = stackalloc float[4 * stride];
        new Span<float>(e, 4 * stride).Clear();
        new Span<float>(o, 4 * stride).Clear();
        float* block = stackalloc float[Lanes];
        long xi1 = (long)j.Cin * Gemm.NR; // from one position's panel to the next
        for (int c = 0; c < j.Cin; c++)
        {
            float* plane = j.X + ((long)n * j.Cin + c) * j.H * j.W;
            float* r0 = Row(plane, j, 2 * ty - 1), r1 = Row(plane, j, 2 * ty), r2 = Row(plane, j, 2 * ty + 1), r3 = Row(plane, j, 2 * ty + 2);
            // Rows of B^T d, each split into even and odd columns: w0 = d0 - d2, w1 = d1 + d2, w2 = d2 - d1, w3 = d1 - d3.
            for (int i = 0; i < half; i++)
            {
                int x0 = 2 * (tx0 + i) - 1, x1 = x0 + 1;
                bool in0 = x0 >= 0 && x0 < j.W, in1 = x1 < j.W;
                float e0 = in0 && r0 != null ? r0[x0] : 0f, e1 = in0 && r1 != null ? r1[x0] : 0f, e2 = in0 && r2 != null ? r2[x0] : 0f, e3 = in0 && r3 != null ? r3[x0] : 0f;
                float o0 = in1 && r0 != null ? r0[x1] : 0f, o1 = in1 && r1 != null ? r1[x1] : 0f, o2 = in1 && r2 != null ? r2[x1] : 0f, o3 = in1 && r3 != null ? r3[x1] : 0f;
                e[i] = e0 - e2; e[stride + i] = e1 + e2; e[2 * stride + i] = e2 - e1; e[3 * stride + i] = e1 - e3;
                o[i] = o0 - o2; o[stride + i] = o1 + o2; o[2 * stride + i] = o2 - o1; o[3 * stride + i] = o1 - o3;
            }
            for (int t = 0; t < length; t += Lanes)
            {
                int count = Math.Min(Lanes, length - t);
                for (int r = 0; r < 4; r++)
                {
                    float* er = e + r * stride + t, od = o + r * stride + t;
                    var c0 = Vector512.Load(er);
                    var c1 = Vector512.Load(od);
                    var c2 = Vector512.Load(er + 1);
                    var c3 = Vector512.Load(od + 1);
                    // Columns of (B^T d) B: c0 - c2, c1 + c2, c2 - c1, c1 - c3; position (r, q) of the tile is xi = 4r + q.
                    float* dst = v + 4 * r * xi1 + (long)c * Gemm.NR + t;
                    Store(c0 - c2, dst, count, block);
                    Store(c1 + c2, dst + xi1, count, block);
                    Store(c2 - c1, dst + 2 * xi1, count, block);
                    Store(c1 - c3, dst + 3 * xi1, count, block);
                }
            }
        }
    }

    /// <summary>Input row <paramref name="iy"/> of a plane, or null where it is padding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float* Row(float* plane, in Job j, int iy) => iy >= 0 && iy < j.H ? plane + (long)iy * j.W : null;

    /// <summary>Stores the first <paramref name="count"/> lanes (all of them at once when they are all wanted).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(Vector512<float> value, float* destination, int count, float* block)
    {
        if (count == Lanes)
        {
            value.Store(destination);
            return;
        }
        value.Store(block);
        for (int i = 0; i < count; i++) destination[i] = block[i];
    }

    // Lane permutations that interleave two vectors of 16: (a0, b0, a1, b1, ...) from the first 8 of each, then the last 8.
    private static readonly Vector512<int> s_interleaveLow = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    private static readonly Vector512<int> s_interleaveHigh = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);

    /// <summary>
    /// Y = A^T M A for tiles [tx, tx + length) of tile row ty of image n, every output channel, 16 tiles at a time
    /// (A^T's rows: m0 + m1 + m2 and m1 - m2 - m3, first down the tile, then across); the two outputs of each tile
    /// row are interleaved into the output row, then scale, bias, residual and ReLU. <paramref name="m"/> points at
    /// the first tile's lane of the chunk's products.
    /// </summary>
    private static void TransformOutput(ref Job j, int n, int ty, int tx0, int length, float* m)
    {
        long xi1 = (long)j.Cout * Gemm.NR;
        float* block = stackalloc float[2 * Lanes];
        for (int k = 0; k < j.Cout; k++)
        {
            var scale = Vector512.Create(j.Scale == null ? 1f : j.Scale[k]);
            var bias = Vector512.Create(j.Bias == null ? 0f : j.Bias[k]);
            long at = ((long)n * j.Cout + k) * j.H * j.W;
            float* y = j.Y + at;
            float* res = j.Residual == null ? null : j.Residual + at;
            float* mk = m + (long)k * Gemm.NR;
            for (int t = 0; t < length; t += Lanes)
            {
                float* src = mk + t;
                var s00 = Vector512.Load(src) + Vector512.Load(src + 4 * xi1) + Vector512.Load(src + 8 * xi1);
                var s01 = Vector512.Load(src + xi1) + Vector512.Load(src + 5 * xi1) + Vector512.Load(src + 9 * xi1);
                var s02 = Vector512.Load(src + 2 * xi1) + Vector512.Load(src + 6 * xi1) + Vector512.Load(src + 10 * xi1);
                var s03 = Vector512.Load(src + 3 * xi1) + Vector512.Load(src + 7 * xi1) + Vector512.Load(src + 11 * xi1);
                var s10 = Vector512.Load(src + 4 * xi1) - Vector512.Load(src + 8 * xi1) - Vector512.Load(src + 12 * xi1);
                var s11 = Vector512.Load(src + 5 * xi1) - Vector512.Load(src + 9 * xi1) - Vector512.Load(src + 13 * xi1);
                var s12 = Vector512.Load(src + 6 * xi1) - Vector512.Load(src + 10 * xi1) - Vector512.Load(src + 14 * xi1);
                var s13 = Vector512.Load(src + 7 * xi1) - Vector512.Load(src + 11 * xi1) - Vector512.Load(src + 15 * xi1);
                int tx = tx0 + t;
                int columns = Math.Min(2 * Math.Min(Lanes, length - t), j.W - 2 * tx);
                WriteRow(s00 + s01 + s02, s01 - s02 - s03, y, res, (long)(2 * ty) * j.W + 2 * tx, columns, scale, bias, j.Relu, block);
                if (2 * ty + 1 < j.H)
                    WriteRow(s10 + s11 + s12, s11 - s12 - s13, y, res, (long)(2 * ty + 1) * j.W + 2 * tx, columns, scale, bias, j.Relu, block);
            }
        }
    }

    /// <summary>
    /// Writes <paramref name="columns"/> outputs of one row from the even (<paramref name="even"/>) and odd
    /// (<paramref name="odd"/>) columns of 16 tiles, with the epilogue.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteRow(Vector512<float> even, Vector512<float> odd, float* y, float* residual, long at, int columns,
        Vector512<float> scale, Vector512<float> bias, bool relu, float* block)
    {
        var low = Avx512F.PermuteVar16x32x2(even, s_interleaveLow, odd);
        var high = Avx512F.PermuteVar16x32x2(even, s_interleaveHigh, odd);
        low = Vector512.FusedMultiplyAdd(low, scale, bias);
        high = Vector512.FusedMultiplyAdd(high, scale, bias);
        if (columns == 2 * Lanes)
        {
            if (residual != null)
            {
                low += Vector512.Load(residual + at);
                high += Vector512.Load(residual + at + Lanes);
            }
            if (relu)
            {
                // Where v < 0 the result is 0; NaN stays NaN, as in torch.relu.
                low = Vector512.ConditionalSelect(Vector512.LessThan(low, Vector512<float>.Zero), Vector512<float>.Zero, low);
                high = Vector512.ConditionalSelect(Vector512.LessThan(high, Vector512<float>.Zero), Vector512<float>.Zero, high);
            }
            low.Store(y + at);
            high.Store(y + at + Lanes);
            return;
        }
        low.Store(block);
        high.Store(block + Lanes);
        for (int i = 0; i < columns; i++)
        {
            float v = block[i];
            if (residual != null) v += residual[at + i];
            if (relu && v < 0f) v = 0f;
            y[at + i] = v;
        }
    }
}
