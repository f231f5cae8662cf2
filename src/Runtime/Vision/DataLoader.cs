using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;

namespace Unrolled.Vision;

/// <summary>A batch from a <see cref="DataLoader"/>: valid until the next one is taken.</summary>
public sealed class Batch
{
    internal Batch(int capacity, int sampleSize)
    {
        InputBuffer = new float[capacity * sampleSize];
        LabelBuffer = new int[capacity];
        SampleSize = sampleSize;
    }

    internal float[] InputBuffer { get; }
    internal int[] LabelBuffer { get; }
    internal int SampleSize { get; }

    /// <summary>Images in this batch.</summary>
    public int Count { get; internal set; }

    /// <summary>NCHW float32, Count images.</summary>
    public ReadOnlySpan<float> Input => InputBuffer.AsSpan(0, Count * SampleSize);

    public ReadOnlySpan<int> Labels => LabelBuffer.AsSpan(0, Count);

    /// <summary>The data-set indices of the images, in order.</summary>
    public int[] Indices { get; internal set; } = Array.Empty<int>();
}

/// <summary>
/// torch.utils.data.DataLoader over an <see cref="ImageFolder"/>: batches in a seeded shuffled (or fixed) order,
/// optionally dropping the last partial batch; images are decoded and transformed on worker threads while the
/// network computes, <see cref="Prefetch"/> batches ahead, into a fixed set of reused buffers.
/// </summary>
public sealed class DataLoader
{
    public DataLoader(ImageFolder dataset, Compose transform, int batchSize, bool shuffle = false, int seed = 0,
        bool dropLast = false, int workers = 0, int prefetch = 2, bool skipBadImages = false, int rank = 0, int worldSize = 1,
        bool cache = false)
    {
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), worldSize, "the world size must be >= 1");
        if (rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), rank, $"the rank must lie in [0, {worldSize})");
        Rank = rank;
        WorldSize = worldSize;
        Dataset = dataset ?? throw new ArgumentNullException(nameof(dataset));
        Transform = transform ?? throw new ArgumentNullException(nameof(transform));
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batch size must be >= 1");
        if (prefetch < 1) throw new ArgumentOutOfRangeException(nameof(prefetch), prefetch, "prefetch must be >= 1");
        BatchSize = batchSize;
        Shuffle = shuffle;
        Seed = seed;
        DropLast = dropLast;
        Workers = workers > 0 ? workers : Environment.ProcessorCount;
        Prefetch = prefetch;
        SkipBadImages = skipBadImages;
        _pool = new Batch[prefetch + 1];
        for (int i = 0; i < _pool.Length; i++) _pool[i] = new Batch(batchSize, transform.OutputSize);
        if (cache)
        {
            var random = transform.FirstRandomStep;
            if (random is not null)
                throw new ArgumentException($"cache keeps each image's tensor from the first time it is read, so it needs a transform without randomness; {random.GetType().Name} draws from the random source", nameof(cache));
            long floats = (long)dataset.Count * transform.OutputSize;
            if (floats > Array.MaxLength)
                throw new ArgumentException($"cache would hold {dataset.Count} images of {transform.OutputSize} floats, more than one array holds", nameof(cache));
            _cache = new float[floats];
            _cached = new bool[dataset.Count];
        }
    }

    private readonly Batch[] _pool;
    // With cache: every image's tensor once it has been read, and which are there.
    private readonly float[]? _cache;
    private readonly bool[]? _cached;

    /// <summary>
    /// Whether each image's transformed tensor is kept after it is first read (for data sets that fit in memory and
    /// transforms without randomness): from the second epoch on no file is opened.
    /// </summary>
    public bool Cache => _cache is not null;
    private int _skipped;

    public ImageFolder Dataset { get; }
    public Compose Transform { get; }
    public int BatchSize { get; }
    public bool Shuffle { get; }
    public int Seed { get; }
    public bool DropLast { get; }
    public int Workers { get; }
    public int Prefetch { get; }
    public bool SkipBadImages { get; }

    /// <summary>This process's rank among <see cref="WorldSize"/> data-parallel processes (0 of 1 alone).</summary>
    public int Rank { get; }

    /// <summary>Data-parallel processes sharing each epoch; each reads a disjoint shard, as DistributedSampler.</summary>
    public int WorldSize { get; }

    /// <summary>Images this process reads per epoch: ceil(count / world size), the shards padded to equal length.</summary>
    public int SamplesPerEpoch => (Dataset.Count + WorldSize - 1) / WorldSize;

    /// <summary>Images skipped as unreadable so far (with <see cref="SkipBadImages"/>).</summary>
    public int SkippedImages => Volatile.Read(ref _skipped);

    public int BatchesPerEpoch => DropLast ? SamplesPerEpoch / BatchSize : (SamplesPerEpoch + BatchSize - 1) / BatchSize;

    /// <summary>
    /// This process's order of an epoch: a Fisher-Yates shuffle seeded by (seed, epoch), or the data set's order;
    /// with several processes, as torch's DistributedSampler: the same shuffle everywhere, padded by repeating its
    /// start to a multiple of the world size, and every <see cref="WorldSize"/>-th index from <see cref="Rank"/>.
    /// </summary>
    public int[] Order(int epoch)
    {
        var all = GlobalOrder(epoch);
        if (WorldSize == 1) return all;
        var shard = new int[SamplesPerEpoch];
        for (int i = 0; i < shard.Length; i++) shard[i] = all[(Rank + (long)i * WorldSize) % all.Length];
        return shard;
    }

    private int[] GlobalOrder(int epoch)
    {
        var order = new int[Dataset.Count];
        for (int i = 0; i < order.Length; i++) order[i] = i;
        if (Shuffle)
        {
            var rng = new Random(SeedOf(Seed, epoch));
            for (int i = order.Length - 1; i > 0; i--)
            {
                int j = rng.Next(i + 1);
                (order[i], order[j]) = (order[j], order[i]);
            }
        }
        return order;
    }

    /// <summary>
    /// SplitMix64's output function: a fixed, well-mixed function of its input, the same in every process
    /// (HashCode.Combine is randomized per process and would make "the same seed" differ between runs).
    /// </summary>
    public static ulong SplitMix64(ulong state)
    {
        ulong z = state + 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A non-negative seed derived from the loader's seed and positions, identical in every run.</summary>
    internal static int SeedOf(int seed, int epoch, int batch = -1, int item = -1)
    {
        ulong h = SplitMix64((ulong)(uint)seed);
        h = SplitMix64(h ^ (uint)epoch);
        h = SplitMix64(h ^ (uint)batch);
        h = SplitMix64(h ^ (uint)item);
        return (int)(h & int.MaxValue);
    }

    /// <summary>The batches of one epoch. A batch is valid until the next is taken (its buffers are reused).</summary>
    public IEnumerable<Batch> Epoch(int epoch)
    {
        var order = Order(epoch);
        int batches = BatchesPerEpoch;
        using var free = new BlockingCollection<Batch>(new ConcurrentQueue<Batch>(_pool));
        using var ready = new BlockingCollection<(Batch? Batch, Exception? Error)>(Prefetch);
        using var cancel = new CancellationTokenSource();
        var producer = Task.Run(() =>
        {
            try
            {
                for (int b = 0; b < batches; b++)
                {
                    var batch = free.Take(cancel.Token);
                    Fill(batch, order, b * BatchSize, Math.Min(BatchSize, order.Length - b * BatchSize), epoch, b);
                    ready.Add((batch, null), cancel.Token);
                }
            }
            catch (OperationCanceledException)
            {
            }
            catch (Exception e)
            {
                try { ready.Add((null, e)); } catch (InvalidOperationException) { }
            }
            finally
            {
                ready.CompleteAdding();
            }
        });

        Batch? previous = null;
        try
        {
            foreach (var (batch, error) in ready.GetConsumingEnumerable())
            {
                if (error is not null) throw error is ImageFileException ? error : new InvalidOperationException("loading a batch failed: " + error.Message, error);
                if (previous is not null) free.Add(previous);
                previous = batch;
                if (batch!.Count == 0) continue; // every image of it was skipped
                yield return batch;
            }
        }
        finally
        {
            cancel.Cancel();
            try { producer.Wait(); } catch (AggregateException) { }
        }
    }

    private void Fill(Batch batch, int[] order, int start, int count, int epoch, int batchIndex)
    {
        int size = Transform.OutputSize;
        var ok = new bool[count];
        var indices = new int[count];
        Exception? failure = null;
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = Workers }, i =>
        {
            int index = order[start + i];
            indices[i] = index;
            var (path, label) = Dataset.Samples[index];
            // Each image's randomness depends on (seed, epoch, position) only: the same seed gives the same augmentations.
            var destination = batch.InputBuffer.AsSpan(i * size, size);
            if (_cached is not null && Volatile.Read(ref _cached[index]))
            {
                _cache!.AsSpan((int)((long)index * size), size).CopyTo(destination);
                batch.LabelBuffer[i] = label;
                ok[i] = true;
                return;
            }
            var rng = new Random(SeedOf(Seed, epoch, batchIndex, i));
            try
            {
                Transform.Apply(path, destination, rng);
                batch.LabelBuffer[i] = label;
                ok[i] = true;
                if (_cached is not null)
                {
                    destination.CopyTo(_cache!.AsSpan((int)((long)index * size), size));
                    Volatile.Write(ref _cached[index], true);
                }
            }
            catch (ImageFileException e)
            {
                if (SkipBadImages) Interlocked.Increment(ref _skipped);
                else Interlocked.CompareExchange(ref failure, e, null);
            }
        });
        if (failure is not null) throw failure;

        // Close the gaps left by skipped images.
        int kept = 0;
        for (int i = 0; i < count; i++)
        {
            if (!ok[i]) continue;
            if (kept != i)
            {
                batch.InputBuffer.AsSpan(i * size, size).CopyTo(batch.InputBuffer.AsSpan(kept * size, size));
                batch.LabelBuffer[kept] = batch.LabelBuffer[i];
                indices[kept] = indices[i];
            }
            kept++;
        }
        batch.Count = kept;
        batch.Indices = kept == count ? indices : indices[..kept];
    }
}
