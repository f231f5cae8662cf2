using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Unrolled.Cpu;

/// <summary>
/// The register-blocked GEMM at the heart of every convolution: C[M x N] = A[M x K] . B[K x N], with A read in
/// place (the weights, row-major) or packed into panels of <see cref="MR"/> rows ([k][MR]), and B packed per call
/// into panels of <see cref="NR"/> columns ([k][NR]) or, where its rows are contiguous runs, read in place. The
/// AVX-512 micro-kernel keeps an MR x NR tile (16 zmm accumulators) in registers; the epilogue applies a per-row scale and bias (eval-mode BatchNorm), adds a residual
/// and applies ReLU while the tile is stored, so outputs are written once.
/// </summary>
internal static unsafe class Gemm
{
    /// <summary>Rows of the main micro-kernel's tile (24 zmm accumulators with <see cref="NR"/>).</summary>
    public const int MR = 12;
    /// <summary>Rows of the remainder kernel's tile, for the rows a multiple of <see cref="MR"/> leaves.</summary>
    public const int MRSmall = 8;
    public const int NR = 32;

    // A's rows are cut into panels: full panels of MR rows, then one or two of MRSmall for the rest. A multiple of 4
    // is cut exactly (64 = 4 x 12 + 2 x 8, 256 = 20 x 12 + 2 x 8: the two kernels run at the same speed per FMA, so
    // rows computed only to be thrown away are the waste to avoid), and one row past a multiple of 12 takes 16 rows,
    // not 20 (the 49 pixels of a 7x7 map: 3 x 12 + 2 x 8 = 52).

    /// <summary>How many full panels of <see cref="MR"/> rows an M-row operand starts with.</summary>
    private static int FullPanels(int m)
    {
        int full = m / MR;
        return (m % MR == 4 || m % MR == 1) && full > 0 ? full - 1 : full;
    }

    /// <summary>How many row panels an M-row operand has.</summary>
    public static int RowPanelCount(int m)
    {
        int full = FullPanels(m);
        return full + (m - full * MR + MRSmall - 1) / MRSmall;
    }

    /// <summary>The first row of panel <paramref name="panel"/>; in a packed operand the panel starts at element start * K.</summary>
    public static int PanelStart(int m, int panel)
    {
        int full = FullPanels(m);
        return panel <= full ? panel * MR : full * MR + (panel - full) * MRSmall;
    }

    /// <summary>The rows panel <paramref name="panel"/> holds when packed (MR or MRSmall; the last may be part padding).</summary>
    public static int PanelHeight(int m, int panel) => panel < FullPanels(m) ? MR : MRSmall;

    /// <summary>Rows of the packed operand, padding included: a packed [M x K] operand has PackedRows(M) * K elements.</summary>
    public static int PackedRows(int m)
    {
        int panels = RowPanelCount(m);
        return PanelStart(m, panels - 1) + PanelHeight(m, panels - 1);
    }

    /// <summary>Where row <paramref name="row"/> is in a packed operand: its panel's first row and height.</summary>
    public static void PanelOf(int m, int row, out int start, out int height)
    {
        int full = FullPanels(m);
        if (row < full * MR)
        {
            start = row / MR * MR;
            height = MR;
        }
        else
        {
            start = full * MR + (row - full * MR) / MRSmall * MRSmall;
            height = MRSmall;
        }
    }

    /// <summary>
    /// Packs a row-major [M x K] matrix into row panels ([panel][k][height]), zero-padding the last panel: a panel per
    /// work item on all cores, each written front to back.
    /// </summary>
    public static void PackA(ReadOnlySpan<float> a, int m, int k, Span<float> packed) => PackRows(a, m, k, packed, 0);

    /// <summary>
    /// Packs a row-major [N x K] matrix, B^T, into B's column panels ([panel][k][NR], zero-padded): the weights of a
    /// convolution computed transposed (<see cref="Conv.ForwardTransposed"/>), whose output channels are the columns.
    /// </summary>
    public static void PackTransposedB(ReadOnlySpan<float> bT, int n, int k, Span<float> packed) => PackRows(bT, n, k, packed, NR);

    /// <summary>Floats of <see cref="PackTransposedB"/>'s result.</summary>
    public static long TransposedBFloats(int n, int k) => (long)(n + NR - 1) / NR * NR * k;

    private static void PackRows(ReadOnlySpan<float> a, int m, int k, Span<float> packed, int height)
    {
        long rows = height == 0 ? PackedRows(m) : (m + height - 1) / height * (long)height;
        if (a.Length < (long)m * k || packed.Length < rows * k)
            throw new ArgumentException("internal: packing of mismatched sizes");
        fixed (float* pa = a, pp = packed)
        {
            var job = new PackJob { A = pa, Packed = pp, M = m, K = k, Height = height };
            WorkerPool.Shared.Run(&PackPanel, &job, height == 0 ? RowPanelCount(m) : (int)(rows / height));
        }
    }

    private struct PackJob
    {
        public float* A, Packed;
        public int M, K;
        // Every panel's height, or 0 for A's panels of MR and MRSmall rows.
        public int Height;
    }

    private static void PackPanel(void* context, int panel)
    {
        ref PackJob j = ref Unsafe.AsRef<PackJob>(context);
        int start = j.Height == 0 ? PanelStart(j.M, panel) : panel * j.Height;
        int height = j.Height == 0 ? PanelHeight(j.M, panel) : j.Height, rows = Math.Min(height, j.M - start);
        float* dst = j.Packed + (long)start * j.K;
        float* src = j.A + (long)start * j.K;
        for (int kk = 0; kk < j.K; kk++, dst += height)
        {
            int r = 0;
            for (; r < rows; r++) dst[r] = src[(long)r * j.K + kk];
            for (; r < height; r++) dst[r] = 0f;
        }
    }

    /// <summary>Where the MR rows of an A operand are: element (r, kk) is at a[r * RowStride + kk * KStride].</summary>
    /// <remarks>A packed panel has (1, height); row-major weights [M x K] read in place have (K, 1).</remarks>
    public readonly record struct Layout(int RowStride, int KStride)
    {
        public static Layout Packed(int height) => new(1, height);
        public static Layout RowMajor(int k) => new(k, 1);
    }

    /// <summary>
    /// One tile: rows [m0, m0 + rows) and columns [n0, n0 + cols) of C, rows and cols at most MR and NR, with the
    /// epilogue c = relu?(acc * scale + bias + residual) applied while the tile is stored.
    /// <paramref name="a"/> points at row m0 of A (laid out as <paramref name="layout"/> says), <paramref name="b"/>
    /// at the B panel ([k][NR]), or at column n0 of a row-major B read in place whose rows are <paramref name="ldb"/>
    /// apart (full panels only: NR columns are read); <paramref name="c"/> and <paramref name="residual"/> at element
    /// (m0, n0); <paramref name="scale"/> and <paramref name="bias"/> at row m0 (or null: 1 and 0).
    /// With <paramref name="prefetch"/>, a tile of MR rows on AVX-512 also asks for one line into L2 per k step, at
    /// <paramref name="prefetch"/> and then <paramref name="prefetchStride"/> bytes on each time: the operand the
    /// next tiles need (the next weight panel, 64 bytes on; a next block of columns read in place, a row of the
    /// input on) streams from memory spread over this tile's steps instead of all at once when its own first tile
    /// needs it. Other tiles ignore it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Tile(int k, float* a, Layout layout, float* b, float* c, int ldc, int rows, int cols,
        float* scale, float* bias, float* residual, bool relu, int ldb = NR, byte* prefetch = null, nint prefetchStride = 64)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            if (rows == MR && prefetch != null) Tile512x12<Ahead>(k, a, layout, b, ldb, c, ldc, cols, scale, bias, residual, relu, prefetch, prefetchStride);
            else if (rows == MR) Tile512x12<Behind>(k, a, layout, b, ldb, c, ldc, cols, scale, bias, residual, relu, null, 0);
            else Tile512x8(k, a, layout, b, ldb, c, ldc, rows, cols, scale, bias, residual, relu);
            return;
        }

        // Portable path: the tile accumulates in a stack buffer with whatever vector width the machine has.
        float* acc = stackalloc float[MR * NR];
        new Span<float>(acc, MR * NR).Clear();
        for (int kk = 0; kk < k; kk++)
        {
            float* bk = b + (long)kk * ldb;
            for (int r = 0; r < rows; r++)
            {
                var av = new System.Numerics.Vector<float>(a[(long)r * layout.RowStride + (long)kk * layout.KStride]);
                float* row = acc + r * NR;
                for (int j = 0; j < NR; j += System.Numerics.Vector<float>.Count)
                {
                    var bv = Unsafe.ReadUnaligned<System.Numerics.Vector<float>>(bk + j);
                    var cv = Unsafe.ReadUnaligned<System.Numerics.Vector<float>>(row + j);
                    Unsafe.WriteUnaligned(row + j, cv + av * bv);
                }
            }
        }
        Store(acc, c, ldc, rows, cols, scale, bias, residual, relu);
    }

    /// <summary>
    /// The main kernel: 12 rows x 32 columns in 24 zmm accumulators; per k step two loads of B, twelve broadcasts
    /// of A and 24 FMAs. The rows are addressed from four bases (rows 0, 3, 6, 9) plus 0, 1 or 2 row strides, so
    /// that in-place weights (row stride K) and packed panels (row stride 1) share one loop without running out
    /// of general registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512x12<TFetch>(int k, float* a, Layout layout, float* b, nint ldb, float* c, int ldc, int cols,
        float* scale, float* bias, float* residual, bool relu, byte* prefetch, nint prefetchStride) where TFetch : struct
    {
        // The edge tile's scratch is fetched before the loop: no call (nor stackalloc) may come after the
        // accumulators are live, or the AOT compiler spills them to memory on every k step.
        float* acc = cols != NR ? EdgeTile() : null;
        nint rs = layout.RowStride, rs2 = 2 * rs;
        float* p0 = a, p3 = a + 3 * rs, p6 = a + 6 * rs, p9 = a + 9 * rs;
        nint step = layout.KStride;
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
        Vector512<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default, c80 = default, c81 = default;
        Vector512<float> c90 = default, c91 = default, ca0 = default, ca1 = default, cb0 = default, cb1 = default;
        for (int kk = 0; kk < k; kk++)
        {
            if (typeof(TFetch) == typeof(Ahead))
            {
                System.Runtime.Intrinsics.X86.Sse.Prefetch1(prefetch);
                prefetch += prefetchStride;
            }
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x = Vector512.Create(p0[0]);
            c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(p0[rs]);
            c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(p0[rs2]);
            c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(p3[0]);
            c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(p3[rs]);
            c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(p3[rs2]);
            c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(p6[0]);
            c60 = Vector512.FusedMultiplyAdd(x, b0, c60); c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(p6[rs]);
            c70 = Vector512.FusedMultiplyAdd(x, b0, c70); c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            x = Vector512.Create(p6[rs2]);
            c80 = Vector512.FusedMultiplyAdd(x, b0, c80); c81 = Vector512.FusedMultiplyAdd(x, b1, c81);
            x = Vector512.Create(p9[0]);
            c90 = Vector512.FusedMultiplyAdd(x, b0, c90); c91 = Vector512.FusedMultiplyAdd(x, b1, c91);
            x = Vector512.Create(p9[rs]);
            ca0 = Vector512.FusedMultiplyAdd(x, b0, ca0); ca1 = Vector512.FusedMultiplyAdd(x, b1, ca1);
            x = Vector512.Create(p9[rs2]);
            cb0 = Vector512.FusedMultiplyAdd(x, b0, cb0); cb1 = Vector512.FusedMultiplyAdd(x, b1, cb1);
            p0 += step; p3 += step; p6 += step; p9 += step;
            b += ldb;
        }

        if (acc == null)
        {
            Row512(c00, c01, c + 0 * ldc, Scale(scale, 0), Bias(bias, 0), residual == null ? null : residual + 0 * ldc, relu);
            Row512(c10, c11, c + 1 * ldc, Scale(scale, 1), Bias(bias, 1), residual == null ? null : residual + 1 * ldc, relu);
            Row512(c20, c21, c + 2 * ldc, Scale(scale, 2), Bias(bias, 2), residual == null ? null : residual + 2 * ldc, relu);
            Row512(c30, c31, c + 3 * ldc, Scale(scale, 3), Bias(bias, 3), residual == null ? null : residual + 3 * ldc, relu);
            Row512(c40, c41, c + 4 * ldc, Scale(scale, 4), Bias(bias, 4), residual == null ? null : residual + 4 * ldc, relu);
            Row512(c50, c51, c + 5 * ldc, Scale(scale, 5), Bias(bias, 5), residual == null ? null : residual + 5 * ldc, relu);
            Row512(c60, c61, c + 6 * ldc, Scale(scale, 6), Bias(bias, 6), residual == null ? null : residual + 6 * ldc, relu);
            Row512(c70, c71, c + 7 * ldc, Scale(scale, 7), Bias(bias, 7), residual == null ? null : residual + 7 * ldc, relu);
            Row512(c80, c81, c + 8 * ldc, Scale(scale, 8), Bias(bias, 8), residual == null ? null : residual + 8 * ldc, relu);
            Row512(c90, c91, c + 9 * ldc, Scale(scale, 9), Bias(bias, 9), residual == null ? null : residual + 9 * ldc, relu);
            Row512(ca0, ca1, c + 10 * ldc, Scale(scale, 10), Bias(bias, 10), residual == null ? null : residual + 10 * ldc, relu);
            Row512(cb0, cb1, c + 11 * ldc, Scale(scale, 11), Bias(bias, 11), residual == null ? null : residual + 11 * ldc, relu);
            return;
        }

        // Edge tile: spill to this thread's scratch tile, then store the valid columns.
        c00.Store(acc + 0 * NR); c01.Store(acc + 0 * NR + 16);
        c10.Store(acc + 1 * NR); c11.Store(acc + 1 * NR + 16);
        c20.Store(acc + 2 * NR); c21.Store(acc + 2 * NR + 16);
        c30.Store(acc + 3 * NR); c31.Store(acc + 3 * NR + 16);
        c40.Store(acc + 4 * NR); c41.Store(acc + 4 * NR + 16);
        c50.Store(acc + 5 * NR); c51.Store(acc + 5 * NR + 16);
        c60.Store(acc + 6 * NR); c61.Store(acc + 6 * NR + 16);
        c70.Store(acc + 7 * NR); c71.Store(acc + 7 * NR + 16);
        c80.Store(acc + 8 * NR); c81.Store(acc + 8 * NR + 16);
        c90.Store(acc + 9 * NR); c91.Store(acc + 9 * NR + 16);
        ca0.Store(acc + 10 * NR); ca1.Store(acc + 10 * NR + 16);
        cb0.Store(acc + 11 * NR); cb1.Store(acc + 11 * NR + 16);
        Store(acc, c, ldc, MR, cols, scale, bias, residual, relu);
    }

    // The main kernel's two forms: without (Behind) and with (Ahead) a prefetch per k step; the JIT compiles one per
    // struct, each with only its own code.
    private struct Behind;
    private struct Ahead;

    /// <summary>The remainder kernel: up to 8 rows x 32 columns in 16 zmm accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512x8(int k, float* a, Layout layout, float* b, nint ldb, float* c, int ldc, int rows, int cols,
        float* scale, float* bias, float* residual, bool relu)
    {
        float* acc = rows != MRSmall || cols != NR ? EdgeTile() : null;
        // One base per row; rows past the edge repeat the last real row (their results are not stored).
        long rs = layout.RowStride;
        float* a0 = a, a1 = a + rs * Math.Min(1, rows - 1), a2 = a + rs * Math.Min(2, rows - 1), a3 = a + rs * Math.Min(3, rows - 1);
        float* a4 = a + rs * Math.Min(4, rows - 1), a5 = a + rs * Math.Min(5, rows - 1), a6 = a + rs * Math.Min(6, rows - 1), a7 = a + rs * Math.Min(7, rows - 1);
        nint step = layout.KStride;
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector512<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default;
        nint o = 0;
        for (int kk = 0; kk < k; kk++, o += step)
        {
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            var x0 = Vector512.Create(a0[o]);
            c00 = Vector512.FusedMultiplyAdd(x0, b0, c00); c01 = Vector512.FusedMultiplyAdd(x0, b1, c01);
            var x1 = Vector512.Create(a1[o]);
            c10 = Vector512.FusedMultiplyAdd(x1, b0, c10); c11 = Vector512.FusedMultiplyAdd(x1, b1, c11);
            var x2 = Vector512.Create(a2[o]);
            c20 = Vector512.FusedMultiplyAdd(x2, b0, c20); c21 = Vector512.FusedMultiplyAdd(x2, b1, c21);
            var x3 = Vector512.Create(a3[o]);
            c30 = Vector512.FusedMultiplyAdd(x3, b0, c30); c31 = Vector512.FusedMultiplyAdd(x3, b1, c31);
            var x4 = Vector512.Create(a4[o]);
            c40 = Vector512.FusedMultiplyAdd(x4, b0, c40); c41 = Vector512.FusedMultiplyAdd(x4, b1, c41);
            var x5 = Vector512.Create(a5[o]);
            c50 = Vector512.FusedMultiplyAdd(x5, b0, c50); c51 = Vector512.FusedMultiplyAdd(x5, b1, c51);
            var x6 = Vector512.Create(a6[o]);
            c60 = Vector512.FusedMultiplyAdd(x6, b0, c60); c61 = Vector512.FusedMultiplyAdd(x6, b1, c61);
            var x7 = Vector512.Create(a7[o]);
            c70 = Vector512.FusedMultiplyAdd(x7, b0, c70); c71 = Vector512.FusedMultiplyAdd(x7, b1, c71);
            b += ldb;
        }

        if (acc == null)
        {
            Row512(c00, c01, c + 0 * ldc, Scale(scale, 0), Bias(bias, 0), residual == null ? null : residual + 0 * ldc, relu);
            Row512(c10, c11, c + 1 * ldc, Scale(scale, 1), Bias(bias, 1), residual == null ? null : residual + 1 * ldc, relu);
            Row512(c20, c21, c + 2 * ldc, Scale(scale, 2), Bias(bias, 2), residual == null ? null : residual + 2 * ldc, relu);
            Row512(c30, c31, c + 3 * ldc, Scale(scale, 3), Bias(bias, 3), residual == null ? null : residual + 3 * ldc, relu);
            Row512(c40, c41, c + 4 * ldc, Scale(scale, 4), Bias(bias, 4), residual == null ? null : residual + 4 * ldc, relu);
            Row512(c50, c51, c + 5 * ldc, Scale(scale, 5), Bias(bias, 5), residual == null ? null : residual + 5 * ldc, relu);
            Row512(c60, c61, c + 6 * ldc, Scale(scale, 6), Bias(bias, 6), residual == null ? null : residual + 6 * ldc, relu);
            Row512(c70, c71, c + 7 * ldc, Scale(scale, 7), Bias(bias, 7), residual == null ? null : residual + 7 * ldc, relu);
            return;
        }

        // Edge tile: spill to this thread's scratch tile, then store the valid part.
        c00.Store(acc + 0 * NR); c01.Store(acc + 0 * NR + 16);
        c10.Store(acc + 1 * NR); c11.Store(acc + 1 * NR + 16);
        c20.Store(acc + 2 * NR); c21.Store(acc + 2 * NR + 16);
        c30.Store(acc + 3 * NR); c31.Store(acc + 3 * NR + 16);
        c40.Store(acc + 4 * NR); c41.Store(acc + 4 * NR + 16);
        c50.Store(acc + 5 * NR); c51.Store(acc + 5 * NR + 16);
        c60.Store(acc + 6 * NR); c61.Store(acc + 6 * NR + 16);
        c70.Store(acc + 7 * NR); c71.Store(acc + 7 * NR + 16);
        Store(acc, c, ldc, rows, cols, scale, bias, residual, relu);
    }

    [ThreadStatic] private static float* t_edgeTile;

    /// <summary>
    /// This thread's MR x NR scratch tile: native memory, allocated once per thread and kept for the thread's life
    /// (1.5 KB), like the B panel scratch. Not a managed array: which thread first takes an edge tile depends on
    /// timing, and a managed first allocation would then land in whichever step that happens to be.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float* EdgeTile()
    {
        if (t_edgeTile == null) t_edgeTile = (float*)NativeMemory.AlignedAlloc(MR * NR * sizeof(float), 64);
        return t_edgeTile;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Bias(float* bias, int r) => bias == null ? 0f : bias[r];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(float* scale, int r) => scale == null ? 1f : scale[r];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Row512(Vector512<float> v0, Vector512<float> v1, float* c, float scale, float bias, float* residual, bool relu)
    {
        var sv = Vector512.Create(scale);
        var bv = Vector512.Create(bias);
        v0 = Vector512.FusedMultiplyAdd(v0, sv, bv);
        v1 = Vector512.FusedMultiplyAdd(v1, sv, bv);
        if (residual != null)
        {
            v0 += Vector512.Load(residual);
            v1 += Vector512.Load(residual + 16);
        }
        if (relu)
        {
            v0 = Vector512.Max(v0, Vector512<float>.Zero);
            v1 = Vector512.Max(v1, Vector512<float>.Zero);
        }
        v0.Store(c);
        v1.Store(c + 16);
    }

    private static void Store(float* acc, float* c, int ldc, int rows, int cols, float* scale, float* bias, float* residual, bool relu)
    {
        for (int r = 0; r < rows; r++)
        {
            float sv = Scale(scale, r), bv = Bias(bias, r);
            for (int j = 0; j < cols; j++)
            {
                float v = MathF.FusedMultiplyAdd(acc[r * NR + j], sv, bv);
                if (residual != null) v += residual[(long)r * ldc + j];
                if (relu && v < 0f) v = 0f; // NaN stays NaN, as in torch.relu
                c[(long)r * ldc + j] = v;
            }
        }
    }

    [ThreadStatic] internal static Scratch t_panel;

    /// <summary>
    /// An A operand [M x K] for <see cref="Multiply"/>: packed by <see cref="PackA"/>, or read in place with element
    /// (r, kk) at Data[r * RowStride + kk * KStride] (W [Cout x K] is (K, 1); its transpose W^T is (1, K)).
    /// </summary>
    public readonly struct Operand
    {
        private readonly float* _data;
        private readonly int _rowStride, _kStride;
        private readonly bool _packed;

        private Operand(float* data, int rowStride, int kStride, bool packed)
        {
            _data = data;
            _rowStride = rowStride;
            _kStride = kStride;
            _packed = packed;
        }

        public static Operand Packed(float* data) => new(data, 0, 0, true);

        public static Operand Strided(float* data, int rowStride, int kStride) => new(data, rowStride, kStride, false);

        /// <summary>Where row panel <paramref name="panel"/> of this [M x K] operand starts, and how its rows lie.</summary>
        public float* Panel(int m, int k, int panel, out Layout layout)
        {
            int start = PanelStart(m, panel);
            if (_packed)
            {
                layout = Layout.Packed(PanelHeight(m, panel));
                return _data + (long)start * k;
            }
            layout = new Layout(_rowStride, _kStride);
            return _data + (long)start * _rowStride;
        }
    }

    private struct MultiplyJob
    {
        public Operand A;
        public float* B, C;
        public int M, K, N, Ldb, Ldc, ColumnPanels, RowChunks, PanelsPerChunk;
        public bool Accumulate, BPacked;
    }

    /// <summary>
    /// As <see cref="Multiply"/>, with B already in column panels ([panel][K][NR], the last zero-padded), as a
    /// gather built them.
    /// </summary>
    public static void MultiplyPackedB(Operand a, int m, int k, float* packedB, int n, float* c, int ldc, bool accumulate) =>
        MultiplyOnAllCores(a, m, k, packedB, 0, n, c, ldc, accumulate, bPacked: true);

    /// <summary>
    /// C[M x N] (+)= A[M x K] . B[K x N] on every core: A as <paramref name="a"/> says, B row-major with row
    /// stride <paramref name="ldb"/>, C row-major with row stride <paramref name="ldc"/>.
    /// </summary>
    public static void Multiply(Operand a, int m, int k, float* b, int ldb, int n, float* c, int ldc, bool accumulate) =>
        MultiplyOnAllCores(a, m, k, b, ldb, n, c, ldc, accumulate, bPacked: false);

    private static void MultiplyOnAllCores(Operand a, int m, int k, float* b, int ldb, int n, float* c, int ldc, bool accumulate, bool bPacked)
    {
        int columnPanels = (n + NR - 1) / NR;
        int rowPanels = RowPanelCount(m);
        int threads = WorkerPool.Shared.Threads;
        int rowChunks = Math.Clamp((8 * threads + columnPanels - 1) / columnPanels, 1, rowPanels);
        int panelsPerChunk = (rowPanels + rowChunks - 1) / rowChunks;
        rowChunks = (rowPanels + panelsPerChunk - 1) / panelsPerChunk;
        var job = new MultiplyJob
        {
            A = a, B = b, C = c, M = m, K = k, N = n, Ldb = ldb, Ldc = ldc,
            ColumnPanels = columnPanels, RowChunks = rowChunks, PanelsPerChunk = panelsPerChunk, Accumulate = accumulate, BPacked = bPacked,
        };
        WorkerPool.Shared.Run(&MultiplyItem, &job, columnPanels * rowChunks);
    }

    private static void MultiplyItem(void* context, int item)
    {
        ref MultiplyJob j = ref Unsafe.AsRef<MultiplyJob>(context);
        int chunk = item % j.RowChunks;
        int panel = item / j.RowChunks;
        int n0 = panel * NR;
        int cols = Math.Min(NR, j.N - n0);
        float* bp;
        if (j.BPacked) bp = j.B + (long)panel * j.K * NR;
        else
        {
            bp = t_panel.Get((long)j.K * NR);
            float* src = j.B + n0;
            for (int kk = 0; kk < j.K; kk++, src += j.Ldb)
            {
                float* dst = bp + (long)kk * NR;
                Copy(src, dst, cols);
                if (cols < NR) new Span<float>(dst + cols, NR - cols).Clear();
            }
        }
        int first = chunk * j.PanelsPerChunk;
        int last = Math.Min(first + j.PanelsPerChunk, RowPanelCount(j.M));
        for (int rp = first; rp < last; rp++)
        {
            int m0 = PanelStart(j.M, rp), height = PanelHeight(j.M, rp);
            float* c = j.C + (long)m0 * j.Ldc + n0;
            float* a = j.A.Panel(j.M, j.K, rp, out var layout);
            Tile(j.K, a, layout, bp, c, j.Ldc, Math.Min(height, j.M - m0), cols, null, null, j.Accumulate ? c : null, false);
        }
    }

    /// <summary>
    /// Copies a short run of floats (a panel row: at most <see cref="NR"/>) inline; Span.CopyTo's call costs as
    /// much as the copy at these lengths.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Copy(float* src, float* dst, int count)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i <= count - 16; i += 16) Vector512.Store(Vector512.Load(src + i), dst + i);
        for (; i <= count - 8; i += 8) Vector256.Store(Vector256.Load(src + i), dst + i);
        for (; i < count; i++) dst[i] = src[i];
    }

    /// <summary>Unmanaged, 64-byte aligned scratch that grows on demand and is never freed (one per thread).</summary>
    internal struct Scratch
    {
        private float* _ptr;
        private long _capacity;

        public float* Get(long floats)
        {
            if (floats > _capacity)
            {
                if (_ptr != null) NativeMemory.AlignedFree(_ptr);
                _ptr = (float*)NativeMemory.AlignedAlloc((nuint)(floats * sizeof(float)), 64);
                _capacity = floats;
            }
            return _ptr;
        }
    }
}
