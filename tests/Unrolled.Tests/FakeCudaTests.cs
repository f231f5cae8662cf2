using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using Xunit.Abstractions;

namespace Unrolled.Tests;

/// <summary>
/// The CUDA backend's host side on a machine without a GPU: tests/FakeCuda/fakecuda.c, a CPU stand-in for cudart,
/// cuBLAS and cuDNN written from their documented semantics, is compiled here and loaded under the real libraries'
/// names; then the GPU check program runs its tiny reference cases on Device.Cuda: eval logits, train-mode logits,
/// loss and every gradient, and two SGD steps (taken on the device), each against PyTorch's numbers; AdamW (a host
/// step) over accumulated batches and eval-mode (frozen BatchNorm) gradients against the CPU; and that a warmed-up inference call and training step allocate
/// no managed memory. The stand-in rejects any pointer that
/// is not device memory and fills new device memory with NaN, so a tensor mapped to the wrong place, a host pointer
/// handed to a device function, or a value read before it was written fails the check.
/// This proves the backend's plumbing, not the real libraries: that needs a GPU (samples/GpuCheck/run-on-gpu.sh).
/// </summary>
public sealed class FakeCudaTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-fakecuda-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string GpuCheckProgram()
    {
        // tests/Unrolled.Tests/bin/<Configuration>/<framework>/ -> samples/GpuCheck/bin/<Configuration>/<framework>/gpucheck.dll
        var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        string root = here.Parent!.Parent!.Parent!.Parent!.Parent!.FullName;
        string dll = Path.Combine(root, "samples", "GpuCheck", "bin", here.Parent.Name, here.Name, "gpucheck.dll");
        if (!File.Exists(dll)) throw new FileNotFoundException($"{dll} is not built (samples/GpuCheck is part of Generated.sln)", dll);
        return dll;
    }

    private string BuildFakeLibraries()
    {
        string compiler = Environment.GetEnvironmentVariable("CC") is { Length: > 0 } cc ? cc : "cc";
        string library = Path.Combine(_dir, "libfakecuda.so");
        string source = Path.Combine(AppContext.BaseDirectory, "FakeCuda", "fakecuda.c");
        (int code, string text, _) = ChildProcess.Run(compiler, $"-O2 -shared -fPIC -o \"{library}\" \"{source}\" -lm", _dir, timeoutSeconds: 120);
        Assert.True(code == 0, $"{compiler} could not build the CUDA stand-in (a C compiler is needed; .ci/run installs gcc):\n{text}");
        foreach (string soname in new[] { "libcudart.so.12", "libcublas.so.12", "libcudnn.so.9" })
            File.CreateSymbolicLink(Path.Combine(_dir, soname), library); // one file: one loaded copy, one set of allocations
        return _dir;
    }

    [Fact]
    public void OnTheStandInTheGpuCheckPassesEveryTinyReferenceCase()
    {
        string libraries = BuildFakeLibraries();
        string reference = Path.Combine(AppContext.BaseDirectory, "Fixtures");
        var (code, text, seconds) = ChildProcess.Run("dotnet", $"\"{GpuCheckProgram()}\" --reference \"{reference}\" --quick", _dir, timeoutSeconds: 300,
            environment: new Dictionary<string, string> { ["UNROLLED_CUDA_PATH"] = libraries, ["LD_LIBRARY_PATH"] = "" });
        output.WriteLine($"gpucheck --quick on the stand-in ({seconds:F1} s):\n{text}");
        Assert.Contains($"cudnn from {Path.Combine(libraries, "libcudnn.so.9")}", text);
        string[] cases =
        {
            "tiny18: PASS", "tiny50: PASS", "tiny18 gradients: PASS", "tiny50 gradients: PASS",
            "tiny18 two SGD steps: PASS", "tiny50 two SGD steps: PASS", "tiny50 steady state: PASS",
            "tiny18 AdamW on the host, accumulated batches: PASS", "tiny18 non-finite batch: PASS",
            "tiny50 eval-mode gradients: PASS",
        };
        foreach (string line in cases) Assert.Contains(line, text);
        Assert.Contains("Unrolled: Device.Auto -> CUDA: 1 GPU(s)", text); // the one line on stderr
        Assert.Contains("Device.Auto chose Cuda", text);
        Assert.DoesNotContain("FAIL", text);
        Assert.Equal(0, code);
    }

    [Fact]
    public void WhenTheBackendCannotStartAutoFallsBackToTheCpuAndCudaNamesTheFailingCall()
    {
        string libraries = BuildFakeLibraries();
        string reference = Path.Combine(AppContext.BaseDirectory, "Fixtures");
        var (code, text, _) = ChildProcess.Run("dotnet", $"\"{GpuCheckProgram()}\" --reference \"{reference}\" --quick", _dir, timeoutSeconds: 300,
            environment: new Dictionary<string, string> { ["UNROLLED_CUDA_PATH"] = libraries, ["LD_LIBRARY_PATH"] = "", ["FAKECUDA_FAIL"] = "cudnnCreate" });
        output.WriteLine(text);
        Assert.Contains("Unrolled: Device.Auto -> CPU: the CUDA backend could not start (CudaException: cudnnCreate failed with status 1: fake cuDNN: not initialized", text);
        Assert.Contains("Device.Auto chose Cpu", text);
        // Device.Cuda does not fall back: each case fails with the call and the library's words.
        Assert.Contains("tiny18: FAIL: CudaException: cudnnCreate failed with status 1: fake cuDNN: not initialized (FAKECUDA_FAIL)", text);
        Assert.DoesNotContain(": PASS", text);
        Assert.Equal(1, code);
    }
}
