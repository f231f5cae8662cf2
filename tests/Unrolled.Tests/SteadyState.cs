using System;
using System.Collections.Generic;
using System.Linq;
using Xunit;

namespace Unrolled.Tests;

/// <summary>
/// Measures the managed bytes a repeated call allocates on the calling thread once warmed up.
/// </summary>
/// <remarks>
/// The runtime itself may allocate once, at a moment of its choosing, on whatever thread is running (the tiered JIT
/// starting its background worker again after an idle spell is one such moment), so a single window can catch a
/// one-off that is not the library's. An allocation in the library's steady state happens in every window; the
/// check therefore passes only when at least one of a few consecutive windows allocated nothing at all, and its
/// message lists every window.
/// </remarks>
internal static class SteadyState
{
    public static void AssertAllocatesNothing(string what, Action step, int windows = 4, int stepsPerWindow = 2)
    {
        var seen = new List<long>(windows);
        for (int w = 0; w < windows; w++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < stepsPerWindow; i++) step();
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            seen.Add(allocated);
            if (allocated == 0) return;
        }
        Assert.Fail($"{what}: every window of {stepsPerWindow} calls allocated managed memory: {string.Join(", ", seen.Select(b => b + " B"))}.");
    }
}
