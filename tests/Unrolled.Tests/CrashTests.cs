using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
using Unrolled.KillTarget;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>
/// A training process killed with SIGKILL at random moments, many times (also while it writes its checkpoint),
/// always leaves a loadable last checkpoint, and resuming from it ends bit for bit where an uninterrupted run ends (as
/// do uninterrupted runs on one and on three worker threads).
/// </summary>
[Collection(nameof(ShippingTests))]
public sealed class CrashTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-kill-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private const int Steps = 40;

    private static string TargetDll() => Reference.SiblingProgram("Unrolled.KillTarget");

    private static Process Start(string dir)
    {
        var start = new ProcessStartInfo("dotnet", $"\"{TargetDll()}\" \"{dir}\" {Steps}")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        return Process.Start(start)!;
    }

    private static float[][] Weights(string checkpoint)
    {
        var (net, sgd, schedule) = Run.Make(Steps);
        var info = Checkpoint.Load(checkpoint, net, sgd, schedule);
        Assert.Equal(Steps, info.Step);
        return net.StateKeys.Select(net.GetTensor).ToArray();
    }

    [Fact]
    public void KilledAtRandomMomentsTheLastCheckpointAlwaysLoadsAndResumingIsBitIdentical()
    {
        // The uninterrupted run.
        string cleanDir = Directory.CreateDirectory(Path.Combine(_dir, "clean")).FullName;
        var (code, log, _) = ChildProcess.Run("dotnet", $"\"{TargetDll()}\" \"{cleanDir}\" {Steps}", _dir, timeoutSeconds: 120);
        Assert.True(code == 0, log);
        var expected = Weights(Path.Combine(cleanDir, "last.safetensors"));

        // The same run on one worker thread and on three (more than this machine's cores) ends bit for bit the same:
        // no sum depends on how the work is split.
        foreach (string threads in new[] { "1", "3" })
        {
            string threadsDir = Directory.CreateDirectory(Path.Combine(_dir, "threads" + threads)).FullName;
            var other = ChildProcess.Run("dotnet", $"\"{TargetDll()}\" \"{threadsDir}\" {Steps}", _dir, timeoutSeconds: 120,
                environment: new System.Collections.Generic.Dictionary<string, string> { ["UNROLLED_THREADS"] = threads });
            Assert.True(other.Code == 0, other.Output);
            var weights = Weights(Path.Combine(threadsDir, "last.safetensors"));
            for (int i = 0; i < expected.Length; i++) Assert.True(expected[i].AsSpan().SequenceEqual(weights[i]), $"tensor {i} differs on {threads} threads");
        }

        // The same run, killed again and again.
        string dir = Directory.CreateDirectory(Path.Combine(_dir, "killed")).FullName;
        string checkpoint = Path.Combine(dir, "last.safetensors");
        var rng = new Random(20261128);
        int kills = 0, midWrite = 0, runs = 0;
        long lastStep = -1;
        while (true)
        {
            runs++;
            Assert.True(runs < 60, "the run never finished");
            using var process = Start(dir);
            bool finished = process.WaitForExit(rng.Next(150, 700));
            if (!finished)
            {
                process.Kill(); // SIGKILL
                process.WaitForExit();
                kills++;
            }
            else
            {
                Assert.True(process.ExitCode == 0, process.StandardError.ReadToEnd());
                if (kills >= 10) break;
                // Finished before the kill: start over from scratch to kill it more often.
                foreach (string f in Directory.GetFiles(dir)) File.Delete(f);
                lastStep = -1;
                continue;
            }

            if (Directory.GetFiles(dir, "*.tmp").Length > 0) midWrite++;
            if (!File.Exists(checkpoint)) continue; // killed before the first save
            // Whatever the moment of the kill, the last checkpoint loads completely and never goes backwards.
            var (net, sgd, schedule) = Run.Make(Steps);
            long step = Checkpoint.Load(checkpoint, net, sgd, schedule).Step;
            Assert.True(step >= lastStep, $"checkpoint went back from step {lastStep} to {step}");
            lastStep = step;
        }

        output.WriteLine($"{kills} kills in {runs} runs; {midWrite} left a partly written temporary file behind");
        Assert.True(kills >= 10);
        var actual = Weights(checkpoint);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i]); // bit for bit
        Assert.Equal(new[] { "last.safetensors" }, Directory.GetFiles(dir).Select(Path.GetFileName)); // stale temporaries removed
    }
}
