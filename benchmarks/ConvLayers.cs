using System;
using System.Diagnostics;
using Unrolled.Cpu;

namespace Unrolled.Benchmarks;

/// <summary>
/// `--layers` [`--batch8`]: the time and GFLOP/s of each of ResNet-50's convolution shapes (fused BN, ReLU), direct, and
/// for the 3x3 stride-1 ones also by Winograd F(2x2, 3x3) and F(4x4, 3x3) (GFLOP/s counted as direct).
/// </summary>
internal static class ConvLayers
{
    private static readonly (int Cin, int Size, int Cout, int Kernel, int Stride, int Count)[] Shapes =
    {
        (3, 224, 64, 7, 2, 1), (64, 56, 64, 1, 1, 3), (64, 56, 64, 3, 1, 3), (64, 56, 256, 1, 1, 4), (256, 56, 64, 1, 1, 2),
        (256, 56, 128, 1, 1, 1), (128, 56, 128, 3, 2, 1), (128, 28, 512, 1, 1, 4), (512, 28, 128, 1, 1, 3), (128, 28, 128, 3, 1, 3),
        (256, 56, 512, 1, 2, 1), (512, 28, 256, 1, 1, 1), (256, 28, 256, 3, 2, 1), (256, 14, 1024, 1, 1, 6), (1024, 14, 256, 1, 1, 5),
        (256, 14, 256, 3, 1, 5), (512, 28, 1024, 1, 2, 1), (1024, 14, 512, 1, 1, 1), (512, 14, 512, 3, 2, 1), (512, 7, 2048, 1, 1, 3),
        (2048, 7, 512, 1, 1, 2), (512, 7, 512, 3, 1, 2), (1024, 14, 2048, 1, 2, 1),
    };

    public static int Run(int batch)
    {
        double total = 0, totalFlop = 0;
        foreach (var (cin, size, cout, k, s, count) in Shapes)
        {
            int pad = k / 2, o = (size + 2 * pad - k) / s + 1;
            var x = new float[batch * cin * size * size];
            var y = new float[batch * cout * o * o];
            var w = new float[cout * cin * k * k];
            var bias = new float[cout];
            for (int i = 0; i < x.Length; i++) x[i] = i % 7 * 0.1f;
            for (int i = 0; i < w.Length; i++) w[i] = i % 5 * 0.01f;
            for (int i = 0; i < 3; i++) Conv.Forward(x, y, default, w, default, bias, batch, cin, size, size, cout, o, o, k, s, pad, true);
            int reps = Math.Max(3, (int)(2e9 / (2.0 * cout * o * o * cin * k * k * batch)));
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < reps; i++) Conv.Forward(x, y, default, w, default, bias, batch, cin, size, size, cout, o, o, k, s, pad, true);
            double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds / reps;
            double flop = 2.0 * batch * cout * o * o * cin * k * k;
            total += ms * count;
            totalFlop += flop * count;
            string winograd = "";
            if (k == 3 && s == 1 && Winograd.Enabled)
            {
                // Both Winograd tiles (GFLOP/s counted as direct); the total takes what the network runs for this shape.
                var chosen = Winograd.Choose(k, s, pad, batch, cin, size, size, cout);
                foreach (var tiles in new[] { Winograd.Tiles.F2, Winograd.Tiles.F4 })
                {
                    var u = new float[Winograd.TransformedSize(cout, cin, tiles)];
                    Winograd.TransformWeights(w, u, cout, cin, tiles);
                    for (int i = 0; i < 3; i++) Winograd.Forward(x, y, default, u, default, bias, batch, cin, size, size, cout, true, tiles);
                    long wStart = Stopwatch.GetTimestamp();
                    for (int i = 0; i < reps; i++) Winograd.Forward(x, y, default, u, default, bias, batch, cin, size, size, cout, true, tiles);
                    double wMs = Stopwatch.GetElapsedTime(wStart).TotalMilliseconds / reps;
                    winograd += $"   {tiles}{(tiles == chosen ? "*" : " ")} {wMs,7:F3} ms {flop / wMs / 1e6,6:F1}";
                    if (tiles == chosen) total += (wMs - ms) * count;
                }
            }
            Console.WriteLine($"conv {cin,4}x{size,3}x{size,-3} -> {cout,4} {k}x{k}/{s}: {ms,8:F3} ms x{count}  {flop / ms / 1e6,6:F1} GFLOP/s{winograd}");
        }
        Console.WriteLine($"all convolutions at batch {batch} as the network runs them (* the Winograd tile it chooses, if any): {total:F1} ms, {totalFlop / total / 1e6:F1} GFLOP/s-equivalent");
        return 0;
    }
}
