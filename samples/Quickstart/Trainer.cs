using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using Spectre.Console;
using Unrolled.Vision;

namespace Unrolled.Quickstart;

/// <summary>ResNet-50 for 32x32 digits: torchvision's network, 10 classes.</summary>
[ResNet(50, NumClasses = 10, ImageSize = 32)]
public partial class DigitsNet;

/// <summary>
/// PyTorch's recipe, step for step: Grayscale(3), Resize(32), ToTensor, Normalize(ImageNet); SGD(lr 0.01, momentum 0.9,
/// weight decay 5e-4) with cosine annealing over the epochs; batch 32, shuffled; test accuracy after every epoch.
/// </summary>
public static class Trainer
{
    public static double Run(Options o, TextWriter log)
    {
        // Data-parallel: one rank of an mpirun job. Only rank 0 logs and writes checkpoints; every rank can resume.
        using var mpi = o.Distributed ? Distributed.Mpi.Initialize() : null;
        int rank = mpi?.Rank ?? 0, ranks = mpi?.Size ?? 1;
        if (rank != 0) log = TextWriter.Null;
        if (o.SyncBatchNorm && mpi is null) throw new ArgumentException("--sync-bn needs --distributed");
        string trainDir = Path.Combine(o.Data, "train"), testDir = Path.Combine(o.Data, "test");
        var train = new ImageFolder(trainDir);
        var test = new ImageFolder(testDir);
        train.RequireClasses(DigitsNet.NumClasses);
        test.RequireClasses(DigitsNet.NumClasses);
        if (!train.Classes.SequenceEqual(test.Classes))
            throw new InvalidDataException($"{o.Data}: train/ and test/ have different class folders");

        var transform = new Compose(32, 32, new ImageTransform[] { new Grayscale(), new Resize(32) }, Preprocess.ImageNetMean, Preprocess.ImageNetStd);
        // The transform has no randomness: each image is decoded once and kept (about 22 MB for these digits).
        var trainLoader = new DataLoader(train, transform, o.BatchSize, shuffle: true, seed: o.Seed, rank: rank, worldSize: ranks, cache: true);
        var testLoader = new DataLoader(test, transform, 100, cache: true);

        var net = new DigitsNet();
        var sgd = new Sgd(net, o.LearningRate, momentum: 0.9f, weightDecay: 5e-4f);
        var schedule = new LearningRateScheduler(sgd, Schedules.Cosine(o.Epochs));
        Directory.CreateDirectory(o.Out);
        string last = Path.Combine(o.Out, "last.safetensors"), best = Path.Combine(o.Out, "best.safetensors");
        int startEpoch = 0;
        double bestAccuracy = 0;
        var losses = new List<float>();
        var accuracies = new List<double>();
        if (o.Resume)
        {
            var info = Checkpoint.Load(last, net, sgd, schedule);
            startEpoch = info.Epoch;
            bestAccuracy = double.Parse(info.Metadata.GetValueOrDefault("best_accuracy", "0"), CultureInfo.InvariantCulture);
            log.WriteLine($"resumed from {last} at epoch {startEpoch}");
        }

        using var ddp = mpi is null ? null : new Distributed.DataParallel(net, mpi, syncBatchNorm: o.SyncBatchNorm);
        log.WriteLine($"ResNet-50 ({DigitsNet.ParameterCount:N0} parameters), {train.Count} training and {test.Count} test images of {train.Classes.Count} classes from {o.Data}");
        if (mpi is not null)
            log.WriteLine($"data-parallel over {ranks} ranks ({(o.SyncBatchNorm ? "synchronized" : "per-rank")} BatchNorm, {ddp!.Buckets} gradient buckets), {trainLoader.SamplesPerEpoch} images per rank and epoch");
        var logits = new float[o.BatchSize * DigitsNet.NumClasses];
        bool interactive = !Console.IsOutputRedirected && ReferenceEquals(log, Console.Out) && ranks == 1;
        for (int epoch = startEpoch; epoch < o.Epochs; epoch++)
        {
            net.Train();
            int batches = o.MaxBatches > 0 ? Math.Min(o.MaxBatches, trainLoader.BatchesPerEpoch) : trainLoader.BatchesPerEpoch;
            double lossSum = 0, exposed = 0;
            int seen = 0, steps = 0;
            var clock = Stopwatch.StartNew();
            void TrainEpoch(Action<double, string> progress)
            {
                foreach (var batch in trainLoader.Epoch(epoch))
                {
                    if (steps == batches) break;
                    sgd.ZeroGrad();
                    var l = logits.AsSpan(0, batch.Count * DigitsNet.NumClasses);
                    float loss = ddp is null ? net.ForwardBackward(batch.Input, batch.Labels, l) : ddp.ForwardBackward(batch.Input, batch.Labels, l);
                    exposed += ddp?.LastExposedCommunicationMs ?? 0;
                    sgd.Step();
                    losses.Add(loss);
                    lossSum += loss * batch.Count;
                    seen += batch.Count;
                    steps++;
                    double rate = seen / clock.Elapsed.TotalSeconds;
                    progress(steps, $"epoch {epoch + 1}/{o.Epochs}  loss {lossSum / seen:F4}  {rate:F0} img/s");
                }
            }

            if (interactive)
            {
                AnsiConsole.Progress()
                    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                    .Start(ctx =>
                    {
                        var task = ctx.AddTask($"epoch {epoch + 1}/{o.Epochs}", maxValue: batches);
                        TrainEpoch((value, text) => { task.Value = value; task.Description = text; });
                    });
            }
            else
            {
                TrainEpoch((_, _) => { });
            }
            schedule.Step();

            double accuracy = Evaluate(net, testLoader, o.MaxBatches);
            accuracies.Add(accuracy);
            log.WriteLine($"epoch {epoch + 1}/{o.Epochs}: train loss {lossSum / Math.Max(seen, 1):F4}, {seen * ranks / clock.Elapsed.TotalSeconds:F0} img/s, {clock.Elapsed.TotalSeconds:F1} s, test accuracy {accuracy:F4}" +
                (ddp is null ? "" : $", {exposed / Math.Max(steps, 1):F1} ms per step waiting for gradients after backward"));
            var meta = new Dictionary<string, string> { ["best_accuracy"] = Math.Max(bestAccuracy, accuracy).ToString("R", CultureInfo.InvariantCulture) };
            if (accuracy > bestAccuracy)
            {
                bestAccuracy = accuracy;
                if (rank == 0) Checkpoint.Save(best, net, sgd, schedule, epoch + 1, sgd.Steps, meta);
            }
            if (rank == 0) Checkpoint.Save(last, net, sgd, schedule, epoch + 1, sgd.Steps, meta);
        }

        double final = Evaluate(net, testLoader, o.MaxBatches);
        if (ddp is not null)
        {
            double blocking = ddp.MeasureBlockingAllReduceMs(); // a collective: every rank takes part
            log.WriteLine($"one blocking all-reduce of all {DigitsNet.ParameterCount:N0} gradients takes {blocking:F1} ms here");
        }
        if (rank != 0) return final;
        Curves.Write(Path.Combine(o.Out, "curves.png"), losses, accuracies);
        ShowPredictions(net, test, transform, log);
        log.WriteLine($"best checkpoint: {best}; curves: {Path.Combine(o.Out, "curves.png")}");
        log.WriteLine($"test accuracy: {final.ToString("F4", CultureInfo.InvariantCulture)}");
        return final;
    }

    private static double Evaluate(DigitsNet net, DataLoader loader, int maxBatches)
    {
        net.Eval();
        var logits = new float[loader.BatchSize * DigitsNet.NumClasses];
        int correct = 0, total = 0, batches = 0;
        foreach (var batch in loader.Epoch(0))
        {
            if (maxBatches > 0 && batches++ == maxBatches) break;
            var l = logits.AsSpan(0, batch.Count * DigitsNet.NumClasses);
            net.Forward(batch.Input, l);
            for (int i = 0; i < batch.Count; i++)
            {
                int predicted = ArgMax(l.Slice(i * DigitsNet.NumClasses, DigitsNet.NumClasses));
                if (predicted == batch.Labels[i]) correct++;
                total++;
            }
        }
        return (double)correct / total;
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    /// <summary>A few test digits drawn in the terminal with the network's predictions.</summary>
    private static void ShowPredictions(DigitsNet net, ImageFolder test, Compose transform, TextWriter log)
    {
        net.Eval();
        const int count = 8;
        var picks = Enumerable.Range(0, count).Select(i => test.Samples[i * test.Count / count]).ToArray();
        var input = new float[count * transform.OutputSize];
        for (int i = 0; i < count; i++) transform.Apply(picks[i].Path, input.AsSpan(i * transform.OutputSize, transform.OutputSize), new Random(0));
        var logits = new float[count * DigitsNet.NumClasses];
        net.Forward(input, logits);
        const string shades = " .:-=+*#%@";
        var rows = new string[9];
        for (int r = 0; r < rows.Length; r++) rows[r] = "";
        for (int i = 0; i < count; i++)
        {
            using var image = Transforms.Load(picks[i].Path);
            for (int y = 0; y < 8; y++)
            {
                var line = new char[8];
                for (int x = 0; x < 8; x++)
                {
                    int v = y < image.Height && x < image.Width ? image[x, y].R : 0;
                    line[x] = shades[v * (shades.Length - 1) / 255];
                }
                rows[y] += new string(line) + "   ";
            }
            int predicted = ArgMax(logits.AsSpan(i * DigitsNet.NumClasses, DigitsNet.NumClasses));
            rows[8] += $"{test.Classes[predicted]}{(predicted == picks[i].Label ? " ok" : " x" + test.Classes[picks[i].Label])}".PadRight(11);
        }
        log.WriteLine("some test digits and what the network says:");
        foreach (var row in rows) log.WriteLine("  " + row);
    }
}
