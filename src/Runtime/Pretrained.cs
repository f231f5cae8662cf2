using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Net.Http;
using System.Security.Cryptography;
using System.Threading;
using System.Threading.Tasks;

namespace Unrolled;

/// <summary>
/// One of torchvision's published ResNet weight files, as <c>torchvision.models.ResNet50_Weights.IMAGENET1K_V2</c>
/// describes it: where it is, how images must be prepared for it, and how good it is.
/// </summary>
/// <param name="Depth">18, 34, 50, 101 or 152.</param>
/// <param name="Version">torchvision's enum member: <c>IMAGENET1K_V1</c> or <c>IMAGENET1K_V2</c>.</param>
/// <param name="Url">Where torchvision downloads it from.</param>
/// <param name="Resize">The eval transform's resize (shorter side): 256 for V1, 232 for V2.</param>
/// <param name="Crop">The eval transform's center crop (224).</param>
/// <param name="Top1">ImageNet-1k top-1 accuracy in percent, as torchvision reports it.</param>
/// <param name="Parameters">Parameter count.</param>
public sealed record PretrainedWeights(int Depth, string Version, string Url, int Resize, int Crop, double Top1, long Parameters)
{
    /// <summary>torchvision's name, for example <c>resnet50.IMAGENET1K_V2</c>.</summary>
    public string Name => $"resnet{Depth}.{Version}";

    /// <summary>The file name in the URL, for example <c>resnet50-11ad3fa6.pth</c>; the name in the cache.</summary>
    public string FileName => Url[(Url.LastIndexOf('/') + 1)..];

    /// <summary>The hex digits after the last '-' of the file name: the start of the file's SHA-256 (torch.hub's convention).</summary>
    public string Sha256Prefix
    {
        get
        {
            string stem = Path.GetFileNameWithoutExtension(FileName);
            int dash = stem.LastIndexOf('-');
            return dash < 0 ? "" : stem[(dash + 1)..].ToLowerInvariant();
        }
    }
}

/// <summary>Bytes received so far of a download, and its announced length when the server gave one.</summary>
public readonly record struct DownloadProgress(string FileName, long Received, long? Total);

/// <summary>A pretrained weight file that could not be obtained: the message says why and what to do by hand.</summary>
public sealed class PretrainedDownloadException : IOException
{
    public PretrainedDownloadException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// torchvision's pretrained ResNet weights by name, as <c>resnet50(weights="IMAGENET1K_V2")</c> gets them: the file
/// is downloaded once into a cache folder, checked against the SHA-256 prefix in its name, and renamed into place
/// only when complete; later calls use the cached file without touching the network.
/// </summary>
public static class Pretrained
{
    // torchvision 0.2x's published ResNet weights (torchvision.models.resnet, the *_Weights enums).
    private static readonly PretrainedWeights[] s_all =
    {
        new(18, "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet18-f37072fd.pth", 256, 224, 69.758, 11_689_512),
        new(34, "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet34-b627a593.pth", 256, 224, 73.314, 21_797_672),
        new(50, "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet50-0676ba61.pth", 256, 224, 76.130, 25_557_032),
        new(50, "IMAGENET1K_V2", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", 232, 224, 80.858, 25_557_032),
        new(101, "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet101-63fe2227.pth", 256, 224, 77.374, 44_549_160),
        new(101, "IMAGENET1K_V2", "https://download.pytorch.org/models/resnet101-cd907fc2.pth", 232, 224, 81.886, 44_549_160),
        new(152, "IMAGENET1K_V1", "https://download.pytorch.org/models/resnet152-394f9c45.pth", 256, 224, 78.312, 60_192_808),
        new(152, "IMAGENET1K_V2", "https://download.pytorch.org/models/resnet152-f82ba261.pth", 232, 224, 82.284, 60_192_808),
    };

    /// <summary>Every known weight file, in depth and version order.</summary>
    public static IReadOnlyList<PretrainedWeights> All => s_all;

    /// <summary>
    /// Finds weights by depth and name: <c>imagenet-v1</c> / <c>IMAGENET1K_V1</c>, <c>imagenet-v2</c> /
    /// <c>IMAGENET1K_V2</c>, or <c>default</c> / <c>DEFAULT</c> (the best one for that depth, as torchvision's DEFAULT).
    /// </summary>
    public static PretrainedWeights Find(int depth, string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        string wanted = name.Trim().ToUpperInvariant() switch
        {
            "IMAGENET-V1" or "IMAGENET1K_V1" or "V1" => "IMAGENET1K_V1",
            "IMAGENET-V2" or "IMAGENET1K_V2" or "V2" => "IMAGENET1K_V2",
            "DEFAULT" => "DEFAULT",
            _ => throw new ArgumentException($"'{name}' is not a pretrained weights name; use imagenet-v1, imagenet-v2 or default.", nameof(name)),
        };
        PretrainedWeights? best = null;
        foreach (var w in s_all)
        {
            if (w.Depth != depth) continue;
            if (w.Version == wanted) return w;
            if (wanted == "DEFAULT" && (best is null || w.Top1 > best.Top1)) best = w;
        }
        if (best is not null) return best;
        var available = new List<string>();
        foreach (var w in s_all) if (w.Depth == depth) available.Add(w.Version);
        throw new ArgumentException(available.Count == 0
            ? $"torchvision publishes no weights for ResNet-{depth}; depths with weights: 18, 34, 50, 101, 152."
            : $"torchvision publishes no {wanted} weights for ResNet-{depth}; it has {string.Join(", ", available)}.", nameof(name));
    }

    /// <summary>
    /// Where downloaded weights are kept: <c>$UNROLLED_CACHE</c> if set, else <c>$XDG_CACHE_HOME/unrolled</c>,
    /// else <c>~/.cache/unrolled</c>.
    /// </summary>
    public static string DefaultCacheDirectory
    {
        get
        {
            string? own = Environment.GetEnvironmentVariable("UNROLLED_CACHE");
            if (!string.IsNullOrEmpty(own)) return own;
            string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (!string.IsNullOrEmpty(xdg)) return Path.Combine(xdg, "unrolled");
            return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "unrolled");
        }
    }

    /// <summary>
    /// The local path of <paramref name="weights"/>: the cached file if it is there (no network), otherwise it is
    /// downloaded first. <paramref name="progress"/> is called as bytes arrive.
    /// </summary>
    /// <exception cref="PretrainedDownloadException">The download failed, was cut short, or its SHA-256 did not match;
    /// nothing is left in the cache, and the message says how to fetch the file by hand.</exception>
    public static string GetFile(PretrainedWeights weights, string? cacheDirectory = null, Action<DownloadProgress>? progress = null,
        HttpClient? client = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(weights);
        string dir = cacheDirectory ?? DefaultCacheDirectory;
        string path = Path.Combine(dir, weights.FileName);
        if (File.Exists(path)) return path;
        Download(weights, dir, path, progress, client, cancellationToken);
        return path;
    }

    /// <summary>
    /// Loads torchvision's pretrained weights into <paramref name="network"/>, downloading them once into the cache
    /// (as <c>resnet50(weights=...)</c>). The network must be a torchvision-shaped ResNet with 1000 classes.
    /// Returns the weights used, whose <see cref="PretrainedWeights.Resize"/> and <see cref="PretrainedWeights.Crop"/>
    /// give the eval transform they expect.
    /// </summary>
    public static PretrainedWeights LoadPretrained(this IResNet network, string name = "default", string? cacheDirectory = null,
        Action<DownloadProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(network);
        int depth = DepthOf(network);
        if (network.OutputSize != 1000 || network.InputShape.Channels != 3)
            throw new ArgumentException(
                $"{network.State.Spec.Name} has {network.OutputSize} classes; torchvision's pretrained weights are for 1000 ImageNet classes " +
                "(declare [ResNet(depth)] with the default NumClasses, or load a backbone from a file with LoadWeights).", nameof(network));
        var weights = Find(depth, name);
        network.LoadWeights(GetFile(weights, cacheDirectory, progress, null, cancellationToken));
        return weights;
    }

    /// <summary>The torchvision depth of a network, from the blocks in its state_dict keys.</summary>
    internal static int DepthOf(IResNet network)
    {
        var blocks = new int[4];
        bool bottleneck = false;
        foreach (string key in network.StateKeys)
        {
            if (!key.StartsWith("layer", StringComparison.Ordinal) || key.Length < 8) continue;
            int stage = key[5] - '1';
            int dot = key.IndexOf('.', 7);
            if (stage is < 0 or > 3 || dot < 0) continue;
            if (int.TryParse(key.AsSpan(7, dot - 7), NumberStyles.None, CultureInfo.InvariantCulture, out int block))
                blocks[stage] = Math.Max(blocks[stage], block + 1);
            bottleneck |= key.EndsWith(".conv3.weight", StringComparison.Ordinal);
        }
        return (bottleneck, blocks[0], blocks[1], blocks[2], blocks[3]) switch
        {
            (false, 2, 2, 2, 2) => 18,
            (false, 3, 4, 6, 3) => 34,
            (true, 3, 4, 6, 3) => 50,
            (true, 3, 4, 23, 3) => 101,
            (true, 3, 8, 36, 3) => 152,
            _ => throw new ArgumentException($"{network.State.Spec.Name} is not one of torchvision's ResNet depths.", nameof(network)),
        };
    }

    private static void Download(PretrainedWeights weights, string dir, string path, Action<DownloadProgress>? progress,
        HttpClient? client, CancellationToken cancellationToken)
    {
        string manual = $"Download {weights.Url} by hand and pass the file with --weights FILE (LoadWeights(path)), or put it at {path}.";
        try
        {
            Directory.CreateDirectory(dir);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PretrainedDownloadException($"cannot create the weights cache {dir}: {e.Message}. Set UNROLLED_CACHE to a writable folder. {manual}", e);
        }

        string temp = Path.Combine(dir, $".{weights.FileName}.{Environment.ProcessId}.{Guid.NewGuid():N}.partial");
        bool ownClient = client is null;
        client ??= new HttpClient { Timeout = TimeSpan.FromMinutes(2) };
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, weights.Url);
            using var response = client.Send(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            if (!response.IsSuccessStatusCode)
                throw new PretrainedDownloadException(
                    $"downloading {weights.Name} from {weights.Url} failed: HTTP {(int)response.StatusCode} {response.ReasonPhrase}. {manual}");
            long? total = response.Content.Headers.ContentLength;
            long received = 0;
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            using (var body = response.Content.ReadAsStream(cancellationToken))
            using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                var buffer = new byte[1 << 16];
                progress?.Invoke(new DownloadProgress(weights.FileName, 0, total));
                int n;
                while ((n = body.Read(buffer, 0, buffer.Length)) > 0)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    file.Write(buffer, 0, n);
                    hash.AppendData(buffer, 0, n);
                    received += n;
                    progress?.Invoke(new DownloadProgress(weights.FileName, received, total));
                }
                if (total is long expected && received != expected)
                    throw new PretrainedDownloadException(
                        $"the download of {weights.Url} was cut short: {received:N0} of {expected:N0} bytes arrived. Try again, or: {manual}");
                file.Flush(flushToDisk: true);
            }

            string sha = Convert.ToHexStringLower(hash.GetHashAndReset());
            if (weights.Sha256Prefix.Length > 0 && !sha.StartsWith(weights.Sha256Prefix, StringComparison.Ordinal))
                throw new PretrainedDownloadException(
                    $"the file downloaded from {weights.Url} is damaged or not the published one: its SHA-256 is {sha}, " +
                    $"expected one that starts with {weights.Sha256Prefix}. It was not kept. {manual}");
            File.Move(temp, path, overwrite: true);
        }
        catch (HttpRequestException e)
        {
            throw new PretrainedDownloadException($"cannot download {weights.Name} from {weights.Url} (offline?): {e.Message}. {manual}", e);
        }
        catch (IOException e) when (e is not PretrainedDownloadException)
        {
            throw new PretrainedDownloadException($"the download of {weights.Url} failed: {e.Message}. {manual}", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new PretrainedDownloadException($"the download of {weights.Url} timed out. {manual}", e);
        }
        finally
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (ownClient) client.Dispose();
        }
    }
}
