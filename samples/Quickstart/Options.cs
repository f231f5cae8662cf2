using System;
using System.Globalization;
using System.IO;

namespace Unrolled.Quickstart;

/// <summary>The command line of the quickstart.</summary>
public sealed record Options
{
    /// <summary>An ImageFolder root with train/ and test/, 10 classes each.</summary>
    public string Data { get; init; } = Path.Combine(AppContext.BaseDirectory, "data", "digits");
    public int Epochs { get; init; } = 5;
    public int BatchSize { get; init; } = 32;
    public float LearningRate { get; init; } = 0.01f;
    public string Out { get; init; } = "quickstart-out";
    public bool Resume { get; init; }
    /// <summary>Stop each epoch after this many batches (for quick checks); 0 = whole epochs.</summary>
    public int MaxBatches { get; init; }
    public int Seed { get; init; }
    /// <summary>One data-parallel rank of an mpirun job (rank and size from MPI).</summary>
    public bool Distributed { get; init; }
    /// <summary>With --distributed: BatchNorm statistics over every rank's batch (SyncBatchNorm).</summary>
    public bool SyncBatchNorm { get; init; }

    public const string Usage = """
        Trains ResNet-50 on handwritten digits (PyTorch's recipe) and reports test accuracy.

        usage: quickstart [--data DIR] [--epochs N] [--batch-size N] [--lr X] [--out DIR] [--resume]
          --data DIR        ImageFolder root holding train/ and test/ with 10 class folders (default: the bundled digits)
          --epochs N        epochs of cosine-annealed SGD (default 5)
          --batch-size N    images per step (default 32)
          --lr X            initial learning rate (default 0.01)
          --out DIR         where checkpoints, curves.png and the log go (default quickstart-out)
          --resume          continue from DIR/last.safetensors
          --max-batches N   stop each epoch after N batches (quick checks)
          --seed N          shuffling seed (default 0)
          --distributed     data-parallel: start with mpirun -np N; each rank trains on its shard of every epoch with
                            --batch-size images a step, gradients averaged over ranks; rank 0 logs and checkpoints
          --sync-bn         with --distributed: BatchNorm statistics over all ranks' batches (SyncBatchNorm)
        """;

    /// <summary>The options, or null after printing the usage for --help.</summary>
    public static Options? Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            int Int(string name) => int.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0
                ? v : throw new ArgumentException($"{name} takes a positive integer");
            switch (args[i])
            {
                case "--data": o = o with { Data = Value() }; break;
                case "--epochs": o = o with { Epochs = Int("--epochs") }; break;
                case "--batch-size": o = o with { BatchSize = Int("--batch-size") }; break;
                case "--lr":
                    o = o with { LearningRate = float.TryParse(Value(), NumberStyles.Float, CultureInfo.InvariantCulture, out float lr) && lr > 0 ? lr : throw new ArgumentException("--lr takes a positive number") };
                    break;
                case "--out": o = o with { Out = Value() }; break;
                case "--resume": o = o with { Resume = true }; break;
                case "--distributed": o = o with { Distributed = true }; break;
                case "--sync-bn": o = o with { SyncBatchNorm = true }; break;
                case "--max-batches": o = o with { MaxBatches = Int("--max-batches") }; break;
                case "--seed": o = o with { Seed = int.Parse(Value(), CultureInfo.InvariantCulture) }; break;
                case "-h" or "--help":
                    Console.WriteLine(Usage);
                    return null;
                default:
                    throw new ArgumentException($"unknown option '{args[i]}'\n{Usage}");
            }
        }
        return o;
    }
}
