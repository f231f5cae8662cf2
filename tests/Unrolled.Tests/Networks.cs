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
