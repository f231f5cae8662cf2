using System;
using System.IO;
using Unrolled;
using Unrolled.KillTarget;

// Unrolled.KillTarget DIR STEPS: trains KillNet on deterministic synthetic batches for STEPS steps, saving
// DIR/last.safetensors after every step and resuming from it when it exists. Prints "step N" after each save.
if (args.Length != 2 || !int.TryParse(args[1], out int steps))
{
    Console.Error.WriteLine("usage: Unrolled.KillTarget DIR STEPS");
    return 2;
}
string checkpoint = Path.Combine(args[0], "last.safetensors");
var (net, sgd, schedule) = Run.Make(steps);
long start = File.Exists(checkpoint) ? Checkpoint.Load(checkpoint, net, sgd, schedule).Step : 0;
Console.WriteLine($"resumed at {start}");
var logits = new float[Run.BatchSize * KillNet.NumClasses];
for (long step = start; step < steps; step++)
{
    var (x, y) = Run.Batch(step);
    sgd.ZeroGrad();
    net.ForwardBackward(x, y, logits);
    sgd.Step();
    schedule.Step();
    Checkpoint.Save(checkpoint, net, sgd, schedule, epoch: 0, step: step + 1);
    Console.WriteLine($"step {step + 1}");
}
Console.WriteLine("done");
return 0;

namespace Unrolled.KillTarget
{
    [ResNet(18, NumClasses = 4, BaseWidth = 16, ImageSize = 32)]
    public sealed partial class KillNet;

    public static class Run
    {
        public const int BatchSize = 8;

        public static (KillNet, Sgd, LearningRateScheduler) Make(int steps)
        {
            var net = new KillNet();
            net.Train();
            var sgd = new Sgd(net, 0.02f, momentum: 0.9f, weightDecay: 1e-4f);
            return (net, sgd, new LearningRateScheduler(sgd, Schedules.Cosine(steps)));
        }

        /// <summary>Batch <paramref name="step"/>: the same in every process.</summary>
        public static (float[] Input, int[] Labels) Batch(long step)
        {
            var rng = new Random((int)step + 1);
            var x = new float[BatchSize * KillNet.InputSize];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
            var y = new int[BatchSize];
            for (int i = 0; i < y.Length; i++) y[i] = rng.Next(KillNet.NumClasses);
            return (x, y);
        }
    }
}
