using System.Linq;
using Unrolled.Distributed;

namespace Unrolled.Tests;

/// <summary>The data-parallel buckets the generator emits (25 MB) against the runtime's computation of the same.</summary>
public class GradientBucketTests
{
    public static TheoryData<IResNet> Networks => new()
    {
        new Tiny18(), new Tiny50(), new ResNet18(), new ResNet34(), new ResNet50(), new ResNet101(), new ResNet152(), new Basic72x88(),
    };

    [Theory]
    [MemberData(nameof(Networks))]
    public void EmittedBucketsAreTheRuntimesAndCoverEveryLayerOnce(IResNet network)
    {
        var spec = network.State.Spec;
        var emitted = spec.GradientBuckets;
        var computed = DataParallel.ComputeBuckets(spec, DataParallel.DefaultBucketMegabytes);
        Assert.NotEmpty(emitted);
        Assert.Equal(computed.Length, emitted.Length);
        for (int b = 0; b < emitted.Length; b++)
        {
            Assert.Equal(computed[b].Start, emitted[b].Start);
            Assert.Equal(computed[b].End, emitted[b].End);
            Assert.Equal(computed[b].Layers, emitted[b].Layers);
        }

        // Every conv and the fc layer exactly once, fc first (backward completes it first), and the buckets tile the
        // trainable state from the end of the value array without gaps.
        var layers = emitted.SelectMany(b => b.Layers).ToArray();
        Assert.Equal(-1, layers[0]);
        Assert.Equal(Enumerable.Range(-1, spec.Convs.Length + 1), layers.OrderBy(l => l));
        Assert.Equal(spec.FcBias + spec.NumClasses, emitted[0].End);
        for (int b = 1; b < emitted.Length; b++) Assert.Equal(emitted[b - 1].Start, emitted[b].End);
        Assert.Equal(0, emitted[^1].Start);
    }

    [Fact]
    public void ResNet50HasFourBucketsEachClosedByTheLayerThatReachedTwentyFiveMegabytes()
    {
        var spec = ((IResNet)new ResNet50()).State.Spec;
        var buckets = spec.GradientBuckets;
        Assert.Equal(4, buckets.Length); // 97.7 MB of state
        long target = 25L * (1 << 20) / sizeof(float);
        foreach (var b in buckets.Take(buckets.Length - 1))
        {
            // Before its last layer (the lowest in memory) the bucket was under 25 MB; with it, at or over.
            int last = b.Layers[^1];
            long lastEnd = last < 0 ? spec.FcBias + spec.NumClasses : spec.Convs[last].BatchNorm + 4L * spec.Convs[last].OutChannels;
            Assert.True(b.End - lastEnd < target, $"bucket {b.Start}..{b.End} was already full before conv {last}");
            Assert.True(b.End - b.Start >= target, $"bucket {b.Start}..{b.End} closed under 25 MB");
        }
    }
}
