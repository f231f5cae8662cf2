using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Unrolled.Tests;

/// <summary>
/// Pretrained weights by name: resolution, and the download path against a real HTTP server on 127.0.0.1 (a complete,
/// an interrupted, a corrupted and a refused download, and the cache used without the network).
/// </summary>
public sealed class PretrainedTests : IDisposable
{
    private readonly string _cache = Directory.CreateTempSubdirectory("unrolled-cache-").FullName;

    public void Dispose() => Directory.Delete(_cache, recursive: true);

    [Theory]
    [InlineData(50, "imagenet-v1", "resnet50-0676ba61.pth", 256)]
    [InlineData(50, "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 232)]
    [InlineData(50, "default", "resnet50-11ad3fa6.pth", 232)]
    [InlineData(18, "default", "resnet18-f37072fd.pth", 256)]
    [InlineData(152, "imagenet-v2", "resnet152-f82ba261.pth", 232)]
    public void NamesResolveAsTorchvision(int depth, string name, string file, int resize)
    {
        var w = Pretrained.Find(depth, name);
        Assert.Equal(file, w.FileName);
        Assert.Equal(resize, w.Resize);
        Assert.Equal(224, w.Crop);
        Assert.Equal("https://download.pytorch.org/models/" + file, w.Url);
        Assert.Equal(file.Split('-', '.')[1], w.Sha256Prefix);
    }

    [Fact]
    public void UnknownNamesAndVersionsSayWhatExists()
    {
        var e = Assert.Throws<ArgumentException>(() => Pretrained.Find(18, "imagenet-v2"));
        Assert.Contains("IMAGENET1K_V1", e.Message);
        Assert.Contains("imagenet-v1", Assert.Throws<ArgumentException>(() => Pretrained.Find(50, "coco")).Message);
        Assert.Contains("18, 34, 50", Assert.Throws<ArgumentException>(() => Pretrained.Find(26, "default")).Message);
    }

    [Fact]
    public void TheTableMatchesTheReferenceList()
    {
        string? json = Reference.Shared("torchvision_resnet_weights.json");
        Assert.True(json is not null, "torchvision_resnet_weights.json not found under shared/reference (set UNROLLED_SHARED)");
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json!));
        var names = doc.RootElement.EnumerateObject().Select(p => p.Name).ToList();
        Assert.Equal(names, Pretrained.All.Select(w => w.Name));
        foreach (var w in Pretrained.All)
        {
            var entry = doc.RootElement.GetProperty(w.Name);
            Assert.Equal(entry.GetProperty("url").GetString(), w.Url);
            Assert.Equal(entry.GetProperty("resize").GetInt32(), w.Resize);
            Assert.Equal(entry.GetProperty("crop").GetInt32(), w.Crop);
            Assert.Equal(entry.GetProperty("params").GetInt64(), w.Parameters);
            Assert.Equal(entry.GetProperty("acc@1").GetDouble(), w.Top1);
        }
    }

    private static byte[] Served => File.ReadAllBytes(Reference.Fixture("tiny18.pth"));

    private static PretrainedWeights Served18(string url, byte[] bytes)
    {
        string prefix = Convert.ToHexStringLower(SHA256.HashData(bytes))[..8];
        return new PretrainedWeights(18, "TEST", $"{url}/tiny18-{prefix}.pth", 256, 224, 0, 0);
    }

    private string[] CacheFiles() => Directory.GetFiles(_cache).Select(Path.GetFileName).ToArray()!;

    [Fact]
    public void DownloadsOnceChecksTheHashAndThenUsesTheCache()
    {
        byte[] bytes = Served;
        using var server = new LoopbackServer((_, stream) => LoopbackServer.Respond(stream, 200, bytes));
        var weights = Served18(server.Url, bytes);
        var progress = new List<DownloadProgress>();

        string path = Pretrained.GetFile(weights, _cache, progress.Add);

        Assert.Equal(Path.Combine(_cache, weights.FileName), path);
        Assert.Equal(bytes, File.ReadAllBytes(path));
        Assert.Equal(new[] { weights.FileName }, CacheFiles());
        Assert.Equal(1, server.Requests);
        Assert.Equal(bytes.Length, progress[^1].Received);
        Assert.Equal(bytes.Length, progress[^1].Total);
        Assert.True(progress.Count >= 2);

        var net = new Tiny18();
        net.LoadWeights(path);
        var reference = new Tiny18();
        reference.LoadWeights(Reference.Fixture("tiny18.pth"));
        Assert.Equal(reference.GetTensor("fc.weight"), net.GetTensor("fc.weight"));

        // Cached: no request is made, even with the server gone.
        server.Dispose();
        Assert.Equal(path, Pretrained.GetFile(weights, _cache));
        Assert.Equal(1, server.Requests);
    }

    [Fact]
    public void AnInterruptedDownloadLeavesNothingBehind()
    {
        byte[] bytes = Served;
        // The server announces the whole length, sends half and closes the connection.
        using var server = new LoopbackServer((_, stream) => LoopbackServer.Respond(stream, 200, bytes, sendOnly: bytes.Length / 2));
        var weights = Served18(server.Url, bytes);

        var e = Assert.Throws<PretrainedDownloadException>(() => Pretrained.GetFile(weights, _cache));

        Assert.Contains(weights.Url, e.Message);
        Assert.Contains("--weights FILE", e.Message);
        Assert.Empty(CacheFiles());

        // The next try, with a server that completes, succeeds.
        using var good = new LoopbackServer((_, stream) => LoopbackServer.Respond(stream, 200, bytes));
        var again = weights with { Url = weights.Url.Replace(server.Url, good.Url, StringComparison.Ordinal) };
        Assert.Equal(bytes, File.ReadAllBytes(Pretrained.GetFile(again, _cache)));
    }

    [Fact]
    public void ACorruptedDownloadIsRefusedByItsHash()
    {
        byte[] bytes = Served;
        byte[] damaged = (byte[])bytes.Clone();
        damaged[damaged.Length / 3] ^= 0x40;
        using var server = new LoopbackServer((_, stream) => LoopbackServer.Respond(stream, 200, damaged));
        var weights = Served18(server.Url, bytes);

        var e = Assert.Throws<PretrainedDownloadException>(() => Pretrained.GetFile(weights, _cache));

        Assert.Contains("SHA-256", e.Message);
        Assert.Contains(weights.Sha256Prefix, e.Message);
        Assert.Contains(Convert.ToHexStringLower(SHA256.HashData(damaged)), e.Message);
        Assert.Empty(CacheFiles());
    }

    [Fact]
    public void HttpErrorsAndNoServerAreClearMessages()
    {
        using (var server = new LoopbackServer((_, stream) => LoopbackServer.Respond(stream, 404, Encoding.ASCII.GetBytes("not here"))))
        {
            var e = Assert.Throws<PretrainedDownloadException>(() => Pretrained.GetFile(Served18(server.Url, Served), _cache));
            Assert.Contains("HTTP 404", e.Message);
        }

        // A port nobody listens on: as offline.
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var offline = Assert.Throws<PretrainedDownloadException>(() => Pretrained.GetFile(Served18($"http://127.0.0.1:{port}", Served), _cache));
        Assert.Contains("offline", offline.Message);
        Assert.Contains("--weights FILE", offline.Message);
        Assert.Empty(CacheFiles());
    }

    [Fact]
    public void LoadPretrainedUsesTheCachedFileOfTheRightDepth()
    {
        // A cached file under torchvision's name is used as is (no network): here ResNet-18 weights made by us.
        var source = new ResNet18();
        source.SetTensor("fc.bias", Enumerable.Range(0, 1000).Select(i => i * 0.001f).ToArray());
        string saved = Path.Combine(_cache, "made.safetensors");
        source.SaveWeights(saved);
        File.Move(saved, Path.Combine(_cache, "resnet18-f37072fd.pth")); // the loader tells formats by their bytes

        var net = new ResNet18();
        var used = net.LoadPretrained("imagenet-v1", _cache);

        Assert.Equal("resnet18.IMAGENET1K_V1", used.Name);
        Assert.Equal(256, used.Resize);
        Assert.Equal(source.GetTensor("fc.bias"), net.GetTensor("fc.bias"));
        Assert.Equal(source.GetTensor("layer4.1.conv2.weight"), net.GetTensor("layer4.1.conv2.weight"));

        Assert.Equal(50, Pretrained.DepthOf(new ResNet50()));
        Assert.Equal(34, Pretrained.DepthOf(new ResNet34()));
        Assert.Equal(101, Pretrained.DepthOf(new ResNet101()));
        Assert.Equal(152, Pretrained.DepthOf(new ResNet152()));
        var e = Assert.Throws<ArgumentException>(() => new Tiny18().LoadPretrained("imagenet-v1", _cache));
        Assert.Contains("1000", e.Message);
    }
}

/// <summary>A minimal HTTP/1.1 server on 127.0.0.1 with a scripted response per request.</summary>
internal sealed class LoopbackServer : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly Task _loop;
    private int _requests;

    public LoopbackServer(Action<int, NetworkStream> respond)
    {
        _listener.Start();
        Url = $"http://127.0.0.1:{((IPEndPoint)_listener.LocalEndpoint).Port}";
        _loop = Task.Run(() =>
        {
            while (true)
            {
                TcpClient client;
                try { client = _listener.AcceptTcpClient(); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException) { return; }
                using (client)
                using (var stream = client.GetStream())
                {
                    ReadRequestHead(stream);
                    int n = Interlocked.Increment(ref _requests);
                    try { respond(n, stream); }
                    catch (IOException) { }
                }
            }
        });
    }

    public string Url { get; }

    public int Requests => Volatile.Read(ref _requests);

    private static void ReadRequestHead(NetworkStream stream)
    {
        var seen = new List<byte>();
        int b;
        while ((b = stream.ReadByte()) >= 0)
        {
            seen.Add((byte)b);
            int n = seen.Count;
            if (n >= 4 && seen[n - 4] == '\r' && seen[n - 3] == '\n' && seen[n - 2] == '\r' && seen[n - 1] == '\n') return;
        }
    }

    /// <summary>Sends a response announcing <paramref name="body"/>'s full length; with <paramref name="sendOnly"/>, only that many bytes follow.</summary>
    public static void Respond(NetworkStream stream, int status, byte[] body, int? sendOnly = null)
    {
        string head = $"HTTP/1.1 {status} {(status == 200 ? "OK" : "Not Found")}\r\nContent-Length: {body.Length}\r\n" +
                      "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
        stream.Write(Encoding.ASCII.GetBytes(head));
        stream.Write(body, 0, sendOnly ?? body.Length);
        stream.Flush();
    }

    public void Dispose()
    {
        _listener.Stop();
        _loop.Wait(TimeSpan.FromSeconds(10));
    }
}
