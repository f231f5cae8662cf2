using System;
using System.Collections.Generic;
using System.IO;
using Unrolled.IO;

namespace Unrolled.Tests;

/// <summary>PyTorch's reference numbers: small files copied into Fixtures/, large ones read from ../shared/reference/.</summary>
internal static class Reference
{
    public static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>The built dll of a sibling project under tests/, in this build's configuration and framework.</summary>
    public static string SiblingProgram(string project)
    {
        // tests/Unrolled.Tests/bin/<Configuration>/<framework>/ -> tests/<project>/bin/<Configuration>/<framework>/<project>.dll
        var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        string dll = Path.Combine(here.Parent!.Parent!.Parent!.Parent!.FullName, project, "bin", here.Parent.Name, here.Name, project + ".dll");
        if (!File.Exists(dll)) throw new FileNotFoundException($"{dll} is not built (it is part of Generated.sln)", dll);
        return dll;
    }

    /// <summary>../shared/reference/NAME found by walking up from the test binaries, or null.</summary>
    public static string? Shared(string name)
    {
        var env = Environment.GetEnvironmentVariable("UNROLLED_SHARED");
        if (!string.IsNullOrEmpty(env) && File.Exists(Path.Combine(env, "reference", name))) return Path.Combine(env, "reference", name);
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "reference", name);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    public static string SharedOrSkip(string name) =>
        Shared(name) ?? throw new MissingReferenceException(
            $"../shared/reference/{name} is absent (looked upwards from {AppContext.BaseDirectory}; set UNROLLED_SHARED to the shared folder).");

    /// <summary>Every tensor of a .safetensors file as float32 (int64 converted).</summary>
    public static Dictionary<string, (float[] Data, long[] Shape)> Load(string path)
    {
        var result = new Dictionary<string, (float[], long[])>();
        using var file = TensorFile.Open(path);
        foreach (var t in file.Tensors)
        {
            var data = new float[t.Count];
            if (t.DType == DType.F32) file.ReadFloat32(t, data);
            else if (t.DType == DType.I64 && t.Count == 1) data[0] = file.ReadInt64Scalar(t);
            else if (t.DType == DType.I64 && file is SafeTensorsFile safetensors)
            {
                var values = new long[t.Count];
                safetensors.ReadInt64(t, values);
                data = Array.ConvertAll(values, v => (float)v);
            }
            else throw new NotSupportedException(t.DType.ToString());
            result[t.Key] = (data, t.Shape);
        }
        return result;
    }


    /// <summary>max |a - b| / max |b|.</summary>
    public static double MaxRelative(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double maxDiff = 0, maxRef = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs((double)actual[i] - expected[i]));
            maxRef = Math.Max(maxRef, Math.Abs((double)expected[i]));
        }
        return maxDiff / maxRef;
    }

    public static int[] ArgMax(ReadOnlySpan<float> logits, int classes)
    {
        var result = new int[logits.Length / classes];
        for (int n = 0; n < result.Length; n++)
        {
            int best = 0;
            for (int c = 1; c < classes; c++)
                if (logits[n * classes + c] > logits[n * classes + best]) best = c;
            result[n] = best;
        }
        return result;
    }
}

/// <summary>A large reference file is absent: the test fails with this message, which says where it looked.</summary>
internal sealed class MissingReferenceException(string message) : Exception(message);
