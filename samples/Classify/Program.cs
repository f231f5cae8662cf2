using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Reflection;
using Unrolled;
using Unrolled.Classify;
using Unrolled.Vision;

// classify [--arch resnet50] [--weights FILE | imagenet-v1 | imagenet-v2 | default] [--top K] [--device auto|cpu|cuda]
//          [--resize N] [--timing] [--repeat N] IMAGE...
try
{
    var options = Options.Parse(args);
    if (options is null) return 0;
    return Run(options);
}
catch (Exception e) when (e is ArgumentException or WeightsFileException or ImageFileException or PretrainedDownloadException
                              or PlatformNotSupportedException or IOException)
{
    string message = e is ArgumentException { ParamName: { } p } ? e.Message.Replace($" (Parameter '{p}')", "") : e.Message;
    Console.Error.WriteLine("classify: " + message);
    return 2;
}

static int Run(Options o)
{
    var clock = Stopwatch.StartNew();
    var timings = new List<(string, double)>();
    void Mark(string what) { timings.Add((what, clock.Elapsed.TotalMilliseconds)); clock.Restart(); }

    IResNet net = Networks.Create(o.Depth, o.Device);
    Mark("build network");

    // Weights: a file (.pth or .safetensors), or torchvision's published weights by name (downloaded once, cached).
    int resize = 256, crop = 224;
    string weightsName;
    if (File.Exists(o.Weights) || o.Weights.EndsWith(".pth", StringComparison.OrdinalIgnoreCase)
                                || o.Weights.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
    {
        net.LoadWeights(o.Weights);
        weightsName = o.Weights;
    }
    else
    {
        var pretrained = Pretrained.Find(o.Depth, o.Weights);
        string path = Pretrained.GetFile(pretrained, progress: ProgressBar.Show);
        net.LoadWeights(path);
        (resize, crop) = (pretrained.Resize, pretrained.Crop);
        weightsName = $"{pretrained.Name} ({path})";
    }
    if (o.Resize is int r) resize = r;
    net.Eval();
    Mark("load weights");

    var (channels, height, width) = net.InputShape;
    int n = o.Images.Count, size = channels * height * width;
    var input = new float[n * size];
    for (int i = 0; i < n; i++)
        Preprocess.ImageNetEval(o.Images[i], resize, crop).AsSpan().CopyTo(input.AsSpan(i * size, size));
    Mark("preprocess");

    var logits = new float[n * net.OutputSize];
    net.Forward(input, logits);
    Mark("forward");
    if (o.Repeat > 0)
    {
        // Steady-state latency: the first forward also packs the weights and takes the activation memory.
        var times = new double[o.Repeat];
        for (int i = 0; i < times.Length; i++)
        {
            long start = Stopwatch.GetTimestamp();
            net.Forward(input, logits);
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        Array.Sort(times);
        timings.Add(($"forward x{o.Repeat} (median)", times[times.Length / 2]));
        clock.Restart();
    }

    string[] labels = Labels.ImageNet();
    Console.WriteLine($"resnet{o.Depth}, weights {weightsName}, {net.Device}, resize {resize}, crop {crop}");
    for (int i = 0; i < n; i++)
    {
        Console.WriteLine(o.Images[i]);
        var probabilities = Softmax(logits.AsSpan(i * net.OutputSize, net.OutputSize));
        foreach (var (rank, index) in TopK(probabilities, o.Top))
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {rank,2}  {labels[index],-28} {probabilities[index]:F4}"));
    }
    if (o.Timing)
        foreach (var (what, ms) in timings)
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what,-24} {ms,8:F1} ms"));
    return 0;
}

static double[] Softmax(ReadOnlySpan<float> logits)
{
    double max = double.NegativeInfinity;
    foreach (float v in logits) max = Math.Max(max, v);
    var p = new double[logits.Length];
    double sum = 0;
    for (int i = 0; i < p.Length; i++) sum += p[i] = Math.Exp(logits[i] - max);
    for (int i = 0; i < p.Length; i++) p[i] /= sum;
    return p;
}

static IEnumerable<(int Rank, int Index)> TopK(double[] p, int k)
{
    var order = new int[p.Length];
    for (int i = 0; i < order.Length; i++) order[i] = i;
    // Highest probability first; ties by class index, so the output is deterministic.
    Array.Sort(order, (a, b) => p[a] != p[b] ? p[b].CompareTo(p[a]) : a.CompareTo(b));
    for (int i = 0; i < Math.Min(k, order.Length); i++) yield return (i + 1, order[i]);
}

internal static class Labels
{
    public static string[] ImageNet()
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("imagenet_classes.txt")
            ?? throw new InvalidOperationException("imagenet_classes.txt is missing from the executable's resources");
        using var reader = new StreamReader(stream);
        var names = new List<string>(1000);
        while (reader.ReadLine() is { } line) if (line.Length > 0) names.Add(line);
        return names.ToArray();
    }
}

/// <summary>A one-line download progress bar on stderr (only when stderr is a terminal).</summary>
internal static class ProgressBar
{
    private static long s_lastShown = -1;

    public static void Show(DownloadProgress p)
    {
        if (Console.IsErrorRedirected && p.Received != p.Total) return;
        long percent = p.Total is long t && t > 0 ? p.Received * 100 / t : -1;
        if (percent == s_lastShown && p.Received != p.Total) return;
        s_lastShown = percent;
        int filled = percent < 0 ? 0 : (int)(percent * 30 / 100);
        string bar = new string('#', filled) + new string('.', 30 - filled);
        string total = p.Total is long tt ? $" / {tt / 1e6:F1} MB" : " MB";
        Console.Error.Write(string.Create(CultureInfo.InvariantCulture,
            $"\rdownloading {p.FileName} [{bar}] {p.Received / 1e6:F1}{total}"));
        if (p.Total is long done && p.Received == done) Console.Error.WriteLine();
    }
}
