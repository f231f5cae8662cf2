using System;
using System.Collections.Generic;
using System.Linq;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace Unrolled.Quickstart;

/// <summary>Training curves as a PNG: the loss of every step (blue, left half) and the test accuracy after each epoch (green, right half).</summary>
internal static class Curves
{
    public static void Write(string path, IReadOnlyList<float> losses, IReadOnlyList<double> accuracies)
    {
        const int width = 800, height = 300, margin = 20;
        using var image = new Image<Rgb24>(width, height, new Rgb24(255, 255, 255));
        var axis = new Rgb24(120, 120, 120);
        int half = width / 2;
        Line(image, margin, height - margin, half - margin, height - margin, axis);
        Line(image, margin, margin, margin, height - margin, axis);
        Line(image, half + margin, height - margin, width - margin, height - margin, axis);
        Line(image, half + margin, margin, half + margin, height - margin, axis);

        if (losses.Count > 1)
        {
            double max = Math.Max(losses.Max(), 1e-6);
            Plot(image, losses.Select(l => (double)l / max).ToArray(), margin, half - margin, height, margin, new Rgb24(30, 90, 200));
        }
        if (accuracies.Count > 0)
            Plot(image, accuracies.Count == 1 ? new[] { accuracies[0], accuracies[0] } : accuracies.ToArray(), half + margin, width - margin, height, margin, new Rgb24(20, 150, 60));
        SaveAtomically(image, path);
    }

    private static void SaveAtomically(Image<Rgb24> image, string path)
    {
        string temp = path + ".tmp";
        image.SaveAsPng(temp);
        System.IO.File.Move(temp, path, overwrite: true);
    }

    /// <summary>Values in [0, 1] across [x0, x1].</summary>
    private static void Plot(Image<Rgb24> image, double[] values, int x0, int x1, int height, int margin, Rgb24 color)
    {
        int Y(double v) => height - margin - (int)Math.Round(Math.Clamp(v, 0, 1) * (height - 2 * margin));
        int X(int i) => x0 + (int)((long)i * (x1 - x0) / (values.Length - 1));
        for (int i = 1; i < values.Length; i++) Line(image, X(i - 1), Y(values[i - 1]), X(i), Y(values[i]), color);
    }

    /// <summary>Bresenham's line.</summary>
    private static void Line(Image<Rgb24> image, int x0, int y0, int x1, int y1, Rgb24 color)
    {
        int dx = Math.Abs(x1 - x0), dy = -Math.Abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
        while (true)
        {
            if (x0 >= 0 && x0 < image.Width && y0 >= 0 && y0 < image.Height) image[x0, y0] = color;
            if (x0 == x1 && y0 == y1) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x0 += sx; }
            if (e2 <= dx) { err += dx; y0 += sy; }
        }
    }
}
