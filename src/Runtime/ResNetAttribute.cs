using System;

namespace Unrolled;

/// <summary>
/// Declares a torchvision ResNet (v1.5) on a <c>partial class</c>. The Unrolled source generator
/// expands it at compile time into straight-line forward code, a parameter table with
/// torchvision's state_dict keys and a static activation memory plan.
/// </summary>
/// <example><code>
/// [ResNet(50)]
/// public partial class Classifier;
/// </code></example>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false, Inherited = false)]
public sealed class ResNetAttribute : Attribute
{
    /// <param name="depth">18 or 34 (BasicBlock), 50, 101 or 152 (Bottleneck).</param>
    public ResNetAttribute(int depth) => Depth = depth;

    /// <summary>18, 34, 50, 101 or 152.</summary>
    public int Depth { get; }

    /// <summary>Outputs of the final linear layer (torchvision's <c>num_classes</c>). Default 1000.</summary>
    public int NumClasses { get; set; } = 1000;

    /// <summary>Channels of the stem; the stages have BaseWidth x {1, 2, 4, 8} planes. Default 64.</summary>
    public int BaseWidth { get; set; } = 64;

    /// <summary>Side of a square input image. Default 224. Use <see cref="ImageHeight"/> and <see cref="ImageWidth"/> for other shapes.</summary>
    public int ImageSize { get; set; } = 224;

    /// <summary>Input height; when set, <see cref="ImageWidth"/> must be set too and <see cref="ImageSize"/> is not used.</summary>
    public int ImageHeight { get; set; }

    /// <summary>Input width; when set, <see cref="ImageHeight"/> must be set too.</summary>
    public int ImageWidth { get; set; }

    /// <summary>Zero the last BatchNorm weight of each residual block when the network is built (torchvision's <c>zero_init_residual</c>).</summary>
    public bool ZeroInitResidual { get; set; }
}
