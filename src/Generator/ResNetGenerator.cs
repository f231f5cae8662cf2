using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using System.Threading;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Unrolled.Generator.Emit;
using Unrolled.Generator.Model;

namespace Unrolled.Generator;

/// <summary>
/// Emits a torchvision ResNet for every class marked <c>[Unrolled.ResNet(depth)]</c>.
/// Pipeline: attribute -> <see cref="NetworkTarget"/> (plain, equatable) -> <see cref="ResNetTable.Expand"/> ->
/// <see cref="NetworkEmitter.Emit"/>. Nothing symbol-shaped is kept between steps, so unrelated edits stay cached.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed class ResNetGenerator : IIncrementalGenerator
{
    public const string AttributeName = "Unrolled.ResNetAttribute";

    /// <summary>Tracking name of the step that reads the attribute (used by the caching tests).</summary>
    public const string TargetsStep = "ResNetTargets";

    internal static readonly string Version = typeof(ResNetGenerator).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        var targets = context.SyntaxProvider
            .ForAttributeWithMetadataName(
                AttributeName,
                predicate: static (node, _) => node is ClassDeclarationSyntax,
                transform: static (ctx, ct) => ReadTarget(ctx, ct))
            .WithTrackingName(TargetsStep);

        context.RegisterSourceOutput(targets, static (spc, target) => Execute(spc, target));
    }

    private static void Execute(SourceProductionContext spc, NetworkTarget target)
    {
        foreach (var d in target.Diagnostics) spc.ReportDiagnostic(d.ToDiagnostic());
        if (target.Options is null) return;
        var description = ResNetTable.Expand(target.Options);
        spc.AddSource(target.HintName, NetworkEmitter.Emit(target, description, Version));
    }

    private static NetworkTarget ReadTarget(GeneratorAttributeSyntaxContext ctx, CancellationToken ct)
    {
        var syntax = (ClassDeclarationSyntax)ctx.TargetNode;
        var symbol = (INamedTypeSymbol)ctx.TargetSymbol;
        var diagnostics = new List<DiagnosticInfo>();
        var classLocation = LocationInfo.From(syntax.Identifier.Parent is null ? syntax : (SyntaxNode)syntax);
        var identifierLocation = new LocationInfo(syntax.SyntaxTree.FilePath, syntax.Identifier.Span, syntax.Identifier.GetLocation().GetLineSpan().Span);

        void Report(DiagnosticDescriptor descriptor, LocationInfo? location, params string[] args) =>
            diagnostics.Add(new DiagnosticInfo(descriptor.Id, location ?? classLocation, new EquatableArray<string>(args)));

        if (!syntax.Modifiers.Any(SyntaxKind.PartialKeyword)) Report(Diagnostics.NotPartial, identifierLocation, symbol.Name);
        if (symbol.IsStatic) Report(Diagnostics.StaticClass, identifierLocation, symbol.Name);
        if (symbol.IsGenericType) Report(Diagnostics.Generic, identifierLocation, symbol.Name);

        var containing = new List<string>();
        for (var parent = syntax.Parent as TypeDeclarationSyntax; parent is not null; parent = parent.Parent as TypeDeclarationSyntax)
        {
            if (!parent.Modifiers.Any(SyntaxKind.PartialKeyword))
                Report(Diagnostics.ContainingTypeNotPartial, identifierLocation, symbol.Name, parent.Identifier.Text);
            string keyword = parent is RecordDeclarationSyntax r
                ? (r.ClassOrStructKeyword.IsKind(SyntaxKind.StructKeyword) ? "record struct" : "record")
                : parent.Keyword.ValueText;
            containing.Insert(0, $"partial {keyword} {parent.Identifier.Text}{parent.TypeParameterList}");
        }

        ct.ThrowIfCancellationRequested();
        var attribute = ctx.Attributes[0];
        var attributeLocation = LocationInfo.From(attribute.ApplicationSyntaxReference?.GetSyntax(ct));
        var options = ReadOptions(attribute, attributeLocation, diagnostics);

        string? ns = symbol.ContainingNamespace is { IsGlobalNamespace: false } n ? n.ToDisplayString() : null;
        string fullName = symbol.ToDisplayString(SymbolDisplayFormat.FullyQualifiedFormat)
            .Replace("global::", "").Replace('<', '{').Replace('>', '}');
        bool failed = diagnostics.Count > 0;
        return new NetworkTarget(ns, new EquatableArray<string>(containing), symbol.Name, fullName + ".ResNet.g.cs",
            failed ? null : options, new EquatableArray<DiagnosticInfo>(diagnostics));
    }

    private static ResNetOptions? ReadOptions(AttributeData attribute, LocationInfo? location, List<DiagnosticInfo> diagnostics)
    {
        void Report(DiagnosticDescriptor descriptor, params string[] args) =>
            diagnostics.Add(new DiagnosticInfo(descriptor.Id, location, new EquatableArray<string>(args)));

        // A constructor argument with a compile error (wrong type, missing) is the compiler's to report.
        if (attribute.ConstructorArguments.Length != 1 || attribute.ConstructorArguments[0].Value is not int depth)
            return null;

        int numClasses = 1000, baseWidth = 64, imageSize = 224, height = 0, width = 0;
        bool zeroInit = false, sizeSet = false;
        foreach (var named in attribute.NamedArguments)
        {
            object? value = named.Value.Kind == TypedConstantKind.Error ? null : named.Value.Value;
            switch (named.Key, value)
            {
                case ("NumClasses", int v): numClasses = v; break;
                case ("BaseWidth", int v): baseWidth = v; break;
                case ("ImageSize", int v): imageSize = v; sizeSet = true; break;
                case ("ImageHeight", int v): height = v; break;
                case ("ImageWidth", int v): width = v; break;
                case ("ZeroInitResidual", bool v): zeroInit = v; break;
                default: Report(Diagnostics.NonConstantArgument, named.Key); break;
            }
        }

        if (!ResNetTable.Depths.ContainsKey(depth)) Report(Diagnostics.UnsupportedDepth, depth.ToString());
        if (numClasses < 1) Report(Diagnostics.OutOfRange, "NumClasses", numClasses.ToString(), "a network needs at least 1 class; write NumClasses = 1000 for ImageNet, or your data set's class count");
        if (baseWidth < 1 || baseWidth > 4096) Report(Diagnostics.OutOfRange, "BaseWidth", baseWidth.ToString(), "write a width from 1 to 4096 (torchvision's models use BaseWidth = 64)");

        bool heightSet = height != 0, widthSet = width != 0;
        if (heightSet != widthSet)
        {
            Report(Diagnostics.ConflictingSize, heightSet
                ? $"ImageHeight = {height} is set without ImageWidth; set both (ImageHeight = {height}, ImageWidth = ...) or use ImageSize for a square input"
                : $"ImageWidth = {width} is set without ImageHeight; set both (ImageHeight = ..., ImageWidth = {width}) or use ImageSize for a square input");
        }
        else if (heightSet && sizeSet)
        {
            Report(Diagnostics.ConflictingSize, $"ImageSize = {imageSize} and ImageHeight/ImageWidth = {height}x{width} are both set; use ImageSize for a square input or ImageHeight and ImageWidth, not both");
        }
        if (!heightSet && !widthSet)
        {
            height = imageSize;
            width = imageSize;
        }

        var sides = heightSet ? new[] { ("ImageHeight", height), ("ImageWidth", width) } : new[] { ("ImageSize", imageSize) };
        foreach (var (name, v) in sides)
        {
            if (v < 1) Report(Diagnostics.OutOfRange, name, v.ToString(), "the input must be at least 1 pixel on each side; ImageNet models use 224");
            else if (v > 8192) Report(Diagnostics.OutOfRange, name, v.ToString(), "inputs up to 8192 pixels a side are supported");
        }

        if (diagnostics.Count > 0) return null;
        var options = new ResNetOptions(depth, numClasses, baseWidth, height, width, zeroInit);

        // Sizes that the layers would shrink to nothing, and networks too large for the runtime's arrays.
        var d = ResNetTable.Expand(options);
        foreach (var layer in d.Layers)
        {
            if (layer.Out.H < 1 || layer.Out.W < 1)
            {
                Report(Diagnostics.OutOfRange, "input size", $"{height}x{width}",
                    $"layer '{layer.Name}' would have a {layer.Out.H}x{layer.Out.W} output; use a larger ImageSize");
                return null;
            }
        }
        if (d.ValueCount > int.MaxValue || d.Plan.ArenaSize > int.MaxValue || d.Layers.Any(l => l.Out.Size > int.MaxValue))
        {
            Report(Diagnostics.TooLarge, $"ResNet-{depth} with BaseWidth = {baseWidth} at {height}x{width} needs {d.ValueCount} floats of weights and {d.Plan.ArenaSize} of activations per image; each must stay below 2^31. Use a smaller BaseWidth or ImageSize");
            return null;
        }
        return options;
    }
}
