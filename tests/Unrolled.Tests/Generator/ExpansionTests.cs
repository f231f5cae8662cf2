using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.Json;
using Unrolled.Generator.Model;
using Unrolled.IO;

namespace Unrolled.Tests.Generator;

/// <summary>The declarative description, tested directly: torchvision's structure, keys, counts and a sound memory plan.</summary>
public class ExpansionTests
{
    private static ResNetOptions Options(int depth, int classes = 1000, int width = 64, int h = 224, int w = 224) =>
        new(depth, classes, width, h, w, false);

    [Theory]
    [InlineData(18)]
    [InlineData(34)]
    [InlineData(50)]
    [InlineData(101)]
    [InlineData(152)]
    public void ParameterCountsEqualTorchvision(int depth)
    {
        string name = depth.ToString(System.Globalization.CultureInfo.InvariantCulture);
        using var json = JsonDocument.Parse(File.ReadAllText(Reference.Fixture("torchvision_param_counts.json")));
        long expected = json.RootElement.GetProperty(name).GetInt64();
        var d = ResNetTable.Expand(Options(depth));
        Assert.Equal(expected, d.ParameterCount);
        Assert.Equal(expected, d.Entries.Where(e => e.IsParameter).Sum(e => e.Count));
    }

    [Fact]
    public void GeneratedConstantsEqualTorchvisionForEveryDepth()
    {
        Assert.Equal(11_689_512, ResNet18.ParameterCount);
        Assert.Equal(21_797_672, ResNet34.ParameterCount);
        Assert.Equal(25_557_032, ResNet50.ParameterCount);
        Assert.Equal(44_549_160, ResNet101.ParameterCount);
        Assert.Equal(60_192_808, ResNet152.ParameterCount);
    }

    [Theory]
    [InlineData("tiny18.pth", 18)]
    [InlineData("tiny50.pth", 50)]
    public void KeysAndShapesAreTorchvisionsInStateDictOrder(string file, int depth)
    {
        var d = ResNetTable.Expand(Options(depth, 10, 8, 64, 64));
        using var weights = TensorFile.Open(Reference.Fixture(file));
        Assert.Equal(weights.Tensors.Select(t => t.Key), d.Entries.Select(e => e.Key));
        foreach (var (t, e) in weights.Tensors.Zip(d.Entries))
            Assert.Equal(t.Shape, e.Shape.Select(x => (long)x));
    }

    [Fact]
    public void ResNet50HasTorchvisionsV15Structure()
    {
        var d = ResNetTable.Expand(Options(50));
        var convs = d.Layers.Where(l => l.Kind == LayerKind.Conv).ToList();
        Assert.Equal(53, convs.Count); // 1 stem + 16 blocks x 3 + 4 downsamples
        Assert.Equal(4_089_184_256, d.Macs);
        // v1.5: the stride of a bottleneck is on its 3x3 conv, and on the downsample.
        var layer2 = convs.Where(c => c.Name.StartsWith("layer2.0.", StringComparison.Ordinal)).ToDictionary(c => c.Name);
        Assert.Equal(1, layer2["layer2.0.conv1"].Stride);
        Assert.Equal(2, layer2["layer2.0.conv2"].Stride);
        Assert.Equal(2, layer2["layer2.0.downsample.0"].Stride);
        // layer1.0 needs a downsample (64 -> 256 channels) though its stride is 1; layer1.1 does not.
        Assert.Contains(convs, c => c.Name == "layer1.0.downsample.0" && c.Stride == 1);
        Assert.DoesNotContain(convs, c => c.Name == "layer1.1.downsample.0");
        Assert.Equal(new Shape(2048, 7, 7), convs[^1].Out);
        Assert.Equal(new Shape(1000, 1, 1), d.Layers[^1].Out);
        Assert.Equal(16, d.Layers.Count(l => l.Kind == LayerKind.Add));
    }

    [Fact]
    public void BasicBlocksDownsampleOnlyWhenStrideOrWidthChanges()
    {
        var d = ResNetTable.Expand(Options(34));
        var downsamples = d.Layers.Where(l => l.Name.EndsWith("downsample.0", StringComparison.Ordinal)).Select(l => l.Name).ToArray();
        Assert.Equal(new[] { "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0" }, downsamples);
        Assert.Equal(new[] { 3, 4, 6, 3 }, Enumerable.Range(1, 4).Select(s => d.Layers.Count(l => l.Kind == LayerKind.Add && l.Name.StartsWith($"layer{s}.", StringComparison.Ordinal))));
    }

    [Theory]
    [InlineData(72, 88)]
    [InlineData(1, 1)]
    [InlineData(33, 17)]
    public void NonSquareShapesFollowPyTorchsFormula(int h, int w)
    {
        var d = ResNetTable.Expand(Options(18, 10, 8, h, w));
        foreach (var l in d.Layers.Where(l => l.Kind is LayerKind.Conv or LayerKind.MaxPool))
        {
            Assert.Equal((l.In.H + 2 * l.Pad - l.Kernel) / l.Stride + 1, l.Out.H);
            Assert.Equal((l.In.W + 2 * l.Pad - l.Kernel) / l.Stride + 1, l.Out.W);
        }
        if (h == 72) Assert.Equal(new Shape(64, 3, 3), d.Layers.Last(l => l.Kind == LayerKind.Conv).Out);
    }

    [Theory]
    [InlineData(18, 224, 224)]
    [InlineData(50, 224, 224)]
    [InlineData(101, 72, 88)]
    [InlineData(152, 32, 32)]
    public void MemoryPlanNeverOverlapsLiveBuffers(int depth, int h, int w)
    {
        var d = ResNetTable.Expand(Options(depth, 10, 64, h, w));
        var plan = d.Plan;
        int logits = d.Tensors.Count - 1;

        // An independent liveness check: for every layer, the buffers it reads or writes, and every buffer produced
        // earlier and still read later, must occupy disjoint ranges.
        var produced = new Dictionary<int, int>();
        var lastRead = new Dictionary<int, int>();
        foreach (var l in d.Layers)
        {
            int root = plan.Root[l.Output];
            if (!produced.ContainsKey(root)) produced[root] = l.Index;
            foreach (int i in l.Inputs) lastRead[plan.Root[i]] = Math.Max(lastRead.GetValueOrDefault(plan.Root[i]), l.Index);
        }
        foreach (var l in d.Layers)
        {
            var live = produced.Keys
                .Where(b => b != 0 && b != logits && produced[b] <= l.Index && lastRead.GetValueOrDefault(b, -1) >= l.Index || plan.Root[l.Output] == b && b != logits)
                .Distinct().ToList();
            for (int i = 0; i < live.Count; i++)
            for (int j = i + 1; j < live.Count; j++)
            {
                long a0 = plan.Offsets[live[i]], a1 = a0 + d.Tensors[live[i]].Size;
                long b0 = plan.Offsets[live[j]], b1 = b0 + d.Tensors[live[j]].Size;
                Assert.True(a1 <= b0 || b1 <= a0, $"{l.Name}: buffers of tensors {live[i]} and {live[j]} overlap");
            }
            foreach (int b in live) Assert.True(plan.Offsets[b] >= 0 && plan.Offsets[b] + d.Tensors[b].Size <= plan.ArenaSize);
        }
        Assert.True(plan.ArenaSize < plan.NaiveSize / 2, $"plan {plan.ArenaSize} floats vs {plan.NaiveSize} without reuse");
        // In-place layers share their input's buffer.
        foreach (var l in d.Layers.Where(l => l.Kind is LayerKind.BatchNorm or LayerKind.Relu or LayerKind.Add))
            Assert.Equal(plan.Root[l.Inputs[0]], plan.Root[l.Output]);
    }

    [Fact]
    public void ZeroInitResidualZeroesTheLastBatchNormOfEveryBlock()
    {
        var d = ResNetTable.Expand(new ResNetOptions(50, 10, 8, 32, 32, true));
        var zeroed = d.Entries.Where(e => e.Init == InitRule.Zeros && e.Key.EndsWith(".weight", StringComparison.Ordinal)).Select(e => e.Key).ToList();
        Assert.Equal(16, zeroed.Count);
        Assert.All(zeroed, k => Assert.EndsWith(".bn3.weight", k));
        var basic = ResNetTable.Expand(new ResNetOptions(18, 10, 8, 32, 32, true));
        Assert.All(basic.Entries.Where(e => e.Init == InitRule.Zeros && e.Key.EndsWith(".weight", StringComparison.Ordinal)), e => Assert.EndsWith(".bn2.weight", e.Key));
    }
}
