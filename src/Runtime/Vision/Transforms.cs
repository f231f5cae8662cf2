using System;
using System.IO;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using SixLabors.ImageSharp.Processing.Processors.Transforms;

namespace Unrolled.Vision;

/// <summary>
/// torchvision's image transforms on ImageSharp, with torchvision's size and rounding rules.
/// Images are RGB (as PIL's <c>convert("RGB")</c>); tensors are CHW float32.
/// </summary>
public static class Transforms
{
    /// <summary>
    /// The resampler that stands in for PIL's antialiased bilinear filter. Measured against torchvision on the
    /// reference photos (see the README): ImageSharp's Triangle filter, which widens its support when
    /// downscaling as PIL does, is the closest.
    /// </summary>
    public static IResampler Bilinear { get; } = KnownResamplers.Triangle;

    /// <summary>Largest image accepted by <see cref="Load"/>, in pixels (width x height), checked before any pixel memory is taken.</summary>
    public const long DefaultMaxPixels = 64L * 1024 * 1024;

    // Multi-frame formats (GIF, TIFF) decode their first frame only, as PIL's Image.open does: a file of thousands
    // of frames cannot take thousands of frames' memory.
    private static readonly Configuration s_firstFrameOnly = FirstFrameOnly();

    private static Configuration FirstFrameOnly()
    {
        var configuration = Configuration.Default.Clone();
        configuration.ImageFormatsManager.SetDecoder(SixLabors.ImageSharp.Formats.Gif.GifFormat.Instance,
            new SixLabors.ImageSharp.Formats.Gif.GifDecoder { DecodingMode = SixLabors.ImageSharp.Metadata.FrameDecodingMode.First });
        configuration.ImageFormatsManager.SetDecoder(SixLabors.ImageSharp.Formats.Tiff.TiffFormat.Instance,
            new SixLabors.ImageSharp.Formats.Tiff.TiffDecoder { DecodingMode = SixLabors.ImageSharp.Metadata.FrameDecodingMode.First });
        return configuration;
    }

    /// <summary>
    /// Images above this many pixels must not declare more than <see cref="MaxPixelsPerByte"/> pixels per byte of file:
    /// a few bytes claiming a huge image (fuzzing found PBM headers that made the decoder take 4 GB) are refused
    /// before decoding. Real photos hold well under 10 pixels per byte; a flat 4K PNG a few hundred.
    /// </summary>
    public const long BombFloorPixels = 4L * 1024 * 1024;

    /// <summary>See <see cref="BombFloorPixels"/>.</summary>
    public const long MaxPixelsPerByte = 1024;

    /// <summary>Largest image file accepted, in bytes (the file is read whole, once, into a pooled buffer).</summary>
    public const long MaxFileBytes = 256L << 20;

    /// <summary>
    /// Loads an image as RGB, refusing files over <paramref name="maxPixels"/> before decoding their pixels. The file
    /// is read once into a pooled buffer; the size check, the completeness check and the decoding all see those bytes.
    /// </summary>
    public static Image<Rgb24> Load(string path, long maxPixels = DefaultMaxPixels)
    {
        ArgumentNullException.ThrowIfNull(path);
        byte[]? rented = null;
        try
        {
            int length;
            using (var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.SequentialScan))
            {
                if (file.Length > MaxFileBytes) throw new ImageFileException(path, $"is {file.Length} bytes; image files of at most {MaxFileBytes} bytes are accepted");
                length = (int)file.Length;
                rented = System.Buffers.ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
                file.ReadExactly(rented, 0, length);
            }
            using var memory = new MemoryStream(rented, 0, length, writable: false);
            var info = Image.Identify(memory, out var format) ?? throw new ImageFileException(path, "is not an image in a supported format (PNG, JPEG, BMP, GIF, TGA, TIFF, WebP, PBM)");
            long pixels = (long)info.Width * info.Height;
            if (pixels > maxPixels || info.Width <= 0 || info.Height <= 0)
                throw new ImageFileException(path, $"is {info.Width}x{info.Height} pixels; at most {maxPixels} pixels are accepted");
            if (pixels > BombFloorPixels && pixels > MaxPixelsPerByte * (long)length)
                throw new ImageFileException(path,
                    $"declares {info.Width}x{info.Height} pixels in {length} bytes (more than {MaxPixelsPerByte} pixels per byte): refused as a decompression bomb");
            CheckComplete(path, format?.Name, new ReadOnlySpan<byte>(rented, 0, length));
            memory.Position = 0;
            return Image.Load<Rgb24>(s_firstFrameOnly, memory);
        }
        catch (ImageFileException)
        {
            throw;
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or ImageFormatException or NotSupportedException)
        {
            throw new ImageFileException(path, "cannot be decoded: " + e.Message, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ImageFileException(path, "cannot be read: " + e.Message, e);
        }
        catch (Exception e) when (e is ArgumentException or IndexOutOfRangeException or InvalidOperationException or OverflowException
                                      or NullReferenceException or InvalidCastException or ArithmeticException
                                      or SixLabors.ImageSharp.Memory.InvalidMemoryOperationException)
        {
            // A decoder that trips over a malformed file (fuzzing found ImageSharp's TGA decoder throwing
            // ArgumentOutOfRangeException, its PBM decoder dividing by zero, and TIFF files asking the allocator for
            // 5 GB): the file is bad, not the caller's arguments.
            throw new ImageFileException(path, $"cannot be decoded (the decoder failed with {e.GetType().Name}: {e.Message})", e);
        }
        finally
        {
            if (rented is not null) System.Buffers.ArrayPool<byte>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// ImageSharp decodes a truncated PNG or JPEG without complaint (the missing rows come out black), so the end of
    /// the file is checked: a PNG must end with its IEND chunk, a JPEG must hold its end-of-image marker near the end.
    /// </summary>
    private static void CheckComplete(string path, string? format, ReadOnlySpan<byte> file)
    {
        if (format is not ("PNG" or "JPEG")) return;
        var tail = file.Slice(Math.Max(0, file.Length - 4096));
        bool complete = format == "PNG"
            ? tail.EndsWith(stackalloc byte[] { 0, 0, 0, 0, (byte)'I', (byte)'E', (byte)'N', (byte)'D', 0xAE, 0x42, 0x60, 0x82 })
            : tail.IndexOf(stackalloc byte[] { 0xFF, 0xD9 }) >= 0;
        if (!complete)
            throw new ImageFileException(path, $"is a truncated {format} (its end-of-image {(format == "PNG" ? "IEND chunk" : "marker")} is missing)");
    }

    /// <summary>
    /// Resize(size): the shorter side becomes <paramref name="size"/>, the longer one int(size * long / short),
    /// as torchvision computes it; bilinear with antialiasing.
    /// </summary>
    public static void Resize(Image<Rgb24> image, int size)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), size, "size must be >= 1");
        int w = image.Width, h = image.Height;
        (long lw, long lh) = w <= h ? ((long)size, (long)size * h / w) : ((long)size * w / h, (long)size);
        // An extreme aspect ratio (fuzzing found a 1-pixel-high image) would make the long side huge.
        if (lw * lh > DefaultMaxPixels)
            throw new InvalidDataException(
                $"resizing {w}x{h} so that its shorter side is {size} gives {lw}x{lh} pixels, more than the {DefaultMaxPixels} accepted");
        int nw = (int)lw, nh = (int)lh;
        if (nw == w && nh == h) return;
        image.Mutate(x => x.Resize(new ResizeOptions { Size = new Size(nw, nh), Sampler = Bilinear, Mode = ResizeMode.Stretch, Compand = false }));
    }

    /// <summary>CenterCrop(size): top = round((h - size) / 2), left = round((w - size) / 2), rounding half to even as Python's round.</summary>
    public static void CenterCrop(Image<Rgb24> image, int size)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), size, "size must be >= 1");
        if (image.Width < size || image.Height < size)
        {
            // torchvision pads with zeros first (centred), then crops.
            image.Mutate(x => x.Pad(Math.Max(size, image.Width), Math.Max(size, image.Height), Color.Black));
        }
        int cropTop = (int)Math.Round((image.Height - size) / 2.0, MidpointRounding.ToEven);
        int cropLeft = (int)Math.Round((image.Width - size) / 2.0, MidpointRounding.ToEven);
        image.Mutate(x => x.Crop(new Rectangle(cropLeft, cropTop, size, size)));
    }

    /// <summary>ToTensor: CHW float32 in [0, 1] into <paramref name="destination"/> (3 x height x width).</summary>
    public static void ToTensor(Image<Rgb24> image, Span<float> destination)
    {
        int w = image.Width, h = image.Height, plane = w * h;
        if (destination.Length != 3 * plane)
            throw new ArgumentException($"destination has {destination.Length} floats; a {w}x{h} image needs 3 x {h} x {w} = {3 * plane}", nameof(destination));
        Rgb24[]? copy = null;
        ReadOnlySpan<Rgb24> pixels;
        if (image.DangerousTryGetSinglePixelMemory(out Memory<Rgb24> memory))
        {
            pixels = memory.Span;
        }
        else
        {
            copy = new Rgb24[plane];
            image.CopyPixelDataTo(copy);
            pixels = copy;
        }
        for (int i = 0; i < plane; i++)
        {
            var p = pixels[i];
            destination[i] = p.R / 255f;
            destination[plane + i] = p.G / 255f;
            destination[2 * plane + i] = p.B / 255f;
        }
    }

    /// <summary>Normalize(mean, std) in place on a CHW tensor.</summary>
    public static void Normalize(Span<float> tensor, ReadOnlySpan<float> mean, ReadOnlySpan<float> std)
    {
        int channels = mean.Length;
        if (std.Length != channels || tensor.Length % channels != 0)
            throw new ArgumentException($"a tensor of {tensor.Length} floats cannot be normalized over {mean.Length} means and {std.Length} deviations");
        int plane = tensor.Length / channels;
        for (int c = 0; c < channels; c++)
        {
            var span = tensor.Slice(c * plane, plane);
            for (int i = 0; i < span.Length; i++) span[i] = (span[i] - mean[c]) / std[c];
        }
    }
}

/// <summary>Ready-made pipelines.</summary>
public static class Preprocess
{
    /// <summary>ImageNet's channel means, as torchvision's Normalize uses them.</summary>
    public static ReadOnlySpan<float> ImageNetMean => new[] { 0.485f, 0.456f, 0.406f };

    /// <summary>ImageNet's channel standard deviations.</summary>
    public static ReadOnlySpan<float> ImageNetStd => new[] { 0.229f, 0.224f, 0.225f };

    /// <summary>
    /// torchvision's ImageNet training transform: RandomResizedCrop(<paramref name="size"/>) -> RandomHorizontalFlip()
    /// -> ToTensor() -> Normalize(ImageNet), for a <see cref="DataLoader"/> (seeded per image by the loader).
    /// </summary>
    public static Compose ImageNetTrain(int size = 224) =>
        new(size, size, new ImageTransform[] { new RandomResizedCrop(size), new RandomHorizontalFlip() }, ImageNetMean, ImageNetStd);

    /// <summary>The eval transform as a pipeline for a <see cref="DataLoader"/>.</summary>
    public static Compose ImageNetEvalTransform(int resize = 256, int crop = 224) =>
        new(crop, crop, new ImageTransform[] { new Resize(resize), new CenterCrop(crop) }, ImageNetMean, ImageNetStd);

    /// <summary>
    /// torchvision's ImageNet eval transform: Resize(<paramref name="resize"/>) -> CenterCrop(<paramref name="crop"/>)
    /// -> ToTensor() -> Normalize(ImageNet). Returns the CHW float32 tensor [3, crop, crop].
    /// (ResNet V1 weights use resize 256, V2 weights 232.)
    /// </summary>
    public static float[] ImageNetEval(string path, int resize = 256, int crop = 224)
    {
        var tensor = new float[3 * crop * crop];
        ImageNetEvalTransform(resize, crop).Apply(path, tensor, new Random(0)); // deterministic steps: the random source is unused
        return tensor;
    }
}
