using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Unrolled.Cpu;

/// <summary>
/// The register-blocked GEMM at the heart of every convolution: C[M x N] = A[M x K] . B[K x N], with A read in
/// place (the weights, row-major) or packed into panels of <see cref="MR"/> rows ([k][MR]), and B packed per call
/// into panels of <see cref="NR"/> columns ([k][NR]). The AVX-512 micro-kernel keeps an MR x NR tile (16 zmm
/// accumulators) in registers; the epilogue applies a per-row scale and bias (eval-mode BatchNorm), adds a residual
/// and applies ReLU while the tile is stored, so outputs are written once.
/// </summary>
internal static unsafe class Gemm
{
    public const int MR = 8;
    public const int NR = 32;

    /// <summary>Packs a row-major [M x K] matrix into MR-row panels ([panel][k][MR]), zero-padding the last panel.</summary>
    public static void PackA(ReadOnlySpan<float> a, int m, int k, Span<float> packed)
    {
        int panels = (m + MR - 1) / MR;
        packed = packed.Slice(0, panels * MR * k);
        packed.Clear();
        for (int row = 0; row < m; row++)
        {
            var src = a.Slice(row * k, k);
            var dst = packed.Slice(row / MR * MR * k + row % MR);
            for (int kk = 0; kk < k; kk++) dst[kk * MR] = src[kk];
        }
    }

    /// <summary>Where the MR rows of an A operand are: element (r, kk) is at a[r * RowStride + kk * KStride].</summary>
    /// <remarks>A packed panel has (1, MR); row-major weights [M x K] read in place have (K, 1).</remarks>
    public readonly record struct Layout(int RowStride, int KStride)
    {
        public static Layout Packed => new(1, MR);
        public static Layout RowMajor(int k) => new(k, 1);
    }

    /// <summary>
    /// One tile: rows [m0, m0 + rows) and columns [n0, n0 + cols) of C, rows and cols at most MR and NR, with the
    /// epilogue c = relu?(acc * scale + bias + residual) applied while the tile is stored.
    /// <paramref name="a"/> points at row m0 of A (laid out as <paramref name="layout"/> says), <paramref name="b"/>
    /// at the B panel; <paramref name="c"/> and <paramref name="residual"/> at element (m0, n0); <paramref name="scale"/>
    /// and <paramref name="bias"/> at row m0 (or null: 1 and 0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Tile(int k, float* a, Layout layout, float* b, float* c, int ldc, int rows, int cols,
        float* scale, float* bias, float* residual, bool relu)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            Tile512(k, a, layout, b, c, ldc, rows, cols, scale, bias, residual, relu);
            return;
        }

        // Portable path: the tile accumulates in a stack buffer with whatever vector width the machine has.
        float* acc = stackalloc float[MR * NR];
        new Span<float>(acc, MR * NR).Clear();
        for (int kk = 0; kk < k; kk++)
        {
            float* bk = b + kk * NR;
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512(int k, float* a, Layout layout, float* b, float* c, int ldc, int rows, int cols,
        float* scale, float* bias, float* residual, bool relu)
    {
        // The edge tile's scratch is fetched before the loop: no call (nor stackalloc) may come after the
        // accumulators are live, or the AOT compiler spills all sixteen to memory on every k step.
        float* acc = rows != MR || cols != NR ? EdgeTile() : null;
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
            b += NR;
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

    [ThreadStatic] private static float[]? t_edgeTile;

    /// <summary>This thread's MR x NR scratch tile (pinned, allocated once per thread).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float* EdgeTile()
    {
        t_edgeTile ??= GC.AllocateArray<float>(MR * NR, pinned: true);
        return (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(t_edgeTile));
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

    /// <summary>Packs the transpose of a row-major [rows x cols] matrix (W^T for the data gradient) into MR-row panels.</summary>
    public static void PackATransposed(ReadOnlySpan<float> a, int rows, int cols, Span<float> packed)
    {
        // The packed matrix is A^T: cols x rows.
        int panels = (cols + MR - 1) / MR;
        packed = packed.Slice(0, panels * MR * rows);
        packed.Clear();
        for (int r = 0; r < rows; r++)
        {
            var src = a.Slice(r * cols, cols);
            for (int c = 0; c < cols; c++) packed[c / MR * MR * rows + r * MR + c % MR] = src[c];
        }
    }

    private struct MultiplyJob
    {
        public float* A, B, C;
        public int M, K, N, Ldb, Ldc, ColumnPanels, RowChunks, PanelsPerChunk;
        public bool Accumulate;
    }

    /// <summary>
    /// C[M x N] (+)= A[M x K] . B[K x N] on every core: A packed in MR-row panels ([panel][k][MR]), B row-major with row
    /// stride <paramref name="ldb"/>, C row-major with row stride <paramref name="ldc"/>.
    /// </summary>
    public static void Multiply(float* packedA, int m, int k, float* b, int ldb, int n, float* c, int ldc, bool accumulate)
    {
        int columnPanels = (n + NR - 1) / NR;
        int rowPanels = (m + MR - 1) / MR;
        int threads = WorkerPool.Shared.Threads;
        int rowChunks = Math.Clamp((8 * threads + columnPanels - 1) / columnPanels, 1, rowPanels);
        int panelsPerChunk = (rowPanels + rowChunks - 1) / rowChunks;
        rowChunks = (rowPanels + panelsPerChunk - 1) / panelsPerChunk;
        var job = new MultiplyJob
        {
            A = packedA, B = b, C = c, M = m, K = k, N = n, Ldb = ldb, Ldc = ldc,
            ColumnPanels = columnPanels, RowChunks = rowChunks, PanelsPerChunk = panelsPerChunk, Accumulate = accumulate,
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
        float* bp = t_panel.Get((long)j.K * NR);
        for (int kk = 0; kk < j.K; kk++)
        {
            float* dst = bp + (long)kk * NR;
            new ReadOnlySpan<float>(j.B + (long)kk * j.Ldb + n0, cols).CopyTo(new Span<float>(dst, cols));
            if (cols < NR) new Span<float>(dst + cols, NR - cols).Clear();
        }
        int first = chunk * j.PanelsPerChunk;
        int last = Math.Min(first + j.PanelsPerChunk, (j.M + MR - 1) / MR);
        for (int rp = first; rp < last; rp++)
        {
            int m0 = rp * MR;
            float* c = j.C + (long)m0 * j.Ldc + n0;
            Tile(j.K, j.A + (long)rp * MR * j.K, Layout.Packed, bp, c, j.Ldc, Math.Min(MR, j.M - m0), cols, null, null, j.Accumulate ? c : null, false);
        }
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
