using System;
using System.Collections.Generic;
using System.Diagnostics;
using Unrolled.Runtime;

namespace Unrolled.Distributed;

/// <summary>
/// Data-parallel training over MPI, as PyTorch's DistributedDataParallel: one replica per process, the same
/// parameters everywhere at the start (rank 0's, broadcast), and after each backward the gradients averaged over
/// ranks with all-reduce, in buckets of about <c>bucketMegabytes</c>, each started as soon as backward has finished
/// every layer in it (fc first, then the convolutions from the last to the first) so that communication overlaps
/// the backward of earlier layers. BatchNorm uses each rank's own batch statistics (as DDP), or with
/// <c>syncBatchNorm</c> the statistics of all ranks' batches together (as SyncBatchNorm).
/// </summary>
/// <remarks>Call <see cref="Optimizer.ZeroGrad"/> before each <see cref="ForwardBackward"/>: the reduction averages the
/// gradients the network holds. Every rank must call the same methods in the same order.</remarks>
public sealed unsafe class DataParallel : IDisposable
{
    private readonly NetworkState _state;
    private readonly Mpi _mpi;
    private readonly (long Start, long End, int Layers)[] _buckets;
    private readonly int[] _bucketOfLayer; // layer: conv index, or Convs.Length for fc
    private readonly int[] _pending;
    private readonly nint[] _requests;
    private int _launched, _completed;
    private float* _gradients;
    // Made once: hooking them into the network must not allocate every step.
    private readonly Action<int> _onGradientsReady;
    private readonly Action<Span<double>> _reduceStatistics;

    public DataParallel(IResNet network, Mpi mpi, double bucketMegabytes = DefaultBucketMegabytes, bool syncBatchNorm = false)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(mpi);
        if (!(bucketMegabytes > 0)) throw new ArgumentOutOfRangeException(nameof(bucketMegabytes), bucketMegabytes, "must be > 0");
        if (syncBatchNorm && network.Device == Device.Cuda)
            throw new NotSupportedException("SyncBatchNorm is not available on the GPU: cuDNN computes the batch statistics on the device, where MPI " +
                "cannot reduce them (that needs NCCL, not implemented). Use per-rank BatchNorm (syncBatchNorm: false) or Device.Cpu.");
        Network = network;
        _state = network.State;
        _mpi = mpi;
        SyncBatchNorm = syncBatchNorm;
        _onGradientsReady = OnGradientsReady;
        _reduceStatistics = mpi.AllReduceSum;

        // Every rank starts from rank 0's weights, statistics and counters.
        mpi.Broadcast(_state.Values);
        mpi.Broadcast(_state.Counters);
        _state.MarkStateChanged();

        var spec = _state.Spec;
        _bucketOfLayer = new int[spec.Convs.Length + 1];
        var buckets = bucketMegabytes == DefaultBucketMegabytes && spec.GradientBuckets.Length > 0
            ? spec.GradientBuckets // the generator's, computed at compile time from the static graph
            : ComputeBuckets(spec, bucketMegabytes);
        _buckets = new (long, long, int)[buckets.Length];
        for (int b = 0; b < buckets.Length; b++)
        {
            _buckets[b] = (buckets[b].Start, buckets[b].End, buckets[b].Layers.Length);
            foreach (int layer in buckets[b].Layers) _bucketOfLayer[layer < 0 ? spec.Convs.Length : layer] = b;
        }
        _pending = new int[_buckets.Length];
        _requests = new nint[_buckets.Length];
    }

    /// <summary>The bucket size the generator plans for (PyTorch DDP's default, 25 MB).</summary>
    public const double DefaultBucketMegabytes = 25;

    /// <summary>
    /// Buckets of about <paramref name="bucketMegabytes"/> MB, computed here as the generator computes them at
    /// compile time for the default size: layers in the order backward finishes them, each with its extent in the
    /// value (and gradient) array (a conv's weight followed by its BatchNorm's weight, bias and running statistics;
    /// fc's weight and bias), grouped in runs that are adjacent in memory, from the end of the array.
    /// </summary>
    internal static GradientBucket[] ComputeBuckets(NetworkSpec spec, double bucketMegabytes)
    {
        var layers = new List<(int Layer, long Start, long End)> { (-1, spec.FcWeight, spec.FcBias + spec.NumClasses) };
        for (int i = spec.Convs.Length - 1; i >= 0; i--)
        {
            var c = spec.Convs[i];
            layers.Add((i, c.Weight, c.BatchNorm + 4L * c.OutChannels));
        }
        layers.Sort((a, b) => b.Start.CompareTo(a.Start));
        long target = Math.Max(1, (long)(bucketMegabytes * (1 << 20) / sizeof(float)));
        var buckets = new List<GradientBucket>();
        var members = new List<int>();
        long start = -1, end = -1;
        foreach (var (layer, s, e) in layers)
        {
            if (members.Count > 0 && (e != start || end - start >= target))
            {
                buckets.Add(new GradientBucket(start, end, members.ToArray()));
                members.Clear();
            }
            if (members.Count == 0) end = e;
            start = s;
            members.Add(layer);
        }
        buckets.Add(new GradientBucket(start, end, members.ToArray()));
        return buckets.ToArray();
    }

    public IResNet Network { get; }

    /// <summary>True when BatchNorm normalizes with the statistics of every rank's batch.</summary>
    public bool SyncBatchNorm { get; }

    /// <summary>Number of gradient buckets (4 for ImageNet ResNet-50 with 25 MB buckets, 97.7 MB of state).</summary>
    public int Buckets => _buckets.Length;

    /// <summary>Milliseconds of the last step spent waiting for reductions after backward had finished.</summary>
    public double LastExposedCommunicationMs { get; private set; }

    /// <summary>Milliseconds of the last <see cref="ForwardBackward"/>, communication included.</summary>
    public double LastStepMs { get; private set; }

    /// <summary>
    /// This rank's forward and backward on its own batch, with the gradients then averaged over all ranks (every rank
    /// ends with the same gradients). Returns this rank's loss.
    /// </summary>
    public float ForwardBackward(ReadOnlySpan<float> input, ReadOnlySpan<int> labels, Span<float> logits)
    {
        long started = Stopwatch.GetTimestamp();
        Array.Fill(_pending, 0);
        _launched = _completed = 0;
        float loss;
        fixed (float* gradients = _state.Gradients)
        {
            _gradients = gradients;
            _state.GradientsReady = _onGradientsReady;
            if (SyncBatchNorm) _state.StatisticsReducer = _reduceStatistics;
            try
            {
                loss = Network.ForwardBackward(input, labels, logits);
            }
            finally
            {
                _state.GradientsReady = null;
                _state.StatisticsReducer = null;
            }
            long backwardDone = Stopwatch.GetTimestamp();
            if (_launched != _buckets.Length)
                throw new InvalidOperationException($"only {_launched} of {_buckets.Length} gradient buckets became ready during backward");
            for (int b = _completed; b < _buckets.Length; b++) _mpi.Wait(ref _requests[b]);
            LastExposedCommunicationMs = Stopwatch.GetElapsedTime(backwardDone).TotalMilliseconds;
            _gradients = null;
        }

        // Sum -> mean.
        float inverse = 1f / _mpi.Size;
        var all = _state.Gradients;
        foreach (var (offset, count) in _state.ParameterRanges)
        {
            var g = all.Slice(offset, count);
            for (int i = 0; i < g.Length; i++) g[i] *= inverse;
        }
        LastStepMs = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        return loss;
    }

    private void OnGradientsReady(int layer)
    {
        if (layer < 0) layer = _bucketOfLayer.Length - 1;
        int bucket = _bucketOfLayer[layer];
        _pending[bucket]++;
        // Start every complete bucket, in bucket order (the same order on every rank).
        while (_launched < _buckets.Length && _pending[_launched] == _buckets[_launched].Layers)
        {
            var (start, end, _) = _buckets[_launched];
            _requests[_launched] = _mpi.StartAllReduceSum(_gradients + start, checked((int)(end - start)));
            _launched++;
        }
        // Let MPI progress what is in flight.
        while (_completed < _launched && _mpi.Test(ref _requests[_completed])) _completed++;
    }

    /// <summary>Milliseconds of one blocking all-reduce of every gradient (what the buckets hide behind backward).</summary>
    public double MeasureBlockingAllReduceMs()
    {
        var copy = _state.Gradients.ToArray();
        _mpi.Barrier();
        long start = Stopwatch.GetTimestamp();
        _mpi.AllReduceSum(copy);
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    public void Dispose()
    {
        _state.GradientsReady = null;
        _state.StatisticsReducer = null;
    }
}
