using System;
using System.Collections.Generic;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Unrolled;

/// <summary>
/// Adam with decoupled weight decay, as <c>torch.optim.AdamW</c> (amsgrad off): p *= 1 - lr * weight_decay;
/// m = lerp(m, g, 1 - beta1); v = beta2 * v + (1 - beta2) g^2; p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
/// </summary>
public sealed class AdamW : Optimizer
{
    private readonly float[] _expAvg;
    private readonly float[] _expAvgSq;

    public AdamW(IResNet network, float learningRate = 1e-3f, float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f, float weightDecay = 1e-2f)
        : base(network, learningRate)
    {
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "beta1 must lie in [0, 1)");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "beta2 must lie in [0, 1)");
        if (!(epsilon >= 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "epsilon must be >= 0");
        if (!(weightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "weight decay must be >= 0");
        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
        WeightDecay = weightDecay;
        _expAvg = new float[State.Values.Length + Runtime.Skew.First];
        _expAvgSq = new float[State.Values.Length + Runtime.Skew.Second];
    }

    public float Beta1 { get; }
    public float Beta2 { get; }
    public float Epsilon { get; }
    public float WeightDecay { get; }

    private protected override void Update(Span<float> p, ReadOnlySpan<float> g, int offset)
    {
        float lr = LearningRate;
        float decay = 1 - lr * WeightDecay;
        double t = Steps;
        float stepSize = (float)(lr / (1 - Math.Pow(Beta1, t)));
        float correction2Sqrt = (float)Math.Sqrt(1 - Math.Pow(Beta2, t));
        float b1 = Beta1, b2 = Beta2, eps = Epsilon;
        var m = _expAvg.AsSpan(Runtime.Skew.First + offset, p.Length);
        var v = _expAvgSq.AsSpan(Runtime.Skew.Second + offset, p.Length);
        int i = 0;
        // A vector at a time: the same operations in the same order as the loop below, so the same bits.
        ref float rp = ref MemoryMarshal.GetReference(p);
        ref float rg = ref MemoryMarshal.GetReference(g);
        ref float rm = ref MemoryMarshal.GetReference(m);
        ref float rv = ref MemoryMarshal.GetReference(v);
        var vDecay = new Vector<float>(decay);
        var vKeep1 = new Vector<float>(1 - b1);
        var vB2 = new Vector<float>(b2);
        var vKeep2 = new Vector<float>(1 - b2);
        var vStep = new Vector<float>(stepSize);
        var vCorrection = new Vector<float>(correction2Sqrt);
        var vEps = new Vector<float>(eps);
        for (; i <= p.Length - Vector<float>.Count; i += Vector<float>.Count)
        {
            var gi = Vector.LoadUnsafe(ref rg, (nuint)i);
            var pi = Vector.LoadUnsafe(ref rp, (nuint)i) * vDecay;
            var mi = Vector.LoadUnsafe(ref rm, (nuint)i);
            mi += vKeep1 * (gi - mi);
            var vi = vB2 * Vector.LoadUnsafe(ref rv, (nuint)i) + vKeep2 * gi * gi;
            pi -= vStep * mi / (Vector.SquareRoot(vi) / vCorrection + vEps);
            mi.StoreUnsafe(ref rm, (nuint)i);
            vi.StoreUnsafe(ref rv, (nuint)i);
            pi.StoreUnsafe(ref rp, (nuint)i);
        }
        for (; i < p.Length; i++)
        {
            float gi = g[i];
            p[i] *= decay;
            m[i] += (1 - b1) * (gi - m[i]);
            v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            p[i] -= stepSize * m[i] / (MathF.Sqrt(v[i]) / correction2Sqrt + eps);
        }
    }

    internal override IReadOnlyList<(string Name, Memory<float> Values)> Buffers => new[]
    {
        ("exp_avg", new Memory<float>(_expAvg, Runtime.Skew.First, State.Values.Length)),
        ("exp_avg_sq", new Memory<float>(_expAvgSq, Runtime.Skew.Second, State.Values.Length)),
    };
}
