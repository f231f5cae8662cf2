using System;
using System.IO;
using System.IO.Compression;
using System.Linq;

namespace Unrolled.Tests;

/// <summary>
/// What users get: the NuGet package restored into a brand-new project outside the repository, and the classify
/// sample published as a NativeAOT executable and run with an empty environment. Both call the real `dotnet`.
/// </summary>
[Collection(nameof(ShippingTests))]
public sealed class ShippingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-shipping-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Generated.sln"))) return dir.FullName;
        throw new InvalidOperationException("Generated.sln not found above " + AppContext.BaseDirectory);
    }

    private static (int Code, string Output) Run(string file, string arguments, string workingDirectory, int timeoutSeconds,
        bool emptyEnvironment = false)
    {
        var (code, output, _) = ChildProcess.Run(file, arguments, workingDirectory, timeoutSeconds, emptyEnvironment);
        return (code, output);
    }

    [Fact]
    public void ThePackageWorksInABrandNewProject()
    {
        string root = RepositoryRoot();
        string feed = Path.Combine(_dir, "feed");
        var pack = Run("dotnet", $"pack \"{Path.Combine(root, "src", "Runtime")}\" -c Release -o \"{feed}\"", root, 600);
        Assert.True(pack.Code == 0, pack.Output);

        // The package carries the runtime, the generator as an analyzer, the README, the license, and symbols.
        string nupkg = Path.Combine(feed, "Unrolled.0.1.0.nupkg");
        Assert.True(File.Exists(Path.Combine(feed, "Unrolled.0.1.0.snupkg")), pack.Output);
        using (var zip = ZipFile.OpenRead(nupkg))
        {
            var names = zip.Entries.Select(e => e.FullName).ToHashSet();
            Assert.Contains("lib/net10.0/Unrolled.Runtime.dll", names);
            Assert.Contains("analyzers/dotnet/cs/Unrolled.Generator.dll", names);
            Assert.Contains("README.md", names);
            Assert.Contains("LICENSE", names);
        }

        // A consumer that knows nothing of this repository: restores Unrolled from the local feed (its own
        // dependencies from the usual sources), declares a network and runs it.
        string app = Path.Combine(_dir, "consumer");
        Directory.CreateDirectory(app);
        string globalPackages = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="unrolled-local" value="{feed}" />
              </packageSources>
              <fallbackPackageFolders>
                <add key="machine" value="{globalPackages}" />
              </fallbackPackageFolders>
            </configuration>
            """);
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
                <RestorePackagesPath>{Path.Combine(_dir, "packages")}</RestorePackagesPath>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Unrolled" Version="0.1.0" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), """
            using System;
            using Unrolled;

            var net = new Net();
            net.Eval();
            var input = new float[2 * Net.InputSize];
            for (int i = 0; i < input.Length; i++) input[i] = MathF.Sin(i * 0.001f);
            var logits = new float[2 * Net.NumClasses];
            net.Forward(input, logits);
            bool finite = Array.TrueForAll(logits, float.IsFinite);
            Console.WriteLine($"depth {Net.Depth}, parameters {Net.ParameterCount}, logits {logits.Length}, finite {finite}");
            Console.WriteLine(Net.Summary().Split('\n')[0]);

            [ResNet(18, ImageSize = 64)]
            partial class Net;
            """);

        var run = Run("dotnet", "run -c Release", app, 600);
        Assert.True(run.Code == 0, run.Output);
        Assert.Contains("depth 18, parameters 11689512, logits 2000, finite True", run.Output);
    }

    [Fact]
    public void ClassifyPublishesAsNativeAotAndAgreesWithPyTorchWithoutDotnet()
    {
        string root = RepositoryRoot();
        string weights = Reference.SharedOrSkip("resnet50_seed1.pth");
        string io = Reference.SharedOrSkip("resnet50_seed1_io.safetensors");
        string output = Path.Combine(_dir, "classify");

        // Detailed trimming/AOT warnings, so that any warning from Unrolled's own code would be seen by name.
        var publish = Run("dotnet",
            $"publish \"{Path.Combine(root, "samples", "Classify")}\" -c Release -r linux-x64 -o \"{output}\" " +
            "-p:TrimmerSingleWarn=false -p:TreatWarningsAsErrors=false", root, 900);
        Assert.True(publish.Code == 0, publish.Output);
        var warnings = publish.Output.Split('\n').Where(l => l.Contains("warning IL", StringComparison.Ordinal)).ToList();
        Assert.DoesNotContain(warnings, w => w.Contains("Unrolled", StringComparison.Ordinal) && !w.Contains("SixLabors.ImageSharp.", StringComparison.Ordinal));
        Assert.All(warnings, w => Assert.Contains("SixLabors.ImageSharp.", w));

        string exe = Path.Combine(output, "classify");
        Assert.True(File.Exists(exe), publish.Output);
        Assert.False(File.Exists(Path.Combine(output, "classify.dll")), "a NativeAOT publish has no IL assembly");

        // PyTorch's top-1 for each photo with these weights.
        var logits = Reference.Load(io)["logits_eval"];
        string[] labels = File.ReadAllLines(Path.Combine(root, "samples", "Classify", "imagenet_classes.txt"));
        string[] photos = { Reference.Fixture("chelsea.png"), Reference.Fixture("coffee.png") };
        var run = Run(exe, $"--weights \"{weights}\" --top 3 \"{photos[0]}\" \"{photos[1]}\"", _dir, 120, emptyEnvironment: true);
        Assert.True(run.Code == 0, run.Output);
        var lines = run.Output.Split('\n');
        for (int i = 0; i < photos.Length; i++)
        {
            var row = logits.Data.AsSpan(i * 1000, 1000);
            int argmax = 0;
            for (int c = 1; c < 1000; c++) if (row[c] > row[argmax]) argmax = c;
            int at = Array.FindIndex(lines, l => l.TrimEnd() == photos[i]);
            Assert.True(at >= 0, run.Output);
            Assert.StartsWith("1  " + labels[argmax] + " ", lines[at + 1].Trim());
        }

        // Bad input from a native binary: a clear message and exit code 2, not a crash.
        var missing = Run(exe, $"--weights \"{Path.Combine(_dir, "none.pth")}\" \"{photos[0]}\"", _dir, 60, emptyEnvironment: true);
        Assert.Equal(2, missing.Code);
        Assert.Contains("none.pth", missing.Output);
    }
}
