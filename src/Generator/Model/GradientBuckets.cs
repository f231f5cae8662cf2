using System.Collections.Generic;

namespace Unrolled.Generator.Model;

/// <summary>A run of layers whose gradients are all-reduced together: [Start, End) in the value array.</summary>
/// <param name="Layers">Conv indices from the highest offset down; -1 is the fc layer.</param>
internal sealed record GradientBucket(long Start, long End, EquatableArray<int> Layers);

/// <summary>
/// Data-parallel gradient buckets, known at compile time: backward completes the fc layer first, then the
/// convolutions from the last to the first, and each layer's state (conv weight, then its BatchNorm's four vectors;
/// fc weight and bias) is one extent of the value array. Runs of layers adjacent in memory, taken from the end of the
/// array, close at about <see cref="Megabytes"/> MB: the first bucket can be reduced while backward computes the rest.
/// The runtime (DataParallel) computes the same for other bucket sizes; a test keeps the two equal.
/// </summary>
internal static class GradientBuckets
{
    public const int Megabytes = 25;

    public static List<GradientBucket> Create(NetworkDescription d)
    {
        long target = Megabytes * (1L << 20) / sizeof(float);
        var fcWeight = d.Entry("fc.weight");
        var fcBias = d.Entry("fc.bias");
        var layers = new List<(int Layer, long Start, long End)> { (-1, fcWeight.Offset, fcBias.Offset + d.Options.NumClasses) };
        for (int i = d.Convs.Count - 1; i >= 0; i--)
        {
            var c = d.Convs[i];
            layers.Add((c.Index, c.Weight, c.BatchNorm + 4L * c.OutChannels));
        }
        layers.Sort((a, b) => b.Start.CompareTo(a.Start));

        var buckets = new List<GradientBucket>();
        var members = new List<int>();
        long start = -1, end = -1;
        foreach (var (layer, s, e) in layers)
        {
            if (members.Count > 0 && (e != start || end - start >= target))
            {
                buckets.Add(new GradientBucket(start, end, new EquatableArray<int>(members.ToArray())));
                members.Clear();
            }
            if (members.Count == 0) end = e;
            start = s;
            members.Add(layer);
        }
        buckets.Add(new GradientBucket(start, end, new EquatableArray<int>(members.ToArray())));
        return buckets;
    }
}
