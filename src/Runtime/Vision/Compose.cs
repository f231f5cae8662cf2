using System;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;

namespace Unrolled.Vision;

/// <summary>One step of a torchvision-style pipeline that works on the image (before ToTensor).</summary>
public abstract class ImageTransform
{
    /// <summary>Transforms <paramref name="image"/> in place; random steps draw from <paramref name="random"/>.</summary>
    public abstract void Apply(Image<Rgb24> image, Random random);
}

/// <summary>transforms.Resize(size): the shorter side to <c>size</c>, bilinear with antialiasing.</summary>
public sealed class Resize(int size) : ImageTransform
{
    public override void Apply(Image<Rgb24> image, Random random) => Transforms.Resize(image, size);
}

/// <summary>transforms.CenterCrop(size).</summary>
public sealed class CenterCrop(int size) : ImageTransform
{
    public override void Apply(Image<Rgb24> image, Random random) => Transforms.CenterCrop(image, size);
}

/// <summary>transforms.Grayscale(3): PIL's "L" conversion (ITU-R 601-2 luma, PIL's integer rounding), repeated in R, G and B.</summary>
public sealed class Grayscale : ImageTransform
{
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

    public void Apply(string path, Span<float> destination, Random random)
    {
        using var image = Transforms.Load(path, MaxPixels);
        foreach (var step in _steps) step.Apply(image, random);
        if (image.Width != Width || image.Height != Height)
            throw new ImageFileException(path, $"came out of the transforms as {image.Width}x{image.Height}, but the pipeline promises {Width}x{Height}; add a CenterCrop or a Resize that fixes the size");
        Transforms.ToTensor(image, destination);
        Transforms.Normalize(destination, _mean, _std);
    }
}
