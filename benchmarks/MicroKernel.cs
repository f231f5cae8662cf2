using System;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Unrolled.Cpu;

namespace Unrolled.Benchmarks;

/// <summary>`--kernel`: the GEMM micro-kernel alone on one core (packed panels, K = 256), in GFLOP/s.</summary>
internal static unsafe class MicroKernel
{
    public static int Run()
    {
        const int k = 256, tiles = 64;
        float* a = (float*)NativeMemory.AlignedAlloc((nuint)(Gemm.MR * k * tiles * 4), 64);
        float* b = (float*)NativeMemory.AlignedAlloc((nuint)(Gemm.NR * k * 4), 64);
        float* c = (float*)NativeMemory.AlignedAlloc((nuint)(Gemm.MR * tiles * Gemm.NR * 4), 64);
        for (int i = 0; i < Gemm.MR * k * tiles; i++) a[i] = i % 3 * 0.01f;
        for (int i = 0; i < Gemm.NR * k; i++) b[i] = i % 5 * 0.01f;
        for (int round = 0; round < 3; round++)
        {
            long start = Stopwatch.GetTimestamp();
            const int reps = 2000;
            for (int r = 0; r < reps; r++)
                for (int t = 0; t < tiles; t++)
                    Gemm.Tile(k, a + t * Gemm.MR * k, Gemm.Layout.Packed(Gemm.MR), b, c + t * Gemm.MR * Gemm.NR, Gemm.NR, Gemm.MR, Gemm.NR, null, null, null, false);
            double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
            Console.WriteLine($"micro-kernel {Gemm.MR}x{Gemm.NR}, K={k}, one core: {2.0 * Gemm.MR * Gemm.NR * k * tiles * reps / seconds / 1e9:F1} GFLOP/s");
        }
        return 0;
    }
}
