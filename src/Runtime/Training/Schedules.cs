using System;
using System.Collections.Generic;
using System.Linq;

namespace Unrolled;

/// <summary>
/// A learning-rate schedule: the rate at a given epoch (or step) from the optimizer's initial rate, in the closed
/// forms of torch.optim.lr_scheduler. Compose them with <see cref="Then"/> (as SequentialLR) or <see cref="Schedules.Sequential"/>.
/// </summary>
public abstract class LearningRateSchedule
{
    /// <summary>The learning rate at <paramref name="epoch"/> (0 = before the first scheduler step).</summary>
    public abstract double At(double initial, int epoch);

    /// <summary>This schedule for <paramref name="epochs"/> epochs, then <paramref name="next"/> counting from 0 again (SequentialLR).</summary>
    public LearningRateSchedule Then(int epochs, LearningRateSchedule next) => Schedules.Sequential((this, epochs), (next, int.MaxValue));
}

/// <summary>The schedules of torch.optim.lr_scheduler, by name.</summary>
public static class Schedules
{
    /// <summary>StepLR: initial x gamma^floor(epoch / stepSize).</summary>
    public static LearningRateSchedule Step(int stepSize, double gamma = 0.1)
    {
        if (stepSize < 1) throw new ArgumentOutOfRangeException(nameof(stepSize), stepSize, "stepSize must be >= 1");
        return new Closed((lr, e) => lr * Math.Pow(gamma, e / stepSize));
    }

    /// <summary>MultiStepLR: initial x gamma^(number of milestones reached).</summary>
    public static LearningRateSchedule MultiStep(IEnumerable<int> milestones, double gamma = 0.1)
    {
        var m = milestones.OrderBy(x => x).ToArray();
        return new Closed((lr, e) => lr * Math.Pow(gamma, m.Count(x => x <= e)));
    }

    /// <summary>CosineAnnealingLR: etaMin + (initial - etaMin) (1 + cos(pi epoch / tMax)) / 2.</summary>
    public static LearningRateSchedule Cosine(int tMax, double etaMin = 0)
    {
        if (tMax < 1) throw new ArgumentOutOfRangeException(nameof(tMax), tMax, "tMax must be >= 1");
        return new Closed((lr, e) => etaMin + (lr - etaMin) * (1 + Math.Cos(Math.PI * e / tMax)) / 2);
    }

    /// <summary>LinearLR (linear warm-up): the factor goes from startFactor to endFactor over totalIters epochs, then stays.</summary>
    public static LearningRateSchedule LinearWarmup(int totalIters, double startFactor = 1.0 / 3, double endFactor = 1.0)
    {
        if (totalIters < 1) throw new ArgumentOutOfRangeException(nameof(totalIters), totalIters, "totalIters must be >= 1");
        return new Closed((lr, e) => lr * (startFactor + (endFactor - startFactor) * Math.Min(e, totalIters) / totalIters));
    }

    /// <summary>A constant rate (ConstantLR with factor 1).</summary>
    public static LearningRateSchedule Constant() => new Closed((lr, _) => lr);

    /// <summary>SequentialLR: each schedule runs for its number of epochs, counting its own epochs from 0.</summary>
    public static LearningRateSchedule Sequential(params (LearningRateSchedule Schedule, int Epochs)[] parts)
    {
        if (parts.Length == 0) throw new ArgumentException("give at least one schedule", nameof(parts));
        return new Closed((lr, e) =>
        {
            int start = 0;
            for (int i = 0; i < parts.Length; i++)
            {
                bool last = i == parts.Length - 1;
                if (last || e < start + parts[i].Epochs) return parts[i].Schedule.At(lr, e - start);
                start += parts[i].Epochs;
            }
            throw new InvalidOperationException("unreachable");
        });
    }

    private sealed class Closed(Func<double, int, double> at) : LearningRateSchedule
    {
        public override double At(double initial, int epoch) => at(initial, epoch);
    }
}

/// <summary>Drives an optimizer's learning rate with a schedule; call <see cref="Step"/> once per epoch (or per step), as lr_scheduler.step().</summary>
public sealed class LearningRateScheduler
{
    public LearningRateScheduler(Optimizer optimizer, LearningRateSchedule schedule)
    {
        Optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        Schedule = schedule ?? throw new ArgumentNullException(nameof(schedule));
        Apply();
    }

    public Optimizer Optimizer { get; }
    public LearningRateSchedule Schedule { get; }

    /// <summary>Scheduler steps taken (torch's last_epoch).</summary>
    public int Epoch { get; private set; }

    public void Step()
    {
        Epoch++;
        Apply();
    }

    /// <summary>Moves to a given epoch (when resuming).</summary>
    public void Restore(int epoch)
    {
        if (epoch < 0) throw new ArgumentOutOfRangeException(nameof(epoch), epoch, "epoch must be >= 0");
        Epoch = epoch;
        Apply();
    }

    private void Apply() => Optimizer.LearningRate = (float)Schedule.At(Optimizer.InitialLearningRate, Epoch);
}
