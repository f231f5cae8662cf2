using System;
using System.Collections.Generic;
using System.Linq;

namespace Unrolled.Generator.Model;

internal enum StepKind { ConvBn, MaxPool, AvgPool, Linear }

/// <summary>
/// One kernel call of the generated code: the layer list with each conv fused with its BatchNorm and, where they
/// follow, the residual add and the ReLU. Forward walks the steps in order, backward in reverse.
/// </summary>
/// <param name="Main">The conv, pool or linear layer.</param>
/// <param name="Names">The fused layers' names, for the comment.</param>
/// <param name="Conv">Index of the conv (execution order), or -1.</param>
/// <param name="Input">Tensor read.</param>
/// <param name="PreNorm">The conv's output before BatchNorm (kept for backward), or -1.</param>
/// <param name="Output">Tensor written (after BN, add and ReLU).</param>
/// <param name="Residual">Tensor added before the ReLU, or -1.</param>
/// <param name="ResidualKind">"downsample" or "identity" when there is a residual.</param>
internal sealed record Step(int Index, StepKind Kind, Layer Main, EquatableArray<string> Names, int Conv, int Input, int PreNorm,
    int Output, int Residual, string ResidualKind, bool Relu)
{
    public static EquatableArray<Step> Build(IReadOnlyList<Layer> layers)
    {
        var producers = new Dictionary<int, Layer>();
        foreach (var l in layers) producers[l.Output] = l;
        var steps = new List<Step>();
        int conv = 0;
        for (int i = 0; i < layers.Count; i++)
        {
            var l = layers[i];
            switch (l.Kind)
            {
                case LayerKind.Conv:
                {
                    var bn = layers[i + 1];
                    if (bn.Kind != LayerKind.BatchNorm) throw new InvalidOperationException($"{l.Name} is not followed by a BatchNorm");
                    var names = new List<string> { l.Name, bn.Name };
                    int end = i + 1, residual = -1;
                    string residualKind = "";
                    if (end + 1 < layers.Count && layers[end + 1].Kind == LayerKind.Add && layers[end + 1].Inputs[0] == bn.Output)
                    {
                        end++;
                        residual = layers[end].Inputs[1];
                        residualKind = producers.TryGetValue(residual, out var p) && p.Kind == LayerKind.BatchNorm ? "downsample" : "identity";
                        names.Add(layers[end].Name);
                    }
                    bool relu = end + 1 < layers.Count && layers[end + 1].Kind == LayerKind.Relu && layers[end + 1].Inputs[0] == layers[end].Output;
                    if (relu) names.Add(layers[++end].Name);
                    steps.Add(new Step(steps.Count, StepKind.ConvBn, l, new EquatableArray<string>(names), conv++, l.Inputs[0], l.Output,
                        layers[end].Output, residual, residualKind, relu));
                    i = end;
                    break;
                }
                case LayerKind.MaxPool:
                case LayerKind.AvgPool:
                case LayerKind.Linear:
                    var kind = l.Kind == LayerKind.MaxPool ? StepKind.MaxPool : l.Kind == LayerKind.AvgPool ? StepKind.AvgPool : StepKind.Linear;
                    steps.Add(new Step(steps.Count, kind, l, new EquatableArray<string>(new[] { l.Name }), -1, l.Inputs[0], -1, l.Output, -1, "", false));
                    break;
                default:
                    throw new InvalidOperationException($"{l.Name}: a {l.Kind} that does not follow a conv cannot be scheduled");
            }
        }
        return new EquatableArray<Step>(steps);
    }
}

/// <summary>
/// The static memory plan of a training step, per image. Every activation that backward reads (each conv's
/// pre-BN output and each step's output) keeps its own slot in the saved arena. Activation gradients live in a
/// second arena, placed first-fit in backward order: a gradient is zeroed by the backward step of its last
/// consumer (its first contribution) and dies after the backward step of its producer. The input image has no
/// gradient; dL/dlogits is the first.
/// </summary>
/// <param name="Saved">Per tensor: offset in the saved arena, or -1.</param>
/// <param name="Gradient">Per tensor: offset in the gradient arena, or -1.</param>
/// <param name="ZeroAt">Per tensor: the step whose backward zeroes its gradient first (the logits' is written, not zeroed: -1).</param>
internal sealed record TrainingPlan(EquatableArray<long> Saved, EquatableArray<long> Gradient, EquatableArray<int> ZeroAt,
    long SavedSize, long GradientSize)
{
    public static TrainingPlan Create(IReadOnlyList<Step> steps, IReadOnlyList<Shape> tensors)
    {
        int count = tensors.Count;
        int logits = count - 1;
        var saved = Enumerable.Repeat(-1L, count).ToArray();
        long savedSize = 0;
        void Save(int t)
        {
            if (t <= 0 || t == logits || saved[t] >= 0) return;
            saved[t] = savedSize;
            savedSize += tensors[t].Size;
        }
        foreach (var s in steps)
        {
            if (s.PreNorm >= 0) Save(s.PreNorm);
            Save(s.Output);
        }

        // Gradients: producer and last consumer of each step output.
        var producer = new int[count];
        var lastConsumer = Enumerable.Repeat(-1, count).ToArray();
        foreach (var s in steps)
        {
            producer[s.Output] = s.Index;
            lastConsumer[s.Input] = Math.Max(lastConsumer[s.Input], s.Index);
            if (s.Residual >= 0) lastConsumer[s.Residual] = Math.Max(lastConsumer[s.Residual], s.Index);
        }

        var gradient = Enumerable.Repeat(-1L, count).ToArray();
        var zeroAt = Enumerable.Repeat(-1, count).ToArray();
        var live = new List<(long Offset, long Size, int Tensor)>();
        long gradientSize = 0;
        void Allocate(int t)
        {
            long size = tensors[t].Size;
            long cursor = 0;
            foreach (var b in live.OrderBy(b => b.Offset))
            {
                if (b.Offset - cursor >= size) break;
                cursor = Math.Max(cursor, b.Offset + b.Size);
            }
            gradient[t] = cursor;
            live.Add((cursor, size, t));
            gradientSize = Math.Max(gradientSize, cursor + size);
        }

        Allocate(logits); // written by the loss
        for (int i = steps.Count - 1; i >= 0; i--)
        {
            var s = steps[i];
            foreach (int t in new[] { s.Input, s.Residual })
            {
                if (t <= 0 || gradient[t] >= 0 || lastConsumer[t] != i) continue;
                Allocate(t);
                zeroAt[t] = i;
            }
            live.RemoveAll(b => b.Tensor == s.Output);
        }

        return new TrainingPlan(new EquatableArray<long>(saved), new EquatableArray<long>(gradient), new EquatableArray<int>(zeroAt),
            savedSize, gradientSize);
    }
}
