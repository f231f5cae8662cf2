using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Threading;

namespace Unrolled.Gpu;

/// <summary>What the CUDA probe found: whether a GPU and the libraries can be used, and why (not).</summary>
/// <param name="Usable">A GPU is present and cudart, cuBLAS and cuDNN load.</param>
/// <param name="Devices">GPUs cudart reports (0 when it could not be asked).</param>
/// <param name="Reason">One line: what was found, or what is missing and how to point to it.</param>
/// <param name="Libraries">The file each library was loaded from, by name (cudart, cublas, cudnn).</param>
public sealed record CudaProbe(bool Usable, int Devices, string Reason, IReadOnlyDictionary<string, string> Libraries);

/// <summary>
/// Finds the CUDA libraries the way a user's machine has them: <c>UNROLLED_CUDA_PATH</c> (a folder, or a CUDA
/// install with lib64/ and lib/), then <c>LD_LIBRARY_PATH</c>, then the <c>nvidia/*/lib</c> folders that pip's CUDA
/// wheels create in a Python installation's site-packages (as PyTorch installs them), then the system loader's own
/// search (ldconfig). Sonames are tried newest first: libcudart.so.13/12, libcublas.so.13/12, libcudnn.so.9.
/// </summary>
public static unsafe class CudaLibraries
{
    public static readonly IReadOnlyList<string> Cudart = new[] { "libcudart.so.13", "libcudart.so.12" };
    public static readonly IReadOnlyList<string> Cublas = new[] { "libcublas.so.13", "libcublas.so.12" };
    public static readonly IReadOnlyList<string> Cudnn = new[] { "libcudnn.so.9" };

    /// <summary>The folders searched, in order, before the system loader's own search.</summary>
    public static IReadOnlyList<string> SearchDirectories(Func<string, string?>? environment = null, string? home = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        home ??= Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        var dirs = new List<string>();
        void Add(string? dir)
        {
            if (!string.IsNullOrEmpty(dir) && Directory.Exists(dir) && !dirs.Contains(dir)) dirs.Add(dir);
        }

        foreach (string root in Split(environment("UNROLLED_CUDA_PATH")))
        {
            Add(root);
            Add(Path.Combine(root, "lib64"));
            Add(Path.Combine(root, "lib"));
        }
        foreach (string dir in Split(environment("LD_LIBRARY_PATH"))) Add(dir);
        foreach (string sitePackages in SitePackages(environment, home))
        {
            string nvidia = Path.Combine(sitePackages, "nvidia");
            if (!Directory.Exists(nvidia)) continue;
            foreach (string package in Directory.GetDirectories(nvidia).OrderBy(d => d, StringComparer.Ordinal))
                Add(Path.Combine(package, "lib"));
        }
        return dirs;
    }

    private static IEnumerable<string> Split(string? list) =>
        (list ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>site-packages of the Python installations a user is likely to run PyTorch from.</summary>
    private static IEnumerable<string> SitePackages(Func<string, string?> environment, string home)
    {
        var prefixes = new List<string>();
        foreach (string variable in new[] { "VIRTUAL_ENV", "CONDA_PREFIX" })
            if (environment(variable) is { Length: > 0 } prefix) prefixes.Add(prefix);
        string pyenv = Path.Combine(home, ".pyenv", "versions");
        if (Directory.Exists(pyenv)) prefixes.AddRange(Directory.GetDirectories(pyenv).OrderBy(d => d, StringComparer.Ordinal));
        prefixes.Add(Path.Combine(home, ".local"));
        prefixes.AddRange(new[] { "/opt/conda", "/usr/local", "/usr" });
        foreach (string prefix in prefixes)
        {
            string lib = Path.Combine(prefix, "lib");
            if (!Directory.Exists(lib)) continue;
            foreach (string python in Directory.GetDirectories(lib, "python3*").OrderByDescending(d => d, StringComparer.Ordinal))
            {
                yield return Path.Combine(python, "site-packages");
                yield return Path.Combine(python, "dist-packages");
            }
        }
    }

    /// <summary>The first of <paramref name="sonames"/> found in <paramref name="directories"/> (in order), as a path.</summary>
    public static string? Locate(IReadOnlyList<string> sonames, IReadOnlyList<string> directories)
    {
        foreach (string dir in directories)
            foreach (string soname in sonames)
            {
                string path = Path.Combine(dir, soname);
                if (File.Exists(path)) return path;
            }
        return null;
    }

    private static CudaProbe? s_probe;
    private static Dictionary<string, nint> s_lastHandles = new();
    private static int s_resolverSet;

    /// <summary>
    /// Routes the bindings' library names (<see cref="CudaNative"/>: "unrolled-cudart", "unrolled-cublas",
    /// "unrolled-cudnn") to the files <see cref="Probe"/> loaded. Call only after a usable probe.
    /// </summary>
    internal static void UseProbedLibraries()
    {
        if (Interlocked.Exchange(ref s_resolverSet, 1) != 0) return;
        var handles = s_lastHandles;
        NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, (name, _, _) =>
            name.StartsWith("unrolled-", StringComparison.Ordinal) && handles.TryGetValue(name["unrolled-".Length..], out nint handle) ? handle : 0);
    }

    /// <summary>Probes once per process: loads cudart, cuBLAS and cuDNN and asks cudart how many GPUs there are.</summary>
    public static CudaProbe Probe()
    {
        if (s_probe is not null) return s_probe;
        try
        {
            s_probe = ProbeNow(SearchDirectories(), out s_lastHandles);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or BadImageFormatException or EntryPointNotFoundException)
        {
            // The CPU path must never suffer from the GPU's absence or a broken installation.
            s_probe = new CudaProbe(false, 0, $"probing for CUDA failed: {e.Message}", new Dictionary<string, string>());
        }
        return s_probe;
    }

    internal static CudaProbe ProbeNow(IReadOnlyList<string> directories) => ProbeNow(directories, out _);

    private static CudaProbe ProbeNow(IReadOnlyList<string> directories, out Dictionary<string, nint> handles)
    {
        var loaded = new Dictionary<string, string>();
        handles = new Dictionary<string, nint>();
        var missing = new List<string>();
        nint cudart = 0;
        foreach (var (name, sonames) in new[] { ("cudart", Cudart), ("cublas", Cublas), ("cudnn", Cudnn) })
        {
            nint handle = 0;
            string? path = Locate(sonames, directories);
            if (path is not null && NativeLibrary.TryLoad(path, out handle)) loaded[name] = path;
            else
            {
                foreach (string soname in sonames)
                    if (NativeLibrary.TryLoad(soname, out handle)) { loaded[name] = soname + " (system search)"; break; }
            }
            if (handle == 0) missing.Add(string.Join(" or ", sonames));
            else handles[name] = handle;
            if (name == "cudart") cudart = handle;
        }

        int devices = 0;
        string? cudaError = null;
        if (cudart != 0 && NativeLibrary.TryGetExport(cudart, "cudaGetDeviceCount", out nint getCount))
        {
            int status = ((delegate* unmanaged<int*, int>)getCount)(&devices);
            if (status != 0)
            {
                devices = 0;
                cudaError = $"cudaGetDeviceCount returned {status}{ErrorText(cudart, status)}";
            }
        }

        string searched = directories.Count == 0 ? "no folders beyond the system search" : string.Join(", ", directories);
        if (missing.Count > 0)
            return new CudaProbe(false, devices,
                $"not found: {string.Join("; ", missing)} (searched {searched}); point UNROLLED_CUDA_PATH or LD_LIBRARY_PATH at the folder " +
                "that holds them (pip's nvidia-*-cu12 wheels put them in site-packages/nvidia/*/lib)", loaded);
        if (devices == 0)
            return new CudaProbe(false, 0, $"the CUDA libraries load but no GPU is usable ({cudaError ?? "cudaGetDeviceCount reports 0 devices"})", loaded);
        return new CudaProbe(true, devices, $"{devices} GPU(s); {string.Join(", ", loaded.Select(p => $"{p.Key} from {p.Value}"))}", loaded);
    }

    private static string ErrorText(nint cudart, int status)
    {
        if (!NativeLibrary.TryGetExport(cudart, "cudaGetErrorString", out nint getString)) return "";
        nint text = ((delegate* unmanaged<int, nint>)getString)(status);
        return text == 0 ? "" : $" ({Marshal.PtrToStringUTF8(text)})";
    }
}
