using System;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Unrolled.Cpu;

/// <summary>
/// 3x3 stride-1 pad-1 convolution by Winograd's minimal filtering (Lavin and Gray, 2015), in two sizes: F(2x2, 3x3)
/// computes every 2x2 block of outputs from a 4x4 block of inputs with 16 multiplications per (output channel, input
/// channel) pair instead of 36; F(4x4, 3x3) every 4x4 block from a 6x6 block with 36 instead of 144. In matrix form,
/// with the input tile d and the 3x3 kernel g,
/// <code>
///   V = B^T d B,   U = G g G^T,   Y = A^T (sum over input channels of U . V) A
///   F(2x2, 3x3):  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
///                 A^T = [1 1 1 0; 0 1 -1 -1]
///   F(4x4, 3x3):  B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
///                 G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1],
///                 A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
/// </code>
/// so that the sum over input channels is one GEMM per position xi of the tile (16 or 36):
/// M[xi] [Cout x T] = U[xi] [Cout x Cin] . V[xi] [Cin x T], T being the number of tiles. The input transform writes
/// V straight into the GEMM's packed column panels; the output transform applies the epilogue (eval-mode BatchNorm's
/// scale and bias, the residual, ReLU) as it writes y. The transformed weights U are made once per weights version
/// (<see cref="TransformWeights"/>; 16/9 or 36/9 of the weights' size). The larger tile does 44% fewer
/// multiplications but needs 6x6 input tiles: it is chosen where the maps give enough tiles (<see cref="Choose"/>).
/// </summary>
internal static unsafe class Winograd
{
    /// <summary>
    /// With AVX-512 (the transforms work 16 tiles at a time), unless UNROLLED_WINOGRAD=0 (then every convolution is the
    /// direct one: for comparisons); UNROLLED_WINOGRAD=2 keeps to F(2x2, 3x3).
    /// </summary>
    public static readonly bool Enabled = Avx512F.IsSupported && Environment.GetEnvironmentVariable("UNROLLED_WINOGRAD") != "0";

    private static readonly bool s_largeTiles = Environment.GetEnvironmentVariable("UNROLLED_WINOGRAD") != "2";

    /// <summary>Tests only: the direct convolution everywhere (to compare a network both ways in one process).</summary>
    internal static volatile bool Off;

    /// <summary>Tests and `--ab-tiles` only: F(2x2, 3x3) everywhere Winograd is used.</summary>
    internal static volatile bool SmallTilesOnly;

    /// <summary>The smallest map side F(4x4, 3x3) is chosen for (see <see cref="Choose"/>); tests lower it to run it on small networks.</summary>
    internal static volatile int LargeTilesFrom = 28;

    /// <summary>The tile of a Winograd convolution: outputs per side (2 or 4); the input tile is 2 more.</summary>
    public enum Tiles
    {
        None = 0,
        F2 = 2,
        F4 = 4,
    }

    /// <summary>Positions of a tile (16 or 36): the GEMMs per chunk and the planes of the transformed weights.</summary>
    public static int Positions(Tiles tiles) => ((int)tiles + 2) * ((int)tiles + 2);

    /// <summary>Floats of the transformed weights of a [cout x cin x 3 x 3] convolution.</summary>
    public static long TransformedSize(int cout, int cin, Tiles tiles = Tiles.F2) => (long)Positions(tiles) * cout * cin;

    // G of each tile size, row by row (the weight transform U = G g G^T).
    private static readonly double[] s_g2 = { 1, 0, 0, 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0, 0, 1 };
    private static readonly double[] s_g4 =
    {
        1.0 / 4, 0, 0,
        -1.0 / 6, -1.0 / 6, -1.0 / 6,
        -1.0 / 6, 1.0 / 6, -1.0 / 6,
        1.0 / 24, 1.0 / 12, 1.0 / 6,
        1.0 / 24, -1.0 / 12, 1.0 / 6,
        0, 0, 1,
    };

    /// <summary>U[xi][k][c] = (G g G^T)[xi] for every kernel g = W[k, c], an output channel per item on every core.</summary>
    public static void TransformWeights(ReadOnlySpan<float> weights, Span<float> transformed, int cout, int cin, Tiles tiles = Tiles.F2)
    {
        if (weights.Length != cout * cin * 9 || transformed.Length != TransformedSize(cout, cin, tiles))
            throw new ArgumentException("internal: Winograd weight transform of mismatched sizes");
        fixed (float* pw = weights, pu = transformed)
        fixed (double* pg = tiles == Tiles.F4 ? s_g4 : s_g2)
        {
            var job = new WeightJob { W = pw, U = pu, G = pg, Rows = (int)tiles + 2, Cout = cout, Cin = cin };
            WorkerPool.Shared.Run(&TransformKernels, &job, cout);
        }
    }

    /// <summary>
    /// The transform of the weights of the data gradient's convolution: W'[c][k] = W[k][c] rotated by 180 degrees, so
    /// that dL/dx = conv3x3(dL/dz, W') for a 3x3 stride-1 pad-1 convolution. <paramref name="transformed"/> is then
    /// [positions][cin][cout].
    /// </summary>
    public static void TransformTransposedWeights(ReadOnlySpan<float> weights, Span<float> transformed, int cout, int cin, Tiles tiles = Tiles.F2)
    {
        if (weights.Length != cout * cin * 9 || transformed.Length != TransformedSize(cout, cin, tiles))
            throw new ArgumentException("internal: Winograd weight transform of mismatched sizes");
        fixed (float* pw = weights, pu = transformed)
        fixed (double* pg = tiles == Tiles.F4 ? s_g4 : s_g2)
        {
            var job = new WeightJob { W = pw, U = pu, G = pg, Rows = (int)tiles + 2, Cout = cin, Cin = cout, Transposed = true };
            WorkerPool.Shared.Run(&TransformKernels, &job, cin);
        }
    }

    private struct WeightJob
    {
        public float* W, U;
        public double* G; // Rows x 3
        public int Rows, Cout, Cin; // of the convolution the transformed weights compute
        public bool Transposed;
    }

    private static void TransformKernels(void* context, int k)
    {
        ref WeightJob j = ref Unsafe.AsRef<WeightJob>(context);
        int c = 0;
        if (Avx512F.IsSupported)
            for (; c + Lanes <= j.Cin; c += Lanes) TransformKernels16(ref j, k, c);
        long plane = (long)j.Cout * j.Cin;
        int rows = j.Rows;
        double* gg = stackalloc double[6 * 3];
        float* flipped = stackalloc float[9];
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
            // G g (rows x 3), in double, then (G g) G^T: the same combination along each row.
            for (int r = 0; r < rows; r++)
                for (int col = 0; col < 3; col++)
                    gg[r * 3 + col] = j.G[r * 3] * g[col] + j.G[r * 3 + 1] * g[3 + col] + j.G[r * 3 + 2] * g[6 + col];
            float* u = j.U + (long)k * j.Cin + c;
            for (int r = 0; r < rows; r++)
                for (int q = 0; q < rows; q++)
                    u[(r * rows + q) * plane] = (float)(gg[r * 3] * j.G[q * 3] + gg[r * 3 + 1] * j.G[q * 3 + 1] + gg[r * 3 + 2] * j.G[q * 3 + 2]);
        }
    }

    /// <summary>
    /// As the scalar loop of <see cref="TransformKernels"/> for kernels (k, c0) .. (k, c0 + 15) at once: their taps
    /// gathered one per lane, G g G^T in float, U stored 16 input channels at a time (contiguous in U).
    /// </summary>
    [SkipLocalsInit] // the stack buffers are cleared where they must be, or written before they are read
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
        var g = stackalloc Vector512<float>[9];
        for (int t = 0; t < 9; t++)
        {
            float* tap = first + t * tapStep;
            g[t] = Vector512.Create(Avx2.GatherVector256(tap, index, 4), Avx2.GatherVector256(tap + upper, index, 4));
        }
        int rows = j.Rows;
        var coefficient = stackalloc Vector512<float>[6 * 3];
        for (int i = 0; i < rows * 3; i++) coefficient[i] = Vector512.Create((float)j.G[i]);
        // G g: rows x 3.
        var gg = stackalloc Vector512<float>[6 * 3];
        for (int r = 0; r < rows; r++)
            for (int col = 0; col < 3; col++)
                gg[r * 3 + col] = coefficient[r * 3] * g[col] + coefficient[r * 3 + 1] * g[3 + col] + coefficient[r * 3 + 2] * g[6 + col];
        long plane = (long)j.Cout * j.Cin;
        float* u = j.U + (long)k * j.Cin + c0;
        for (int r = 0; r < rows; r++)
            for (int q = 0; q < rows; q++)
                (gg[r * 3] * coefficient[q * 3] + gg[r * 3 + 1] * coefficient[q * 3 + 1] + gg[r * 3 + 2] * coefficient[q * 3 + 2])
                    .Store(u + (r * rows + q) * plane);
    }

    private struct Job
    {
        public float* X, Y, Residual, U, Scale, Bias;
        public int Batch, Cin, Cout, H, W, TilesY, TilesX, T, Positions;
        public bool Relu, Large;
        // Items [0, Whole) are whole chunks; each of the chunks after them is split into Groups items by output
        // channels (row panels of the products).
        public int Whole, Groups;
        // The output channels an item transforms back: all of them, or its group's.
        public int OutFirst, OutEnd;
    }

    /// <summary>Tiles transformed together: one per lane of a 512-bit vector.</summary>
    private const int Lanes = 16;

    // Each thread's transformed inputs V [positions][Cin][NR] (each V[xi] is already a packed B panel) and products
    // M [positions][Cout][NR] for one chunk of NR tiles: the chunk stays in the core's caches.
    [ThreadStatic] private static Gemm.Scratch t_v, t_m;

    /// <summary>
    /// y = relu?(conv3x3(x, W) * scale + bias + residual) with stride 1 and padding 1, from the weights
    /// <paramref name="u"/> transformed for <paramref name="tiles"/>; shapes and epilogue as <see cref="Conv.Forward"/>.
    /// The tiles are taken <see cref="Gemm.NR"/> at a time (one GEMM column panel), each chunk transformed, multiplied
    /// and transformed back by one core.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual, ReadOnlySpan<float> u,
        ReadOnlySpan<float> scale, ReadOnlySpan<float> bias, int batch, int cin, int h, int w, int cout, bool relu, Tiles tiles = Tiles.F2)
    {
        if (tiles == Tiles.None || u.Length != TransformedSize(cout, cin, tiles))
            throw new ArgumentException("internal: Winograd weights transformed for another tile or shape");
        int size = (int)tiles;
        int tilesY = (h + size - 1) / size, tilesX = (w + size - 1) / size;
        int t = batch * tilesY * tilesX;
        fixed (float* px = x, py = y, pr = residual, pu = u, ps = scale, pb = bias)
        {
            var job = new Job
            {
                X = px, Y = py, Residual = residual.IsEmpty ? null : pr, U = pu, Scale = scale.IsEmpty ? null : ps, Bias = bias.IsEmpty ? null : pb,
                Batch = batch, Cin = cin, Cout = cout, H = h, W = w, TilesY = tilesY, TilesX = tilesX, T = t, Relu = relu,
                Positions = Positions(tiles), Large = tiles == Tiles.F4,
            };
            // A chunk's GEMMs cost the same however few tiles it has, so chunks that do not divide evenly between the
            // cores leave one idle for a chunk's time (ResNet-50's 28x28 layers at batch 1: 7 chunks on 2 cores). With
            // F(2x2, 3x3) those last chunks are split between the cores by output channels, each part transforming
            // the chunk's inputs again (128 -> 128 at 28x28, A/B: 1.53 against 1.58 and 1.42 against 1.49 ms). Not
            // with F(4x4, 3x3), whose input transform costs more (64 -> 64 at 56x56: 1.49 against 1.46 and 1.42
            // against 1.38 ms, slower).
            int chunks = (t + Gemm.NR - 1) / Gemm.NR, threads = WorkerPool.Shared.Threads;
            int split = tiles == Tiles.F2 && chunks > threads ? chunks % threads : 0;
            job.Whole = chunks - split;
            job.Groups = threads;
            WorkerPool.Shared.Run(&Chunk, &job, job.Whole + split * threads);
        }
    }

    /// <summary>
    /// The Winograd tile for this layer, or <see cref="Tiles.None"/> for the direct convolution: only 3x3 stride-1
    /// pad-1 convolutions with enough input channels to repay the transforms (measured with `--layers` on two cores), and
    /// only with at least two chunks of tiles (ResNet-50's 7x7 maps at batch 1 have one: the direct convolution, on
    /// every core, is faster there). F(4x4, 3x3) where its tiles make two chunks and a chunk's transformed inputs and
    /// products (36 x 128 bytes per channel each) fit well within the core's 1 MB L2, at most 64 channels in and out
    /// (590 KB; with 128 of each, 1.2 MB, ResNet-50's 28x28 layers ran faster with F(2x2, 3x3): the forward 27.1
    /// against 27.3 and 32.1 against 32.7 ms at batch 1, 198.9 against 201.3 ms at batch 8, a training step of 16
    /// images 1569 against 1587 and 1542 against 1548 ms, each A/B in one process; with 256 channels at 14x14 it
    /// measured slower too: 6.7 against 5.8 ms at batch 8) and on maps of at
    /// least 28x28 (on smaller ones its rows hold few tiles and the transforms cost more than the products save:
    /// 64 channels at 8x8, batch 32, 1.05-1.54 against 0.86-1.03 ms; at 24x24, batch 1, 0.31 against 0.22 ms; at
    /// 16x16 and 14x14 the two tie), else F(2x2, 3x3) where its tiles make two chunks. The choice does not depend on
    /// the number of cores, so neither do the results.
    /// </summary>
    public static Tiles Choose(int kernel, int stride, int pad, int batch, int cin, int h, int w, int cout)
    {
        // A map of one pixel is a 1x1 convolution of the centre taps (Conv.CentreTapOnly): one product, not 16.
        if (kernel != 3 || stride != 1 || pad != 1 || !Enabled || Off || cin < 64 || (h == 1 && w == 1)) return Tiles.None;
        if (s_largeTiles && !SmallTilesOnly && cin <= 64 && cout <= 64 && h >= LargeTilesFrom && w >= LargeTilesFrom && Chunks(batch, h, w, 4) >= 2) return Tiles.F4;
        return Chunks(batch, h, w, 2) >= 2 ? Tiles.F2 : Tiles.None;
    }

    private static long Chunks(int batch, int h, int w, int size) =>
        ((long)batch * ((h + size - 1) / size) * ((w + size - 1) / size) + Gemm.NR - 1) / Gemm.NR;

    /// <summary>Whether a 3x3 stride-1 pad-1 convolution of this shape runs by Winograd (either tile).</summary>
    public static bool Pays(int batch, int cin, int h, int w, int cout) => Choose(3, 1, 1, batch, cin, h, w, cout) != Tiles.None;

    private static void Chunk(void* context, int item)
    {
        Job j = Unsafe.AsRef<Job>(context);
        int chunk = item, firstPanel = 0, rowPanels = Gemm.RowPanelCount(j.Cout), endPanel = rowPanels;
        int split = (j.T + Gemm.NR - 1) / Gemm.NR - j.Whole;
        if (split > 0)
        {
            // Each thread's range of items (WorkerPool) starts with one group of every split chunk, then its share of
            // the whole ones: the same work in every range.
            int perRange = (j.Whole + split * j.Groups) / j.Groups, range = item / perRange, at = item % perRange;
            if (at < split)
            {
                chunk = j.Whole + at;
                firstPanel = (int)((long)range * rowPanels / j.Groups);
                endPanel = (int)((long)(range + 1) * rowPanels / j.Groups);
            }
            else chunk = range * (j.Whole / j.Groups) + at - split;
        }
        j.OutFirst = Gemm.PanelStart(j.Cout, firstPanel);
        j.OutEnd = endPanel == rowPanels ? j.Cout : Gemm.PanelStart(j.Cout, endPanel);
        int first = chunk * Gemm.NR, count = Math.Min(Gemm.NR, j.T - first);
        int positions = j.Positions;
        float* v = t_v.Get((long)positions * j.Cin * Gemm.NR);
        float* m = t_m.Get((long)positions * j.Cout * Gemm.NR + Lanes); // a vector may read past the last lane
        TransformRuns(ref j, first, count, v, output: false);
        if (count < Gemm.NR)
            for (int xi = 0; xi < positions; xi++)
                for (int c = 0; c < j.Cin; c++) new Span<float>(v + ((long)xi * j.Cin + c) * Gemm.NR + count, Gemm.NR - count).Clear();
        // M[xi] = U[xi] . V[xi]: a GEMM of [Cout x Cin] . [Cin x NR] per position.
        for (int xi = 0; xi < positions; xi++)
        {
            float* a = j.U + (long)xi * j.Cout * j.Cin, b = v + (long)xi * j.Cin * Gemm.NR, mx = m + (long)xi * j.Cout * Gemm.NR;
            for (int rp = firstPanel; rp < endPanel; rp++)
            {
                int m0 = Gemm.PanelStart(j.Cout, rp), height = Gemm.PanelHeight(j.Cout, rp);
                // Each row panel of U serves one tile only (a chunk is one column panel), so U streams from memory
                // at the rate the tiles consume it: each tile also brings the rows two panels on into L2 (the next
                // position's after the last panel; U is [position][Cout][Cin], contiguous), a line per k step.
                // ResNet-50, A/B per layer against no prefetch: the 14x14 layers 4.97 against 3.55 ms at batch 1 and
                // 24.4 against 20.3 at batch 8, 28x28 2.26 against 1.87 and 12.4 against 11.1, 56x56 (F(4x4, 3x3))
                // 1.63 against 1.42; one, three or four panels on: the same within 1-3%.
                Gemm.Tile(j.Cin, a + (long)m0 * j.Cin, Gemm.Layout.RowMajor(j.Cin), b, mx + (long)m0 * Gemm.NR, Gemm.NR,
                    Math.Min(height, j.Cout - m0), Gemm.NR, null, null, null, false, prefetch: (byte*)(a + (long)(m0 + 2 * Gemm.MR) * j.Cin));
            }
        }
        TransformRuns(ref j, first, count, m, output: true);
    }

    /// <summary>
    /// The input (into <paramref name="lanes"/>, the chunk's V) or output (from it, the chunk's M) transform of tiles
    /// [first, first + count), as runs along tile rows; tile first + i is lane i.
    /// </summary>
    private static void TransformRuns(ref Job j, int first, int count, float* lanes, bool output)
    {
        for (int done = 0; done < count;)
        {
            int t = first + done;
            int row = t / j.TilesX, tx = t % j.TilesX, length = Math.Min(count - done, j.TilesX - tx);
            int n = row / j.TilesY, ty = row % j.TilesY;
            float* at = lanes + done;
            if (output)
            {
                if (j.Large) TransformOutput4(ref j, n, ty, tx, length, at);
                else TransformOutput(ref j, n, ty, tx, length, at);
            }
            else if (j.Large) TransformInput4(ref j, n, ty, tx, length, at);
            else TransformInput(ref j, n, ty, tx, length, at);
            done += length;
        }
    }

    /// <summary>Input row <paramref name="iy"/> of a plane, or null where it is padding.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float* Row(float* plane, in Job j, int iy) => iy >= 0 && iy < j.H ? plane + (long)iy * j.W : null;

    // Lane permutations that interleave two vectors of 16: (a0, b0, a1, b1, ...) from the first 8 of each, then the last 8.
    private static readonly Vector512<int> s_interleaveLow = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    private static readonly Vector512<int> s_interleaveHigh = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);

    /// <summary>
    /// Y = A^T M A for tiles [tx, tx + length) of tile row ty of image n, every output channel, 16 tiles at a time
    /// (A^T's rows: m0 + m1 + m2 and m1 - m2 - m3, first down the tile, then across); the two outputs of each tile
    /// row are interleaved into the output row, then scale, bias, residual and ReLU. <paramref name="m"/> points at
    /// the first tile's lane of the chunk's products.
    /// </summary>
    [SkipLocalsInit] // the stack buffers are cleared where they must be, or written before they are read
    private static void TransformOutput(ref Job j, int n, int ty, int tx0, int length, float* m)
    {
        long xi1 = (long)j.Cout * Gemm.NR;
        for (int k = j.OutFirst; k < j.OutEnd; k++)
        {
            OutputChannel(ref j, n, k, out var scale, out var bias, out float* y, out float* res);
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
                WriteRow(s00 + s01 + s02, s01 - s02 - s03, y, res, (long)(2 * ty) * j.W + 2 * tx, columns, scale, bias, j.Relu);
                if (2 * ty + 1 < j.H)
                    WriteRow(s10 + s11 + s12, s11 - s12 - s13, y, res, (long)(2 * ty + 1) * j.W + 2 * tx, columns, scale, bias, j.Relu);
            }
        }
    }

    /// <summary>Output channel k of image n: its epilogue's scale and bias, and where its plane of y and of the residual start.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void OutputChannel(ref Job j, int n, int k, out Vector512<float> scale, out Vector512<float> bias, out float* y, out float* residual)
    {
        scale = Vector512.Create(j.Scale == null ? 1f : j.Scale[k]);
        bias = Vector512.Create(j.Bias == null ? 0f : j.Bias[k]);
        long at = ((long)n * j.Cout + k) * j.H * j.W;
        y = j.Y + at;
        residual = j.Residual == null ? null : j.Residual + at;
    }

    /// <summary>
    /// Writes <paramref name="columns"/> outputs of one row from the even (<paramref name="even"/>) and odd
    /// (<paramref name="odd"/>) columns of 16 tiles, with the epilogue.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteRow(Vector512<float> even, Vector512<float> odd, float* y, float* residual, long at, int columns,
        Vector512<float> scale, Vector512<float> bias, bool relu)
    {
        WriteOutputs(Avx512F.PermuteVar16x32x2(even, s_interleaveLow, odd), y, residual, at, columns, scale, bias, relu);
        WriteOutputs(Avx512F.PermuteVar16x32x2(even, s_interleaveHigh, odd), y, residual, at + Lanes, columns - Lanes, scale, bias, relu);
    }

    /// <summary>
    /// F(4x4, 3x3)'s V = B^T d B for tiles [tx, tx + length) of tile row ty of image n, every input channel, into lanes
    /// of the chunk's panels (<paramref name="v"/> points at the first tile's lane), by vectors both ways: down the
    /// tile (B^T d) 16 input columns at a time, the six input rows read by masked loads that give the padding's zeros;
    /// then across (. B) 16 tiles at a time, tile i's columns 4i .. 4i + 5 of the rows of B^T d taken out by lane
    /// permutations; masked stores write the run's lanes and no other. (Scalar first steps cost as much as the
    /// GEMM on small maps: vectors gave the forward 34.0 against 34.8 ms at batch 1, A/B in one process.)
    /// </summary>
    [SkipLocalsInit] // the stack buffers are written before they are read
    private static void TransformInput4(ref Job j, int n, int ty, int tx0, int length, float* v)
    {
        RunColumns(4, tx0, length, out int x0, out int blocks, out int stride);
        float* q = stackalloc float[6 * stride];
        var inMap = stackalloc Vector512<float>[blocks];
        var runMask = stackalloc Vector512<float>[(length + Lanes - 1) / Lanes];
        PrepareRun(q, 6, stride, inMap, blocks, x0, j.W, runMask, length);
        float** rows = stackalloc float*[6];
        long xi1 = (long)j.Cin * Gemm.NR; // from one position's panel to the next
        var four = Vector512.Create(4f);
        var five = Vector512.Create(5f);
        var two = Vector512.Create(2f);
        for (int c = 0; c < j.Cin; c++)
        {
            float* plane = j.X + ((long)n * j.Cin + c) * j.H * j.W;
            for (int r = 0; r < 6; r++) rows[r] = Row(plane, j, 4 * ty - 1 + r);
            for (int b = 0; b < blocks; b++)
            {
                int at = x0 + b * Lanes;
                var m = inMap[b];
                var d0 = rows[0] == null ? default : Avx512F.MaskLoad(rows[0] + at, m, Vector512<float>.Zero);
                var d1 = rows[1] == null ? default : Avx512F.MaskLoad(rows[1] + at, m, Vector512<float>.Zero);
                var d2 = rows[2] == null ? default : Avx512F.MaskLoad(rows[2] + at, m, Vector512<float>.Zero);
                var d3 = rows[3] == null ? default : Avx512F.MaskLoad(rows[3] + at, m, Vector512<float>.Zero);
                var d4 = rows[4] == null ? default : Avx512F.MaskLoad(rows[4] + at, m, Vector512<float>.Zero);
                var d5 = rows[5] == null ? default : Avx512F.MaskLoad(rows[5] + at, m, Vector512<float>.Zero);
                float* dst = q + b * Lanes;
                (four * d0 - five * d2 + d4).Store(dst);
                (d3 + d4 - four * (d1 + d2)).Store(dst + stride);
                (four * (d1 - d2) + d4 - d3).Store(dst + 2 * stride);
                (two * (d3 - d1) + d4 - d2).Store(dst + 3 * stride);
                (two * (d1 - d3) + d4 - d2).Store(dst + 4 * stride);
                (four * d1 - five * d3 + d5).Store(dst + 5 * stride);
            }
            for (int t = 0, i = 0; t < length; t += Lanes, i++)
            {
                var store = runMask[i];
                for (int r = 0; r < 6; r++)
                {
                    float* at = q + r * stride + 4 * t;
                    var l0 = Vector512.Load(at);
                    var l1 = Vector512.Load(at + 16);
                    var l2 = Vector512.Load(at + 32);
                    var l3 = Vector512.Load(at + 48);
                    var l4 = Vector512.Load(at + 64);
                    var e0 = Phase(l0, l1, l2, l3, 0);
                    var e1 = Phase(l0, l1, l2, l3, 1);
                    var e2 = Phase(l0, l1, l2, l3, 2);
                    var e3 = Phase(l0, l1, l2, l3, 3);
                    // Columns 4i + 4 and 4i + 5: those of the next tile, one lane on.
                    var e4 = Avx512F.AlignRight32(l4.AsInt32(), e0.AsInt32(), 1).AsSingle();
                    var e5 = Avx512F.AlignRight32(Avx512F.AlignRight32(l4.AsInt32(), l4.AsInt32(), 1), e1.AsInt32(), 1).AsSingle();
                    float* dst = v + 6 * r * xi1 + (long)c * Gemm.NR + t;
                    Avx512F.MaskStore(dst, store, four * e0 - five * e2 + e4);
                    Avx512F.MaskStore(dst + xi1, store, e3 + e4 - four * (e1 + e2));
                    Avx512F.MaskStore(dst + 2 * xi1, store, four * (e1 - e2) + e4 - e3);
                    Avx512F.MaskStore(dst + 3 * xi1, store, two * (e3 - e1) + e4 - e2);
                    Avx512F.MaskStore(dst + 4 * xi1, store, two * (e1 - e3) + e4 - e2);
                    Avx512F.MaskStore(dst + 5 * xi1, store, four * e1 - five * e3 + e5);
                }
            }
        }
    }

    /// <summary>
    /// F(2x2, 3x3)'s V = B^T d B for tiles [tx, tx + length) of tile row ty of image n, every input channel, as
    /// <see cref="TransformInput4"/> does it: down the tile 16 input columns at a time (masked loads give the
    /// padding), across 16 tiles at a time (tile i's columns 2i .. 2i + 3 of B^T d by lane permutations), masked stores.
    /// </summary>
    [SkipLocalsInit] // the stack buffers are written before they are read
    private static void TransformInput(ref Job j, int n, int ty, int tx0, int length, float* v)
    {
        RunColumns(2, tx0, length, out int x0, out int blocks, out int stride);
        float* q = stackalloc float[4 * stride];
        var inMap = stackalloc Vector512<float>[blocks];
        var runMask = stackalloc Vector512<float>[(length + Lanes - 1) / Lanes];
        PrepareRun(q, 4, stride, inMap, blocks, x0, j.W, runMask, length);
        long xi1 = (long)j.Cin * Gemm.NR; // from one position's panel to the next
        for (int c = 0; c < j.Cin; c++)
        {
            float* plane = j.X + ((long)n * j.Cin + c) * j.H * j.W;
            float* r0 = Row(plane, j, 2 * ty - 1), r1 = Row(plane, j, 2 * ty), r2 = Row(plane, j, 2 * ty + 1), r3 = Row(plane, j, 2 * ty + 2);
            for (int b = 0; b < blocks; b++)
            {
                int at = x0 + b * Lanes;
                var m = inMap[b];
                var d0 = r0 == null ? default : Avx512F.MaskLoad(r0 + at, m, Vector512<float>.Zero);
                var d1 = r1 == null ? default : Avx512F.MaskLoad(r1 + at, m, Vector512<float>.Zero);
                var d2 = r2 == null ? default : Avx512F.MaskLoad(r2 + at, m, Vector512<float>.Zero);
                var d3 = r3 == null ? default : Avx512F.MaskLoad(r3 + at, m, Vector512<float>.Zero);
                float* dst = q + b * Lanes;
                (d0 - d2).Store(dst);
                (d1 + d2).Store(dst + stride);
                (d2 - d1).Store(dst + 2 * stride);
                (d1 - d3).Store(dst + 3 * stride);
            }
            for (int t = 0, i = 0; t < length; t += Lanes, i++)
            {
                var store = runMask[i];
                for (int r = 0; r < 4; r++)
                {
                    float* at = q + r * stride + 2 * t;
                    var l0 = Vector512.Load(at);
                    var l1 = Vector512.Load(at + 16);
                    var l2 = Vector512.Load(at + 32).AsInt32();
                    var c0 = Avx512F.PermuteVar16x32x2(l0, s_even, l1);
                    var c1 = Avx512F.PermuteVar16x32x2(l0, s_odd, l1);
                    // Columns 2i + 2 and 2i + 3: those of the next tile, one lane on.
                    var c2 = Avx512F.AlignRight32(l2, c0.AsInt32(), 1).AsSingle();
                    var c3 = Avx512F.AlignRight32(Avx512F.AlignRight32(l2, l2, 1), c1.AsInt32(), 1).AsSingle();
                    // Columns of (B^T d) B: c0 - c2, c1 + c2, c2 - c1, c1 - c3; position (r, q) of the tile is xi = 4r + q.
                    float* dst = v + 4 * r * xi1 + (long)c * Gemm.NR + t;
                    Avx512F.MaskStore(dst, store, c0 - c2);
                    Avx512F.MaskStore(dst + xi1, store, c1 + c2);
                    Avx512F.MaskStore(dst + 2 * xi1, store, c2 - c1);
                    Avx512F.MaskStore(dst + 3 * xi1, store, c1 - c3);
                }
            }
        }
    }

    /// <summary>
    /// The input columns of a run of <paramref name="length"/> tiles of <paramref name="size"/> outputs from tile
    /// <paramref name="tx0"/>: columns x0 .. x0 + size * length + 1 feed them, read in <paramref name="blocks"/> blocks
    /// of 16; <paramref name="stride"/> is the row length of the down-the-tile buffer, with room for the permutations
    /// across, which read (size + 1) * 16 columns from column size * t for the 16 tiles from t.
    /// </summary>
    private static void RunColumns(int size, int tx0, int length, out int x0, out int blocks, out int stride)
    {
        x0 = size * tx0 - 1;
        blocks = (size * length + 2 + Lanes - 1) / Lanes;
        stride = Math.Max(blocks * Lanes, size * ((length - 1) / Lanes * Lanes) + (size + 1) * Lanes);
    }

    /// <summary>
    /// A run's masks: which lanes of each column block are inside the map's <paramref name="width"/> (the masked loads
    /// give the padding's zeros),
    /// and which lanes of each 16 tiles are the run's (the masked stores); and zeros in the buffer's lanes past the
    /// last block, which the permutations read but which feed no tile.
    /// </summary>
    private static void PrepareRun(float* q, int rows, int stride, Vector512<float>* inMap, int blocks, int x0, int width,
        Vector512<float>* runMask, int length)
    {
        for (int b = 0; b < blocks; b++) inMap[b] = InMap(x0 + b * Lanes, width);
        for (int t = 0, i = 0; t < length; t += Lanes, i++) runMask[i] = InMap(t, length);
        for (int r = 0; r < rows; r++) new Span<float>(q + r * stride + blocks * Lanes, stride - blocks * Lanes).Clear();
    }

    private static readonly Vector512<int> s_even = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> s_odd = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);

    /// <summary>All bits set in lane i where 0 &lt;= from + i &lt; limit: the lanes a masked load or store touches.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> InMap(int from, int limit)
    {
        var x = Vector512.Create(from) + Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        return (Vector512.GreaterThanOrEqual(x, Vector512<int>.Zero) & Vector512.LessThan(x, Vector512.Create(limit))).AsSingle();
    }

    // Lanes p, p + 4, ..., p + 28 of (a, b) into lanes 0-7, and of (c, d) into lanes 8-15.
    private static readonly Vector512<int>[] s_phaseLow =
    {
        Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 0, 0, 0, 0, 0, 0, 0, 0), Vector512.Create(1, 5, 9, 13, 17, 21, 25, 29, 0, 0, 0, 0, 0, 0, 0, 0),
        Vector512.Create(2, 6, 10, 14, 18, 22, 26, 30, 0, 0, 0, 0, 0, 0, 0, 0), Vector512.Create(3, 7, 11, 15, 19, 23, 27, 31, 0, 0, 0, 0, 0, 0, 0, 0),
    };
    private static readonly Vector512<int>[] s_phaseHigh =
    {
        Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 8, 12, 16, 20, 24, 28), Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 5, 9, 13, 17, 21, 25, 29),
        Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 2, 6, 10, 14, 18, 22, 26, 30), Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 3, 7, 11, 15, 19, 23, 27, 31),
    };
    private static readonly Vector512<float> s_upperHalf = Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1).AsSingle();

    /// <summary>Every fourth lane of the 64 in a, b, c, d, from lane <paramref name="phase"/> on.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Phase(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d, int phase) =>
        Vector512.ConditionalSelect(s_upperHalf, Avx512F.PermuteVar16x32x2(c, s_phaseHigh[phase], d), Avx512F.PermuteVar16x32x2(a, s_phaseLow[phase], b));

    // Lane permutations over 64-bit pairs: (p0, q0, p1, q1, ...) from the first 4 pairs of each, then the last 4.
    private static readonly Vector512<ulong> s_pairsLow = Vector512.Create(0ul, 8, 1, 9, 2, 10, 3, 11);
    private static readonly Vector512<ulong> s_pairsHigh = Vector512.Create(4ul, 12, 5, 13, 6, 14, 7, 15);

    /// <summary>
    /// F(4x4, 3x3)'s Y = A^T M A for tiles [tx, tx + length) of tile row ty of image n, every output channel, 16 tiles at
    /// a time (A^T's rows m0 + m1 + m2 + m3 + m4, m1 - m2 + 2 (m3 - m4), m1 + m2 + 4 (m3 + m4), m1 - m2 + 8 (m3 - m4) + m5,
    /// first down the tile, then across); the four outputs of each tile row are interleaved into the output row, then
    /// scale, bias, residual and ReLU.
    /// </summary>
    [SkipLocalsInit] // the stack buffers are cleared where they must be, or written before they are read
    private static void TransformOutput4(ref Job j, int n, int ty, int tx0, int length, float* m)
    {
        long xi1 = (long)j.Cout * Gemm.NR;
        var s = stackalloc Vector512<float>[4 * 6];
        var two = Vector512.Create(2f);
        var four = Vector512.Create(4f);
        var eight = Vector512.Create(8f);
        for (int k = j.OutFirst; k < j.OutEnd; k++)
        {
            OutputChannel(ref j, n, k, out var scale, out var bias, out float* y, out float* res);
            float* mk = m + (long)k * Gemm.NR;
            for (int t = 0; t < length; t += Lanes)
            {
                float* src = mk + t;
                // Down the tile: s[r][p] = (A^T M)[r][p] for each column p.
                for (int p = 0; p < 6; p++)
                {
                    var m0 = Vector512.Load(src + p * xi1);
                    var m1 = Vector512.Load(src + (6 + p) * xi1);
                    var m2 = Vector512.Load(src + (12 + p) * xi1);
                    var m3 = Vector512.Load(src + (18 + p) * xi1);
                    var m4 = Vector512.Load(src + (24 + p) * xi1);
                    var m5 = Vector512.Load(src + (30 + p) * xi1);
                    Vector512<float> sum12 = m1 + m2, diff12 = m1 - m2, sum34 = m3 + m4, diff34 = m3 - m4;
                    s[p] = m0 + sum12 + sum34;
                    s[6 + p] = diff12 + two * diff34;
                    s[12 + p] = sum12 + four * sum34;
                    s[18 + p] = diff12 + eight * diff34 + m5;
                }
                int tx = tx0 + t;
                int columns = Math.Min(4 * Math.Min(Lanes, length - t), j.W - 4 * tx);
                for (int r = 0; r < 4 && 4 * ty + r < j.H; r++)
                {
                    Vector512<float>* row = s + 6 * r;
                    Vector512<float> sum12 = row[1] + row[2], diff12 = row[1] - row[2], sum34 = row[3] + row[4], diff34 = row[3] - row[4];
                    var y0 = row[0] + sum12 + sum34;
                    var y1 = diff12 + two * diff34;
                    var y2 = sum12 + four * sum34;
                    var y3 = diff12 + eight * diff34 + row[5];
                    // (y0, y1, y2, y3) of each tile in turn: pairs first, then pairs of pairs.
                    var low01 = Avx512F.PermuteVar16x32x2(y0, s_interleaveLow, y1).AsUInt64();
                    var high01 = Avx512F.PermuteVar16x32x2(y0, s_interleaveHigh, y1).AsUInt64();
                    var low23 = Avx512F.PermuteVar16x32x2(y2, s_interleaveLow, y3).AsUInt64();
                    var high23 = Avx512F.PermuteVar16x32x2(y2, s_interleaveHigh, y3).AsUInt64();
                    long first = (long)(4 * ty + r) * j.W + 4 * tx;
                    WriteOutputs(Avx512F.PermuteVar8x64x2(low01, s_pairsLow, low23).AsSingle(), y, res, first, columns, scale, bias, j.Relu);
                    WriteOutputs(Avx512F.PermuteVar8x64x2(low01, s_pairsHigh, low23).AsSingle(), y, res, first + Lanes, columns - Lanes, scale, bias, j.Relu);
                    WriteOutputs(Avx512F.PermuteVar8x64x2(high01, s_pairsLow, high23).AsSingle(), y, res, first + 2 * Lanes, columns - 2 * Lanes, scale, bias, j.Relu);
                    WriteOutputs(Avx512F.PermuteVar8x64x2(high01, s_pairsHigh, high23).AsSingle(), y, res, first + 3 * Lanes, columns - 3 * Lanes, scale, bias, j.Relu);
                }
            }
        }
    }

    /// <summary>
    /// Writes the first <paramref name="columns"/> (at most 16; none when not positive) of 16 consecutive outputs with
    /// the epilogue.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteOutputs(Vector512<float> value, float* y, float* residual, long at, int columns,
        Vector512<float> scale, Vector512<float> bias, bool relu)
    {
        if (columns <= 0) return;
        value = Vector512.FusedMultiplyAdd(value, scale, bias);
        if (columns >= Lanes)
        {
            if (residual != null) value += Vector512.Load(residual + at);
            // Where v < 0 the result is 0; NaN stays NaN, as in torch.relu.
            if (relu) value = Vector512.ConditionalSelect(Vector512.LessThan(value, Vector512<float>.Zero), Vector512<float>.Zero, value);
            value.Store(y + at);
            return;
        }
        // A part of a vector (a row's end): the same operations on the lanes a mask keeps, the others neither read nor written.
        var keep = InMap(0, columns);
        if (residual != null) value += Avx512F.MaskLoad(residual + at, keep, Vector512<float>.Zero);
        if (relu) value = Vector512.ConditionalSelect(Vector512.LessThan(value, Vector512<float>.Zero), Vector512<float>.Zero, value);
        Avx512F.MaskStore(y + at, keep, value);
    }
}
