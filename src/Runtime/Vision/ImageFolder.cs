using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;

namespace Unrolled.Vision;

/// <summary>
/// torchvision.datasets.ImageFolder: <c>root/CLASS/FILE</c>; classes are the folder names sorted as Python sorts
/// strings (ordinal), samples the image files under each class folder in sorted order.
/// </summary>
public sealed class ImageFolder
{
    /// <summary>torchvision's IMG_EXTENSIONS.</summary>
    public static readonly string[] Extensions = { ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp" };

    public ImageFolder(string root)
    {
        ArgumentNullException.ThrowIfNull(root);
        if (!Directory.Exists(root)) throw new DirectoryNotFoundException($"{root}: the ImageFolder root does not exist");
        Root = root;
        Classes = Directory.GetDirectories(root).Select(Path.GetFileName).Select(n => n!).OrderBy(n => n, StringComparer.Ordinal).ToArray();
        if (Classes.Count == 0) throw new InvalidDataException($"{root}: no class folders (expected root/CLASS/IMAGE files)");
        var samples = new List<(string, int)>();
        for (int c = 0; c < Classes.Count; c++)
        {
            var files = Directory.EnumerateFiles(Path.Combine(root, Classes[c]), "*", SearchOption.AllDirectories)
                .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .OrderBy(f => f, StringComparer.Ordinal);
            foreach (var f in files) samples.Add((f, c));
        }
        if (samples.Count == 0) throw new InvalidDataException($"{root}: the class folders hold no images with a supported extension ({string.Join(", ", Extensions)})");
        Samples = samples;
    }

    public string Root { get; }

    /// <summary>Class names, index = label.</summary>
    public IReadOnlyList<string> Classes { get; }

    /// <summary>(path, label) for every image.</summary>
    public IReadOnlyList<(string Path, int Label)> Samples { get; }

    public int Count => Samples.Count;

    /// <summary>Throws before training when the data set's classes do not match the network's outputs.</summary>
    public void RequireClasses(int numClasses)
    {
        if (Classes.Count != numClasses)
            throw new InvalidDataException($"{Root}: {Classes.Count} class folders ({string.Join(", ", Classes.Take(12))}{(Classes.Count > 12 ? ", ..." : "")}), but the network has NumClasses = {numClasses}; declare [ResNet(..., NumClasses = {Classes.Count})] or point to a folder with {numClasses} classes.");
    }
}
