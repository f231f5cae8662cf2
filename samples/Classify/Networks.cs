namespace Unrolled.Classify;

// torchvision's five ImageNet ResNets, generated at compile time (1000 classes, 224x224).
[ResNet(18)] public sealed partial class ResNet18;
[ResNet(34)] public sealed partial class ResNet34;
[ResNet(50)] public sealed partial class ResNet50;
[ResNet(101)] public sealed partial class ResNet101;
[ResNet(152)] public sealed partial class ResNet152;

internal static class Networks
{
    public static readonly int[] Depths = { 18, 34, 50, 101, 152 };

    public static IResNet Create(int depth, Device device) => depth switch
    {
        18 => new ResNet18(device),
        34 => new ResNet34(device),
        50 => new ResNet50(device),
        101 => new ResNet101(device),
        152 => new ResNet152(device),
        _ => throw new System.ArgumentException($"--arch resnet{depth}: expected resnet18, resnet34, resnet50, resnet101 or resnet152"),
    };
}
