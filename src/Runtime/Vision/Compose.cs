using System;
using System.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace Unrolled.Vision;

/// <summary>One step of a torchvision-style pipeline that works on the image (before ToTensor).</summary>
public abstract class ImageTransform
{
    /// <summary>Transforms <paramref name="image"/> in place; random steps draw from <paramref name="random"/>.</summary>
    public abstract void Apply(Image<Rgb24> image, Random random);

    /// <summary>
    /// Whether <see cref="Apply"/> may draw from the random source (an augmentation): true unless a step says
    /// otherwise, so that a transform of your own is never taken for a deterministic one (<see cref="DataLoader"/>'s
    /// cache relies on it).
    /// </summary>
    public virtual bool IsRandom => true;
}

/// <summary>transforms.Resize(size): the shorter side to <c>size</c>, bilinear with antialiasing.</summary>
public sealed class Resize(int size) : ImageTransform
{
    public override void Apply(Image<Rgb24> image, Random random) => Transforms.Resize(image, size);

    public override bool IsRandom => false;
}

/// <summary>transforms.CenterCrop(size).</summary>
public sealed class CenterCrop(int size) : ImageTransform
{
    public override void Apply(Image<Rgb24> image, Random random) => Transforms.CenterCrop(image, size);

    public override bool IsRandom => false;
}

/// <summary>transforms.Grayscale(3): PIL's "L" conversion (ITU-R 601-2 luma, PIL's integer rounding), repeated in R, G and B.</summary>
public sealed class Grayscale : ImageTransform
{
    public override bool IsRandom => false;

    public override void Apply(Image<Rgb24> image, Random random)
    {
        image.ProcessPixelRows(rows =>
        {
            for (int y = 0; y < rows.Height; y++)
            {
                var row = rows.GetRowSpan(y);
                for (int x = 0; x < row.Length; x++)
                {
                    var p = row[x];
                    byte l = (byte)((p.R * 19595 + p.G * 38470 + p.B * 7471 + 0x8000) >> 16);
                    row[x] = new Rgb24(l, l, l);
                }
            }
        });
    }
}

/// <summary>
/// transforms.RandomResizedCrop(size, scale, ratio): a crop of random area (a fraction in <c>scale</c> of the image)
/// and aspect ratio (log-uniform in <c>ratio</c>), chosen as torchvision's get_params does (ten tries, then the
/// central fallback), resized to size x size with the antialiased bilinear filter.
/// </summary>
public sealed class RandomResizedCrop : ImageTransform
{
    public RandomResizedCrop(int size, double minScale = 0.08, double maxScale = 1.0, double minRatio = 3.0 / 4, double maxRatio = 4.0 / 3)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), size, "size must be >= 1");
        if (!(0 < minScale && minScale <= maxScale)) throw new ArgumentException("the scale range must satisfy 0 < min <= max");
        if (!(0 < minRatio && minRatio <= maxRatio)) throw new ArgumentException("the ratio range must satisfy 0 < min <= max");
        Size = size;
        (MinScale, MaxScale, MinRatio, MaxRatio) = (minScale, maxScale, minRatio, maxRatio);
    }

    public int Size { get; }
    public double MinScale { get; }
    public double MaxScale { get; }
    public double MinRatio { get; }
    public double MaxRatio { get; }

    /// <summary>torchvision's get_params: (top, left, height, width) of the crop.</summary>
    public (int Top, int Left, int Height, int Width) Sample(int height, int width, Random random)
    {
        double area = (double)height * width;
        double logMin = Math.Log(MinRatio), logMax = Math.Log(MaxRatio);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * (MinScale + random.NextDouble() * (MaxScale - MinScale));
            double aspect = Math.Exp(logMin + random.NextDouble() * (logMax - logMin));
            int w = (int)Math.Round(Math.Sqrt(target * aspect), MidpointRounding.ToEven);
            int h = (int)Math.Round(Math.Sqrt(target / aspect), MidpointRounding.ToEven);
            if (0 < w && w <= width && 0 < h && h <= height)
                return (random.Next(height - h + 1), random.Next(width - w + 1), h, w);
        }
        // Fallback: the central crop with the aspect ratio clamped to the range.
        double inRatio = (double)width / height;
        int cw = width, ch = height;
        if (inRatio < MinRatio) ch = (int)Math.Round(cw / MinRatio, MidpointRounding.ToEven);
        else if (inRatio > MaxRatio) cw = (int)Math.Round(ch * MaxRatio, MidpointRounding.ToEven);
        return ((height - ch) / 2, (width - cw) / 2, ch, cw);
    }

    public override void Apply(Image<Rgb24> image, Random random)
    {
        var (top, left, h, w) = Sample(image.Height, image.Width, random);
        image.Mutate(x => x.Crop(new Rectangle(left, top, w, h))
            .Resize(new ResizeOptions { Size = new Size(Size, Size), Sampler = Transforms.Bilinear, Mode = ResizeMode.Stretch }));
    }
}

/// <summary>transforms.RandomHorizontalFlip(p).</summary>
public sealed class RandomHorizontalFlip(double p = 0.5) : ImageTransform
{
    public override void Apply(Image<Rgb24> image, Random random)
    {
        if (random.NextDouble() < p) image.Mutate(x => x.Flip(FlipMode.Horizontal));
    }
}

/// <summary>
/// transforms.Compose([...image steps..., ToTensor(), Normalize(mean, std)]): loads a file and writes the CHW float32
/// tensor of the size the pipeline promises (<see cref="Height"/> x <see cref="Width"/>); an image that comes out
/// another size is an error naming the file.
/// </summary>
public sealed class Compose
{
    private readonly ImageTransform[] _steps;
    private readonly float[] _mean;
    private readonly float[] _std;

    public Compose(int height, int width, ImageTransform[] steps, ReadOnlySpan<float> mean, ReadOnlySpan<float> std, long maxPixels = Transforms.DefaultMaxPixels)
    {
        if (height < 1 || width < 1) throw new ArgumentOutOfRangeException(nameof(height), "the output size must be positive");
        if (mean.Length != 3 || std.Length != 3) throw new ArgumentException("give three means and three standard deviations (RGB)");
        Height = height;
        Width = width;
        _steps = steps;
        _mean = mean.ToArray();
        _std = std.ToArray();
        MaxPixels = maxPixels;
    }

    public int Height { get; }
    public int Width { get; }
    public long MaxPixels { get; }

    /// <summary>Floats of one output tensor: 3 x Height x Width.</summary>
    public int OutputSize => 3 * Height * Width;

    /// <summary>The first step that may draw from the random source, or null when a file always gives the same tensor.</summary>
    public ImageTransform? FirstRandomStep => Array.Find(_steps, step => step.IsRandom);

    public void Apply(string path, Span<float> destination, Random random)
    {
        using var image = Transforms.Load(path, MaxPixels);
        try
        {
            foreach (var step in _steps) step.Apply(image, random);
        }
        catch (InvalidDataException e)
        {
            throw new ImageFileException(path, e.Message, e);
        }
        if (image.Width != Width || image.Height != Height)
            throw new ImageFileException(path, $"came out of the transforms as {image.Width}x{image.Height}, but the pipeline promises {Width}x{Height}; add a CenterCrop or a Resize that fixes the size");
        Transforms.ToTensor(image, destination);
        Transforms.Normalize(destination, _mean, _std);
    }
}
