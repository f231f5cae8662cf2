using System;
using System.Collections.Generic;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Threading;
using Unrolled.Runtime;

namespace Unrolled;

/// <summary>
/// Updates a network's parameters from their accumulated gradients, as a <c>torch.optim</c> optimizer over
/// <c>model.parameters()</c>. Buffers are allocated once, when the optimizer is made; a step allocates nothing.
/// </summary>
public abstract class Optimizer
{
    private protected Optimizer(IResNet network, float learningRate)
    {
        ArgumentNullException.ThrowIfNull(network);
        if (!(learningRate >= 0)) throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "the learning rate must be >= 0");
        Network = network;
        State = network.State;
        LearningRate = learningRate;
        InitialLearningRate = learningRate;
    }

    public IResNet Network { get; }

    private protected NetworkState State { get; }

    /// <summary>The learning rate of the next step (a schedule sets it).</summary>
    public float LearningRate { get; set; }

    /// <summary>The learning rate the optimizer was made with (torch's <c>initial_lr</c>).</summary>
    public float InitialLearningRate { get; }

    /// <summary>Steps taken so far (skipped ones not counted).</summary>
    public long Steps { get; private protected set; }

    /// <summary>What <see cref="Step"/> does when a gradient is NaN or infinite: throw (the default) or skip the batch.</summary>
    public NonFinitePolicy OnNonFinite { get; set; } = NonFinitePolicy.Throw;

    /// <summary>Batches skipped under <see cref="NonFinitePolicy.SkipBatch"/>.</summary>
    public long SkippedSteps { get; private set; }

    /// <summary>
    /// Applies one update from the accumulated gradients. Every gradient is checked first: if one is NaN or
    /// infinite nothing is changed (weights, optimizer buffers, step count; the network already put its BatchNorm
    /// statistics back if the loss was not finite) and, as <see cref="OnNonFinite"/> says, a
    /// <see cref="NonFiniteException"/> naming the step and the parameter is thrown, or false is returned.
    /// </summary>
    /// <returns>True when the update was applied.</returns>
    public unsafe bool Step()
    {
        // On the GPU, with the gradients there: the step is taken there when the optimizer can (SGD).
        if (State.GradientsOnDevice && TryStepOnDevice())
        {
            Steps++;
            AfterStep();
            return true;
        }
        State.SynchronizeHost();
        BeforeHostStep();

        // Every parameter, in chunks of at most ChunkSize elements, on every core (the updates are element-wise).
        if (_chunks is null)
        {
            var chunks = new List<(int, int)>();
            foreach (var (offset, count) in State.ParameterRanges)
                for (int at = 0; at < count; at += ChunkSize) chunks.Add((offset + at, Math.Min(ChunkSize, count - at)));
            _chunks = chunks.ToArray();
        }

        _firstBadChunk = int.MaxValue;
        Cpu.WorkerPool.Shared.Run(&CheckChunk, this, _chunks.Length);
        if (_firstBadChunk != int.MaxValue)
        {
            var (offset, count) = _chunks[_firstBadChunk];
            var g = State.Gradients.Slice(offset, count);
            int bad = 0;
            while (bad < g.Length && float.IsFinite(g[bad])) bad++;
            string key = State.KeyAt(offset + bad);
            if (OnNonFinite == NonFinitePolicy.SkipBatch)
            {
                SkippedSteps++;
                return false;
            }
            throw new NonFiniteException(Steps + 1, key, float.IsNaN(g[bad]) ? "NaN" : "infinite", State.LastLoss);
        }

        Steps++;
        Cpu.WorkerPool.Shared.Run(&UpdateChunk, this, _chunks.Length);
        AfterStep();
        State.MarkWeightsChanged();
        return true;
    }

    private const int ChunkSize = 1 << 18;
    private (int Offset, int Count)[]? _chunks;
    private int _firstBadChunk;

    private static void CheckChunk(object state, int item)
    {
        var self = (Optimizer)state;
        var (offset, count) = self._chunks![item];
        if (Cpu.Kernels.AllFinite(self.State.Gradients.Slice(offset, count))) return;
        int seen;
        while (item < (seen = Volatile.Read(ref self._firstBadChunk)))
            if (Interlocked.CompareExchange(ref self._firstBadChunk, item, seen) == seen) break;
    }
    private static void UpdateChunk(object state, int item)
    {
        var self = (Optimizer)state;
        var (offset, count) = self._chunks![item];
        self.Update(self.State.Values.Slice(offset, count), self.State.Gradients.Slice(offset, count), offset);
    }

    private protected virtual void AfterStep() { }

    /// <summary>
    /// Takes the step on the device when the optimizer can and every gradient there is finite (false otherwise: the
    /// host then checks each gradient, names a bad one, and steps).
    /// </summary>
    private protected virtual bool TryStepOnDevice() => false;

    /// <summary>Before a step on the host: buffers the device holds newer copies of come down.</summary>
    private protected virtual void BeforeHostStep() { }

    /// <summary>As <c>optimizer.zero_grad()</c>.</summary>
    public void ZeroGrad() => Network.ZeroGrad();

    /// <summary>
    /// Updates a slice of one parameter (possibly on a worker thread, beside other slices); <paramref name="offset"/>
    /// locates its buffers, which share the values' layout.
    /// </summary>
    private protected abstract void Update(Span<float> parameter, ReadOnlySpan<float> gradient, int offset);

    /// <summary>The optimizer's buffers by name, each in the layout of the network's values (for checkpoints).</summary>
    internal abstract IReadOnlyList<(string Name, Memory<float> Values)> Buffers { get; }

    /// <summary>Scalars a checkpoint must restore besides the buffers.</summary>
    internal virtual void SaveScalars(IDictionary<string, string> metadata) { }

    internal virtual void LoadScalars(IReadOnlyDictionary<string, string> metadata) { }

    internal void Restore(long steps, float learningRate)
    {
        Steps = steps;
        LearningRate = learningRate;
    }
}

/// <summary>What an optimizer does with a gradient that is NaN or infinite.</summary>
public enum NonFinitePolicy
{
    /// <summary>Stop: throw a <see cref="NonFiniteException"/> that names the step and the parameter.</summary>
    Throw,
    /// <summary>Skip the batch: change nothing and return false from <see cref="Optimizer.Step"/> (as GradScaler skips a step).</summary>
    SkipBatch,
}

/// <summary>A training step met a NaN or infinite gradient; nothing was updated.</summary>
public sealed class NonFiniteException : ArithmeticException
{
    public NonFiniteException(long step, string key, string what, float loss)
        : base($"training step {step}: the gradient of '{key}' is {what} (the batch's loss was {loss}); the step was not applied, " +
               "so the weights, the optimizer's buffers and the BatchNorm statistics are as they were before this batch. " +
               "Lower the learning rate or check the inputs, or set OnNonFinite = NonFinitePolicy.SkipBatch to skip such batches.")
    {
        Step = step;
        Key = key;
        Loss = loss;
    }

    /// <summary>The step that was refused (1-based, as <see cref="Optimizer.Steps"/> would have become).</summary>
    public long Step { get; }

    /// <summary>The first parameter (state_dict key) with a non-finite gradient.</summary>
    public string Key { get; }

    /// <summary>The loss of the batch.</summary>
    public float Loss { get; }
}

/// <summary>
/// Stochastic gradient descent with PyTorch's exact semantics (<c>torch.optim.SGD</c>): weight decay is added to
/// every parameter's gradient; the momentum buffer starts as a copy of the first gradient, then
/// buf = momentum * buf + (1 - dampening) * grad; Nesterov uses grad + momentum * buf.
/// </summary>
public sealed class Sgd : Optimizer
{
    private readonly float[] _momentum;
    private bool _hasMomentum;

    public Sgd(IResNet network, float learningRate, float momentum = 0f, float dampening = 0f, float weightDecay = 0f, bool nesterov = false)
        : base(network, learningRate)
    {
        if (!(momentum >= 0)) throw new ArgumentOutOfRangeException(nameof(momentum), momentum, "momentum must be >= 0");
        if (!(weightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "weight decay must be >= 0");
        if (nesterov && (momentum <= 0 || dampening != 0))
            throw new ArgumentException("Nesterov momentum requires a momentum > 0 and zero dampening (as torch.optim.SGD).", nameof(nesterov));
        Momentum = momentum;
        Dampening = dampening;
        WeightDecay = weightDecay;
        Nesterov = nesterov;
        _momentum = momentum != 0 ? new float[State.Values.Length + Runtime.Skew.First] : Array.Empty<float>();
    }

    public float Momentum { get; }
    public float Dampening { get; }
    public float WeightDecay { get; }
    public bool Nesterov { get; }

    private protected override void Update(Span<float> p, ReadOnlySpan<float> g, int offset)
    {
        float lr = LearningRate, wd = WeightDecay, m = Momentum, keep = 1 - Dampening;
        bool first = !_hasMomentum;
        var buf = Momentum != 0 ? _momentum.AsSpan(Runtime.Skew.First + offset, p.Length) : Span<float>.Empty;
        int i = 0;
        if (m != 0 && !first && !Nesterov)
        {
            // The usual step, a vector at a time: the same operations in the same order as the loop below.
            ref float rp = ref MemoryMarshal.GetReference(p);
            ref float rg = ref MemoryMarshal.GetReference(g);
            ref float rb = ref MemoryMarshal.GetReference(buf);
            var vlr = new Vector<float>(lr);
            var vwd = new Vector<float>(wd);
            var vm = new Vector<float>(m);
            var vkeep = new Vector<float>(keep);
            for (; i <= p.Length - Vector<float>.Count; i += Vector<float>.Count)
            {
                var pv = Vector.LoadUnsafe(ref rp, (nuint)i);
                var d = Vector.LoadUnsafe(ref rg, (nuint)i);
                if (wd != 0) d += vwd * pv;
                var b = vm * Vector.LoadUnsafe(ref rb, (nuint)i) + vkeep * d;
                b.StoreUnsafe(ref rb, (nuint)i);
                (pv - vlr * b).StoreUnsafe(ref rp, (nuint)i);
            }
        }
        for (; i < p.Length; i++)
        {
            float d = g[i];
            if (wd != 0) d += wd * p[i];
            if (m != 0)
            {
                float b = first ? d : m * buf[i] + keep * d;
                buf[i] = b;
                d = Nesterov ? d + m * b : b;
            }
            p[i] -= lr * d;
        }
    }

    private protected override void AfterStep() => _hasMomentum = Momentum != 0;

    // The momentum buffer is newer on the device (steps taken there) than in _momentum.
    private bool _momentumOnDevice;

    private Span<float> HostMomentum => _momentum.AsSpan(Runtime.Skew.First, State.Values.Length);

    private protected override bool TryStepOnDevice()
    {
        if (!State.DeviceGradientsFinite()) return false;
        State.SgdStepOnDevice(this, Momentum != 0 ? HostMomentum : Span<float>.Empty, uploadMomentum: _hasMomentum && !_momentumOnDevice,
            LearningRate, Momentum, Dampening, WeightDecay, Nesterov, first: !_hasMomentum);
        _momentumOnDevice = Momentum != 0;
        return true;
    }

    private protected override void BeforeHostStep() => PullMomentum();

    private void PullMomentum()
    {
        if (!_momentumOnDevice) return;
        State.DownloadMomentum(this, HostMomentum);
        _momentumOnDevice = false;
    }

    internal override IReadOnlyList<(string Name, Memory<float> Values)> Buffers
    {
        get
        {
            // A checkpoint reads (or a resume writes) the host's buffer: it must be the newest, and after a write the
            // next device step copies it up (it is then no longer newer on the device).
            PullMomentum();
            return Momentum != 0 ? new[] { ("momentum_buffer", new Memory<float>(_momentum, Runtime.Skew.First, State.Values.Length)) } : Array.Empty<(string, Memory<float>)>();
        }
    }

    internal override void SaveScalars(IDictionary<string, string> metadata) => metadata["sgd.has_momentum"] = _hasMomentum ? "1" : "0";

    internal override void LoadScalars(IReadOnlyDictionary<string, string> metadata) =>
        _hasMomentum = metadata.TryGetValue("sgd.has_momentum", out var v) && v == "1";
}
