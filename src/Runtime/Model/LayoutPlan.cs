using System;

namespace Unrolled.Runtime;

/// <summary>
/// Which activations of a batch-1 eval-mode forward on the CPU are kept pixel-major ([h*w][c], each pixel's
/// channels side by side) instead of NCHW. The convolutions computed transposed (<see cref="Cpu.Conv.TransposedPays"/>:
/// ResNet-50's 14x14 and 7x7 layers) produce each output tile as rows of channels of one pixel; NCHW makes them turn
/// every tile around before it is stored, which pixel-major spares. A tensor is kept pixel-major where its producer
/// and every reader can take it so: a transposed convolution writes it; transposed 1x1 convolutions and the average
/// pool read it (a residual has the layout of the output it is added to). In ResNet-50 those are the trunks of
/// layer3 and layer4, the tensors between blocks, written by the blocks' last 1x1 convolutions and the
/// downsamples, read by the next blocks' first 1x1 convolutions, downsamples and residual adds.
/// </summary>
/// <remarks>
/// The generated forward is one fixed sequence of calls with every tensor at a fixed offset of the activation arena,
/// so the plan is made from a trace of the first batch-1 forward (which runs in NCHW): for each call, the arena regions
/// it reads and writes. The data flow follows: a region read was written by the last call that wrote it. Every later
/// batch-1 forward then follows the plan, and each call is checked against the trace. Every value is computed by the
/// same operations in the same order either way: the results are the NCHW forward's to the bit.
/// </remarks>
internal sealed class LayoutPlan
{
    /// <summary>Benchmarks and tests: every activation in NCHW (read when a forward begins).</summary>
    internal static volatile bool Off;

    private enum Kind : byte { Conv, MaxPool, AveragePool }

    private struct Call
    {
        public Kind Kind;
        public int Conv;
        // Arena regions in floats (start, length); a start of -1 is outside the arena (the input) or none.
        public long X, XLength, Y, YLength, R, RLength;
        // While tracing: whether the convolution could write a pixel-major output and read a pixel-major input.
        public bool CanWrite, CanRead;
        // The plan.
        public bool ReadsPixels, WritesPixels;
    }

    private readonly Call[] _calls;
    private int _count, _next;
    private bool _complete, _ready, _pooled, _overflowed;

    /// <param name="convs">How many convolutions the network has.</param>
    public LayoutPlan(int convs) => _calls = new Call[convs + 2];

    /// <summary>Whether the plan is made and followed (from the second batch-1 forward on).</summary>
    public bool Ready => _ready;

    /// <summary>A batch-1 eval forward begins: the trace of the last one is turned into the plan if it was whole, or begun again.</summary>
    public void Begin()
    {
        if (!_ready && _complete) Make();
        if (!_ready)
        {
            _count = 0;
            _complete = false;
            _pooled = false;
            _overflowed = false;
        }
        _next = 0;
    }

    /// <summary>The forward reached its classifier: the trace is whole.</summary>
    public void End()
    {
        if (!_ready) _complete = _pooled && !_overflowed;
    }

    /// <summary>
    /// A convolution of the forward: while tracing, recorded with whether it could write a pixel-major output
    /// (<paramref name="canWrite"/>) and read a pixel-major input (<paramref name="canRead"/>); once ready, checked
    /// against the trace, with the layouts of its input and of its output and residual.
    /// </summary>
    public (bool PixelsIn, bool PixelsOut) Conv(int index, long x, long xLength, long y, long yLength, long r, long rLength, bool canWrite, bool canRead)
    {
        if (!_ready)
        {
            Record(Kind.Conv, index, x, xLength, y, yLength, r, rLength, canWrite, canRead);
            return (false, false);
        }
        ref var c = ref Expect(Kind.Conv, index, x, xLength, y, yLength, r, rLength);
        return (c.ReadsPixels, c.WritesPixels);
    }

    /// <summary>The max pool: read in NCHW.</summary>
    public void MaxPool(long x, long xLength, long y, long yLength)
    {
        if (!_ready) Record(Kind.MaxPool, -1, x, xLength, y, yLength, -1, 0);
        else Expect(Kind.MaxPool, -1, x, xLength, y, yLength, -1, 0);
    }

    /// <summary>The average pool: whether its input is pixel-major.</summary>
    public bool AveragePool(long x, long xLength)
    {
        if (!_ready)
        {
            Record(Kind.AveragePool, -1, x, xLength, -1, 0, -1, 0);
            _pooled = true;
            return false;
        }
        return Expect(Kind.AveragePool, -1, x, xLength, -1, 0, -1, 0).ReadsPixels;
    }

    private void Record(Kind kind, int conv, long x, long xLength, long y, long yLength, long r, long rLength, bool canWrite = false, bool canRead = false)
    {
        // More calls than a forward of this network makes: not a forward to plan from.
        if (_overflowed |= _count == _calls.Length) return;
        _calls[_count++] = new Call
        {
            Kind = kind, Conv = conv, X = x, XLength = xLength, Y = y, YLength = yLength, R = r, RLength = rLength,
            CanWrite = canWrite, CanRead = canRead,
        };
    }

    private ref Call Expect(Kind kind, int conv, long x, long xLength, long y, long yLength, long r, long rLength)
    {
        if (_next < _count)
        {
            ref var c = ref _calls[_next];
            if (c.Kind == kind && c.Conv == conv && c.X == x && c.XLength == xLength && c.Y == y && c.YLength == yLength && c.R == r && c.RLength == rLength)
            {
                _next++;
                return ref c;
            }
        }
        throw new InvalidOperationException($"The batch-1 forward called {kind} {(conv >= 0 ? conv.ToString() : "")} out of the order of the first forward; the generated code and the runtime disagree: regenerate the network.");
    }

    /// <summary>
    /// The call that last wrote the region [start, start + length) before call <paramref name="at"/>: its index, -1
    /// if none did, or -2 if the last one that wrote any of it wrote a region of another extent.
    /// </summary>
    private int Writer(int at, long start, long length)
    {
        if (start < 0) return -1;
        for (int i = at - 1; i >= 0; i--)
        {
            ref var c = ref _calls[i];
            if (!Overlaps(c.Y, c.YLength, start, length)) continue;
            return c.Y == start && c.YLength == length ? i : -2;
        }
        return -1;
    }

    /// <summary>A region read that is no one tensor: every call before <paramref name="at"/> that wrote any of it keeps NCHW.</summary>
    private bool ClearWriters(Span<bool> pixels, int at, long start, long length)
    {
        bool changed = false;
        for (int i = at - 1; i >= 0; i--)
            if (Overlaps(_calls[i].Y, _calls[i].YLength, start, length)) changed |= Clear(pixels, i);
        return changed;
    }

    private void Make()
    {
        Span<bool> pixels = _count <= 256 ? stackalloc bool[_count] : new bool[_count];
        for (int i = 0; i < _count; i++)
            pixels[i] = _calls[i].Kind == Kind.Conv && _calls[i].CanWrite && !Overlaps(_calls[i].X, _calls[i].XLength, _calls[i].Y, _calls[i].YLength);
        // Readers that cannot take pixel-major input keep their writers in NCHW; a residual and the output it is
        // added to share one layout (repeated until nothing changes: a chain of residual adds passes it along).
        for (bool changed = true; changed;)
        {
            changed = false;
            for (int i = 0; i < _count; i++)
            {
                ref var c = ref _calls[i];
                int input = Writer(i, c.X, c.XLength);
                bool reads = c.Kind == Kind.AveragePool || (c.Kind == Kind.Conv && c.CanRead);
                if (input == -2) changed |= ClearWriters(pixels, i, c.X, c.XLength);
                else if (input >= 0 && !reads) changed |= Clear(pixels, input);
                if (c.RLength == 0) continue;
                int residual = Writer(i, c.R, c.RLength);
                if (residual == -2)
                {
                    changed |= ClearWriters(pixels, i, c.R, c.RLength);
                    changed |= Clear(pixels, i);
                }
                else if (residual < 0) changed |= Clear(pixels, i);
                else if (pixels[residual] != pixels[i])
                {
                    changed |= Clear(pixels, residual);
                    changed |= Clear(pixels, i);
                }
            }
        }
        for (int i = 0; i < _count; i++)
        {
            ref var c = ref _calls[i];
            int input = Writer(i, c.X, c.XLength);
            c.ReadsPixels = input >= 0 && pixels[input];
            c.WritesPixels = pixels[i];
        }
        _ready = true;
    }

    private static bool Clear(Span<bool> pixels, int i)
    {
        bool was = pixels[i];
        pixels[i] = false;
        return was;
    }

    private static bool Overlaps(long a, long aLength, long b, long bLength) => a >= 0 && b >= 0 && a < b + bLength && b < a + aLength;
}
