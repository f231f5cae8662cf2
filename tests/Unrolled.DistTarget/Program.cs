using System;
using System.Diagnostics;
using Unrolled;
using Unrolled.Distributed;
using Unrolled.DistTarget;

// mpirun -np N dotnet Unrolled.DistTarget.dll MODE STEPS OUT
//   MODE: ddp (per-rank BatchNorm), sync (SyncBatchNorm), die (rank 1 kills itself at step 2), speed (timing only)
// Every rank trains DistNet on its own deterministic batches; rank 0 writes the weights to OUT.
if (args.Length != 3 || !int.TryParse(args[1], out int steps))
{
    Console.Error.WriteLine("usage: Unrolled.DistTarget ddp|sync|die|speed STEPS OUT");
    return 2;
}
string mode = args[0];
using var mpi = Mpi.Initialize();
var net = new DistNet();
net.Train();
using var ddp = new DataParallel(net, mpi, bucketMegabytes: mode == "speed" ? 25 : 0.05, syncBatchNorm: mode == "sync");
var sgd = new Sgd(net, 0.01f, momentum: 0.9f, weightDecay: 1e-4f);
int batch = mode == "speed" ? Data.SpeedBatch : Data.BatchSize;
var logits = new float[batch * DistNet.NumClasses];
double exposed = 0, total = 0;
var clock = Stopwatch.StartNew();
for (int step = 0; step < steps; step++)
{
    if (mode == "die" && mpi.Rank == 1 && step == 2)
    {
        Console.Error.WriteLine($"rank 1: dying at step {step}");
        Process.GetCurrentProcess().Kill(); // SIGKILL: no goodbye to the other ranks
    }
    var (x, y) = Data.Batch(step, mpi.Rank, batch);
    sgd.ZeroGrad();
    ddp.ForwardBackward(x, y, logits);
    sgd.Step();
    if (step > 0) { exposed += ddp.LastExposedCommunicationMs; total += ddp.LastStepMs; }
}
double seconds = clock.Elapsed.TotalSeconds;
double blocking = ddp.MeasureBlockingAllReduceMs();
if (mpi.Rank == 0)
{
    net.SaveWeights(args[2]);
    Console.WriteLine($"ranks {mpi.Size}, threads per rank {Unrolled.Cpu.WorkerPool.Shared.Threads}, buckets {ddp.Buckets}, " +
                      $"{steps * batch * mpi.Size / seconds:F1} img/s, step {total / Math.Max(1, steps - 1):F1} ms, " +
                      $"communication exposed after backward {exposed / Math.Max(1, steps - 1):F2} ms per step, one blocking all-reduce of every gradient {blocking:F2} ms");
}
return 0;

namespace Unrolled.DistTarget
{
    [ResNet(18, NumClasses = 4, BaseWidth = 8, ImageSize = 32)]
    public sealed partial class DistNet;

    public static class Data
    {
        public const int BatchSize = 4;
        public const int SpeedBatch = 16;

        /// <summary>Rank <paramref name="rank"/>'s batch of step <paramref name="step"/>: the same in every process.</summary>
        public static (float[] Input, int[] Labels) Batch(int step, int rank, int size = BatchSize)
        {
            var rng = new Random(1000 * step + rank + 1);
            var x = new float[size * DistNet.InputSize];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            var y = new int[size];
            for (int i = 0; i < y.Length; i++) y[i] = rng.Next(DistNet.NumClasses);
            return (x, y);
        }
    }
}
