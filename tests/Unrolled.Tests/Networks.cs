using Unrolled;

namespace Unrolled.Tests;

// The networks of PyTorch's reference files (../shared/reference/README.md).
[ResNet(18, NumClasses = 10, BaseWidth = 8, ImageSize = 64)]
public partial class Tiny18;

[ResNet(50, NumClasses = 10, BaseWidth = 8, ImageSize = 64)]
public partial class Tiny50;

[ResNet(50)]
public partial class ResNet50;

[ResNet(18)]
public partial class ResNet18;

[ResNet(34)]
public partial class ResNet34;

[ResNet(101)]
public partial class ResNet101;

[ResNet(152)]
public partial class ResNet152;

// Non-square inputs and other widths, checked against an independent reference implementation.
[ResNet(18, NumClasses = 7, BaseWidth = 8, ImageHeight = 72, ImageWidth = 88)]
public partial class Basic72x88;

[ResNet(50, NumClasses = 5, BaseWidth = 4, ImageHeight = 72, ImageWidth = 88)]
public partial class Bottleneck72x88;

// 32x32, as the quickstart: layer3's maps are 2x2 and layer4's a single pixel, where a 3x3 convolution meets its input
// with the centre tap only.
[ResNet(50, NumClasses = 5, BaseWidth = 4, ImageSize = 32)]
public partial class Bottleneck32;

[ResNet(18, NumClasses = 3, BaseWidth = 4, ImageSize = 32, ZeroInitResidual = true)]
public partial class ZeroInit18;

// Full width at a small size: the 3x3 convolutions of layer1 and layer2 have the channels and tiles that Winograd wants.
[ResNet(18, NumClasses = 3, ImageSize = 64)]
public partial class Wide18;
