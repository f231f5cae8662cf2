using System;
using System.Diagnostics;
using System.IO;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>
/// Thousands of deterministically mutated weight files (bytes flipped, runs overwritten, truncated, extended,
/// the length fields of the zip and of the safetensors header rewritten): every load ends in success or in the
/// typed <see cref="WeightsFileException"/>, never another exception, and within a time bound.
/// </summary>
public sealed class MutationTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-mutations-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static byte[] Mutate(byte[] original, Random rng)
    {
        byte[] b = (byte[])original.Clone();
        switch (rng.Next(6))
        {
            case 0: // a few random bytes
                for (int i = rng.Next(1, 9); i > 0; i--) b[rng.Next(b.Length)] = (byte)rng.Next(256);
                break;
            case 1: // a run of garbage
            {
                int at = rng.Next(b.Length), len = Math.Min(rng.Next(1, 64), b.Length - at);
                for (int i = 0; i < len; i++) b[at + i] = (byte)rng.Next(256);
                break;
            }
            case 2: // truncated
                Array.Resize(ref b, rng.Next(b.Length));
                break;
            case 3: // extended with garbage
            {
                int extra = rng.Next(1, 256);
                Array.Resize(ref b, b.Length + extra);
                for (int i = b.Length - extra; i < b.Length; i++) b[i] = (byte)rng.Next(256);
                break;
            }
            case 4: // a 32-bit little-endian field overwritten with an extreme value (zip sizes and offsets)
            {
                int at = rng.Next(Math.Max(1, b.Length - 4));
                uint v = rng.Next(4) switch { 0 => 0u, 1 => uint.MaxValue, 2 => 0x7FFFFFFFu, _ => (uint)rng.Next() };
                BitConverter.GetBytes(v).CopyTo(b, at);
                break;
            }
            default: // the first eight bytes (the safetensors header length) rewritten
                BitConverter.GetBytes(rng.Next(3) switch { 0 => 1L << 62, 1 => (long)rng.Next(0, 64), _ => (long)rng.Next(0, b.Length * 2) }).CopyTo(b, 0);
                break;
        }
        return b;
    }

    [Theory]
    [InlineData("tiny18.pth", 1500)]
    [InlineData("tiny18.safetensors", 1500)]
    public void EveryMutatedFileLoadsOrFailsWithTheTypedError(string name, int count)
    {
        var original = File.ReadAllBytes(Reference.Fixture(name));
        var rng = new Random(20261128);
        var net = new Tiny18();
        net.LoadWeights(Reference.Fixture(name));
        var reference = net.GetTensor("layer3.1.conv2.weight");
        var all = new System.Collections.Generic.List<float[]>();
        foreach (string key in net.StateKeys) all.Add(net.GetTensor(key));
        bool checksummed = name.EndsWith(".pth", StringComparison.Ordinal);
        string path = Path.Combine(_dir, "mutant" + Path.GetExtension(name));
        int loaded = 0, refused = 0;
        double slowest = 0;
        for (int i = 0; i < count; i++)
        {
            File.WriteAllBytes(path, Mutate(original, rng));
            var clock = Stopwatch.StartNew();
            try
            {
                net.LoadWeights(path);
                loaded++;
                // A torch.save zip records a CRC-32 per entry: whatever loads must be exactly the original tensors.
                // (Its damaged copies that still load had only bytes outside the entries changed.)
                if (checksummed)
                    for (int k = 0; k < all.Count; k++)
                        Assert.True(all[k].AsSpan().SequenceEqual(net.GetTensor(net.StateKeys[k])), $"mutant {i} of {name} loaded altered values for {net.StateKeys[k]}");
            }
            catch (WeightsFileException)
            {
                refused++;
                // A refused file leaves what was loaded before.
            }
            catch (Exception e)
            {
                Assert.Fail($"mutant {i} of {name}: {e.GetType().Name}: {e.Message}");
            }
            slowest = Math.Max(slowest, clock.Elapsed.TotalSeconds);
            Assert.True(clock.Elapsed.TotalSeconds < 5, $"mutant {i} of {name} took {clock.Elapsed.TotalSeconds:F1} s");
            if (loaded + refused == count / 2) net.LoadWeights(Reference.Fixture(name));
        }
        output.WriteLine($"{name}: {count} mutants, {loaded} loaded, {refused} refused with WeightsFileException, slowest {slowest * 1000:F0} ms");
        Assert.True(refused > count / 3);

        net.LoadWeights(Reference.Fixture(name));
        Assert.Equal(reference, net.GetTensor("layer3.1.conv2.weight"));
    }
}
