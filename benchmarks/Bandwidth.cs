using System;
using System.Diagnostics;
using System.Runtime.Intrinsics;
using System.Threading.Tasks;

namespace Unrolled.Benchmarks;

/// <summary>
/// `--bandwidth`: how fast one and two threads read memory here, summing a 256 MB array by vectors (five runs each);
/// the ceiling for the weights' stream at batch 1 (about 100 MB per ResNet-50 forward).
/// </summary>
internal static unsafe class Bandwidth
{
    public static int Run()
    {
        const long Floats = 64L << 20;
        var data = GC.AllocateUninitializedArray<float>((int)Floats, pinned: true);
        data.AsSpan().Fill(1f);
        for (int threads = 1; threads <= 2; threads++)
            for (int run = 0; run < 5; run++)
            {
                var clock = Stopwatch.StartNew();
                var parts = new Task<float>[threads];
                for (int t = 0; t < threads; t++)
                {
                    long start = Floats / threads * t, end = Floats / threads * (t + 1);
                    parts[t] = Task.Run(() => Sum(data, start, end));
                }
                Task.WaitAll(parts);
                Console.WriteLine($"{threads} thread(s): {Floats * sizeof(float) / clock.Elapsed.TotalSeconds / 1e9:F1} GB/s");
            }
        return 0;
    }

    private static float Sum(float[] data, long start, long end)
    {
        fixed (float* p = data)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (long i = start; i + 64 <= end; i += 64)
            {
                a0 += Vector512.Load(p + i);
                a1 += Vector512.Load(p + i + 16);
                a2 += Vector512.Load(p + i + 32);
                a3 += Vector512.Load(p + i + 48);
            }
            return Vector512.Sum(a0 + a1 + a2 + a3);
        }
    }
}
