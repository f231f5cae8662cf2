using System;
using System.Numerics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Runtime.CompilerServices;
using System.Threading;

namespace Unrolled.Cpu;

/// <summary>
/// Conv2d in NCHW as an implicit GEMM per image: out[Cout x OH*OW] = W[Cout x Cin*k*k] . cols[Cin*k*k x OH*OW].
/// For each image, the columns are gathered from the input straight into packed B panels ([panel][K][NR], no im2col
/// matrix) and multiplied in work items of (row chunk, block of column panels) on all cores: where several row
/// chunks share a block, every panel is first gathered once in a pass of its own; where there is one chunk, each
/// item gathers its own block just before it multiplies it. A 1x1 stride-1 convolution of one image reads its full
/// panels from the input in place.
/// </summary>
internal static unsafe class Conv
{
    /// <summary>Feature maps of at most this many pixels are computed for the whole batch at once (the batch folded into the columns).</summary>
    internal const int FoldBelow = 256;

    private struct Job
    {
        public float* X, Y, Residual, A, Scale, Bias, Packed;
        public int Cin, H, W, Cout, OH, OW, Kernel, Stride, Pad, K, N, Hw, Batch;
        public int ColumnPanels, RowChunks, PanelsPerChunk, PanelsPerBlock;
        // Where A is read in place: element (row, kk) at A[row * ARowStride + kk * AKStride].
        public int ARowStride, AKStride;
        public bool Relu, PackedA;
        // Each item gathers its own block of columns (into this thread's scratch) just before it multiplies them.
        public bool PackInItem;
        // 1x1 stride 1: full column panels are read in place from X (row stride Hw); only a last partial panel is packed.
        public bool InPlace;
        // Stride 2: X's rows split into their even and odd columns ([image][c][y][phase][half]), or null.
        public float* Phases;
        public int Half, RowsPerSplit, SplitRows;
        // One job for all images (MultiplyImages): items per image.
        public int ItemsPerImage;
    }

    /// <summary>
    /// Whether only the kernel's centre tap (pad, pad) meets the input: a map of one pixel, padded, gives one output
    /// pixel, and every other tap reads padding. Such a convolution is a 1x1 one with the centre taps' weights (layer4
    /// of a ResNet at 32x32 inputs, where the 3x3 convolutions then read and multiply nine times what matters). The
    /// products skipped are exact zeros for finite weights, so the sums are the same.
    /// </summary>
    public static bool CentreTapOnly(int h, int w, int kernel, int pad) => h == 1 && w == 1 && kernel > 1 && pad < kernel;

    // The packed panels of one image. Shared by the callers, one at a time: the lock spans both phases.
    private static readonly Lock s_gate = new();
    private static Gemm.Scratch s_packed;
    private static Gemm.Scratch s_folded;
    // A work item's own block of packed columns, when it gathers them itself (native, kept for the thread's life).
    [ThreadStatic] private static Gemm.Scratch t_block;

    /// <summary>
    /// y = relu?(conv(x, W) * scale + bias + residual), per output channel. <paramref name="weights"/> are the
    /// [Cout x Cin*k*k] weights as they are stored (read in place), or, with <paramref name="packedWeights"/>, the
    /// same packed by <see cref="Gemm.PackA"/> (one stream per row panel; eval mode packs its weights once); <paramref name="scale"/> and
    /// <paramref name="bias"/> are [Cout] or empty (eval-mode BatchNorm is exactly such a scale and bias);
    /// <paramref name="residual"/> is shaped like y or empty.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        ReadOnlySpan<float> weights, ReadOnlySpan<float> scale, ReadOnlySpan<float> bias,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu, bool packedWeights = false)
    {
        if (Subsamples(batch, kernel, stride, pad, oh * ow))
        {
            lock (s_subsampleGate)
            {
                var xs = Subsample(x, batch, cin, h, w, stride, oh, ow);
                Forward(xs, y, residual, weights, scale, bias, batch, cin, oh, ow, cout, oh, ow, 1, 1, 0, relu, packedWeights);
            }
            return;
        }
        int aRowStride = cin * kernel * kernel, aKStride = 1;
        if (!packedWeights && CentreTapOnly(h, w, kernel, pad))
        {
            // The centre tap of each (output, input) channel pair: every kernel*kernel-th weight.
            weights = weights.Slice(pad * kernel + pad);
            aKStride = kernel * kernel;
            (kernel, stride, pad) = (1, 1, 0);
        }
        int hw = oh * ow;
        int k = cin * kernel * kernel;
        // Small maps: one GEMM over all images' columns into a scratch, then a scatter to NCHW with the epilogue.
        bool fold = batch > 1 && hw <= FoldBelow;
        int n = fold ? batch * hw : hw;
        int columnPanels = (n + Gemm.NR - 1) / Gemm.NR;
        int rowPanels = Gemm.RowPanelCount(cout);
        int threads = WorkerPool.Shared.Threads;
        // A work item is a chunk of row panels times a block of column panels: each row panel of A is used for every
        // column panel of the block while it is in L1, and the block's packed columns (at most about 256 KB) stay in
        // L2 for the chunk's rows. Enough items to balance the cores; row chunks are cheap, they share the columns.
        int panelsPerBlock = Math.Clamp((256 << 10) / (k * Gemm.NR * sizeof(float)), 1, columnPanels);
        int blocks = (columnPanels + panelsPerBlock - 1) / panelsPerBlock;
        panelsPerBlock = (columnPanels + blocks - 1) / blocks;
        int rowChunks = Math.Clamp((4 * threads + blocks - 1) / blocks, 1, rowPanels);
        int panelsPerChunk = (rowPanels + rowChunks - 1) / rowChunks;
        rowChunks = (rowPanels + panelsPerChunk - 1) / panelsPerChunk;

        lock (s_gate)
        {
            // 1x1 stride 1, one image at a time: the columns are the input planes' rows as they are, so full panels
            // are read in place (row stride hw) and nothing is packed but a last partial panel, per item (ResNet-50 at
            // batch 1, A/B per layer: 1.04 against 0.85 ms for 256 -> 64 at 56x56, 1.12 against 0.99 for 512 -> 128
            // at 28x28, 0.15 against 0.11 for 64 -> 64).
            bool inPlace = !fold && kernel == 1 && stride == 1 && pad == 0;
            // With one row chunk no item shares its columns with another: each gathers its own, with no separate
            // pass and no barrier between gathering and multiplying.
            bool packInItem = rowChunks == 1 || inPlace;
            // Every image's items in one job: no barrier between images, and each core mostly works through whole
            // images of its own (its home range of items), reading and writing only their planes (ResNet-50 at batch
            // 8, A/B: 216.0 against 210.0 and 242.6 against 235.7 ms; 64 -> 256 at 56x56 17.7 against 15.8 ms,
            // 128 -> 512 at 28x28 16.5 against 14.5). Where items share packed columns, a pass packs them first,
            // image by image.
            bool allImages = !fold && batch > 1 && packInItem;
            // Stride 2 with a kernel of 5 or more (a ResNet's 7x7 stem): each input row is first split into its even
            // and odd columns, so that every tap's run of a panel's columns is a contiguous copy from one of them
            // (ResNet-50's stem at batch 1, A/B: 0.92 against 0.97, 1.00 against 1.03 and 1.04 against 1.09 ms; its
            // 147 taps per column still cost about a quarter of its time to gather). Not for 3x3 kernels, whose three
            // taps per row share the reads anyway and whose larger inputs then make a round trip through memory
            // (128 -> 128 at 56x56: 1.11 against 1.23 ms).
            int images = fold || allImages ? batch : 1, half = (w + 1) / 2;
            float* phases = stride == 2 && kernel >= 5 ? s_phases.Get((long)images * cin * h * 2 * half) : null;
            float* packed = packInItem ? null : s_packed.Get((long)columnPanels * k * Gemm.NR);
            float* folded = fold ? s_folded.Get((long)cout * n) : null;
            fixed (float* px = x, py = y, pr = residual, pa = weights, ps = scale, pb = bias)
            {
                var job = new Job
                {
                    A = pa, Scale = scale.IsEmpty ? null : ps, Bias = bias.IsEmpty ? null : pb, Packed = packed,
                    Cin = cin, H = h, W = w, Cout = cout, OH = oh, OW = ow, Kernel = kernel, Stride = stride, Pad = pad,
                    K = k, N = n, Hw = hw, Batch = fold ? batch : 1,
                    ColumnPanels = columnPanels, RowChunks = rowChunks, PanelsPerChunk = panelsPerChunk, PanelsPerBlock = panelsPerBlock,
                    PackInItem = packInItem, InPlace = inPlace, Phases = phases, Half = half,
                    ARowStride = aRowStride, AKStride = aKStride, Relu = relu && !fold, PackedA = packedWeights,
                };
                if (allImages)
                {
                    job.X = px;
                    job.Y = py;
                    job.Residual = residual.IsEmpty ? null : pr;
                    job.ItemsPerImage = blocks * rowChunks;
                    if (phases != null) SplitAll(ref job, images * cin * h, threads);
                    WorkerPool.Shared.Run(&MultiplyImages, &job, batch * job.ItemsPerImage);
                }
                else
                {
                    for (int image = 0; image < (fold ? 1 : batch); image++)
                    {
                        job.X = px + (long)image * cin * h * w;
                        job.Y = fold ? folded : py + (long)image * cout * hw;
                        job.Residual = residual.IsEmpty || fold ? null : pr + (long)image * cout * hw;
                        if (phases != null) SplitAll(ref job, images * cin * h, threads);
                        if (!job.PackInItem) WorkerPool.Shared.Run(&Pack, &job, columnPanels);
                        WorkerPool.Shared.Run(&Multiply, &job, blocks * rowChunks);
                    }
                }
                if (fold)
                {
                    var scatter = new ScatterJob { From = folded, Y = py, Residual = residual.IsEmpty ? null : pr, Batch = batch, Cout = cout, Hw = hw, Relu = relu };
                    WorkerPool.Shared.Run(&Scatter, &scatter, cout);
                }
            }
        }
    }

    /// <summary>
    /// Whether a batch-1 convolution runs faster transposed (<see cref="ForwardTransposed"/>): its pixels as the GEMM's
    /// rows, cut into panels of 12 and 8, rather than its columns, cut into panels of 32. A 7x7 map fills 49 of 64
    /// columns but 49 of 52 rows; a 14x14 map 196 of 224 columns but every row. Not for larger batches: their small
    /// maps are folded into one GEMM (<see cref="FoldBelow"/>), whose columns the batch fills. Nor for fewer than
    /// 256 input taps, where the transposed store of each tile costs about as much as the rows save. With a scalar
    /// store that bound was 1024 (ResNet-50's 512 -> 2048 1x1 at 7x7: 0.85 transposed against 0.79 ms); with the store
    /// by vectors the 256- and 512-tap layers gain too (the forward 33.9 against 34.1 and 35.3 against 35.5 ms, A/B).
    /// </summary>
    public static bool TransposedPays(int batch, int cin, int h, int w, int oh, int ow, int kernel, int pad)
    {
        if (batch != 1 || cin * kernel * kernel < 256 || CentreTapOnly(h, w, kernel, pad)) return false;
        int hw = oh * ow;
        long columns = (long)(hw + Gemm.NR - 1) / Gemm.NR * Gemm.NR;
        return Gemm.PackedRows(hw) * 20L < columns * 19;
    }

    private struct TransposedJob
    {
        // A: the packed pixel rows [panel][K][height], or null where X is read in place (1x1 stride 1).
        public float* X, Y, Residual, A, B, Scale, Bias;
        public int Cin, H, W, Cout, OW, Kernel, Stride, Pad, K, Hw;
        public int RowChunks, RowPanelsPerChunk, PanelsPerBlock;
        public bool Relu;
        // X is pixel-major (read in place, row stride Cin); Y and the residual are pixel-major (row stride Cout).
        public bool PixelsIn, PixelsOut;
    }

    /// <summary>
    /// One image's convolution computed as its transpose, out^T[OH*OW x Cout] = cols^T . W^T: the pixels are the GEMM's
    /// rows (the broadcast operand, read in place for 1x1 stride 1, else gathered into row panels first) and the output
    /// channels its columns, from <paramref name="weightPanels"/>, the weights as <see cref="Gemm.PackTransposedB"/>
    /// packs them. Each tile is stored transposed into NCHW with the same epilogue as <see cref="Forward"/>; every sum
    /// runs over the same terms in the same order, so the results are <see cref="Forward"/>'s to the bit.
    /// </summary>
    /// <remarks>
    /// With <paramref name="pixelsIn"/>, x is pixel-major ([h*w][cin], see <see cref="Runtime.LayoutPlan"/>): read in
    /// place by a 1x1 convolution (after a compact copy of the pixels a strided one reads), gathered into the packed
    /// pixel rows by the others, each channel's taps at pixel offsets times cin. With <paramref name="pixelsOut"/>, y
    /// and the residual are pixel-major ([oh*ow][cout]): each tile row is a run of channels of one pixel, stored as it
    /// is, with no transposition.
    /// </remarks>
    public static void ForwardTransposed(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        ReadOnlySpan<float> weightPanels, ReadOnlySpan<float> scale, ReadOnlySpan<float> bias,
        int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu,
        bool pixelsIn = false, bool pixelsOut = false)
    {
        if (Subsamples(1, kernel, stride, pad, oh * ow) || (pixelsIn && kernel == 1 && pad == 0 && stride > 1))
        {
            lock (s_subsampleGate)
            {
                var xs = pixelsIn ? SubsamplePixels(x, cin, h, w, stride, oh, ow) : Subsample(x, 1, cin, h, w, stride, oh, ow);
                ForwardTransposed(xs, y, residual, weightPanels, scale, bias, cin, oh, ow, cout, oh, ow, 1, 1, 0, relu, pixelsIn, pixelsOut);
            }
            return;
        }
        int hw = oh * ow, k = cin * kernel * kernel;
        if (x.Length < (long)cin * h * w || y.Length < (long)cout * hw || weightPanels.Length < Gemm.TransposedBFloats(cout, k))
            throw new ArgumentException("internal: transposed convolution of mismatched sizes");
        int rowPanels = Gemm.RowPanelCount(hw), columnPanels = (cout + Gemm.NR - 1) / Gemm.NR;
        int threads = WorkerPool.Shared.Threads;
        // Items of a block of output-channel panels times a chunk of pixel panels, about four per thread; each
        // weight panel is read once per chunk, the pixel panels (at most a few hundred KB) stay in L2.
        int blocks = Math.Min(columnPanels, 4 * threads);
        int panelsPerBlock = (columnPanels + blocks - 1) / blocks;
        blocks = (columnPanels + panelsPerBlock - 1) / panelsPerBlock;
        int rowChunks = Math.Clamp((4 * threads + blocks - 1) / blocks, 1, rowPanels);
        int rowPanelsPerChunk = (rowPanels + rowChunks - 1) / rowChunks;
        rowChunks = (rowPanels + rowPanelsPerChunk - 1) / rowPanelsPerChunk;
        bool inPlace = kernel == 1 && stride == 1 && pad == 0;

        lock (s_gate)
        {
            float* packed = inPlace ? null : s_packed.Get((long)Gemm.PackedRows(hw) * k);
            fixed (float* px = x, py = y, pr = residual, pw = weightPanels, ps = scale, pb = bias)
            {
                var job = new TransposedJob
                {
                    X = px, Y = py, Residual = residual.IsEmpty ? null : pr, A = packed, B = pw,
                    Scale = scale.IsEmpty ? null : ps, Bias = bias.IsEmpty ? null : pb,
                    Cin = cin, H = h, W = w, Cout = cout, OW = ow, Kernel = kernel, Stride = stride, Pad = pad, K = k, Hw = hw,
                    RowChunks = rowChunks, RowPanelsPerChunk = rowPanelsPerChunk, PanelsPerBlock = panelsPerBlock, Relu = relu,
                    PixelsIn = pixelsIn, PixelsOut = pixelsOut,
                };
                if (!inPlace) WorkerPool.Shared.Run(&PackPixelRows, &job, rowPanels);
                WorkerPool.Shared.Run(&MultiplyTransposed, &job, blocks * rowChunks);
            }
        }
    }

    /// <summary>Row panel <paramref name="panel"/> of cols^T: [K][height], element (kk, r) the input tap kk of pixel m0 + r (0 outside).</summary>
    [SkipLocalsInit]
    private static void PackPixelRows(void* context, int panel)
    {
        ref TransposedJob j = ref Unsafe.AsRef<TransposedJob>(context);
        int m0 = Gemm.PanelStart(j.Hw, panel), height = Gemm.PanelHeight(j.Hw, panel), rows = Math.Min(height, j.Hw - m0);
        // Each pixel's top-left input position; rows past the map read nothing (their ix is out of every row).
        int* iy0 = stackalloc int[Gemm.MR];
        int* ix0 = stackalloc int[Gemm.MR];
        for (int r = 0; r < height; r++)
        {
            int p = m0 + Math.Min(r, rows - 1);
            iy0[r] = p / j.OW * j.Stride - j.Pad;
            ix0[r] = r < rows ? p % j.OW * j.Stride - j.Pad : int.MinValue / 2;
        }
        float* dst = j.A + (long)m0 * j.K;
        int taps = j.Kernel * j.Kernel;
        // NCHW: a channel's plane, its pixels side by side; pixel-major: a pixel's channels side by side.
        long channelStride = j.PixelsIn ? 1 : (long)j.H * j.W;
        int pixelStride = j.PixelsIn ? j.Cin : 1;
        if (Avx2.IsSupported && taps <= MaxGatherTaps)
        {
            // Every tap reads the same pixels of each channel's plane at the same offsets: the offsets and which of
            // them fall inside the map, per tap, once; then per channel and tap one masked gather of the panel's
            // rows (8, and 4 more for a panel of 12). Masked-off lanes read nothing and give 0, as padding does.
            var offsets = stackalloc Vector256<int>[2 * MaxGatherTaps];
            var masks = stackalloc Vector256<float>[2 * MaxGatherTaps];
            int* lane = stackalloc int[2 * 8];
            float* valid = stackalloc float[2 * 8];
            for (int ky = 0, t = 0; ky < j.Kernel; ky++)
                for (int kx = 0; kx < j.Kernel; kx++, t++)
                {
                    for (int r = 0; r < 16; r++)
                    {
                        int iy = r < height ? iy0[r] + ky : -1, ix = r < height ? ix0[r] + kx : -1;
                        bool inside = (uint)iy < (uint)j.H && (uint)ix < (uint)j.W;
                        lane[r] = inside ? (iy * j.W + ix) * pixelStride : 0;
                        valid[r] = inside ? -1f : 0f; // the sign bit selects the lane
                    }
                    offsets[2 * t] = Vector256.Load(lane); offsets[2 * t + 1] = Vector256.Load(lane + 8);
                    masks[2 * t] = Vector256.Load(valid); masks[2 * t + 1] = Vector256.Load(valid + 8);
                }
            for (int c = 0; c < j.Cin; c++)
            {
                float* plane = j.X + c * channelStride;
                for (int t = 0; t < taps; t++, dst += height)
                {
                    Avx2.GatherMaskVector256(Vector256<float>.Zero, plane, offsets[2 * t], masks[2 * t], 4).Store(dst);
                    if (height == Gemm.MR)
                        Avx2.GatherMaskVector128(Vector128<float>.Zero, plane, offsets[2 * t + 1].GetLower(), masks[2 * t + 1].GetLower(), 4).Store(dst + 8);
                }
            }
            return;
        }
        for (int c = 0; c < j.Cin; c++)
        {
            float* plane = j.X + c * channelStride;
            for (int ky = 0; ky < j.Kernel; ky++)
                for (int kx = 0; kx < j.Kernel; kx++, dst += height)
                    for (int r = 0; r < height; r++)
                    {
                        int iy = iy0[r] + ky, ix = ix0[r] + kx;
                        dst[r] = (uint)iy < (uint)j.H && (uint)ix < (uint)j.W ? plane[(long)(iy * j.W + ix) * pixelStride] : 0f;
                    }
        }
    }

    /// <summary>Kernels of up to 7x7 gather their pixel rows with AVX2 (<see cref="PackPixelRows"/>).</summary>
    private const int MaxGatherTaps = 49;

    [SkipLocalsInit]
    private static void MultiplyTransposed(void* context, int item)
    {
        ref TransposedJob j = ref Unsafe.AsRef<TransposedJob>(context);
        float* tile = stackalloc float[Gemm.MR * Gemm.NR];
        int chunk = item % j.RowChunks;
        int firstPanel = item / j.RowChunks * j.PanelsPerBlock;
        int panels = (j.Cout + Gemm.NR - 1) / Gemm.NR, lastPanel = Math.Min(firstPanel + j.PanelsPerBlock, panels);
        int firstRowPanel = chunk * j.RowPanelsPerChunk;
        int lastRowPanel = Math.Min(firstRowPanel + j.RowPanelsPerChunk, Gemm.RowPanelCount(j.Hw));
        int chunkStart = Gemm.PanelStart(j.Hw, firstRowPanel);
        int chunkEnd = Math.Min(j.Hw, Gemm.PanelStart(j.Hw, lastRowPanel - 1) + Gemm.PanelHeight(j.Hw, lastRowPanel - 1));
        // With AVX2, each tile is transposed into a per-thread buffer that holds the chunk's pixels of the panel's 32
        // channels, one run per channel (at most 32 x 196 floats, in L1), and the panel is stored to Y once all its row
        // panels are done: whole runs of up to 196 pixels per channel, where a tile alone writes 32 runs of 8 or 12
        // (the 14x14 1x1 layers at batch 1: 2.42 against 2.50 and 1.33 against 1.42 ms, A/B per layer).
        int runLength = Gemm.PanelStart(j.Hw, lastRowPanel - 1) + Gemm.PanelHeight(j.Hw, lastRowPanel - 1) - chunkStart;
        float* runs = Avx2.IsSupported && !j.PixelsOut ? t_runs.Get((long)Gemm.NR * runLength) : null;
        for (int panel = firstPanel; panel < lastPanel; panel++)
        {
            int n0 = panel * Gemm.NR, cols = Math.Min(Gemm.NR, j.Cout - n0);
            float* b = j.B + (long)panel * j.K * Gemm.NR;
            for (int rp = firstRowPanel; rp < lastRowPanel; rp++)
            {
                int m0 = Gemm.PanelStart(j.Hw, rp), height = Gemm.PanelHeight(j.Hw, rp), rows = Math.Min(height, j.Hw - m0);
                float* a = j.A != null ? j.A + (long)m0 * j.K : j.PixelsIn ? j.X + (long)m0 * j.Cin : j.X + m0;
                var layout = j.A != null ? Gemm.Layout.Packed(height) : j.PixelsIn ? Gemm.Layout.RowMajor(j.Cin) : new Gemm.Layout(1, j.Hw);
                int t = rp - firstRowPanel;
                // The second and third tiles of a weight panel (run from cache, as every tile after the first) each
                // bring half of the next panel into L2, a line per k step, so that the weights stream from memory
                // while the cores compute instead of stalling the next panel's first tile (at the FMA rate a tile
                // reads 128 bytes of weights per 12 cycles, some 50 GB/s; one core streams about 13 GB/s from memory
                // here). The next panel is this item's, or, where an item spans all the pixels, the first of the next
                // item, which this thread most likely takes next (its own range of items comes first). ResNet-50 at
                // batch 1, A/B per layer against no prefetch: 512 -> 512 3x3 at 7x7 2.33 against 2.07 ms, 1024 -> 2048
                // 1x1/2 0.97 against 0.73, 2048 -> 512 0.96 against 0.77; against a burst of prefetches after each
                // tile, 512 -> 2048 at 7x7 1.61 against 1.27; with the next item's first panel against without,
                // 1024 -> 256 at 14x14 1.83 against 1.74; the first and second tiles instead: slower, 2.05 against 2.10.
                bool ahead = j.RowChunks == 1 ? panel + 1 < panels : panel + 1 < lastPanel;
                byte* next = (t == 1 || t == 2) && ahead ? (byte*)(b + (long)j.K * Gemm.NR) + (t - 1) * 64L * j.K : null;
                Gemm.Tile(j.K, a, layout, b, tile, Gemm.NR, rows, Gemm.NR, null, null, null, false, prefetch: next);
                if (j.PixelsOut)
                {
                    StorePixels(ref j, tile, m0, rows, n0, cols);
                    continue;
                }
                if (runs != null)
                {
                    Transpose(tile, height, cols, runs + (m0 - chunkStart), runLength);
                    continue;
                }
                // tile[r][c] is output channel n0 + c at pixel m0 + r: a run of rows pixels per channel.
                for (int c = 0; c < cols; c++)
                {
                    float scale = j.Scale == null ? 1f : j.Scale[n0 + c], bias = j.Bias == null ? 0f : j.Bias[n0 + c];
                    long at = (long)(n0 + c) * j.Hw + m0;
                    float* dst = j.Y + at, res = j.Residual == null ? null : j.Residual + at;
                    for (int r = 0; r < rows; r++)
                    {
                        float v = MathF.FusedMultiplyAdd(tile[r * Gemm.NR + c], scale, bias);
                        if (res != null) v += res[r];
                        if (j.Relu && v < 0f) v = 0f;
                        dst[r] = v;
                    }
                }
            }
            if (runs != null) StoreRuns(ref j, runs, runLength, n0, cols, chunkStart, chunkEnd - chunkStart);
        }
    }

    [ThreadStatic] private static Gemm.Scratch t_runs;

    /// <summary>
    /// A tile of pixels [m0, m0 + rows) and channels [n0, n0 + cols) to a pixel-major Y with the epilogue: each row a
    /// run of channels, the same operations in the same order as <see cref="StoreRuns"/> (scale and bias per channel).
    /// </summary>
    private static void StorePixels(ref TransposedJob j, float* tile, int m0, int rows, int n0, int cols)
    {
        if (Vector512.IsHardwareAccelerated && cols == Gemm.NR)
        {
            // A full tile: the panel's 32 scales and biases in four registers, then two vectors per pixel.
            var s0 = j.Scale == null ? Vector512<float>.One : Vector512.Load(j.Scale + n0);
            var s1 = j.Scale == null ? Vector512<float>.One : Vector512.Load(j.Scale + n0 + 16);
            var b0 = j.Bias == null ? Vector512<float>.Zero : Vector512.Load(j.Bias + n0);
            var b1 = j.Bias == null ? Vector512<float>.Zero : Vector512.Load(j.Bias + n0 + 16);
            for (int r = 0; r < rows; r++)
            {
                long at = (long)(m0 + r) * j.Cout + n0;
                float* src = tile + r * Gemm.NR, dst = j.Y + at;
                var v0 = Vector512.FusedMultiplyAdd(Vector512.Load(src), s0, b0);
                var v1 = Vector512.FusedMultiplyAdd(Vector512.Load(src + 16), s1, b1);
                if (j.Residual != null)
                {
                    v0 += Vector512.Load(j.Residual + at);
                    v1 += Vector512.Load(j.Residual + at + 16);
                }
                if (j.Relu)
                {
                    v0 = Vector512.ConditionalSelect(Vector512.LessThan(v0, Vector512<float>.Zero), Vector512<float>.Zero, v0);
                    v1 = Vector512.ConditionalSelect(Vector512.LessThan(v1, Vector512<float>.Zero), Vector512<float>.Zero, v1);
                }
                v0.Store(dst);
                v1.Store(dst + 16);
            }
            return;
        }
        for (int r = 0; r < rows; r++)
        {
            long at = (long)(m0 + r) * j.Cout + n0;
            float* src = tile + r * Gemm.NR, dst = j.Y + at, res = j.Residual == null ? null : j.Residual + at;
            for (int c = 0; c < cols; c++)
            {
                float v = MathF.FusedMultiplyAdd(src[c], j.Scale == null ? 1f : j.Scale[n0 + c], j.Bias == null ? 0f : j.Bias[n0 + c]);
                if (res != null) v += res[c];
                if (j.Relu && v < 0f) v = 0f;
                dst[c] = v;
            }
        }
    }

    /// <summary>A tile's columns (8 or 12 rows each) into their channels' runs, <paramref name="stride"/> apart, one or two gathers each.</summary>
    private static void Transpose(float* tile, int height, int cols, float* runs, int stride)
    {
        var down8 = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * Gemm.NR;
        var down4 = Vector128.Create(8, 9, 10, 11) * Gemm.NR;
        for (int c = 0; c < cols; c++, runs += stride)
        {
            Avx2.GatherVector256(tile + c, down8, 4).Store(runs);
            if (height == Gemm.MR) Avx2.GatherVector128(tile + c, down4, 4).Store(runs + 8);
        }
    }

    /// <summary>
    /// Channels [n0, n0 + cols) of pixels [p0, p0 + length) from their runs to Y with the epilogue: the same operations
    /// in the same order as the scalar loop (a fused multiply-add, the residual, ReLU keeping NaN), by vectors.
    /// </summary>
    private static void StoreRuns(ref TransposedJob j, float* runs, int stride, int n0, int cols, int p0, int length)
    {
        for (int c = 0; c < cols; c++, runs += stride)
        {
            float scale = j.Scale == null ? 1f : j.Scale[n0 + c], bias = j.Bias == null ? 0f : j.Bias[n0 + c];
            var vs = Vector256.Create(scale);
            var vb = Vector256.Create(bias);
            long at = (long)(n0 + c) * j.Hw + p0;
            float* dst = j.Y + at, res = j.Residual == null ? null : j.Residual + at;
            int p = 0;
            for (; p + 8 <= length; p += 8)
            {
                var v = Vector256.FusedMultiplyAdd(Vector256.Load(runs + p), vs, vb);
                if (res != null) v += Vector256.Load(res + p);
                if (j.Relu) v = Vector256.ConditionalSelect(Vector256.LessThan(v, Vector256<float>.Zero), Vector256<float>.Zero, v);
                v.Store(dst + p);
            }
            for (; p < length; p++)
            {
                float v = MathF.FusedMultiplyAdd(runs[p], scale, bias);
                if (res != null) v += res[p];
                if (j.Relu && v < 0f) v = 0f;
                dst[p] = v;
            }
        }
    }

    /// <summary>
    /// Whether a strided 1x1 convolution first copies the pixels it reads into a compact input (every stride-th
    /// pixel of every stride-th row), then runs as a 1x1 stride-1 one, whose columns (or, transposed, rows) are read
    /// in place. Not where the batch is folded into the columns, whose panels are gathered anyway, nor for outputs of
    /// 64 pixels or fewer. ResNet-50 at batch 1, A/B per layer: 256 -> 512 at 56x56 0.83 against 0.75 ms, 512 -> 1024
    /// at 28x28 0.78 against 0.73; 1024 -> 2048 at 14x14 (a 7x7 output, transposed) 0.80 against 0.91, slower.
    /// </summary>
    private static bool Subsamples(int batch, int kernel, int stride, int pad, int hw) =>
        kernel == 1 && stride > 1 && pad == 0 && hw > 64 && !(batch > 1 && hw <= FoldBelow);

    // The compact input, shared by the callers one at a time (the convolution itself then takes s_gate).
    private static readonly Lock s_subsampleGate = new();
    private static Gemm.Scratch s_subsampled;

    private struct SubsampleJob
    {
        public float* X, Xs;
        public int H, W, Stride, OH, OW;
        // Pixel-major input only: each pixel's run of channels.
        public int Cin;
    }

    /// <summary>x [batch x cin x h x w] to the compact [batch x cin x oh x ow] of the pixels a strided 1x1 convolution reads, on all cores.</summary>
    private static ReadOnlySpan<float> Subsample(ReadOnlySpan<float> x, int batch, int cin, int h, int w, int stride, int oh, int ow)
    {
        long floats = (long)batch * cin * oh * ow;
        float* xs = s_subsampled.Get(floats);
        fixed (float* px = x)
        {
            var job = new SubsampleJob { X = px, Xs = xs, H = h, W = w, Stride = stride, OH = oh, OW = ow };
            WorkerPool.Shared.Run(&SubsamplePlane, &job, batch * cin);
        }
        return new ReadOnlySpan<float>(xs, (int)floats);
    }

    /// <summary>A pixel-major x [h*w x cin] to the compact pixel-major [oh*ow x cin] of the pixels a strided 1x1 convolution reads.</summary>
    private static ReadOnlySpan<float> SubsamplePixels(ReadOnlySpan<float> x, int cin, int h, int w, int stride, int oh, int ow)
    {
        long floats = (long)cin * oh * ow;
        if (x.Length < (long)cin * h * w) throw new ArgumentException("internal: subsampling of mismatched sizes");
        float* xs = s_subsampled.Get(floats);
        fixed (float* px = x)
        {
            var job = new SubsampleJob { X = px, Xs = xs, H = h, W = w, Stride = stride, OH = oh, OW = ow, Cin = cin };
            WorkerPool.Shared.Run(&SubsamplePixelRow, &job, oh);
        }
        return new ReadOnlySpan<float>(xs, (int)floats);
    }

    /// <summary>Output row <paramref name="oy"/>: each of its pixels' runs of channels.</summary>
    private static void SubsamplePixelRow(void* context, int oy)
    {
        ref SubsampleJob j = ref Unsafe.AsRef<SubsampleJob>(context);
        int cin = j.Cin;
        for (int ox = 0; ox < j.OW; ox++)
            Gemm.Copy(j.X + ((long)oy * j.Stride * j.W + (long)ox * j.Stride) * cin, j.Xs + ((long)oy * j.OW + ox) * cin, cin);
    }

    private static void SubsamplePlane(void* context, int plane)
    {
        ref SubsampleJob j = ref Unsafe.AsRef<SubsampleJob>(context);
        float* src = j.X + (long)plane * j.H * j.W, dst = j.Xs + (long)plane * j.OH * j.OW;
        for (int oy = 0; oy < j.OH; oy++, dst += j.OW)
        {
            float* row = src + (long)oy * j.Stride * j.W;
            int ox = 0;
            if (j.Stride == 2 && Avx512F.IsSupported)
                for (; ox + 16 <= j.OW && 2 * ox + 32 <= j.W; ox += 16)
                    Avx512F.PermuteVar16x32x2(Vector512.Load(row + 2 * ox), s_evenLanes, Vector512.Load(row + 2 * ox + 16)).Store(dst + ox);
            for (; ox < j.OW; ox++) dst[ox] = row[ox * j.Stride];
        }
    }

    private struct ScatterJob
    {
        public float* From, Y, Residual;
        public int Batch, Cout, Hw;
        public bool Relu;
    }

    /// <summary>Row m of the folded result [Cout x batch*hw] to y[image, m, :], adding the residual and applying ReLU.</summary>
    private static void Scatter(void* context, int m)
    {
        ref ScatterJob j = ref Unsafe.AsRef<ScatterJob>(context);
        for (int image = 0; image < j.Batch; image++)
        {
            float* src = j.From + ((long)m * j.Batch + image) * j.Hw;
            long at = ((long)image * j.Cout + m) * j.Hw;
            float* dst = j.Y + at;
            float* res = j.Residual == null ? null : j.Residual + at;
            int p = 0;
            for (; p <= j.Hw - Vector<float>.Count; p += Vector<float>.Count)
            {
                var v = Unsafe.ReadUnaligned<Vector<float>>(src + p);
                if (res != null) v += Unsafe.ReadUnaligned<Vector<float>>(res + p);
                // Max(v, 0) would turn NaN into 0; keep torch.relu's NaN.
                if (j.Relu) v = Vector.ConditionalSelect(Vector.LessThan(v, Vector<float>.Zero), Vector<float>.Zero, v);
                Unsafe.WriteUnaligned(dst + p, v);
            }
            for (; p < j.Hw; p++)
            {
                float v = src[p];
                if (res != null) v += res[p];
                if (j.Relu && v < 0f) v = 0f;
                dst[p] = v;
            }
        }
    }

    private static Gemm.Scratch s_phases;

    // The even elements of two vectors of 16 (a stride-2 row's columns): PermuteVar16x32x2's indices.
    private static readonly Vector512<int> s_evenLanes = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);

    /// <summary>The job's first <paramref name="rows"/> input rows split into their phases, in blocks of rows, about eight per thread.</summary>
    private static void SplitAll(ref Job job, int rows, int threads)
    {
        job.RowsPerSplit = (rows + 8 * threads - 1) / (8 * threads);
        job.SplitRows = rows;
        fixed (Job* pj = &job) WorkerPool.Shared.Run(&SplitPhases, pj, (rows + job.RowsPerSplit - 1) / job.RowsPerSplit);
    }

    /// <summary>Block <paramref name="block"/> of the input rows (of all the job's images), each into its even columns, then its odd ones.</summary>
    private static void SplitPhases(void* context, int block)
    {
        ref Job j = ref Unsafe.AsRef<Job>(context);
        int first = block * j.RowsPerSplit, last = Math.Min(first + j.RowsPerSplit, j.SplitRows);
        for (int row = first; row < last; row++) SplitRow(ref j, row);
    }

    private static void SplitRow(ref Job j, int row)
    {
        float* src = j.X + (long)row * j.W, even = j.Phases + (long)row * 2 * j.Half, odd = even + j.Half;
        int t = 0;
        if (Avx512F.IsSupported)
        {
            var odds = s_evenLanes + Vector512<int>.One;
            for (; 2 * t + 32 <= j.W; t += 16)
            {
                var lo = Vector512.Load(src + 2 * t);
                var hi = Vector512.Load(src + 2 * t + 16);
                Avx512F.PermuteVar16x32x2(lo, s_evenLanes, hi).Store(even + t);
                Avx512F.PermuteVar16x32x2(lo, odds, hi).Store(odd + t);
            }
        }
        for (; 2 * t < j.W; t++)
        {
            even[t] = src[2 * t];
            if (2 * t + 1 < j.W) odd[t] = src[2 * t + 1];
        }
    }

    private static void Pack(void* context, int panel)
    {
        ref Job j = ref Unsafe.AsRef<Job>(context);
        int n0 = panel * Gemm.NR;
        PackColumns(ref j, n0, Math.Min(Gemm.NR, j.N - n0), j.Packed + (long)panel * j.K * Gemm.NR);
    }

    /// <summary>
    /// Item <paramref name="item"/> of all the images' items in one job: image item / ItemsPerImage, whose input,
    /// output, residual and split rows follow the images before it.
    /// </summary>
    private static void MultiplyImages(void* context, int item)
    {
        ref Job all = ref Unsafe.AsRef<Job>(context);
        int image = item / all.ItemsPerImage;
        Job j = all;
        j.X += (long)image * j.Cin * j.H * j.W;
        j.Y += (long)image * j.Cout * j.Hw;
        if (j.Residual != null) j.Residual += (long)image * j.Cout * j.Hw;
        if (j.Phases != null) j.Phases += (long)image * j.Cin * j.H * 2 * j.Half;
        MultiplyItem(ref j, item % all.ItemsPerImage);
    }

    private static void Multiply(void* context, int item) => MultiplyItem(ref Unsafe.AsRef<Job>(context), item);

    private static void MultiplyItem(ref Job j, int item)
    {
        int chunk = item % j.RowChunks;
        int firstPanel = item / j.RowChunks * j.PanelsPerBlock;
        int lastPanel = Math.Min(firstPanel + j.PanelsPerBlock, j.ColumnPanels);
        float* packed;
        if (j.InPlace)
        {
            // Only a last partial panel needs a copy (zero-padded); the full ones are read from X where they are.
            packed = null;
            if (lastPanel * Gemm.NR > j.N)
            {
                packed = t_block.Get((long)j.K * Gemm.NR);
                int n0 = (lastPanel - 1) * Gemm.NR;
                PackColumns(ref j, n0, j.N - n0, packed);
            }
        }
        else if (!j.PackInItem) packed = j.Packed + (long)firstPanel * j.K * Gemm.NR;
        else
        {
            packed = t_block.Get((long)j.PanelsPerBlock * j.K * Gemm.NR);
            for (int panel = firstPanel; panel < lastPanel; panel++)
            {
                int n0 = panel * Gemm.NR;
                PackColumns(ref j, n0, Math.Min(Gemm.NR, j.N - n0), packed + (long)(panel - firstPanel) * j.K * Gemm.NR);
            }
        }
        int firstRowPanel = chunk * j.PanelsPerChunk;
        int rowPanelCount = Gemm.RowPanelCount(j.Cout), lastRowPanel = Math.Min(firstRowPanel + j.PanelsPerChunk, rowPanelCount);
        // The next block's full panels, read in place (the next item's, where this is its block's last row chunk).
        int nextN0 = lastPanel * Gemm.NR, nextPanels = Math.Min(j.PanelsPerBlock, (j.N - nextN0) / Gemm.NR);
        int fetchLines = j.InPlace && nextPanels > 0 ? 2 * nextPanels : 0;
        for (int rp = firstRowPanel; rp < lastRowPanel; rp++)
        {
            int m0 = Gemm.PanelStart(j.Cout, rp), height = Gemm.PanelHeight(j.Cout, rp), rows = Math.Min(height, j.Cout - m0);
            float* a = j.PackedA ? j.A + (long)m0 * j.K : j.A + (long)m0 * j.ARowStride;
            var layout = j.PackedA ? Gemm.Layout.Packed(height) : new Gemm.Layout(j.ARowStride, j.AKStride);
            float* scale = j.Scale == null ? null : j.Scale + m0, bias = j.Bias == null ? null : j.Bias + m0;
            for (int panel = firstPanel; panel < lastPanel; panel++)
            {
                int n0 = panel * Gemm.NR;
                long at = (long)m0 * j.N + n0;
                bool inPlace = j.InPlace && n0 + Gemm.NR <= j.N;
                float* b = inPlace ? j.X + n0 : j.InPlace ? packed : packed + (long)(panel - firstPanel) * j.K * Gemm.NR;
                // Read in place, the next block's columns are two lines of each of K input rows per panel, hw apart:
                // a stride the hardware's prefetchers do not follow over K rows. So the last row chunk's tiles after
                // its first row panel each bring one line of every row into L2 while they compute, a line per k step
                // (ResNet-50, A/B per layer: 256 -> 64 at 56x56 1.15 against 0.98 ms at batch 1, 10.5 against 7.8 at
                // batch 8; 512 -> 128 at 28x28 1.36 against 1.28 and 9.27 against 8.05; the whole forward at batch 8
                // 237.7 against 227.0 ms).
                int line = (rp - firstRowPanel - 1) * (lastPanel - firstPanel) + panel - firstPanel;
                byte* next = null;
                nint nextStride = 64;
                if (inPlace && chunk == j.RowChunks - 1 && line >= 0 && line < fetchLines)
                {
                    next = (byte*)(j.X + nextN0 + line * 16);
                    nextStride = (nint)j.Hw * sizeof(float);
                }
                // Items of a few column panels (large K: the batch-8 layers at 14x14 and 7x7, folded, and the strided
                // 3x3 ones) use each weight row panel for only a few tiles, so the weights' stream from memory is what
                // their first tiles wait on: the block's second tile (or its only one) brings the next row panel into
                // L2 meanwhile (ResNet-50 at batch 8, A/B per layer: 1024 -> 2048 1x1/2 7.29 against 6.14 ms, 2048 ->
                // 512 at 7x7 6.60 against 6.04, 512 -> 512 3x3/2 8.19 against 7.52; the forward 226.2 against 218.8
                // ms; with blocks of any size, the 1x1 layers of wide blocks at 28x28 and 56x56 lost up to 3%).
                else if (lastPanel - firstPanel <= 4 && panel == Math.Min(firstPanel + 1, lastPanel - 1) && n0 + Gemm.NR <= j.N && rp + 1 < rowPanelCount && j.AKStride == 1)
                    next = (byte*)(j.PackedA ? a + (long)height * j.K : a + (long)height * j.ARowStride);
                Gemm.Tile(j.K, a, layout, b, j.Y + at, j.N, rows, Math.Min(Gemm.NR, j.N - n0),
                    scale, bias, j.Residual == null ? null : j.Residual + at, j.Relu, inPlace ? j.Hw : Gemm.NR, next, nextStride);
            }
        }
    }

    /// <summary>
    /// Gathers columns [n0, n0 + cols) of the implicit im2col matrix into a [K][NR] panel, zero-padded. With the batch
    /// folded in, column q is pixel q % hw of image q / hw.
    /// </summary>
    [SkipLocalsInit] // the segment arrays are read only where written
    private static void PackColumns(ref Job j, int n0, int cols, float* panel)
    {
        int hw = j.H * j.W;
        long imageStride = (long)j.Cin * hw;
        if (j.Kernel == 1 && j.Stride == 1 && j.Pad == 0)
        {
            // 1x1 stride 1: the columns are contiguous runs of the input planes, one run per image the panel touches.
            for (int t = 0; t < cols;)
            {
                int q = n0 + t, p = q % hw, length = Math.Min(cols - t, hw - p);
                float* src = j.X + q / hw * imageStride + p;
                for (int c = 0; c < j.Cin; c++) Gemm.Copy(src + (long)c * hw, panel + (long)c * Gemm.NR + t, length);
                t += length;
            }
            if (cols < Gemm.NR)
                for (int c = 0; c < j.Cin; c++) new Span<float>(panel + (long)c * Gemm.NR + cols, Gemm.NR - cols).Clear();
            return;
        }

        // Split the panel's columns into runs along one output row of one image: (image, oy, first ox, first column, length).
        long* segImage = stackalloc long[Gemm.NR];
        int* segY = stackalloc int[Gemm.NR];
        int* segX = stackalloc int[Gemm.NR];
        int* segT = stackalloc int[Gemm.NR];
        int* segLen = stackalloc int[Gemm.NR];
        int segments = 0;
        for (int t = 0; t < cols;)
        {
            int q = n0 + t, image = q / j.Hw, p = q % j.Hw, oy = p / j.OW, ox = p % j.OW;
            int len = Math.Min(cols - t, j.OW - ox);
            segImage[segments] = image * imageStride; segY[segments] = oy; segX[segments] = ox; segT[segments] = t; segLen[segments] = len;
            segments++;
            t += len;
        }

        if (j.Phases != null)
        {
            // Stride 2 from the split rows: tap kx of output column ox reads input column 2 ox - pad + kx, which is
            // column ox + (kx - pad - phase) / 2 of phase (kx - pad) & 1; a run of outputs is a run of that phase.
            long phaseImage = (long)j.Cin * j.H * 2 * j.Half;
            var phaseBase = stackalloc long[segments];
            for (int g = 0; g < segments; g++) phaseBase[g] = segImage[g] / imageStride * phaseImage;
            float* to = panel;
            for (int c = 0; c < j.Cin; c++)
                for (int ky = 0; ky < j.Kernel; ky++)
                    for (int kx = 0; kx < j.Kernel; kx++, to += Gemm.NR)
                    {
                        int phase = (kx - j.Pad) & 1, shift = (kx - j.Pad - phase) / 2;
                        int width = phase == 0 ? j.Half : j.W / 2;
                        for (int g = 0; g < segments; g++)
                        {
                            float* dst = to + segT[g];
                            int len = segLen[g];
                            int iy = segY[g] * 2 - j.Pad + ky;
                            if ((uint)iy >= (uint)j.H)
                            {
                                new Span<float>(dst, len).Clear();
                                continue;
                            }
                            float* src = j.Phases + phaseBase[g] + ((long)(c * j.H + iy) * 2 + phase) * j.Half;
                            int x0 = segX[g] + shift;
                            int lo = Math.Clamp(-x0, 0, len), hi = Math.Clamp(width - x0, lo, len);
                            if (len == Gemm.NR && lo == 0 && hi == Gemm.NR && Vector512.IsHardwareAccelerated)
                            {
                                // A whole panel's run inside the row (most of them): two vectors, no call (the stem at
                                // batch 1, A/B: 1.03 against 1.00 and 1.04 against 1.02 ms).
                                Vector512.Store(Vector512.Load(src + x0), dst);
                                Vector512.Store(Vector512.Load(src + x0 + 16), dst + 16);
                                continue;
                            }
                            for (int t = 0; t < lo; t++) dst[t] = 0f;
                            Gemm.Copy(src + x0 + lo, dst + lo, hi - lo);
                            for (int t = hi; t < len; t++) dst[t] = 0f;
                        }
                        for (int t = cols; t < Gemm.NR; t++) to[t] = 0f;
                    }
            return;
        }

        int s = j.Stride;
        float* dstRow = panel;
        for (int c = 0; c < j.Cin; c++)
        {
            for (int ky = 0; ky < j.Kernel; ky++)
            {
                for (int kx = 0; kx < j.Kernel; kx++, dstRow += Gemm.NR)
                {
                    for (int g = 0; g < segments; g++)
                    {
                        float* dst = dstRow + segT[g];
                        int len = segLen[g];
                        int iy = segY[g] * s - j.Pad + ky;
                        if ((uint)iy >= (uint)j.H)
                        {
                            new Span<float>(dst, len).Clear();
                            continue;
                        }
                        float* src = j.X + segImage[g] + (long)c * hw + iy * j.W;
                        int ix0 = segX[g] * s - j.Pad + kx;
                        // Columns t with 0 <= ix0 + t s < W.
                        int lo = ix0 >= 0 ? 0 : (-ix0 + s - 1) / s;
                        int hi = ix0 >= j.W ? 0 : Math.Min(len, (j.W - 1 - ix0) / s + 1);
                        if (hi < lo) hi = lo;
                        for (int t = 0; t < lo; t++) dst[t] = 0f;
                        if (s == 1)
                        {
                            Gemm.Copy(src + ix0 + lo, dst + lo, hi - lo);
                        }
                        else
                        {
                            float* from = src + ix0;
                            int t = lo;
                            if (s == 2 && Avx512F.IsSupported)
                            {
                                // Sixteen even elements out of two loads; only while both loads stay inside the row.
                                for (; t + 15 < hi && ix0 + 2 * t + 31 < j.W; t += 16)
                                    Avx512F.PermuteVar16x32x2(Vector512.Load(from + 2 * t), s_evenLanes, Vector512.Load(from + 2 * t + 16)).Store(dst + t);
                            }
                            for (; t < hi; t++) dst[t] = from[t * s];
                        }
                        for (int t = hi; t < len; t++) dst[t] = 0f;
                    }
                    for (int t = cols; t < Gemm.NR; t++) dstRow[t] = 0f;
                }
            }
        }
    }
}
