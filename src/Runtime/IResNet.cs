using System;
using System.Collections.Generic;

namespace Unrolled;

/// <summary>The surface every generated network implements; optimizers and tools are written against it.</summary>
public interface IResNet
{
    /// <summary>The device the network runs on (never <see cref="Unrolled.Device.Auto"/>).</summary>
    Device Device { get; }

    /// <summary>True after <see cref="Train"/>, false after <see cref="Eval"/> (the default).</summary>
    bool IsTraining { get; }

    /// <summary>Channels, height and width of one input image.</summary>
    (int Channels, int Height, int Width) InputShape { get; }

    /// <summary>Number of logits per image.</summary>
    int OutputSize { get; }

    /// <summary>Every state_dict key in torchvision's order.</summary>
    IReadOnlyList<string> StateKeys { get; }

    /// <summary>The network's state, for optimizers and tools (not for everyday use).</summary>
    [System.ComponentModel.EditorBrowsable(System.ComponentModel.EditorBrowsableState.Never)]
    Runtime.NetworkState State { get; }

    void Eval();
    void Train();
    void Forward(ReadOnlySpan<float> input, Span<float> logits);
    void LoadWeights(string path);
    void SaveWeights(string path);
    float ForwardBackward(ReadOnlySpan<float> input, ReadOnlySpan<int> labels, Span<float> logits);
    void ZeroGrad();
    float[] GetTensor(string key);
    float[] GetGradient(string key);
    void SetTensor(string key, ReadOnlySpan<float> values);
    int[] GetShape(string key);
}
