using System;
using System.Collections.Generic;

namespace Unrolled.Generator.Model;

/// <summary>
/// The static activation plan of one image (offsets scale with the batch, since every tensor does).
/// BatchNorm and ReLU write over their input, Add over its main-path input, so a buffer belongs to the conv,
/// pool or linear layer that first writes it and lives until the last layer that reads any tensor in it.
/// Buffers are placed first-fit in one arena and reused once dead. The network input (tensor 0) and the logits
/// (the last tensor) are the caller's and take no arena space.
/// </summary>
/// <param name="Root">For every tensor, the tensor whose buffer it occupies.</param>
/// <param name="Offsets">For every tensor, its offset in the arena in floats per image (-1 for the input and logits).</param>
/// <param name="ArenaSize">Floats per image of the whole arena.</param>
/// <param name="NaiveSize">Floats per image had every buffer its own memory (what the plan saves against).</param>
internal sealed record MemoryPlan(EquatableArray<int> Root, EquatableArray<long> Offsets, long ArenaSize, long NaiveSize)
{
    public static MemoryPlan Create(IReadOnlyList<Layer> layers, IReadOnlyList<Shape> tensors)
    {
        int count = tensors.Count;
        int logits = count - 1;
        var root = new int[count];
        for (int t = 0; t < count; t++) root[t] = t;
        foreach (var l in layers)
            if (l.Kind is LayerKind.BatchNorm or LayerKind.Relu or LayerKind.Add) root[l.Output] = root[l.Inputs[0]];

        // Last layer that reads each buffer.
        var lastUse = new int[count];
        for (int t = 0; t < count; t++) lastUse[t] = -1;
        foreach (var l in layers)
            foreach (int input in l.Inputs) lastUse[root[input]] = Math.Max(lastUse[root[input]], l.Index);

        var offsets = new long[count];
        for (int t = 0; t < count; t++) offsets[t] = -1;
        var live = new List<(long Offset, long Size, int Buffer)>(); // sorted by offset
        long arena = 0, naive = 0;
        foreach (var l in layers)
        {
            int output = l.Output;
            if (root[output] == output && output != logits)
            {
                long size = tensors[output].Size;
                naive += size;
                long at = FirstFit(live, size);
                offsets[output] = at;
                arena = Math.Max(arena, at + size);
                int pos = 0;
                while (pos < live.Count && live[pos].Offset < at) pos++;
                live.Insert(pos, (at, size, output));
            }
            else if (output != logits)
            {
                offsets[output] = offsets[root[output]];
            }

            // Free buffers whose last reader is this layer (after the output is placed: a conv never overwrites its input).
            live.RemoveAll(b => lastUse[b.Buffer] == l.Index);
        }

        return new MemoryPlan(new EquatableArray<int>(root), new EquatableArray<long>(offsets), arena, naive);
    }

    private static long FirstFit(List<(long Offset, long Size, int Buffer)> live, long size)
    {
        long cursor = 0;
        foreach (var b in live)
        {
            if (b.Offset - cursor >= size) return cursor;
            cursor = Math.Max(cursor, b.Offset + b.Size);
        }
        return cursor;
    }
}
