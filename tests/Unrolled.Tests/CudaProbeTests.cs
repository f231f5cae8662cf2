using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using Unrolled.Gpu;

namespace Unrolled.Tests;

/// <summary>Finding the CUDA libraries, and what the devices do on a machine without them (this one).</summary>
public sealed class CudaProbeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-cuda-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Folder(params string[] parts)
    {
        string path = Path.Combine(new[] { _dir }.Concat(parts).ToArray());
        Directory.CreateDirectory(path);
        return path;
    }

    [Fact]
    public void TheSearchOrderIsTheVariableThenTheLoaderPathThenPythonsNvidiaWheels()
    {
        string own = Folder("cuda-13");
        string ownLib64 = Folder("cuda-13", "lib64");
        string ld1 = Folder("ld", "one"), ld2 = Folder("ld", "two");
        string home = Folder("home");
        string cudnnWheel = Folder("home", ".local", "lib", "python3.11", "site-packages", "nvidia", "cudnn", "lib");
        string cudartWheel = Folder("home", ".local", "lib", "python3.11", "site-packages", "nvidia", "cuda_runtime", "lib");
        string venvWheel = Folder("venv", "lib", "python3.12", "site-packages", "nvidia", "cublas", "lib");
        var environment = new Dictionary<string, string>
        {
            ["UNROLLED_CUDA_PATH"] = own,
            ["LD_LIBRARY_PATH"] = $"{ld1}::{ld2}:{Path.Combine(_dir, "absent")}",
            ["VIRTUAL_ENV"] = Path.Combine(_dir, "venv"),
        };

        var dirs = CudaLibraries.SearchDirectories(k => environment.GetValueOrDefault(k), home);

        var ours = dirs.Where(d => d.StartsWith(_dir, StringComparison.Ordinal)).ToList();
        Assert.Equal(new[] { own, ownLib64, ld1, ld2, venvWheel, cudartWheel, cudnnWheel }, ours);

        // The first folder that holds one of the sonames wins, newest soname first within a folder.
        File.WriteAllText(Path.Combine(cudartWheel, "libcudart.so.12"), "");
        File.WriteAllText(Path.Combine(ld2, "libcudart.so.12"), "");
        File.WriteAllText(Path.Combine(ld2, "libcudart.so.13"), "");
        Assert.Equal(Path.Combine(ld2, "libcudart.so.13"), CudaLibraries.Locate(CudaLibraries.Cudart, ours));
        Assert.Null(CudaLibraries.Locate(CudaLibraries.Cudnn, ours));
    }

    [Fact]
    public void ProbingFolderOfFakeLibrariesSaysWhatIsMissingWithoutThrowing()
    {
        string lib = Folder("broken");
        File.WriteAllText(Path.Combine(lib, "libcudart.so.12"), "not an ELF file");
        var probe = CudaLibraries.ProbeNow(new[] { lib });
        Assert.False(probe.Usable);
        Assert.Contains("libcudnn.so.9", probe.Reason);
        Assert.Contains("UNROLLED_CUDA_PATH", probe.Reason);
        Assert.Contains(lib, probe.Reason);
    }

    [Fact]
    public void WithoutAGpuAutoRunsOnTheCpuWithPyTorchsNumbersAndCudaFailsClearly()
    {
        var probe = CudaLibraries.Probe();
        Assert.False(probe.Usable, "this test describes a machine without a usable GPU: " + probe.Reason);

        var net = new Tiny18(Device.Auto);
        Assert.Equal(Device.Cpu, net.Device);
        net.LoadWeights(Reference.Fixture("tiny18.pth"));
        net.Eval();
        var io = Reference.Load(Reference.Fixture("tiny18_io.safetensors"));
        var logits = new float[io["logits_eval"].Data.Length];
        net.Forward(io["input"].Data, logits);
        double scale = io["logits_eval"].Data.Max(v => Math.Abs(v));
        for (int i = 0; i < logits.Length; i++) Assert.True(Math.Abs(logits[i] - io["logits_eval"].Data[i]) <= 1e-5 * scale);

        var e = Assert.Throws<PlatformNotSupportedException>(() => new Tiny18(Device.Cuda));
        Assert.Contains("Device.Cuda", e.Message);
        Assert.Contains(probe.Reason, e.Message);
        Assert.Contains("Device.Auto", e.Message);
    }
}
