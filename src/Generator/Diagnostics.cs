using System.Collections.Generic;
using Microsoft.CodeAnalysis;

namespace Unrolled.Generator;

/// <summary>Every diagnostic the generator reports. One prefix, URN; each message says what to write instead.</summary>
internal static class Diagnostics
{
    private const string Category = "Unrolled";

    public static readonly DiagnosticDescriptor UnsupportedDepth = new(
        "URN0001", "Unsupported ResNet depth",
        "ResNet depth {0} is not one of torchvision's; write [ResNet(18)], [ResNet(34)], [ResNet(50)], [ResNet(101)] or [ResNet(152)]",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor NotPartial = new(
        "URN0002", "The class must be partial",
        "'{0}' must be declared partial so that [ResNet] can add the network to it; write 'partial class {0}'",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor ContainingTypeNotPartial = new(
        "URN0003", "An enclosing type must be partial",
        "'{0}' is nested in '{1}', which must be declared partial too; write 'partial class {1}' (or move '{0}' out)",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor Generic = new(
        "URN0004", "Generic classes are not supported",
        "[ResNet] cannot be applied to the generic class '{0}'; declare a non-generic partial class",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor StaticClass = new(
        "URN0005", "Static classes are not supported",
        "'{0}' is static, but a network has weights and must be constructed; remove 'static'",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor OutOfRange = new(
        "URN0006", "Option out of range",
        "{0} = {1} is out of range: {2}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor ConflictingSize = new(
        "URN0007", "Conflicting image size options",
        "{0}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor TooLarge = new(
        "URN0008", "Network too large",
        "{0}",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    public static readonly DiagnosticDescriptor NonConstantArgument = new(
        "URN0009", "Attribute argument not understood",
        "The [ResNet] argument '{0}' could not be read as a constant; write a literal such as [ResNet(50, NumClasses = 10)]",
        Category, DiagnosticSeverity.Error, isEnabledByDefault: true);

    private static readonly Dictionary<string, DiagnosticDescriptor> s_byId = new()
    {
        [UnsupportedDepth.Id] = UnsupportedDepth,
        [NotPartial.Id] = NotPartial,
        [ContainingTypeNotPartial.Id] = ContainingTypeNotPartial,
        [Generic.Id] = Generic,
        [StaticClass.Id] = StaticClass,
        [OutOfRange.Id] = OutOfRange,
        [ConflictingSize.Id] = ConflictingSize,
        [TooLarge.Id] = TooLarge,
        [NonConstantArgument.Id] = NonConstantArgument,
    };

    public static DiagnosticDescriptor ById(string id) => s_byId[id];
}
