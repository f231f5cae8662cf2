using System.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Unrolled.Generator;

namespace Unrolled.Tests.Generator;

public class GeneratorTests
{
    private static string GenerateOne(string source, string hint)
    {
        var (sources, generatorDiagnostics, compileErrors) = GeneratorHarness.Run(source);
        Assert.Empty(generatorDiagnostics);
        Assert.Empty(compileErrors);
        return sources[hint];
    }

    [Fact]
    public void ResNet18SourceMatchesSnapshot() =>
        Snapshot.Verify(GenerateOne("using Unrolled; namespace App; [ResNet(18)] public partial class Net18;", "App.Net18.ResNet.g.cs"), "ResNet18");

    [Fact]
    public void ResNet50SourceMatchesSnapshot() =>
        Snapshot.Verify(GenerateOne("using Unrolled; namespace App; [ResNet(50)] public partial class Classifier;", "App.Classifier.ResNet.g.cs"), "ResNet50");

    [Fact]
    public void GenerationIsDeterministic()
    {
        const string source = "using Unrolled; [ResNet(34, NumClasses = 7, ImageHeight = 72, ImageWidth = 88)] partial class N;";
        Assert.Equal(GenerateOne(source, "N.ResNet.g.cs"), GenerateOne(source, "N.ResNet.g.cs"));
    }

    [Fact]
    public void NestedAndGlobalNamespaceClassesCompile()
    {
        var (sources, diagnostics, errors) = GeneratorHarness.Run(
            "using Unrolled; [ResNet(18, NumClasses = 3, ImageSize = 32)] partial class Top; namespace A.B { public partial class Outer { [ResNet(50, BaseWidth = 8, ImageSize = 40)] internal partial class Inner; } }");
        Assert.Empty(diagnostics);
        Assert.Empty(errors);
        Assert.Contains("Top.ResNet.g.cs", sources.Keys);
        Assert.Contains("A.B.Outer.Inner.ResNet.g.cs", sources.Keys);
    }

    [Fact]
    public void UnrelatedEditLeavesTheGeneratorCached()
    {
        var compilation = GeneratorHarness.Compile(
            "using Unrolled; namespace App; [ResNet(18)] public partial class Net;",
            "namespace App; public static class Other { public static int Value => 1; }");
        var driver = GeneratorHarness.Driver().RunGenerators(compilation);

        var edited = compilation.ReplaceSyntaxTree(compilation.SyntaxTrees.ElementAt(1),
            CSharpSyntaxTree.ParseText("namespace App; public static class Other { public static int Value => 2; }", (CSharpParseOptions)compilation.SyntaxTrees.First().Options, path: "Source1.cs"));
        var result = driver.RunGenerators(edited).GetRunResult().Results.Single();

        var steps = result.TrackedSteps[ResNetGenerator.TargetsStep];
        Assert.NotEmpty(steps);
        Assert.All(steps.SelectMany(s => s.Outputs), o => Assert.True(
            o.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"step output was {o.Reason}"));
        Assert.All(result.TrackedOutputSteps.SelectMany(s => s.Value).SelectMany(s => s.Outputs),
            o => Assert.Equal(IncrementalStepRunReason.Cached, o.Reason));
    }

    [Fact]
    public void EditingTheAttributeRegenerates()
    {
        var compilation = GeneratorHarness.Compile("using Unrolled; [ResNet(18)] partial class Net;");
        var driver = GeneratorHarness.Driver().RunGenerators(compilation);
        var edited = compilation.ReplaceSyntaxTree(compilation.SyntaxTrees.First(),
            CSharpSyntaxTree.ParseText("using Unrolled; [ResNet(34)] partial class Net;", (CSharpParseOptions)compilation.SyntaxTrees.First().Options, path: "Source0.cs"));
        var result = driver.RunGenerators(edited).GetRunResult().Results.Single();
        Assert.Contains(result.TrackedSteps[ResNetGenerator.TargetsStep].SelectMany(s => s.Outputs),
            o => o.Reason == IncrementalStepRunReason.Modified);
        Assert.Contains("ResNet-34", result.GeneratedSources.Single().SourceText.ToString());
    }

    [Theory]
    [InlineData("[ResNet(20)] public partial class N;", "URN0001", "write [ResNet(18)], [ResNet(34)], [ResNet(50)], [ResNet(101)] or [ResNet(152)]")]
    [InlineData("[ResNet(50)] public class N;", "URN0002", "write 'partial class N'")]
    [InlineData("public class Outer { [ResNet(50)] public partial class N; }", "URN0003", "write 'partial class Outer'")]
    [InlineData("[ResNet(50)] public partial class N<T>;", "URN0004", "non-generic")]
    [InlineData("[ResNet(50)] public static partial class N;", "URN0005", "remove 'static'")]
    [InlineData("[ResNet(50, NumClasses = 0)] public partial class N;", "URN0006", "NumClasses = 0")]
    [InlineData("[ResNet(50, BaseWidth = -8)] public partial class N;", "URN0006", "BaseWidth = 64")]
    [InlineData("[ResNet(50, ImageSize = 0)] public partial class N;", "URN0006", "at least 1 pixel")]
    [InlineData("[ResNet(50, ImageHeight = 72)] public partial class N;", "URN0007", "set both")]
    [InlineData("[ResNet(50, ImageSize = 64, ImageHeight = 72, ImageWidth = 88)] public partial class N;", "URN0007", "not both")]
    [InlineData("[ResNet(152, BaseWidth = 4096)] public partial class N;", "URN0008", "smaller BaseWidth")]
    public void WrongDeclarationsAreCompileErrorsThatSayWhatToWrite(string declaration, string id, string hint)
    {
        var (sources, diagnostics, _) = GeneratorHarness.Run("using Unrolled; " + declaration);
        var d = Assert.Single(diagnostics, x => x.Id == id);
        Assert.Equal(DiagnosticSeverity.Error, d.Severity);
        Assert.Contains(hint, d.GetMessage());
        Assert.NotEqual(Location.None, d.Location);
        Assert.Empty(sources);
    }
}
