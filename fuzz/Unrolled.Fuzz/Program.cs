using System;
using System.IO;
using SharpFuzz;
using Unrolled;
using Unrolled.Fuzz;
using Unrolled.IO;
using Unrolled.Vision;

// Unrolled.Fuzz pth|safetensors|image            under afl-fuzz (SharpFuzz's fork server; see fuzz/run.sh)
// Unrolled.Fuzz replay pth|safetensors|image FILE...  runs files once each, outside AFL (regression inputs)
if (args.Length < 1 || Targets.Find(args[args[0] == "replay" ? 1 : 0]) is not { } target)
{
    Console.Error.WriteLine("usage: Unrolled.Fuzz pth|safetensors|image | Unrolled.Fuzz replay TARGET FILE...");
    return 2;
}
if (args[0] == "replay")
{
    foreach (string file in args[2..])
    {
        using var stream = File.OpenRead(file);
        target(stream); // an unexpected exception ends the process with a stack trace
        Console.WriteLine($"ok {file}");
    }
    return 0;
}
Fuzzer.OutOfProcess.Run(target);
return 0;

namespace Unrolled.Fuzz
{
    [ResNet(18, NumClasses = 10, BaseWidth = 8, ImageSize = 64)]
    public sealed partial class Tiny18;

    internal static class Targets
    {
        // Inputs go through a file, as users' files do: the readers take paths. /dev/shm keeps it in memory.
        private static readonly string s_dir = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        private static readonly Tiny18 s_net = new();
        private static readonly float[] s_scratch = new float[1 << 20];

        public static Action<Stream>? Find(string name) => name switch
        {
            "pth" => s => Weights(s, ".pth"),
            "safetensors" => s => Weights(s, ".safetensors"),
            "image" => Image,
            _ => null,
        };

        private static string Spill(Stream input, string extension)
        {
            string path = Path.Combine(s_dir, $"unrolled-fuzz-{Environment.ProcessId}{extension}");
            using (var file = File.Create(path)) input.CopyTo(file);
            return path;
        }

        /// <summary>Every tensor the file lists is read, then the file is loaded into a network; any exception but WeightsFileException is a finding.</summary>
        private static void Weights(Stream input, string extension)
        {
            string path = Spill(input, extension);
            try
            {
                using (var file = TensorFile.Open(path))
                {
                    foreach (var t in file.Tensors)
                    {
                        if (t.DType == DType.I64 && t.Shape.Length == 0) file.ReadInt64Scalar(t);
                        else if (t.DType == DType.F32 && t.Count <= s_scratch.Length) file.ReadFloat32(t, s_scratch.AsSpan(0, (int)t.Count));
                    }
                }
            }
            catch (WeightsFileException) { }
            try { s_net.LoadWeights(path); }
            catch (WeightsFileException) { }
        }

        /// <summary>Decode, resize, crop, normalize; any exception but ImageFileException is a finding.</summary>
        private static void Image(Stream input)
        {
            string path = Spill(input, ".img");
            try { Preprocess.ImageNetEval(path, resize: 40, crop: 32); }
            catch (ImageFileException) { }
        }
    }
}
