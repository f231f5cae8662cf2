using System;
using System.IO;
using System.Linq;
using Unrolled.DistTarget;
using Unrolled.Vision;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>
/// Two ranks under Open MPI's mpirun (installed by .ci/run) against one process that computes what they should:
/// per-rank BatchNorm equals averaging the two ranks' gradients; SyncBatchNorm equals one batch of both.
/// </summary>
[Collection(nameof(ShippingTests))]
public sealed class DistributedTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-mpi-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // Float summation order differs between the ranks' all-reduce and one process, so the runs agree to about 1e-7
    // of each tensor's scale after one step; with batches of 4 images, BatchNorm amplifies that about tenfold per
    // step (measured at lr 0.05: 5e-8, 7e-7, 1e-5, 2e-3 after 1 to 4 steps; at lr 0.01, 8e-5 after 5), hence the looser bound after five.
    private static readonly (int Steps, double Tolerance)[] Checks = { (1, 1e-6), (5, 1e-3) };

    private static string TargetDll() => Reference.SiblingProgram("Unrolled.DistTarget");

    private (int Code, string Output, double Seconds) Mpirun(string mode, int steps, string outFile, int timeoutSeconds = 120)
    {
        (int, string, double) run;
        try
        {
            run = ChildProcess.Run("mpirun", $"--allow-run-as-root --oversubscribe -np 2 dotnet \"{TargetDll()}\" {mode} {steps} \"{outFile}\"",
                _dir, timeoutSeconds);
        }
        catch (InvalidOperationException e)
        {
            throw new InvalidOperationException("mpirun not found: install Open MPI (apt-get install openmpi-bin libopenmpi-dev), as .ci/run does", e);
        }
        output.WriteLine(run.Item2);
        return run;
    }

    private static DistNet Trained(string file)
    {
        var net = new DistNet();
        net.LoadWeights(file);
        return net;
    }

    private static void AssertClose(DistNet expected, DistNet actual, double tolerance)
    {
        double worst = 0;
        string worstKey = "";
        foreach (string key in expected.StateKeys.Where(k => k.EndsWith("weight", StringComparison.Ordinal) || k.EndsWith("bias", StringComparison.Ordinal)))
        {
            var e = expected.GetTensor(key);
            var a = actual.GetTensor(key);
            double scale = e.Max(v => Math.Abs(v)) + 1e-6;
            for (int i = 0; i < e.Length; i++)
                if (Math.Abs(e[i] - a[i]) / scale > worst) (worst, worstKey) = (Math.Abs(e[i] - a[i]) / scale, key);
        }
        var ew = expected.GetTensor(worstKey); var aw = actual.GetTensor(worstKey);
        Assert.True(worst < tolerance, $"largest difference {worst:E2} of a parameter's scale, in {worstKey}: {string.Join(",", ew.Take(6))} vs {string.Join(",", aw.Take(6))}");
    }

    [Fact]
    public void TwoRanksWithPerRankBatchNormMatchAveragedGradients()
    {
        foreach (var (steps, tolerance) in Checks) PerRank(steps, tolerance);
    }

    private void PerRank(int steps, double tolerance)
    {
        string file = Path.Combine(_dir, $"ddp{steps}.safetensors");
        var run = Mpirun("ddp", steps, file);
        Assert.True(run.Code == 0, run.Output);

        // One process: both ranks' losses, gradients accumulated and halved, then the same SGD step.
        var net = new DistNet();
        net.Train();
        var sgd = new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
        var logits = new float[Data.BatchSize * DistNet.NumClasses];
        for (int step = 0; step < steps; step++)
        {
            sgd.ZeroGrad();
            for (int rank = 0; rank < 2; rank++)
            {
                var (x, y) = Data.Batch(step, rank);
                net.ForwardBackward(x, y, logits);
            }
            var g = ((IResNet)net).State.Gradients;
            for (int i = 0; i < g.Length; i++) g[i] *= 0.5f;
            sgd.Step();
        }
        AssertClose(net, Trained(file), tolerance);
    }

    [Fact]
    public void TwoRanksWithSyncBatchNormMatchOneCombinedBatch()
    {
        foreach (var (steps, tolerance) in Checks) Synchronized(steps, tolerance);
    }

    private void Synchronized(int steps, double tolerance)
    {
        string file = Path.Combine(_dir, $"sync{steps}.safetensors");
        var run = Mpirun("sync", steps, file);
        Assert.True(run.Code == 0, run.Output);

        var net = new DistNet();
        net.Train();
        var sgd = new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
        var logits = new float[2 * Data.BatchSize * DistNet.NumClasses];
        for (int step = 0; step < steps; step++)
        {
            var (x0, y0) = Data.Batch(step, 0);
            var (x1, y1) = Data.Batch(step, 1);
            sgd.ZeroGrad();
            net.ForwardBackward(x0.Concat(x1).ToArray(), y0.Concat(y1).ToArray(), logits);
            sgd.Step();
        }
        var ranks = Trained(file);
        AssertClose(net, ranks, tolerance);

        // The running statistics too: SyncBatchNorm's are those of the combined batch.
        foreach (string key in net.StateKeys.Where(k => k.Contains("running", StringComparison.Ordinal)))
        {
            var e = net.GetTensor(key);
            var a = ranks.GetTensor(key);
            for (int i = 0; i < e.Length; i++) Assert.True(Math.Abs(e[i] - a[i]) <= tolerance * (1 + Math.Abs(e[i])), $"{key}[{i}]: {e[i]} vs {a[i]}");
        }
    }

    [Fact]
    public void ARankThatDiesEndsTheJobWithAnErrorInBoundedTime()
    {
        var run = Mpirun("die", 50, Path.Combine(_dir, "none.safetensors"), timeoutSeconds: 90);
        Assert.NotEqual(0, run.Code);
        Assert.Contains("rank 1: dying at step 2", run.Output);
        Assert.True(run.Seconds < 60, $"the job took {run.Seconds:F0} s to end");
        Assert.False(File.Exists(Path.Combine(_dir, "none.safetensors")));
    }

    [Fact]
    public void TheDistributedSamplerGivesEachRankADisjointShard()
    {
        var data = new ImageFolder(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "samples", "Quickstart", "data", "digits", "test"));
        var transform = new Compose(8, 8, Array.Empty<ImageTransform>(), Preprocess.ImageNetMean, Preprocess.ImageNetStd);
        var shards = Enumerable.Range(0, 3).Select(r => new DataLoader(data, transform, 16, shuffle: true, seed: 5, rank: r, worldSize: 3).Order(2)).ToArray();
        var all = new DataLoader(data, transform, 16, shuffle: true, seed: 5).Order(2);
        Assert.All(shards, s => Assert.Equal((data.Count + 2) / 3, s.Length));
        // Interleaved, they are the single-process order (padded at the end by its start, as DistributedSampler).
        var interleaved = Enumerable.Range(0, shards[0].Length * 3).Select(i => shards[i % 3][i / 3]).ToArray();
        Assert.Equal(all, interleaved.Take(all.Length));
        Assert.Equal(all.Take(interleaved.Length - all.Length), interleaved.Skip(all.Length));
        Assert.Equal(data.Count, shards.SelectMany(s => s).Distinct().Count());
    }
}
