using System;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Unrolled.Cpu;

/// <summary>
/// The backward kernels. Every gradient is accumulated (+=) into its destination, as autograd sums the
/// contributions of a tensor's consumers; callers zero a gradient buffer before its first contribution.
/// </summary>
internal static unsafe class Backward
{
    /// <summary>
    /// Conv filter gradient for one image: dW[Cout x K] += gz[Cout x HW] . cols(x)^T, with cols(x)^T [HW x K]
    /// gathered straight into the GEMM's column panels in <paramref name="panels"/> and gz read in place.
    /// </summary>
    public static void ConvFilter(float* x, float* gz, float* dw, float* panels,
        int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad) =>
        ConvFilterFolded(x, gz, dw, panels, rows: null, 1, cin, h, w, cout, oh, ow, kernel, stride, pad);

    /// <summary>
    /// <see cref="ConvFilter"/> for the whole batch at once, for small maps: dW += gz[Cout x batch*HW] . cols^T,
    /// the batch folded into the inner dimension (one GEMM instead of one per image); gz is gathered into
    /// <paramref name="rows"/> (Cout x batch*HW floats) first, unless the batch is one image.
    /// <paramref name="panels"/> holds <see cref="FilterPanelFloats"/> floats. Without <paramref name="accumulate"/>,
    /// dW = the product (every element written).
    /// </summary>
    public static void ConvFilterFolded(float* x, float* gz, float* dw, float* panels, float* rows, int batch,
        int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool accumulate = true)
    {
        int hw = oh * ow, q = batch * hw;
        int k = cin * kernel * kernel;
        float* a = gz;
        if (batch > 1)
        {
            GatherPlanes(gz, rows, batch, cout, hw);
            a = rows;
        }
        var job = new FilterJob
        {
            X = x, Panels = panels, Batch = batch, Cin = cin, H = h, W = w, OH = oh, OW = ow,
            Kernel = kernel, Stride = stride, Pad = pad, K = k, Q = q,
        };
        int columnPanels = (k + Gemm.NR - 1) / Gemm.NR;
        WorkerPool.Shared.Run(&PackFilterPanel, &job, columnPanels);
        Gemm.MultiplyPackedB(Gemm.Operand.Strided(a, q, 1), cout, q, panels, k, dw, k, accumulate);
    }

    /// <summary>
    /// Whether <see cref="ConvFilterPointwise"/> computes this convolution's filter gradient: 1x1, stride 1, unpadded,
    /// with more input than output channels.
    /// </summary>
    public static bool PointwiseApplies(int kernel, int stride, int pad, int cin, int cout) => kernel == 1 && stride == 1 && pad == 0 && cin > cout;

    /// <summary>Floats of <see cref="ConvFilterPointwise"/>'s scratch.</summary>
    public static long PointwiseFloats(int cin, int hw, int cout) => FilterPanelFloats(hw, cout) + (long)cin * cout;

    /// <summary>
    /// The filter gradient of a 1x1 stride-1 convolution with more input than output channels, over the batch, as
    /// its transpose: dW^T [Cin x Cout] = sum over images of x [Cin x HW] . gz^T, so that the smaller operand, gz, is
    /// the one transposed into panels and x is read in place; then dW += (dW^T)^T. <paramref name="scratch"/> holds
    /// <see cref="PointwiseFloats"/> floats.
    /// </summary>
    public static void ConvFilterPointwise(float* x, float* gz, float* dw, float* scratch, int batch, int cin, int hw, int cout)
    {
        float* panels = scratch;
        float* transposed = scratch + FilterPanelFloats(hw, cout);
        new Span<float>(transposed, cin * cout).Clear();
        for (int n = 0; n < batch; n++)
            ConvFilter(gz + (long)n * cout * hw, x + (long)n * cin * hw, transposed, panels, cout, 1, hw, cin, 1, hw, 1, 1, 0);
        var add = new AddJob { From = transposed, Dw = dw, Cin = cin, Cout = cout };
        WorkerPool.Shared.Run(&AddTransposed, &add, cout);
    }

    /// <summary>A product to add into dW [Cout x ...], row by row (one item per output channel).</summary>
    private struct AddJob
    {
        public float* From, Dw;
        public int Cin, Cout, Taps;
    }

    /// <summary>
    /// dW[o, c, tap] += from[o, c] for a kernel of <paramref name="taps"/> taps, <paramref name="dw"/> pointing at the
    /// tap of dW[0, 0]: the centre-tap filter gradient of a map of one pixel (<see cref="Conv.CentreTapOnly"/>).
    /// </summary>
    public static void AddTap(float* from, float* dw, int cin, int cout, int taps)
    {
        var add = new AddJob { From = from, Dw = dw, Cin = cin, Cout = cout, Taps = taps };
        WorkerPool.Shared.Run(&AddTapRow, &add, cout);
    }

    private static void AddTapRow(void* context, int o)
    {
        ref AddJob j = ref Unsafe.AsRef<AddJob>(context);
        float* row = j.Dw + (long)o * j.Cin * j.Taps, from = j.From + (long)o * j.Cin;
        for (int c = 0; c < j.Cin; c++) row[(long)c * j.Taps] += from[c];
    }

    /// <summary>Row o of dW [Cout x Cin] += column o of dW^T [Cin x Cout] (From).</summary>
    private static void AddTransposed(void* context, int o)
    {
        ref AddJob j = ref Unsafe.AsRef<AddJob>(context);
        float* row = j.Dw + (long)o * j.Cin;
        for (int c = 0; c < j.Cin; c++) row[c] += j.From[(long)c * j.Cout + o];
    }

    /// <summary>
    /// Whether <see cref="ConvFilterPlanes"/> computes this convolution's filter gradient: 3x3, stride 1, padding 1.
    /// </summary>
    public static bool PlanesApply(int kernel, int stride, int pad) => kernel == 3 && stride == 1 && pad == 1;

    /// <summary>Floats of <see cref="ConvFilterPlanes"/>'s scratch.</summary>
    public static long PlanesFloats(int cin, int h, int w, int cout)
    {
        int wp = w + 2;
        long rows = (long)(h + 2) * wp + 2;
        return (cin + Gemm.NR - 1) / Gemm.NR * rows * Gemm.NR + 9L * cout * cin + (long)cout * h * wp;
    }

    private struct PlanesFilterJob
    {
        public float* Panels, Rows, Taps;
        public int Cin, Cout, Wp, Kp, RowPanels, ColumnPanels;
        public long PanelStride;
    }

    /// <summary>
    /// The filter gradient of a 3x3 stride-1 convolution with padding 1 over the whole batch, without the nine-fold
    /// im2col: dW[o, c, ky, kx] += sum over pixels of gz[o, p] x[c, p + (ky - 1, kx - 1)]. Each image's input is
    /// packed once, transposed and zero-padded, as the panels of a plane of (H + 2) x (W + 2) pixels; gz is copied into
    /// rows of W + 2 pixels whose last two are zero. In those coordinates tap (ky, kx) is a constant shift of
    /// ky * (W + 2) + kx pixels, so each tap's product is a GEMM over the same panels, read from that row on (the two
    /// extra pixels of each gz row meet the wrapped-around neighbours with zero). The nine products accumulate, image
    /// after image, in [9][Cout][Cin] and are added into dW at the end (an infinite input can make a NaN there where the
    /// im2col path makes an infinity: non-finite either way, which the optimizer refuses). <paramref name="scratch"/> holds
    /// <see cref="PlanesFloats"/> floats.
    /// </summary>
    public static void ConvFilterPlanes(float* x, float* gz, float* dw, float* scratch, int batch, int cin, int h, int w, int cout)
    {
        int wp = w + 2, kp = h * wp, columnPanels = (cin + Gemm.NR - 1) / Gemm.NR;
        long rows = (long)(h + 2) * wp + 2;
        float* panels = scratch;
        float* taps = panels + columnPanels * rows * Gemm.NR;
        float* gzRows = taps + 9L * cout * cin;
        new Span<float>(taps, 9 * cout * cin).Clear();
        // The two pixels past the padded plane, which only the last row's wrapped-around neighbours read.
        for (int panel = 0; panel < columnPanels; panel++) new Span<float>(panels + (panel * rows + rows - 2) * Gemm.NR, 2 * Gemm.NR).Clear();
        // The input as a 1x1 convolution with padding 1 sees it: its output pixels are the padded plane's.
        var pack = new FilterJob
        {
            Panels = panels, Batch = 1, Cin = cin, H = h, W = w, OH = h + 2, OW = wp,
            Kernel = 1, Stride = 1, Pad = 1, K = cin, Q = (int)rows,
        };
        var job = new PlanesFilterJob
        {
            Panels = panels, Rows = gzRows, Taps = taps, Cin = cin, Cout = cout, Wp = wp, Kp = kp,
            RowPanels = Gemm.RowPanelCount(cout), ColumnPanels = columnPanels, PanelStride = rows * Gemm.NR,
        };
        var copy = new PadJob { To = gzRows, Rows = h, Width = w };
        for (int n = 0; n < batch; n++)
        {
            pack.X = x + (long)n * cin * h * w;
            WorkerPool.Shared.Run(&PackFilterPanel, &pack, columnPanels);
            copy.From = gz + (long)n * cout * h * w;
            WorkerPool.Shared.Run(&PadRows, &copy, cout);
            WorkerPool.Shared.Run(&PlanesTile, &job, 9 * columnPanels);
        }
        var add = new AddJob { From = taps, Dw = dw, Cin = cin, Cout = cout };
        WorkerPool.Shared.Run(&AddTaps, &add, cout);
    }

    private struct PadJob
    {
        public float* From, To;
        public int Rows, Width;
    }

    /// <summary>Plane m of gz (Rows rows of Width pixels) into rows of Width + 2 pixels, the last two zero.</summary>
    private static void PadRows(void* context, int m)
    {
        ref PadJob j = ref Unsafe.AsRef<PadJob>(context);
        int w = j.Width, rows = j.Rows;
        float* src = j.From + (long)m * rows * w;
        float* dst = j.To + (long)m * rows * (w + 2);
        for (int r = 0; r < rows; r++, src += w, dst += w + 2)
        {
            new ReadOnlySpan<float>(src, w).CopyTo(new Span<float>(dst, w));
            dst[w] = 0f;
            dst[w + 1] = 0f;
        }
    }

    /// <summary>Item (tap, column panel): that column panel of the tap's product, accumulated.</summary>
    private static void PlanesTile(void* context, int item)
    {
        ref PlanesFilterJob j = ref Unsafe.AsRef<PlanesFilterJob>(context);
        int panel = item % j.ColumnPanels, tap = item / j.ColumnPanels;
        int shift = tap / 3 * j.Wp + tap % 3, n0 = panel * Gemm.NR;
        float* b = j.Panels + panel * j.PanelStride + (long)shift * Gemm.NR;
        for (int rp = 0; rp < j.RowPanels; rp++)
        {
            int m0 = Gemm.PanelStart(j.Cout, rp), height = Gemm.PanelHeight(j.Cout, rp);
            float* c = j.Taps + ((long)tap * j.Cout + m0) * j.Cin + n0;
            Gemm.Tile(j.Kp, j.Rows + (long)m0 * j.Kp, Gemm.Layout.RowMajor(j.Kp), b, c, j.Cin,
                Math.Min(height, j.Cout - m0), Math.Min(Gemm.NR, j.Cin - n0), null, null, c, false);
        }
    }

    /// <summary>Row o of dW [Cout x Cin*9] += the taps' [9][Cout][Cin] products (From).</summary>
    private static void AddTaps(void* context, int o)
    {
        ref AddJob j = ref Unsafe.AsRef<AddJob>(context);
        int cin = j.Cin;
        float* row = j.Dw + (long)o * cin * 9;
        for (int tap = 0; tap < 9; tap++)
        {
            float* src = j.From + ((long)tap * j.Cout + o) * cin;
            for (int ch = 0; ch < cin; ch++) row[ch * 9 + tap] += src[ch];
        }
    }

    /// <summary>Floats of the column panels of cols^T for <paramref name="q"/> pixels and K = <paramref name="k"/>.</summary>
    public static long FilterPanelFloats(long q, int k) => q * ((k + Gemm.NR - 1) / Gemm.NR * Gemm.NR);

    private struct FilterJob
    {
        public float* X, Panels;
        public int Batch, Cin, H, W, OH, OW, Kernel, Stride, Pad, K, Q;
    }

    /// <summary>
    /// Column panel <paramref name="panel"/> of cols^T [q x K], as the GEMM streams it ([q][NR]): column t is the
    /// input value under kernel tap (c, ky, kx) = K index panel * NR + t at every output pixel of every image.
    /// </summary>
    private static void PackFilterPanel(void* context, int panel)
    {
        ref FilterJob j = ref Unsafe.AsRef<FilterJob>(context);
        int n0 = panel * Gemm.NR, cols = Math.Min(Gemm.NR, j.K - n0);
        float* dst = j.Panels + (long)panel * j.Q * Gemm.NR;
        if (Avx512F.IsSupported && cols == Gemm.NR && j.OW >= Lanes && j.Stride <= 2)
        {
            PackFilterPanel16(ref j, n0, dst);
            return;
        }
        int taps = j.Kernel * j.Kernel, s = j.Stride, planeSize = j.H * j.W, hw = j.OH * j.OW;
        for (int t = 0; t < Gemm.NR; t++)
        {
            float* column = dst + t;
            if (t >= cols)
            {
                for (long qq = 0; qq < j.Q; qq++) column[qq * Gemm.NR] = 0f;
                continue;
            }
            int kIndex = n0 + t, c = kIndex / taps, ky = kIndex % taps / j.Kernel, kx = kIndex % j.Kernel;
            int ix0 = kx - j.Pad;
            // The output columns whose input column ix0 + ox * stride lies in [0, W).
            int lo = ix0 >= 0 ? 0 : (-ix0 + s - 1) / s;
            int hi = ix0 >= j.W ? 0 : Math.Min(j.OW, (j.W - 1 - ix0) / s + 1);
            if (hi < lo) hi = lo;
            for (int image = 0; image < j.Batch; image++)
            {
                float* plane = j.X + ((long)image * j.Cin + c) * planeSize;
                for (int oy = 0; oy < j.OH; oy++)
                {
                    float* row = column + ((long)image * hw + oy * j.OW) * Gemm.NR;
                    int iy = oy * s - j.Pad + ky;
                    if ((uint)iy >= (uint)j.H)
                    {
                        for (int ox = 0; ox < j.OW; ox++) row[ox * Gemm.NR] = 0f;
                        continue;
                    }
                    float* src = plane + iy * j.W + ix0;
                    int ox2 = 0;
                    for (; ox2 < lo; ox2++) row[ox2 * Gemm.NR] = 0f;
                    for (; ox2 < hi; ox2++) row[ox2 * Gemm.NR] = src[ox2 * s];
                    for (; ox2 < j.OW; ox2++) row[ox2 * Gemm.NR] = 0f;
                }
            }
        }
    }

    private const int Lanes = 16;

    /// <summary>
    /// <see cref="PackFilterPanel"/> for a whole panel of NR columns, 16 output pixels of a row at a time: the 32
    /// taps' values at those pixels are read as vectors (the stride-2 ones as the even elements of two loads) into a
    /// 32 x 16 block, which two 16 x 16 transposes in registers turn into the panel's 16 rows of 32: every store is a whole
    /// 64-byte line, where a scalar gather writes the panel a column at a time. A tap whose 16 pixels reach into the
    /// padding, and the last pixels of a row, are filled lane by lane.
    /// </summary>
    [SkipLocalsInit] // every element of the stack buffers is written before it is read
    private static void PackFilterPanel16(ref FilterJob j, int n0, float* dst)
    {
        int taps = j.Kernel * j.Kernel, s = j.Stride, planeSize = j.H * j.W, hw = j.OH * j.OW;
        var block = stackalloc Vector512<float>[Gemm.NR];
        int* channel = stackalloc int[Gemm.NR];
        int* ky = stackalloc int[Gemm.NR];
        int* ix0 = stackalloc int[Gemm.NR];
        for (int t = 0; t < Gemm.NR; t++)
        {
            int kIndex = n0 + t;
            channel[t] = kIndex / taps;
            ky[t] = kIndex % taps / j.Kernel;
            ix0[t] = kIndex % j.Kernel - j.Pad;
        }
        var even = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        for (int image = 0; image < j.Batch; image++)
        {
            float* x = j.X + (long)image * j.Cin * planeSize;
            for (int oy = 0; oy < j.OH; oy++)
            {
                float* row = dst + ((long)image * hw + oy * j.OW) * Gemm.NR;
                for (int ox = 0; ox < j.OW; ox += Lanes)
                {
                    int count = Math.Min(Lanes, j.OW - ox);
                    for (int t = 0; t < Gemm.NR; t++)
                    {
                        int iy = oy * s - j.Pad + ky[t];
                        int first = ix0[t] + ox * s, last = first + (count - 1) * s; // input columns of the 16 pixels
                        if ((uint)iy >= (uint)j.H)
                        {
                            block[t] = Vector512<float>.Zero;
                            continue;
                        }
                        float* src = x + (long)channel[t] * planeSize + iy * j.W;
                        if (count == Lanes && first >= 0 && (s == 1 ? last < j.W : first + 2 * Lanes <= j.W))
                        {
                            block[t] = s == 1 ? Vector512.Load(src + first)
                                : Avx512F.PermuteVar16x32x2(Vector512.Load(src + first), even, Vector512.Load(src + first + Lanes));
                            continue;
                        }
                        float* lane = (float*)(block + t);
                        for (int i = 0; i < Lanes; i++)
                        {
                            int ix = first + i * s;
                            lane[i] = i < count && (uint)ix < (uint)j.W ? src[ix] : 0f;
                        }
                    }
                    // Taps 0..15 and 16..31: each 16 x 16 block transposed into the pixels' rows.
                    Transpose16(block);
                    Transpose16(block + Lanes);
                    float* at = row + (long)ox * Gemm.NR;
                    for (int p = 0; p < count; p++)
                    {
                        block[p].Store(at + p * Gemm.NR);
                        block[Lanes + p].Store(at + p * Gemm.NR + Lanes);
                    }
                }
            }
        }
    }

    /// <summary>Transposes the 16 x 16 matrix whose rows are <paramref name="r"/>[0..15], in place.</summary>
    [SkipLocalsInit]
    private static void Transpose16(Vector512<float>* r)
    {
        var t = stackalloc Vector512<float>[16];
        // Pairs of rows interleaved element by element, then pairs of elements, then 128-bit lanes twice.
        for (int i = 0; i < 16; i += 2)
        {
            t[i] = Avx512F.UnpackLow(r[i], r[i + 1]);
            t[i + 1] = Avx512F.UnpackHigh(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4)
        {
            r[i] = Avx512F.UnpackLow(t[i].AsDouble(), t[i + 2].AsDouble()).AsSingle();
            r[i + 1] = Avx512F.UnpackHigh(t[i].AsDouble(), t[i + 2].AsDouble()).AsSingle();
            r[i + 2] = Avx512F.UnpackLow(t[i + 1].AsDouble(), t[i + 3].AsDouble()).AsSingle();
            r[i + 3] = Avx512F.UnpackHigh(t[i + 1].AsDouble(), t[i + 3].AsDouble()).AsSingle();
        }
        for (int i = 0; i < 4; i++)
        {
            t[i] = Avx512F.Shuffle4x128(r[i], r[i + 4], 0x88);
            t[i + 4] = Avx512F.Shuffle4x128(r[i], r[i + 4], 0xDD);
            t[i + 8] = Avx512F.Shuffle4x128(r[i + 8], r[i + 12], 0x88);
            t[i + 12] = Avx512F.Shuffle4x128(r[i + 8], r[i + 12], 0xDD);
        }
        for (int i = 0; i < 8; i++)
        {
            r[i] = Avx512F.Shuffle4x128(t[i], t[i + 8], 0x88);
            r[i + 8] = Avx512F.Shuffle4x128(t[i], t[i + 8], 0xDD);
        }
    }

    private struct PlanesJob
    {
        public float* From, To;
        public int Batch, C, Hw;
    }

    /// <summary>rows [C x batch*HW] from x [batch x C x HW]: row c is image 0's plane c, then image 1's, ... (on every core).</summary>
    private static void GatherPlanes(float* x, float* rows, int batch, int c, int hw)
    {
        var job = new PlanesJob { From = x, To = rows, Batch = batch, C = c, Hw = hw };
        WorkerPool.Shared.Run(&GatherPlane, &job, c);
    }

    private static void GatherPlane(void* context, int m)
    {
        ref PlanesJob j = ref Unsafe.AsRef<PlanesJob>(context);
        long q = (long)j.Batch * j.Hw;
        for (int n = 0; n < j.Batch; n++)
            new ReadOnlySpan<float>(j.From + ((long)n * j.C + m) * j.Hw, j.Hw).CopyTo(new Span<float>(j.To + m * q + (long)n * j.Hw, j.Hw));
    }

    /// <summary>W^T [K x Cout] read in place from the conv weights W [Cout x K]: element (r, j) is W[j, r].</summary>
    private static Gemm.Operand WeightsTransposed(float* weights, int k) => Gemm.Operand.Strided(weights, 1, k);

    /// <summary>
    /// <see cref="ConvData"/> for the whole batch at once, for small maps: gcols [K x batch*HW] = W^T . gz (gz gathered
    /// into <paramref name="gzRows"/> as [Cout x batch*HW], unless <paramref name="gzGathered"/> says the filter
    /// gradient already did), then col2im into every image's gx.
    /// </summary>
    /// <remarks>
    /// With <paramref name="taps"/> &gt; 1 the convolution is the centre-tap 1x1 one of a map of one pixel
    /// (<see cref="Conv.CentreTapOnly"/>): <paramref name="weights"/> then points at the centre tap of a kernel of that
    /// many taps, and kernel, stride and pad describe the 1x1 convolution.
    /// </remarks>
    public static void ConvDataFolded(float* gz, float* weights, float* gx, float* cols, float* gzRows, int batch,
        int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool gzGathered = false, int taps = 1)
    {
        int hw = oh * ow, q = batch * hw;
        int k = cin * kernel * kernel;
        if (!gzGathered) GatherPlanes(gz, gzRows, batch, cout, hw);
        // W^T [K x Cout] read in place: element (kk, o) at weights[o * K + kk] (with taps, at o * Cin * taps + kk * taps).
        var weightsT = taps > 1 ? Gemm.Operand.Strided(weights, taps, k * taps) : WeightsTransposed(weights, k);
        Gemm.Multiply(weightsT, k, cout, gzRows, q, q, cols, q, accumulate: false);
        var job = new ScatterJob { Cols = cols, Gx = gx, H = h, W = w, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad, Cin = cin, Ld = q };
        WorkerPool.Shared.Run(&ScatterChannel, &job, batch * cin);
    }

    private struct ScatterJob
    {
        public float* Cols, Gx;
        public int H, W, OH, OW, Kernel, Stride, Pad, Cin;
        /// <summary>Row stride of Cols (HW for one image, batch*HW when folded; image n's columns start at n*HW).</summary>
        public int Ld;
    }

    /// <summary>
    /// Conv data gradient for one image: gx += col2im(W^T . gz). For a 1x1, stride 1, unpadded conv the product
    /// is gx itself and is accumulated directly; otherwise it goes through <paramref name="cols"/> [K x HW].
    /// </summary>
    public static void ConvData(float* gz, float* weights, float* gx, float* cols,
        int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad)
    {
        int hw = oh * ow;
        int k = cin * kernel * kernel;
        if (kernel == 1 && stride == 1 && pad == 0)
        {
            Gemm.Multiply(WeightsTransposed(weights, k), k, cout, gz, hw, hw, gx, hw, accumulate: true);
            return;
        }
        Gemm.Multiply(WeightsTransposed(weights, k), k, cout, gz, hw, hw, cols, hw, accumulate: false);
        var job = new ScatterJob { Cols = cols, Gx = gx, H = h, W = w, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad, Cin = cin, Ld = hw };
        WorkerPool.Shared.Run(&ScatterChannel, &job, cin);
    }

    /// <summary>Item (image, channel): adds that channel's columns of cols into its plane of gx.</summary>
    private static void ScatterChannel(void* context, int item)
    {
        ref ScatterJob j = ref Unsafe.AsRef<ScatterJob>(context);
        int image = item / j.Cin, c = item % j.Cin;
        float* plane = j.Gx + ((long)image * j.Cin + c) * j.H * j.W;
        int hw = j.OH * j.OW;
        if (j.Kernel == 1 && j.Stride == 1 && j.Pad == 0)
        {
            // A 1x1 convolution's columns are the plane itself (the small maps' planes are a few floats each).
            float* from = j.Cols + (long)c * j.Ld + (long)image * hw;
            int p = 0;
            for (; p <= hw - Vector<float>.Count; p += Vector<float>.Count)
                Unsafe.WriteUnaligned(plane + p, Unsafe.ReadUnaligned<Vector<float>>(plane + p) + Unsafe.ReadUnaligned<Vector<float>>(from + p));
            for (; p < hw; p++) plane[p] += from[p];
            return;
        }
        for (int ky = 0; ky < j.Kernel; ky++)
        for (int kx = 0; kx < j.Kernel; kx++)
        {
            float* row = j.Cols + ((long)(c * j.Kernel + ky) * j.Kernel + kx) * j.Ld + (long)image * hw;
            for (int oy = 0; oy < j.OH; oy++)
            {
                int iy = oy * j.Stride - j.Pad + ky;
                if ((uint)iy >= (uint)j.H) continue;
                float* src = row + oy * j.OW;
                float* dst = plane + iy * j.W;
                // The output columns whose input column ix = ox * stride - pad + kx lies in [0, W).
                int ix0 = kx - j.Pad;
                int lo = ix0 >= 0 ? 0 : (-ix0 + j.Stride - 1) / j.Stride;
                int hi = ix0 >= j.W ? 0 : Math.Min(j.OW, (j.W - 1 - ix0) / j.Stride + 1);
                if (j.Stride == 1)
                {
                    int ox = lo;
                    float* d = dst + ix0;
                    for (; ox <= hi - Vector<float>.Count; ox += Vector<float>.Count)
                        Unsafe.WriteUnaligned(d + ox, Unsafe.ReadUnaligned<Vector<float>>(d + ox) + Unsafe.ReadUnaligned<Vector<float>>(src + ox));
                    for (; ox < hi; ox++) d[ox] += src[ox];
                }
                else
                {
                    for (int ox = lo; ox < hi; ox++) dst[ox * j.Stride + ix0] += src[ox];
                }
            }
        }
    }

    private struct BnJob
    {
        public float* Z, A, G, GResidual, Gamma, Mean, InvStd, DGamma, DBeta;
        public int Batch, C, Hw;
        public bool Relu, BatchStatistics;
        // Per channel: [sum of g (C)][sum of g * xhat (C)][count], summed over every process when synchronized.
        public double* Sums;
    }

    /// <summary>
    /// Backward of a = relu?(BN(z) + residual), in place on g (from dL/da to dL/dz): the ReLU mask (a > 0), the
    /// residual's gradient (g added to <paramref name="gResidual"/>), dgamma and dbeta accumulated, and dL/dz with
    /// batch statistics (train mode) or as a fixed affine map (eval mode). Sums in double.
    /// </summary>
    public static void BatchNorm(float* z, float* a, float* g, float* gResidual, float* gamma, float* mean, float* invStd,
        float* dGamma, float* dBeta, int batch, int c, int hw, bool relu, bool batchStatistics, double* sums,
        Action<Span<double>>? reduce = null)
    {
        var job = new BnJob
        {
            Z = z, A = a, G = g, GResidual = gResidual, Gamma = gamma, Mean = mean, InvStd = invStd, DGamma = dGamma, DBeta = dBeta,
            Batch = batch, C = c, Hw = hw, Relu = relu, BatchStatistics = batchStatistics, Sums = sums,
        };
        // Maps of fewer pixels than a vector: 16 adjacent channels per item, the vectors across channels (as forward).
        bool small = hw < Kernels.SmallMap;
        int items = small ? (c + Kernels.SmallMap - 1) / Kernels.SmallMap : c;
        WorkerPool.Shared.Run(small ? &BatchNormSumsGroup : &BatchNormSums, &job, items);
        sums[2 * c] = (double)batch * hw;
        // SyncBatchNorm: the input gradient needs the sums over every process's batch (the parameter gradients stay
        // local; data-parallel averaging takes care of them).
        if (batchStatistics && reduce is not null) reduce(new Span<double>(sums, 2 * c + 1));
        WorkerPool.Shared.Run(small ? &BatchNormInputGroup : &BatchNormInput, &job, items);
    }

    /// <summary>
    /// <see cref="BatchNormSums"/> for the channels [16 * group, 16 * group + 16) of a map of hw &lt; 16 pixels, whose
    /// values are one run of 16 * hw floats per image (position f holding channel f / hw): the same float terms,
    /// summed per position over the images in double, then per channel.
    /// </summary>
    [SkipLocalsInit]
    private static void BatchNormSumsGroup(void* context, int group)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        int c0 = group * Kernels.SmallMap, channels = Math.Min(Kernels.SmallMap, j.C - c0), hw = j.Hw, run = channels * hw;
        const int Most = Kernels.SmallMap * Kernels.SmallMap;
        float* mean = stackalloc float[Most];
        float* invStd = stackalloc float[Most];
        double* sumG = stackalloc double[Most];
        double* sumGx = stackalloc double[Most];
        for (int f = 0; f < run; f++)
        {
            (mean[f], invStd[f]) = (j.Mean[c0 + f / hw], j.InvStd[c0 + f / hw]);
            sumG[f] = sumGx[f] = 0;
        }
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + c0) * hw;
            float* g = j.G + at, z = j.Z + at, a = j.A + at;
            float* gr = j.GResidual == null ? null : j.GResidual + at;
            int f = 0;
            for (; f <= run - Vector<float>.Count; f += Vector<float>.Count)
            {
                var gi = Unsafe.ReadUnaligned<Vector<float>>(g + f);
                if (j.Relu) gi = Vector.ConditionalSelect(Vector.GreaterThan(Unsafe.ReadUnaligned<Vector<float>>(a + f), Vector<float>.Zero), gi, Vector<float>.Zero);
                Unsafe.WriteUnaligned(g + f, gi);
                if (gr != null) Unsafe.WriteUnaligned(gr + f, Unsafe.ReadUnaligned<Vector<float>>(gr + f) + gi);
                var gx = gi * ((Unsafe.ReadUnaligned<Vector<float>>(z + f) - Unsafe.ReadUnaligned<Vector<float>>(mean + f)) * Unsafe.ReadUnaligned<Vector<float>>(invStd + f));
                AddWidened(sumG + f, gi);
                AddWidened(sumGx + f, gx);
            }
            for (; f < run; f++)
            {
                float gi = g[f];
                if (j.Relu && !(a[f] > 0f)) gi = 0f;
                g[f] = gi;
                if (gr != null) gr[f] += gi;
                sumG[f] += gi;
                sumGx[f] += gi * ((z[f] - mean[f]) * invStd[f]);
            }
        }
        for (int k = 0; k < channels; k++)
        {
            double g = Kernels.PositionSum(sumG, k, hw), gx = Kernels.PositionSum(sumGx, k, hw);
            j.DGamma[c0 + k] += (float)gx;
            j.DBeta[c0 + k] += (float)g;
            j.Sums[c0 + k] = g;
            j.Sums[j.C + c0 + k] = gx;
        }
    }

    /// <summary>acc[0 .. Vector&lt;float&gt;.Count) += v, widened to double.</summary>
    private static void AddWidened(double* acc, Vector<float> v)
    {
        Vector.Widen(v, out var lo, out var hi);
        Unsafe.WriteUnaligned(acc, Unsafe.ReadUnaligned<Vector<double>>(acc) + lo);
        Unsafe.WriteUnaligned(acc + Vector<double>.Count, Unsafe.ReadUnaligned<Vector<double>>(acc + Vector<double>.Count) + hi);
    }

    /// <summary><see cref="BatchNormInput"/> for a group of 16 channels of a map of hw &lt; 16 pixels (as <see cref="BatchNormSumsGroup"/>).</summary>
    [SkipLocalsInit]
    private static void BatchNormInputGroup(void* context, int group)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        int c0 = group * Kernels.SmallMap, channels = Math.Min(Kernels.SmallMap, j.C - c0), hw = j.Hw, run = channels * hw;
        const int Most = Kernels.SmallMap * Kernels.SmallMap;
        float* mean = stackalloc float[Most];
        float* invStd = stackalloc float[Most];
        float* scale = stackalloc float[Most];
        float* meanG = stackalloc float[Most];
        float* meanGx = stackalloc float[Most];
        double count = j.Sums[2 * j.C];
        for (int f = 0; f < run; f++)
        {
            int ch = c0 + f / hw;
            mean[f] = j.Mean[ch];
            invStd[f] = j.InvStd[ch];
            scale[f] = j.Gamma[ch] * j.InvStd[ch];
            meanG[f] = j.BatchStatistics ? (float)(j.Sums[ch] / count) : 0f;
            meanGx[f] = j.BatchStatistics ? (float)(j.Sums[j.C + ch] / count) : 0f;
        }
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + c0) * hw;
            float* g = j.G + at, z = j.Z + at;
            int f = 0;
            for (; f <= run - Vector<float>.Count; f += Vector<float>.Count)
            {
                var xhat = (Unsafe.ReadUnaligned<Vector<float>>(z + f) - Unsafe.ReadUnaligned<Vector<float>>(mean + f)) * Unsafe.ReadUnaligned<Vector<float>>(invStd + f);
                Unsafe.WriteUnaligned(g + f, Unsafe.ReadUnaligned<Vector<float>>(scale + f) *
                    (Unsafe.ReadUnaligned<Vector<float>>(g + f) - Unsafe.ReadUnaligned<Vector<float>>(meanG + f) - xhat * Unsafe.ReadUnaligned<Vector<float>>(meanGx + f)));
            }
            for (; f < run; f++)
                g[f] = scale[f] * (g[f] - meanG[f] - (z[f] - mean[f]) * invStd[f] * meanGx[f]);
        }
    }

    private static void BatchNormSums(void* context, int ch)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        float mean = j.Mean[ch], invStd = j.InvStd[ch];
        var vMean = new Vector<float>(mean);
        var vInvStd = new Vector<float>(invStd);
        double sumG = 0, sumGx = 0;
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + ch) * j.Hw;
            float* g = j.G + at, z = j.Z + at, a = j.A + at;
            float* gr = j.GResidual == null ? null : j.GResidual + at;
            // Vector partial sums in float over runs of at most 256 elements, accumulated in double.
            int i = 0;
            while (i <= j.Hw - Vector<float>.Count)
            {
                var partG = Vector<float>.Zero;
                var partGx = Vector<float>.Zero;
                int end = Math.Min(j.Hw - Vector<float>.Count, i + 256 - Vector<float>.Count);
                for (; i <= end; i += Vector<float>.Count)
                {
                    var gi = Unsafe.ReadUnaligned<Vector<float>>(g + i);
                    // The ReLU's mask: no gradient where a <= 0 (or is NaN).
                    if (j.Relu) gi = Vector.ConditionalSelect(Vector.GreaterThan(Unsafe.ReadUnaligned<Vector<float>>(a + i), Vector<float>.Zero), gi, Vector<float>.Zero);
                    Unsafe.WriteUnaligned(g + i, gi);
                    if (gr != null) Unsafe.WriteUnaligned(gr + i, Unsafe.ReadUnaligned<Vector<float>>(gr + i) + gi);
                    partG += gi;
                    partGx += gi * ((Unsafe.ReadUnaligned<Vector<float>>(z + i) - vMean) * vInvStd);
                }
                sumG += Vector.Sum(partG);
                sumGx += Vector.Sum(partGx);
            }
            for (; i < j.Hw; i++)
            {
                float gi = g[i];
                if (j.Relu && !(a[i] > 0f)) gi = 0f;
                g[i] = gi;
                if (gr != null) gr[i] += gi;
                sumG += gi;
                sumGx += gi * ((z[i] - mean) * invStd);
            }
        }
        j.DGamma[ch] += (float)sumGx;
        j.DBeta[ch] += (float)sumG;
        j.Sums[ch] = sumG;
        j.Sums[j.C + ch] = sumGx;
    }

    private static void BatchNormInput(void* context, int ch)
    {
        ref BnJob j = ref Unsafe.AsRef<BnJob>(context);
        float mean = j.Mean[ch], invStd = j.InvStd[ch];
        double count = j.Sums[2 * j.C];
        float scale = j.Gamma[ch] * invStd;
        float meanG = j.BatchStatistics ? (float)(j.Sums[ch] / count) : 0f;
        float meanGx = j.BatchStatistics ? (float)(j.Sums[j.C + ch] / count) : 0f;
        // g = scale * (g - meanG - xhat * meanGx) with xhat = (z - mean) * invStd.
        var vScale = new Vector<float>(scale);
        var vMeanG = new Vector<float>(meanG);
        var vMeanGx = new Vector<float>(meanGx);
        var vMean = new Vector<float>(mean);
        var vInvStd = new Vector<float>(invStd);
        for (int n = 0; n < j.Batch; n++)
        {
            long at = ((long)n * j.C + ch) * j.Hw;
            float* g = j.G + at, z = j.Z + at;
            int i = 0;
            for (; i <= j.Hw - Vector<float>.Count; i += Vector<float>.Count)
            {
                var xhat = (Unsafe.ReadUnaligned<Vector<float>>(z + i) - vMean) * vInvStd;
                Unsafe.WriteUnaligned(g + i, vScale * (Unsafe.ReadUnaligned<Vector<float>>(g + i) - vMeanG - xhat * vMeanGx));
            }
            for (; i < j.Hw; i++)
                g[i] = scale * (g[i] - meanG - (z[i] - mean) * invStd * meanGx);
        }
    }

    private struct PoolJob
    {
        public float* X, G, GIn;
        public int H, W, OH, OW, Kernel, Stride, Pad;
    }

    /// <summary>Max-pool backward: each output's gradient goes to its window's arg-max (the first maximum in scan order, as PyTorch).</summary>
    public static void MaxPool(float* x, float* g, float* gIn, int planes, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        var job = new PoolJob { X = x, G = g, GIn = gIn, H = h, W = w, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad };
        WorkerPool.Shared.Run(&MaxPoolPlane, &job, planes);
    }

    private static void MaxPoolPlane(void* context, int plane)
    {
        ref PoolJob j = ref Unsafe.AsRef<PoolJob>(context);
        float* x = j.X + (long)plane * j.H * j.W;
        float* gIn = j.GIn + (long)plane * j.H * j.W;
        float* g = j.G + (long)plane * j.OH * j.OW;
        for (int oy = 0; oy < j.OH; oy++)
            for (int ox = 0; ox < j.OW; ox++)
                gIn[Kernels.WindowArgMax(x, j.H, j.W, oy, ox, j.Kernel, j.Stride, j.Pad)] += g[oy * j.OW + ox];
    }

    /// <summary>Global average pool backward: gIn[p, i] += g[p] / hw.</summary>
    public static void GlobalAveragePool(ReadOnlySpan<float> g, Span<float> gIn, int planes, int hw)
    {
        for (int p = 0; p < planes; p++)
        {
            float v = g[p] / hw;
            var dst = gIn.Slice(p * hw, hw);
            for (int i = 0; i < hw; i++) dst[i] += v;
        }
    }

    /// <summary>Linear backward: dW += g^T x, db += sum g, gx += g W.</summary>
    public static void Linear(ReadOnlySpan<float> x, ReadOnlySpan<float> g, ReadOnlySpan<float> weight, Span<float> dWeight, Span<float> dBias,
        Span<float> gx, int batch, int inputs, int outputs)
    {
        fixed (float* px = x, pg = g, pw = weight, pdw = dWeight, pdb = dBias, pgx = gx)
        {
            var job = new LinearJob { X = px, G = pg, W = pw, DW = pdw, DB = pdb, GX = pgx, Batch = batch, Inputs = inputs, Outputs = outputs };
            // dW and db by rows of W (each row sums over the images in order), then dx by image (each sums over the
            // rows in order): the same additions in the same order as one thread, on every core.
            WorkerPool.Shared.Run(&LinearWeightRow, &job, outputs);
            if (!gx.IsEmpty) WorkerPool.Shared.Run(&LinearInput, &job, batch);
        }
    }

    private struct LinearJob
    {
        public float* X, G, W, DW, DB, GX;
        public int Batch, Inputs, Outputs;
    }

    private static void LinearWeightRow(void* context, int o)
    {
        ref LinearJob j = ref Unsafe.AsRef<LinearJob>(context);
        var row = new Span<float>(j.DW + (long)o * j.Inputs, j.Inputs);
        for (int n = 0; n < j.Batch; n++)
        {
            float go = j.G[(long)n * j.Outputs + o];
            if (go == 0f) continue;
            j.DB[o] += go;
            Axpy(go, new ReadOnlySpan<float>(j.X + (long)n * j.Inputs, j.Inputs), row);
        }
    }

    private static void LinearInput(void* context, int n)
    {
        ref LinearJob j = ref Unsafe.AsRef<LinearJob>(context);
        var gxn = new Span<float>(j.GX + (long)n * j.Inputs, j.Inputs);
        for (int o = 0; o < j.Outputs; o++)
        {
            float go = j.G[(long)n * j.Outputs + o];
            if (go == 0f) continue;
            Axpy(go, new ReadOnlySpan<float>(j.W + (long)o * j.Inputs, j.Inputs), gxn);
        }
    }

    /// <summary>y += a x.</summary>
    public static void Axpy(float a, ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var va = new Vector<float>(a);
            for (; i <= x.Length - Vector<float>.Count; i += Vector<float>.Count)
                (new Vector<float>(x.Slice(i)) * va + new Vector<float>(y.Slice(i))).CopyTo(y.Slice(i));
        }
        for (; i < x.Length; i++) y[i] += a * x[i];
    }

    /// <summary>
    /// Mean cross-entropy of logits [batch, classes] against labels, and its gradient (softmax - onehot) / batch
    /// written to <paramref name="gLogits"/>. Computed in double, with the max subtracted before exp.
    /// </summary>
    public static float CrossEntropy(ReadOnlySpan<float> logits, ReadOnlySpan<int> labels, Span<float> gLogits, int batch, int classes)
    {
        double total = 0;
        for (int n = 0; n < batch; n++)
        {
            var l = logits.Slice(n * classes, classes);
            var gl = gLogits.Slice(n * classes, classes);
            double max = double.NegativeInfinity;
            for (int c = 0; c < classes; c++) max = Math.Max(max, l[c]);
            double sum = 0;
            for (int c = 0; c < classes; c++) sum += Math.Exp(l[c] - max);
            double logSum = max + Math.Log(sum);
            total += logSum - l[labels[n]];
            for (int c = 0; c < classes; c++)
                gl[c] = (float)((Math.Exp(l[c] - logSum) - (c == labels[n] ? 1 : 0)) / batch);
        }
        return (float)(total / batch);
    }
}
