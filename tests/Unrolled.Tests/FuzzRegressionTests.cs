using System;
using System.IO;
using System.Linq;
using Unrolled.Vision;

namespace Unrolled.Tests;

/// <summary>Every input the fuzzers found to crash a loader now loads or fails with the typed error.</summary>
public sealed class FuzzRegressionTests
{
    private static string[] Inputs(string target)
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "FuzzRegressions", target);
        return Directory.Exists(dir) ? Directory.GetFiles(dir) : Array.Empty<string>();
    }

    [Fact]
    public void ImageInputsLoadOrFailWithTheTypedErrorQuickly()
    {
        // What AFL++ found with ImageSharp instrumented: a TGA header that made the decoder throw
        // ArgumentOutOfRangeException, PBM files that divided by zero, tiny PBM headers claiming huge images (4 GB and
        // 20 s to decode), and a 1-pixel-high image whose resize asked for 5 GB.
        var inputs = Inputs("image");
        Assert.True(inputs.Length >= 20, $"{inputs.Length} regression inputs");
        int failed = 0;
        foreach (string file in inputs)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                Preprocess.ImageNetEval(file, resize: 40, crop: 32);
            }
            catch (ImageFileException e)
            {
                Assert.Equal(file, e.FilePath);
                failed++;
            }
            Assert.True(clock.Elapsed.TotalSeconds < 5, $"{Path.GetFileName(file)} took {clock.Elapsed.TotalSeconds:F1} s");
        }
        Assert.True(failed >= inputs.Length / 2, $"only {failed} of {inputs.Length} failed");
        var tga = Assert.Throws<ImageFileException>(() => Preprocess.ImageNetEval(Path.Combine(AppContext.BaseDirectory, "FuzzRegressions", "image", "tga-decoder-argument-out-of-range.bin")));
        Assert.Contains("ArgumentOutOfRangeException", tga.Message);
    }

    [Fact]
    public void ATinyFileClaimingAHugeImageIsRefusedBeforeDecoding()
    {
        string file = Path.Combine(Path.GetTempPath(), $"unrolled-bomb-{Environment.ProcessId}.pbm");
        try
        {
            static byte[] Pbm(string header) => System.Text.Encoding.ASCII.GetBytes(header).Concat(new byte[100]).ToArray();
            File.WriteAllBytes(file, Pbm("P4\n30000 30000\n")); // 900 M pixels declared in 116 bytes: over the pixel limit
            Assert.Contains("at most", Assert.Throws<ImageFileException>(() => Transforms.Load(file)).Message);
            File.WriteAllBytes(file, Pbm("P4\n6000 6000\n"));   // 36 M pixels: within the limit, but 300,000 pixels per byte
            Assert.Contains("decompression bomb", Assert.Throws<ImageFileException>(() => Transforms.Load(file)).Message);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
