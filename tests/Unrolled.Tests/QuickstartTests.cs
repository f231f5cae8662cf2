using System;
using System.IO;
using System.Linq;
using Unrolled.Quickstart;
using Unrolled.Vision;

namespace Unrolled.Tests;

/// <summary>Keeps samples/Quickstart working: a fraction of an epoch on the bundled digits, resuming, and bad data.</summary>
public sealed class QuickstartTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-quickstart-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void AFewBatchesTrainEvaluateSaveAndResume()
    {
        var options = new Options { Epochs = 2, BatchSize = 8, MaxBatches = 2, Out = Path.Combine(_dir, "out") };
        var log = new StringWriter();
        Trainer.Run(options with { Epochs = 1 }, log);
        string text = log.ToString();
        Assert.Contains("epoch 1/1", text);
        Assert.Matches(@"test accuracy: [01]\.\d{4}\s*$", text);
        Assert.True(File.Exists(Path.Combine(options.Out, "best.safetensors")) || text.Contains("test accuracy 0.0000"));
        Assert.True(File.Exists(Path.Combine(options.Out, "last.safetensors")));
        Assert.True(new FileInfo(Path.Combine(options.Out, "curves.png")).Length > 0);

        var resumed = new StringWriter();
        Trainer.Run(options with { Resume = true }, resumed);
        Assert.Contains("at epoch 1", resumed.ToString());
        Assert.Contains("epoch 2/2", resumed.ToString());
        Assert.DoesNotContain("epoch 1/2", resumed.ToString());
    }

    [Fact]
    public void AFolderWithTheWrongNumberOfClassesIsRefusedBeforeTraining()
    {
        foreach (var split in new[] { "train", "test" })
        foreach (var label in new[] { "a", "b", "c" })
        {
            string folder = Path.Combine(_dir, "data", split, label);
            Directory.CreateDirectory(folder);
            File.Copy(Reference.Fixture("chelsea.png"), Path.Combine(folder, "x.png"));
        }
        var e = Assert.Throws<InvalidDataException>(() => Trainer.Run(new Options { Data = Path.Combine(_dir, "data"), Out = Path.Combine(_dir, "out") }, TextWriter.Null));
        Assert.Contains("3 class folders", e.Message);
        Assert.Contains("NumClasses = 10", e.Message);
        Assert.False(Directory.Exists(Path.Combine(_dir, "out")));
    }

    [Fact]
    public void OptionsAreParsedAndBadOnesExplained()
    {
        var o = Options.Parse(new[] { "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--out", "x", "--resume" })!;
        Assert.Equal((3, 16, 0.05f, "x", true), (o.Epochs, o.BatchSize, o.LearningRate, o.Out, o.Resume));
        Assert.Contains("unknown option '--epoch'", Assert.Throws<ArgumentException>(() => Options.Parse(new[] { "--epoch", "3" })).Message);
        Assert.Contains("positive integer", Assert.Throws<ArgumentException>(() => Options.Parse(new[] { "--batch-size", "-1" })).Message);
    }
}

/// <summary>ImageFolder's order and the DataLoader's determinism and completeness, on the bundled digits.</summary>
public class DataTests
{
    private static string Digits(string split) => Path.Combine(AppContext.BaseDirectory, "data", "digits", split);

    private static Compose DigitsTransform() =>
        new(32, 32, new ImageTransform[] { new Grayscale(), new Resize(32) }, Preprocess.ImageNetMean, Preprocess.ImageNetStd);

    [Fact]
    public void ImageFolderSortsClassesAndFilesAsTorchvision()
    {
        var train = new ImageFolder(Digits("train"));
        Assert.Equal(Enumerable.Range(0, 10).Select(i => i.ToString()), train.Classes);
        Assert.Equal(1437, train.Count);
        Assert.Equal(360, new ImageFolder(Digits("test")).Count);
        var paths = train.Samples.Select(s => s.Path).ToList();
        Assert.Equal(paths.OrderBy(p => train.Samples[paths.IndexOf(p)].Label).ThenBy(p => p, StringComparer.Ordinal), paths);
        Assert.All(train.Samples, s => Assert.Equal(train.Classes[s.Label], Path.GetFileName(Path.GetDirectoryName(s.Path))));
    }

    [Fact]
    public void EveryImageExactlyOncePerEpochInASeededOrder()
    {
        var test = new ImageFolder(Digits("test"));
        var loader = new DataLoader(test, DigitsTransform(), 32, shuffle: true, seed: 7);
        var seen = loader.Epoch(0).SelectMany(b => b.Indices.ToArray()).ToList();
        Assert.Equal(Enumerable.Range(0, test.Count), seen.OrderBy(i => i));
        Assert.Equal(seen, new DataLoader(test, DigitsTransform(), 32, shuffle: true, seed: 7).Epoch(0).SelectMany(b => b.Indices.ToArray()));
        Assert.NotEqual(seen, loader.Epoch(1).SelectMany(b => b.Indices.ToArray()));
        var dropLast = new DataLoader(test, DigitsTransform(), 50, dropLast: true);
        Assert.Equal(7, dropLast.Epoch(0).Count());
        Assert.All(dropLast.Epoch(0), b => Assert.Equal(50, b.Count));
    }

    /// <summary>
    /// The shuffle must be the same in every process, not only within one: its seeds come from SplitMix64 (checked
    /// against the published first output for state 0) and System.Random's seeded generator, both fixed algorithms.
    /// </summary>
    [Fact]
    public void ShuffleSeedsDoNotDependOnTheProcess()
    {
        Assert.Equal(0xE220A8397B1DCDAFUL, DataLoader.SplitMix64(0));
        Assert.Equal(DataLoader.SeedOf(7, 3), DataLoader.SeedOf(7, 3));
        Assert.NotEqual(DataLoader.SeedOf(7, 3), DataLoader.SeedOf(7, 4));
        var test = new ImageFolder(Digits("test"));
        var order = new DataLoader(test, DigitsTransform(), 32, shuffle: true, seed: 7).Order(2);
        var expected = Enumerable.Range(0, test.Count).ToArray();
        var rng = new Random(DataLoader.SeedOf(7, 2));
        for (int i = expected.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (expected[i], expected[j]) = (expected[j], expected[i]);
        }
        Assert.Equal(expected, order);
    }

    [Fact]
    public void ABatchHoldsTheTransformedImagesAndTheirLabels()
    {
        var test = new ImageFolder(Digits("test"));
        var transform = DigitsTransform();
        var batch = new DataLoader(test, transform, 5).Epoch(0).First();
        var expected = new float[transform.OutputSize];
        for (int i = 0; i < 5; i++)
        {
            transform.Apply(test.Samples[i].Path, expected, new Random(0));
            Assert.Equal(expected, batch.Input.Slice(i * transform.OutputSize, transform.OutputSize).ToArray());
            Assert.Equal(test.Samples[i].Label, batch.Labels[i]);
        }
    }

    [Fact]
    public void ACachedLoaderGivesTheSameBatchesAndOpensNoFileAfterItsFirstEpoch()
    {
        string root = Directory.CreateTempSubdirectory("unrolled-cache-").FullName;
        try
        {
            // A copy of two classes of the test digits, so that the files can be deleted after the first epoch.
            var source = new ImageFolder(Digits("test"));
            foreach (var (path, label) in source.Samples.Where(s => s.Label < 2))
            {
                string dir = Directory.CreateDirectory(Path.Combine(root, label.ToString())).FullName;
                File.Copy(path, Path.Combine(dir, Path.GetFileName(path)));
            }
            var data = new ImageFolder(root);
            var plain = new DataLoader(data, DigitsTransform(), 16, shuffle: true, seed: 3);
            var cached = new DataLoader(data, DigitsTransform(), 16, shuffle: true, seed: 3, cache: true);
            Assert.True(cached.Cache);
            static System.Collections.Generic.List<(float[] Input, int[] Labels)> Read(DataLoader loader, int epoch) =>
                loader.Epoch(epoch).Select(b => (b.Input.ToArray(), b.Labels.ToArray())).ToList();
            var expected = new[] { Read(plain, 0), Read(plain, 1) };
            Assert.Equal(expected[0].SelectMany(b => b.Input), Read(cached, 0).SelectMany(b => b.Input));
            Directory.Delete(root, recursive: true); // from here on, opening any image would fail
            var second = Read(cached, 1);
            Assert.Equal(expected[1].SelectMany(b => b.Input), second.SelectMany(b => b.Input));
            Assert.Equal(expected[1].SelectMany(b => b.Labels), second.SelectMany(b => b.Labels));
            // The uncached loader does read the files.
            Assert.Contains("cannot be read", Assert.Throws<ImageFileException>(() => { Read(plain, 2); }).Message);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void CachingATransformWithRandomnessIsRefusedByName()
    {
        var random = new Compose(32, 32, new ImageTransform[] { new Grayscale(), new RandomResizedCrop(32) }, Preprocess.ImageNetMean, Preprocess.ImageNetStd);
        var e = Assert.Throws<ArgumentException>(() => new DataLoader(new ImageFolder(Digits("test")), random, 8, cache: true));
        Assert.Contains("RandomResizedCrop", e.Message);
        Assert.Null(DigitsTransform().FirstRandomStep);
    }

    [Fact]
    public void CorruptImagesAreNamedOrSkippedAndCounted()
    {
        string root = Directory.CreateTempSubdirectory("unrolled-data-").FullName;
        try
        {
            foreach (var label in new[] { "0", "1" })
            {
                Directory.CreateDirectory(Path.Combine(root, label));
                File.Copy(Path.Combine(Digits("train"), label, Directory.GetFiles(Path.Combine(Digits("train"), label))[0].Split('/').Last()), Path.Combine(root, label, "good.png"));
            }
            string bad = Path.Combine(root, "1", "zz-bad.png");
            File.WriteAllText(bad, "garbage");
            var folder = new ImageFolder(root);
            var e = Assert.Throws<ImageFileException>(() => new DataLoader(folder, DigitsTransform(), 4).Epoch(0).ToList());
            Assert.Equal(bad, e.FilePath);
            var skipping = new DataLoader(folder, DigitsTransform(), 4, skipBadImages: true);
            Assert.Equal(2, skipping.Epoch(0).Sum(b => b.Count));
            Assert.Equal(1, skipping.SkippedImages);
            Directory.CreateDirectory(Path.Combine(root, "empty-root"));
            Assert.Throws<InvalidDataException>(() => new ImageFolder(Path.Combine(root, "empty-root")));
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }
}
