using System;
using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Threading;

namespace Unrolled.Cpu;

/// <summary>
/// A persistent pool of worker threads (one per core, the caller being one of them) that runs
/// <c>count</c> work items of a function pointer with a context pointer. Dispatch allocates nothing:
/// the context lives on the caller's stack, which is safe because <c>Run</c> returns only when
/// every item has finished. Between jobs a worker spins for a short while (a network's layers follow each
/// other within microseconds) and then sleeps until the next job wakes it.
/// </summary>
internal sealed unsafe class WorkerPool
{
    public static readonly WorkerPool Shared = new(DefaultThreads());

    /// <summary>
    /// UNROLLED_THREADS if set; else the cores divided among the processes mpirun started on this machine
    /// (OMPI_COMM_WORLD_LOCAL_SIZE), so that data-parallel ranks do not oversubscribe; else every core.
    /// </summary>
    internal static int DefaultThreads()
    {
        if (int.TryParse(Environment.GetEnvironmentVariable("UNROLLED_THREADS"), out int threads) && threads > 0) return threads;
        if (int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), out int local) && local > 1)
            return Math.Max(1, Environment.ProcessorCount / local);
        return Environment.ProcessorCount;
    }

    /// <summary>How long an idle worker spins before it sleeps.</summary>
    private static readonly long SpinTicks = Stopwatch.Frequency / 10000; // 100 microseconds

    // A sleeping worker waits on its own monitor: SemaphoreSlim spins again before it blocks, which on a small
    // machine takes the core from the threads that decode the next batch.
    private readonly object[] _wake;
    private readonly int[] _sleeping;
    private readonly Lock _gate = new();
    private delegate*<void*, int, void> _fn;
    private void* _context;
    private delegate*<object, int, void> _objectFn;
    private object? _state;
    private int _count;
    // Per thread's range of items, the job's generation (high 32 bits) and the range's next unclaimed item (low 32
    // bits): an item is claimed by a compare-exchange that also checks the generation, so a worker that wakes late
    // can never take an item of a job other than the one it saw; and the caller waits for the items to be done, not
    // for every worker to have looked (a worker the OS has not scheduled costs nothing: the others take its range).
    // When a job is done its tickets are closed (next item int.MaxValue) before any field of the next job is
    // written: a worker that read an open ticket and was then descheduled must not pair it with the next job's
    // larger count and claim items that never existed (see Execute).
    private readonly long[] _tickets;
    private int _done;
    private int _generation;
    private ExceptionDispatchInfo? _error;

    public WorkerPool(int threads)
    {
        Threads = Math.Max(1, threads);
        _tickets = new long[Threads * TicketStride];
        _wake = new object[Threads - 1];
        _sleeping = new int[Threads - 1];
        for (int i = 0; i < _wake.Length; i++)
        {
            _wake[i] = new object();
            var t = new Thread(Worker) { IsBackground = true, Name = "Unrolled worker " + (i + 1) };
            t.Start(i);
        }
    }

    // Each thread's ticket on a cache line of its own (8 longs apart).
    private const int TicketStride = 8;

    /// <summary>The first item of thread <paramref name="thread"/>'s own range of a job of <paramref name="count"/> items.</summary>
    private int RangeStart(int thread, int count) => (int)((long)thread * count / Threads);

    /// <summary>Threads that take part in a <c>Run</c>, the caller included.</summary>
    public int Threads { get; }

    /// <summary>Runs <paramref name="fn"/>(context, i) for i in [0, count) on all threads; returns when all are done.</summary>
    public void Run(delegate*<void*, int, void> fn, void* context, int count) => Run(fn, context, null, null, count);

    /// <summary>Runs <paramref name="fn"/>(state, i) for i in [0, count) on all threads: for work items that need an object.</summary>
    public void Run(delegate*<object, int, void> fn, object state, int count) => Run(null, null, fn, state, count);

    private void Run(delegate*<void*, int, void> fn, void* context, delegate*<object, int, void> objectFn, object? state, int count)
    {
        if (count <= 0) return;
        if (count == 1 || _wake.Length == 0)
        {
            for (int i = 0; i < count; i++)
            {
                if (fn != null) fn(context, i);
                else objectFn(state!, i);
            }
            return;
        }

        lock (_gate)
        {
            _fn = fn;
            _context = context;
            _objectFn = objectFn;
            _state = state;
            _count = count;
            _error = null;
            Volatile.Write(ref _done, 0);
            int generation = _generation + 1;
            for (int t = 0; t < Threads; t++) Volatile.Write(ref _tickets[t * TicketStride], ((long)generation << 32) | (uint)RangeStart(t, count));
            Interlocked.Exchange(ref _generation, generation); // publishes the job (a full fence)
            for (int i = 0; i < _wake.Length; i++)
                if (Volatile.Read(ref _sleeping[i]) != 0)
                    lock (_wake[i]) Monitor.Pulse(_wake[i]);
            Execute(generation, 0);
            WaitForItems(count);
            // Closed, fenced before the next job's fields.
            for (int t = 0; t < Threads; t++) Interlocked.Exchange(ref _tickets[t * TicketStride], ((long)generation << 32) | int.MaxValue);
            _fn = null;
            _context = null;
            _objectFn = null;
            _state = null;
            _error?.Throw();
        }
    }

    /// <summary>How long the caller waits for workers' items without ever sleeping.</summary>
    private static readonly long PatientTicks = Stopwatch.Frequency / 100; // 10 ms

    /// <summary>
    /// Waits until <paramref name="count"/> items are done. The last items of a job take microseconds to a few
    /// milliseconds, so the caller spins and yields without sleeping, for at most 10 ms; after that it also sleeps
    /// (1 ms at a time), so that a wait that lasts (a worker descheduled, or waiting on the runtime, e.g. for a
    /// collection that needs this thread to stop) never becomes a busy loop that holds up the rest of the process.
    /// </summary>
    private void WaitForItems(int count)
    {
        var spin = new SpinWait();
        long patientUntil = Stopwatch.GetTimestamp() + PatientTicks;
        while (Volatile.Read(ref _done) != count)
        {
            if (Stopwatch.GetTimestamp() < patientUntil) spin.SpinOnce(-1);
            else Thread.Sleep(1);
        }
    }

    /// <summary>
    /// Claims and runs items of job <paramref name="generation"/> until none is left: first from this thread's own
    /// range (thread t of T has items [t count / T, (t + 1) count / T)), then from the others' in turn; a few at a
    /// time when there are many (a plane per item of a 1x1 map is a few dozen floats; one claim each would cost more
    /// than the work). Own ranges keep a core on the same part of every layer: the kernels split their items by
    /// pixels in order, so a core mostly reads what it wrote itself. The two cores of the machine this was measured
    /// on pass a cache line to each other in about 230-490 ns (a round trip of 460-980), as slow as memory: ResNet-50's
    /// forward took 28.6 against 30.3 and 33.4 against 34.8 ms at batch 1, 239.2 against 245.4 ms at batch 8 with
    /// own ranges against one shared range (blocks of 20 calls alternating in one process).
    /// </summary>
    /// <remarks>
    /// The count is read after the ticket, so it is this job's or, if the job has ended meanwhile, a later job's.
    /// A claim made with a later job's count cannot succeed: that count is written only after this job's tickets
    /// were closed, so the compare-exchange, which still expects the open ticket, fails.
    /// </remarks>
    private void Execute(int generation, int self)
    {
        for (int k = 0; k < Threads; k++)
        {
            int owner = self + k < Threads ? self + k : self + k - Threads;
            ref long slot = ref _tickets[owner * TicketStride];
            while (true)
            {
                long ticket = Volatile.Read(ref slot);
                int count = Volatile.Read(ref _count);
                if ((int)(ticket >> 32) != generation) return;
                int first = (int)ticket, start = RangeStart(owner, count), end = RangeStart(owner + 1, count);
                if (first >= end) break;
                int claim = Math.Min(Math.Max(1, (end - start) / 32), end - first);
                if (Interlocked.CompareExchange(ref slot, ticket + claim, ticket) != ticket) continue;
                // Items [first, first + claim) are ours; the job cannot finish before they are done, so its fields stay.
                try
                {
                    for (int i = first; i < first + claim; i++)
                    {
                        if (_fn != null) _fn(_context, i);
                        else _objectFn(_state!, i);
                    }
                }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref _error, ExceptionDispatchInfo.Capture(e), null);
                }
                Interlocked.Add(ref _done, claim);
            }
        }
    }

    /// <summary>Tests only: runs first on every new worker thread (to widen the start-up window deterministically).</summary>
    internal static Action? WorkerStarting;

    private void Worker(object? state)
    {
        WorkerStarting?.Invoke();
        int index = (int)state!;
        // The generation when the pool was made, not when this thread got to run: a job published in between
        // must not be mistaken for one already seen.
        int seen = 0;
        while (true)
        {
            long spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
            while (Volatile.Read(ref _generation) == seen)
            {
                if (Stopwatch.GetTimestamp() < spinUntil)
                {
                    Thread.SpinWait(20);
                    continue;
                }
                lock (_wake[index])
                {
                    // Announce the sleep before the last look (both are full fences), so that Run either sees it
                    // and pulses after this thread waits (the pulse needs the lock that Wait gives up) or
                    // published its job before that look.
                    Interlocked.Exchange(ref _sleeping[index], 1);
                    while (Volatile.Read(ref _generation) == seen) Monitor.Wait(_wake[index]);
                    Interlocked.Exchange(ref _sleeping[index], 0);
                }
                spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
            }
            seen = Volatile.Read(ref _generation);
            Execute(seen, index + 1);
        }
    }
}
