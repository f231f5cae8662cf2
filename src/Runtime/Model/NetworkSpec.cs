using System;
using System.ComponentModel;

namespace Unrolled.Runtime;

/// <summary>How a state entry is initialised when a network is constructed (torchvision's <c>ResNet.__init__</c>).</summary>
public enum Init : byte
{
    /// <summary>Conv weight: kaiming_normal_(mode="fan_out", nonlinearity="relu").</summary>
    KaimingNormalFanOut,
    /// <summary>BatchNorm weight, running_var.</summary>
    Ones,
    /// <summary>BatchNorm bias, running_mean; the last BN weight of a block with ZeroInitResidual.</summary>
    Zeros,
    /// <summary>Linear weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear.reset_parameters.</summary>
    UniformFanIn,
    /// <summary>num_batches_tracked: an int64 counter, 0.</summary>
    Counter,
}

/// <summary>One state_dict entry. Float entries live at <see cref="Offset"/> in the network's value array;
/// counters (num_batches_tracked, int64) at index <see cref="Offset"/> of the counter array.</summary>
/// <param name="Key">torchvision's state_dict key.</param>
/// <param name="Shape">torchvision's shape (empty for the scalar counter).</param>
/// <param name="Offset">Element offset in the value array, or the counter index.</param>
/// <param name="IsParameter">True for trainable parameters (weights and biases), false for buffers.</param>
/// <param name="Init">Initialisation rule.</param>
/// <param name="FanIn">fan_in (Linear) or fan_out (conv) used by the initialisation rule.</param>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed record StateEntry(string Key, int[] Shape, long Offset, bool IsParameter, Init Init, int FanIn = 0)
{
    /// <summary>Element count (1 for the scalar counter).</summary>
    public long Count
    {
        get
        {
            long n = 1;
            foreach (int d in Shape) n *= d;
            return n;
        }
    }

    public bool IsCounter => Init == Init.Counter;
}

/// <summary>A convolution followed by its BatchNorm, as the generated code calls it.</summary>
/// <param name="Weight">Offset of the conv weight [OutChannels, InChannels, Kernel, Kernel].</param>
/// <param name="BatchNorm">Offset of the BN weight; bias, running_mean and running_var follow at +C, +2C, +3C.</param>
/// <param name="Counter">Index of the BN's num_batches_tracked counter.</param>
[EditorBrowsable(EditorBrowsableState.Never)]
public readonly record struct ConvSpec(long Weight, long BatchNorm, int Counter, int OutChannels, int InChannels, int Kernel)
{
    public int K => InChannels * Kernel * Kernel;
}

/// <summary>Everything the generator computed about a network that the runtime needs.</summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class NetworkSpec
{
    public NetworkSpec(string name, int channels, int height, int width, int numClasses,
        long valueCount, int counterCount, long arenaPerImage, long trainArenaPerImage, long gradientArenaPerImage, long maxColumns,
        StateEntry[] entries, ConvSpec[] convs, long fcWeight, long fcBias, int fcIn, GradientBucket[]? gradientBuckets = null)
    {
        Name = name; Channels = channels; Height = height; Width = width; NumClasses = numClasses;
        ValueCount = valueCount; CounterCount = counterCount; ArenaPerImage = arenaPerImage;
        TrainArenaPerImage = trainArenaPerImage; GradientArenaPerImage = gradientArenaPerImage; MaxColumns = maxColumns;
        Entries = entries; Convs = convs; FcWeight = fcWeight; FcBias = fcBias; FcIn = fcIn;
        GradientBuckets = gradientBuckets ?? Array.Empty<GradientBucket>();
    }

    public string Name { get; }
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }
    public int NumClasses { get; }
    public long ValueCount { get; }
    public int CounterCount { get; }
    /// <summary>Floats of activation memory per image in the static plan.</summary>
    public long ArenaPerImage { get; }
    /// <summary>Floats per image of the activations a training step saves for backward.</summary>
    public long TrainArenaPerImage { get; }
    /// <summary>Floats per image of the planned activation gradients.</summary>
    public long GradientArenaPerImage { get; }
    /// <summary>Largest (Cin x k x k) x (OH x OW) of one image over the convolutions: the im2col scratch of backward.</summary>
    public long MaxColumns { get; }
    public StateEntry[] Entries { get; }
    public ConvSpec[] Convs { get; }
    public long FcWeight { get; }
    public long FcBias { get; }
    public int FcIn { get; }
    public int InputSize => Channels * Height * Width;
    /// <summary>The generator's data-parallel buckets of <see cref="Distributed.DataParallel.DefaultBucketMegabytes"/> MB (empty from older generated code).</summary>
    public GradientBucket[] GradientBuckets { get; }
}

/// <summary>
/// Gradients all-reduced together: the value-array extent [Start, End) and the layers that fill it, from the highest
/// offset down (conv index; -1 is the fc layer). Emitted by the generator; buckets are listed in the order backward
/// completes them.
/// </summary>
public sealed record GradientBucket(long Start, long End, int[] Layers);
