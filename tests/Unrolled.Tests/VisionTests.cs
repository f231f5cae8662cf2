using System;
using System.IO;
using System.Linq;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using SixLabors.ImageSharp.Processing.Processors.Transforms;
using Unrolled.Vision;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>The ImageNet eval transform against torchvision's (preprocess.safetensors; the CC0 photos chelsea.png and coffee.png).</summary>
public class VisionTests(ITestOutputHelper output)
{
    private static (double Mean, double Max) Compare(float[] ours, float[] torch)
    {
        Assert.Equal(torch.Length, ours.Length);
        double sum = 0, max = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            double d = Math.Abs(ours[i] - torch[i]);
            sum += d;
            max = Math.Max(max, d);
        }
        return (sum / ours.Length, max);
    }

    [Theory]
    [InlineData("chelsea.png")]
    [InlineData("coffee.png")]
    public void ImageNetEvalMatchesTorchvision(string photo)
    {
        var expected = Reference.Load(Reference.Fixture("preprocess.safetensors"))[photo];
        Assert.Equal(new long[] { 3, 224, 224 }, expected.Shape);
        var ours = Preprocess.ImageNetEval(Reference.Fixture(photo));
        var (mean, max) = Compare(ours, expected.Data);
        output.WriteLine($"{photo}: mean |diff| {mean:F5}, max |diff| {max:F4} (after normalization)");
        Assert.True(mean <= 0.005, $"mean |diff| {mean}");
        Assert.True(max <= 0.05, $"max |diff| {max}");
    }

    /// <summary>Every ImageSharp resampler against PIL's antialiased bilinear: the one Transforms uses must be the closest.</summary>
    [Fact]
    public void TheChosenResamplerIsTheClosestToPil()
    {
        var expected = Reference.Load(Reference.Fixture("preprocess.safetensors"));
        var candidates = new (string Name, IResampler Sampler)[]
        {
            ("Triangle", KnownResamplers.Triangle), ("Bicubic", KnownResamplers.Bicubic), ("Box", KnownResamplers.Box),
            ("Hermite", KnownResamplers.Hermite), ("Lanczos3", KnownResamplers.Lanczos3), ("MitchellNetravali", KnownResamplers.MitchellNetravali),
            ("Spline", KnownResamplers.Spline), ("Robidoux", KnownResamplers.Robidoux),
        };
        var scores = candidates.Select(c =>
        {
            double total = 0;
            foreach (string photo in new[] { "chelsea.png", "coffee.png" })
            {
                using var image = Transforms.Load(Reference.Fixture(photo));
                int w = image.Width, h = image.Height;
                (int nw, int nh) = w <= h ? (256, 256 * h / w) : (256 * w / h, 256);
                image.Mutate(x => x.Resize(new ResizeOptions { Size = new Size(nw, nh), Sampler = c.Sampler, Mode = ResizeMode.Stretch }));
                Transforms.CenterCrop(image, 224);
                var t = new float[3 * 224 * 224];
                Transforms.ToTensor(image, t);
                Transforms.Normalize(t, Preprocess.ImageNetMean, Preprocess.ImageNetStd);
                total += Compare(t, expected[photo].Data).Mean / 2;
            }
            output.WriteLine($"{c.Name,-18} mean |diff| {total:F5}");
            return (c.Name, c.Sampler, Score: total);
        }).ToList();
        var best = scores.MinBy(s => s.Score);
        Assert.Same(best.Sampler, Transforms.Bilinear);
    }

    [Fact]
    public void SizesAndCropsFollowTorchvisionsRules()
    {
        using var image = new Image<Rgb24>(451, 300);
        Transforms.Resize(image, 256);
        Assert.Equal((384, 256), (image.Width, image.Height)); // int(256 * 451 / 300) = 384
        Transforms.CenterCrop(image, 224);
        Assert.Equal((224, 224), (image.Width, image.Height));
        using var small = new Image<Rgb24>(10, 6, new Rgb24(255, 255, 255));
        Transforms.CenterCrop(small, 8); // padded with zeros to 10x8, then cropped
        Assert.Equal((8, 8), (small.Width, small.Height));
        var t = new float[3 * 64];
        Transforms.ToTensor(small, t);
        Assert.Equal(0f, t[0]);      // a padded row
        Assert.Equal(1f, t[8 + 1]);  // image content
    }

    [Fact]
    public void BadImagesNameTheFile()
    {
        string dir = Directory.CreateTempSubdirectory("unrolled-images-").FullName;
        try
        {
            string text = Path.Combine(dir, "notes.png");
            File.WriteAllText(text, "not an image");
            var e = Assert.Throws<ImageFileException>(() => Preprocess.ImageNetEval(text));
            Assert.Equal(text, e.FilePath);

            var png = File.ReadAllBytes(Reference.Fixture("chelsea.png"));
            string truncated = Path.Combine(dir, "truncated.png");
            File.WriteAllBytes(truncated, png[..(png.Length / 3)]);
            Assert.Equal(truncated, Assert.Throws<ImageFileException>(() => Preprocess.ImageNetEval(truncated)).FilePath);

            var huge = Assert.Throws<ImageFileException>(() => Transforms.Load(Reference.Fixture("chelsea.png"), maxPixels: 1000));
            Assert.Contains("at most 1000 pixels", huge.Message);
            Assert.Throws<ImageFileException>(() => Transforms.Load(Path.Combine(dir, "absent.png")));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void AnimatedImagesDecodeTheirFirstFrameOnly()
    {
        // 200 frames of 300x300: decoding every frame would take 200 frames of pixel memory.
        string dir = Directory.CreateTempSubdirectory("unrolled-frames-").FullName;
        try
        {
            string gif = Path.Combine(dir, "many.gif");
            using (var image = new Image<Rgb24>(300, 300, new Rgb24(200, 10, 10)))
            {
                for (int i = 1; i < 200; i++)
                {
                    using var frame = new Image<Rgb24>(300, 300, new Rgb24(10, (byte)i, 10));
                    image.Frames.AddFrame(frame.Frames.RootFrame);
                }
                image.SaveAsGif(gif);
            }
            using var loaded = Transforms.Load(gif);
            Assert.Equal(1, loaded.Frames.Count);
            Assert.Equal((300, 300), (loaded.Width, loaded.Height));
            var first = loaded[150, 150];
            Assert.True(first.R > 150 && first.G < 60, $"first frame expected, got {first}");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void RandomResizedCropSamplesTorchvisionsRanges()
    {
        var crop = new RandomResizedCrop(224);
        var rng = new Random(3);
        int fallbacks = 0;
        for (int i = 0; i < 2000; i++)
        {
            var (top, left, h, w) = crop.Sample(300, 451, rng);
            Assert.InRange(top, 0, 300 - h);
            Assert.InRange(left, 0, 451 - w);
            double area = (double)h * w / (300 * 451), aspect = (double)w / h;
            // Rounding w and h to integers moves area and aspect a little past the sampled ranges.
            Assert.InRange(area, 0.08 * 0.97, 1.0);
            Assert.InRange(aspect, 0.75 * 0.97, 4.0 / 3 * 1.03);
            if (h == 300 && w == 400) fallbacks++;
        }
        Assert.True(fallbacks < 200, $"{fallbacks} central fallbacks");
        // A very wide image where no sample fits takes the central fallback, clamped to ratio 4/3.
        var narrow = new RandomResizedCrop(8, minScale: 1.0, maxScale: 1.0);
        Assert.Equal((0, 430, 30, 40), narrow.Sample(30, 900, new Random(0)));
    }

    [Fact]
    public void TheTrainingPresetIsSeededAndSizedAsPromised()
    {
        var preset = Preprocess.ImageNetTrain();
        var a = new float[preset.OutputSize];
        var b = new float[preset.OutputSize];
        preset.Apply(Reference.Fixture("coffee.png"), a, new Random(11));
        preset.Apply(Reference.Fixture("coffee.png"), b, new Random(11));
        Assert.Equal(a, b);
        preset.Apply(Reference.Fixture("coffee.png"), b, new Random(12));
        Assert.NotEqual(a, b);
        Assert.Equal(3 * 224 * 224, preset.OutputSize);
    }
}
