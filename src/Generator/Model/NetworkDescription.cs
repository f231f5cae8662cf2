using System;
using System.Collections.Generic;

namespace Unrolled.Generator.Model;

internal enum LayerKind { Conv, BatchNorm, Relu, MaxPool, Add, AvgPool, Linear }

/// <summary>Channels, height and width of one image's activation (the batch is a runtime value).</summary>
internal readonly record struct Shape(int C, int H, int W)
{
    public long Size => (long)C * H * W;

    public override string ToString() => $"[n, {C}, {H}, {W}]";

    /// <summary>torchsummary's notation.</summary>
    public string Summary => H == 1 && W == 1 ? $"[-1, {C}]" : $"[-1, {C}, {H}, {W}]";
}

/// <summary>
/// One layer of the flat list. Tensors are numbered: 0 is the input image batch; every layer writes one new
/// tensor. BatchNorm, ReLU and Add write theirs in place over their first input (see <see cref="MemoryPlan"/>).
/// </summary>
/// <param name="Name">torchvision's module path ("layer1.0.conv1"); ReLU and Add, which have no parameters, get "layer1.0.relu2", "layer1.0.add".</param>
/// <param name="Inputs">Tensor ids read (Add: main path first, then the identity).</param>
/// <param name="Output">Tensor id written.</param>
/// <param name="ParamCount">Trainable parameters (conv/linear weight and bias, BN weight and bias).</param>
/// <param name="Macs">Multiply-accumulates per image.</param>
internal sealed record Layer(
    int Index,
    LayerKind Kind,
    string Name,
    EquatableArray<int> Inputs,
    int Output,
    Shape In,
    Shape Out,
    int Kernel,
    int Stride,
    int Pad,
    long ParamCount,
    long Macs)
{
    public string TypeName => Kind switch
    {
        LayerKind.Conv => "Conv2d",
        LayerKind.BatchNorm => "BatchNorm2d",
        LayerKind.Relu => "ReLU",
        LayerKind.MaxPool => "MaxPool2d",
        LayerKind.Add => "Add",
        LayerKind.AvgPool => "AdaptiveAvgPool2d",
        _ => "Linear",
    };
}

/// <summary>Initialisation rule of a state entry (mirrors Unrolled.Runtime.Init).</summary>
internal enum InitRule { KaimingNormalFanOut, Ones, Zeros, UniformFanIn, Counter }

/// <summary>One state_dict entry: torchvision's key and shape, and where it lives.</summary>
/// <param name="Offset">Float offset in the value array, or the index of an int64 counter.</param>
/// <param name="Fan">fan_out (conv) or fan_in (linear) for the initialisation rule.</param>
internal sealed record StateEntryInfo(string Key, EquatableArray<int> Shape, long Offset, bool IsParameter, InitRule Init, int Fan)
{
    public long Count
    {
        get
        {
            long n = 1;
            foreach (int d in Shape) n *= d;
            return n;
        }
    }
}

/// <summary>A convolution and its BatchNorm, with the offsets of their state.</summary>
internal sealed record ConvInfo(int Index, string Name, long Weight, long BatchNorm, int Counter, int OutChannels, int InChannels, int Kernel);

/// <summary>The whole network: what the generator knows at compile time.</summary>
internal sealed record NetworkDescription(
    ResNetOptions Options,
    string BlockType,
    EquatableArray<int> Blocks,
    EquatableArray<Layer> Layers,
    EquatableArray<StateEntryInfo> Entries,
    EquatableArray<ConvInfo> Convs,
    long ValueCount,
    int CounterCount,
    long ParameterCount,
    long Macs,
    EquatableArray<Shape> Tensors,
    MemoryPlan Plan,
    EquatableArray<Step> Steps,
    TrainingPlan Training)
{
    public Shape InputShape => Tensors[0];

    /// <summary>Largest (Cin x k x k) x (OH x OW) over the convolutions: the im2col scratch of one image in backward.</summary>
    public long MaxColumns
    {
        get
        {
            long max = 0;
            foreach (var s in Steps)
                if (s.Kind == StepKind.ConvBn)
                    max = Math.Max(max, (long)s.Main.In.C * s.Main.Kernel * s.Main.Kernel * s.Main.Out.H * s.Main.Out.W);
            return max;
        }
    }

    public StateEntryInfo Entry(string key)
    {
        foreach (var e in Entries)
            if (e.Key == key) return e;
        throw new KeyNotFoundException(key);
    }
}
