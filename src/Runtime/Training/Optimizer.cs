using System;
using System.Collections.Generic;
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

    /// <summary>Steps taken so far.</summary>
    public long Steps { get; private protected set; }

    /// <summary>Applies one update from the accumulated gradients.</summary>
    public unsafe void Step()
    {
        Steps++;
        // Every parameter, in chunks of at most ChunkSize elements, on every core (the updates are element-wise).
        if (_chunks is null)
        {
            var chunks = new List<(int, int)>();
            foreach (var (offset, count) in State.ParameterRanges)
                for (int at = 0; at < count; at += ChunkSize) chunks.Add((offset + at, Math.Min(ChunkSize, count - at)));
            _chunks = chunks.ToArray();
        }
        Cpu.WorkerPool.Shared.Run(&UpdateChunk, this, _chunks.Length);
        AfterStep();
        State.MarkWeightsChanged();
    }

    private const int ChunkSize = 1 << 18;
    private (int Offset, int Count)[]? _chunks;
    private static void UpdateChunk(object state, int item)
    {
        var self = (Optimizer)state;
        var (offset, count) = self._chunks![item];
        self.Update(self.State.Values.Slice(offset, count), self.State.Gradients.Slice(offset, count), offset);
    }

    private protected virtual void AfterStep() { }

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
        for (int i = 0; i < p.Length; i++)
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

    internal override IReadOnlyList<(string Name, Memory<float> Values)> Buffers =>
        Momentum != 0 ? new[] { ("momentum_buffer", new Memory<float>(_momentum, Runtime.Skew.First, State.Values.Length)) } : Array.Empty<(string, Memory<float>)>();

    internal override void SaveScalars(IDictionary<string, string> metadata) => metadata["sgd.has_momentum"] = _hasMomentum ? "1" : "0";

    internal override void LoadScalars(IReadOnlyDictionary<string, string> metadata) =>
        _hasMomentum = metadata.TryGetValue("sgd.has_momentum", out var v) && v == "1";
}
