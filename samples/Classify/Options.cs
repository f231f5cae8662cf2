using System;
using System.Collections.Generic;
using System.Globalization;

namespace Unrolled.Classify;

internal sealed class Options
{
    public int Depth { get; private set; } = 50;
    public string Weights { get; private set; } = "default";
    public int Top { get; private set; } = 5;
    public Device Device { get; private set; } = Device.Auto;
    public int? Resize { get; private set; }
    public bool Timing { get; private set; }
    public int Repeat { get; private set; }
    public List<string> Images { get; } = new();

    public const string Usage = """
        usage: classify [options] IMAGE...

        Classifies images with torchvision's ImageNet ResNets and prints the top K classes of each.

          --arch NAME        resnet18, resnet34, resnet50 (default), resnet101, resnet152
          --weights W        a state_dict file (.pth from torch.save, or .safetensors), or torchvision's
                             published weights by name: imagenet-v1, imagenet-v2, default (the best one);
                             named weights are downloaded once to $UNROLLED_CACHE, $XDG_CACHE_HOME/unrolled
                             or ~/.cache/unrolled
          --top K            how many classes to print per image (default 5)
          --device D         auto (default), cpu or cuda
          --resize N         the eval transform's resize (default: 256, or what the named weights use: 232 for V2)
          --timing           print the time of each stage on stderr
          --repeat N         run the forward pass N more times and print its median time (implies --timing)
          -h, --help         this text
        """;

    public static Options? Parse(string[] args)
    {
        var o = new Options();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "-h" or "--help":
                    Console.WriteLine(Usage);
                    return null;
                case "--arch":
                {
                    string v = Value();
                    if (!v.StartsWith("resnet", StringComparison.OrdinalIgnoreCase)
                        || !int.TryParse(v.AsSpan(6), NumberStyles.None, CultureInfo.InvariantCulture, out int d)
                        || Array.IndexOf(Networks.Depths, d) < 0)
                        throw new ArgumentException($"--arch {v}: expected resnet18, resnet34, resnet50, resnet101 or resnet152");
                    o.Depth = d;
                    break;
                }
                case "--weights": o.Weights = Value(); break;
                case "--top": o.Top = Positive(a, Value()); break;
                case "--resize": o.Resize = Positive(a, Value()); break;
                case "--timing": o.Timing = true; break;
                case "--repeat": o.Repeat = Positive(a, Value()); o.Timing = true; break;
                case "--device":
                {
                    string v = Value();
                    o.Device = v.ToLowerInvariant() switch
                    {
                        "auto" => Device.Auto,
                        "cpu" => Device.Cpu,
                        "cuda" or "gpu" => Device.Cuda,
                        _ => throw new ArgumentException($"--device {v}: expected auto, cpu or cuda"),
                    };
                    break;
                }
                default:
                    if (a.StartsWith('-') && a.Length > 1) throw new ArgumentException($"unknown option {a}; see --help");
                    o.Images.Add(a);
                    break;
            }
        }
        if (o.Images.Count == 0) throw new ArgumentException("no image given; usage: classify [--weights W] [--top K] IMAGE... (see --help)");
        return o;
    }

    private static int Positive(string option, string value) =>
        int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n > 0
            ? n
            : throw new ArgumentException($"{option} {value}: expected a positive whole number");
}
