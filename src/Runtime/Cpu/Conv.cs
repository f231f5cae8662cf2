using System;
using System.Runtime.CompilerServices;

namespace Unrolled.Cpu;

/// <summary>
/// Conv2d in NCHW as an implicit GEMM per image: out[Cout x OH*OW] = W[Cout x Cin*k*k] . cols[Cin*k*k x OH*OW],
/// where the columns are gathered from the input straight into packed B panels (no im2col buffer).
/// Work items are (image, column panel, row chunk) and run on every core.
/// </summary>
internal static unsafe class Conv
{
    private struct Job
    {
        public float* X, Y, Residual, A, Bias;
        public int Cin, H, W, Cout, OH, OW, Kernel, Stride, Pad, K, N;
        public int ColumnPanels, RowChunks, PanelsPerChunk;
        public bool Relu;
    }

    /// <summary>
    /// y = relu?(conv(x, A) + bias + residual). <paramref name="packedA"/> comes from <see cref="Gemm.PackA"/> of
    /// the [Cout x Cin*k*k] weights; <paramref name="bias"/> is [Cout] or empty; <paramref name="residual"/> is
    /// shaped like y or empty.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        ReadOnlySpan<float> packedA, ReadOnlySpan<float> bias,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        int n = oh * ow;
        int k = cin * kernel * kernel;
        int columnPanels = (n + Gemm.NR - 1) / Gemm.NR;
        int rowPanels = (cout + Gemm.MR - 1) / Gemm.MR;
        int threads = WorkerPool.Shared.Threads;
        // Enough items to balance the cores, without splitting rows more than needed (each row chunk re-packs B).
        int rowChunks = Math.Clamp((8 * threads + batch * columnPanels - 1) / (batch * columnPanels), 1, rowPanels);
        int panelsPerChunk = (rowPanels + rowChunks - 1) / rowChunks;
        rowChunks = (rowPanels + panelsPerChunk - 1) / panelsPerChunk;

        fixed (float* px = x, py = y, pr = residual, pa = packedA, pb = bias)
        {
            var job = new Job
            {
                X = px, Y = py, Residual = residual.IsEmpty ? null : pr, A = pa, Bias = bias.IsEmpty ? null : pb,
                Cin = cin, H = h, W = w, Cout = cout, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad,
                K = k, N = n, ColumnPanels = columnPanels, RowChunks = rowChunks, PanelsPerChunk = panelsPerChunk,
                Relu = relu,
            };
            WorkerPool.Shared.Run(&Run, &job, batch * columnPanels * rowChunks);
        }
    }

    private static void Run(void* context, int item)
    {
        ref Job j = ref Unsafe.AsRef<Job>(context);
        int chunk = item % j.RowChunks;
        int rest = item / j.RowChunks;
        int panel = rest % j.ColumnPanels;
        int image = rest / j.ColumnPanels;

        int n0 = panel * Gemm.NR;
        int cols = Math.Min(Gemm.NR, j.N - n0);
        float* b = Gemm.t_panel.Get((long)j.K * Gemm.NR);
        float* x = j.X + (long)image * j.Cin * j.H * j.W;
        PackColumns(ref j, x, n0, cols, b);

        long outBase = (long)image * j.Cout * j.N + n0;
        int firstRowPanel = chunk * j.PanelsPerChunk;
        int lastRowPanel = Math.Min(firstRowPanel + j.PanelsPerChunk, (j.Cout + Gemm.MR - 1) / Gemm.MR);
        for (int rp = firstRowPanel; rp < lastRowPanel; rp++)
        {
            int m0 = rp * Gemm.MR;
            int rows = Math.Min(Gemm.MR, j.Cout - m0);
            long at = outBase + (long)m0 * j.N;
            Gemm.Tile(j.K, j.A + (long)rp * Gemm.MR * j.K, b, j.Y + at, j.N, rows, cols,
                j.Bias == null ? null : j.Bias + m0, j.Residual == null ? null : j.Residual + at, j.Relu);
        }
    }

    /// <summary>Gathers columns [n0, n0 + cols) of the implicit im2col matrix into a [K][NR] panel, zero-padded.</summary>
    private static void PackColumns(ref Job j, float* x, int n0, int cols, float* panel)
    {
        int hw = j.H * j.W;
        if (j.Kernel == 1 && j.Stride == 1 && j.Pad == 0)
        {
            // 1x1 stride 1: the columns are contiguous runs of the input planes.
            for (int c = 0; c < j.Cin; c++)
            {
                float* src = x + (long)c * hw + n0;
                float* dst = panel + (long)c * Gemm.NR;
                new ReadOnlySpan<float>(src, cols).CopyTo(new Span<float>(dst, cols));
                if (cols < Gemm.NR) new Span<float>(dst + cols, Gemm.NR - cols).Clear();
            }
            return;
        }

        int* iy0 = stackalloc int[Gemm.NR];
        int* ix0 = stackalloc int[Gemm.NR];
        int oy = n0 / j.OW, ox = n0 % j.OW;
        for (int t = 0; t < cols; t++)
        {
            iy0[t] = oy * j.Stride - j.Pad;
            ix0[t] = ox * j.Stride - j.Pad;
            if (++ox == j.OW) { ox = 0; oy++; }
        }

        float* dstRow = panel;
        for (int c = 0; c < j.Cin; c++)
        {
            float* plane = x + (long)c * hw;
            for (int ky = 0; ky < j.Kernel; ky++)
            {
                for (int kx = 0; kx < j.Kernel; kx++)
                {
                    for (int t = 0; t < cols; t++)
                    {
                        int iy = iy0[t] + ky, ix = ix0[t] + kx;
                        dstRow[t] = (uint)iy < (uint)j.H && (uint)ix < (uint)j.W ? plane[iy * j.W + ix] : 0f;
                    }
                    for (int t = cols; t < Gemm.NR; t++) dstRow[t] = 0f;
                    dstRow += Gemm.NR;
                }
            }
        }
    }
}
