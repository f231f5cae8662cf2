using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using Unrolled.Runtime;

namespace Unrolled.Benchmarks;

/// <summary>
/// `--ab-layout` [`--batch8`]: the forward with and without the batch-1 layout plan (<see cref="LayoutPlan"/>), in one
/// process, the arms alternating in blocks of 10 forwards (the first 2 of each block not counted), 200 forwards per
/// arm; prints each convolution shape's median time per arm (the runtime's clock, summed over the shape's layers), the
/// average pool's, and the whole forward's. The same harness, with another switch in place of the plan's, measured
/// the other changes of the round (README, "What was measured on the way").
/// </summary>
internal static class AbLayout
{
    private const int Blocks = 40, PerBlock = 12, Skipped = 2;

    public static int Run(int batch)
    {
        var net = new ResNet50();
        var input = new float[batch * ResNet50.InputSize];
        for (int i = 0; i < input.Length; i++) input[i] = (i % 255) / 255f;
        var logits = new float[batch * ResNet50.NumClasses];
        try
        {
            var warming = Stopwatch.StartNew();
            for (int call = 0; warming.Elapsed.TotalSeconds < 4; call++)
            {
                LayoutPlan.Off = call % 2 == 1;
                net.Forward(input, logits);
            }
            var perCall = new[] { new List<long[]>(), new List<long[]>() };
            var forwards = new[] { new List<double>(), new List<double>() };
            var clock = new NetworkState.ConvClock(256);
            for (int block = 0; block < Blocks; block++)
            {
                int arm = block % 2; // 0: NCHW throughout, 1: as planned
                LayoutPlan.Off = arm == 0;
                for (int call = 0; call < PerBlock; call++)
                {
                    var (ms, ticks) = LayerProfile.Clocked(net, input, logits, clock);
                    if (call < Skipped) continue;
                    forwards[arm].Add(ms);
                    perCall[arm].Add(ticks);
                }
            }
            double Ms(int arm, int at) => Median(perCall[arm].Select(t => t[at] * 1000.0 / Stopwatch.Frequency).ToList());
            var shapes = new SortedDictionary<string, double[]>(StringComparer.Ordinal);
            for (int layer = 0; layer < clock.Ticks.Length; layer++)
            {
                var (cin, size, cout, kernel, stride) = clock.Shapes[layer];
                if (cin == 0) continue;
                string key = $"{cin}x{size}x{size} -> {cout} {kernel}x{kernel}/{stride}";
                if (!shapes.TryGetValue(key, out var sums)) shapes[key] = sums = new double[2];
                sums[0] += Ms(0, layer);
                sums[1] += Ms(1, layer);
            }
            shapes["average pool"] = [Ms(0, clock.Ticks.Length + 1), Ms(1, clock.Ticks.Length + 1)];
            Console.WriteLine($"ResNet-50 at batch {batch}: NCHW throughout against the layout plan, medians of {forwards[0].Count} forwards per arm (ms)");
            foreach (var (shape, ms) in shapes) Console.WriteLine($"  {shape,-28} {ms[0],8:F3} {ms[1],8:F3}  {ms[1] / ms[0],5:F2}");
            Console.WriteLine($"  whole forward: NCHW {Median(forwards[0]):F2} ms, planned {Median(forwards[1]):F2} ms");
            return 0;
        }
        finally
        {
            LayoutPlan.Off = false;
        }
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
