using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace Unrolled.Generator.Model;

/// <summary>What <c>[ResNet(...)]</c> says, as plain values (no symbols): the pipeline's cache key.</summary>
internal sealed record ResNetOptions(
    int Depth,
    int NumClasses,
    int BaseWidth,
    int ImageHeight,
    int ImageWidth,
    bool ZeroInitResidual);

/// <summary>A source location as plain values, turned back into a <see cref="Location"/> only when reported.</summary>
internal sealed record LocationInfo(string FilePath, TextSpan Span, LinePositionSpan LineSpan)
{
    public Location ToLocation() => Location.Create(FilePath, Span, LineSpan);

    public static LocationInfo? From(SyntaxNode? node) =>
        node is null ? null : new LocationInfo(node.SyntaxTree.FilePath, node.Span, node.GetLocation().GetLineSpan().Span);
}

/// <summary>A problem found while reading the attribute, as equatable data.</summary>
internal sealed record DiagnosticInfo(string Id, LocationInfo? Location, EquatableArray<string> Arguments)
{
    public Diagnostic ToDiagnostic() =>
        Diagnostic.Create(Diagnostics.ById(Id), Location?.ToLocation(), Arguments.Count == 0 ? null : System.Linq.Enumerable.ToArray<object>(Arguments));
}

/// <summary>One annotated class: where to put the generated part, and what to generate.</summary>
/// <param name="Namespace">The namespace, or null for the global namespace.</param>
/// <param name="ContainingTypes">Declarations of enclosing types, outermost first ("partial class Outer").</param>
/// <param name="ClassName">The class's name.</param>
/// <param name="HintName">A unique, deterministic file name for the generated source.</param>
internal sealed record NetworkTarget(
    string? Namespace,
    EquatableArray<string> ContainingTypes,
    string ClassName,
    string HintName,
    ResNetOptions? Options,
    EquatableArray<DiagnosticInfo> Diagnostics);
