using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.IO.Compression;
using System.Linq;
using System.Text;
using Unrolled.IO;

namespace Unrolled.Tests;

/// <summary>Loading is strict and all-or-nothing; hostile files fail with <see cref="WeightsFileException"/> and change nothing.</summary>
public sealed class WeightsTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("unrolled-weights-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string PathOf(string name) => Path.Combine(_dir, name);

    private string Write(string name, byte[] bytes)
    {
        string path = PathOf(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>Loads the file into a Tiny18 that holds tiny18's weights and checks the failure changed nothing.</summary>
    private static WeightsFileException FailsAndKeepsWeights(string path)
    {
        var net = new Tiny18();
        net.LoadWeights(Reference.Fixture("tiny18.pth"));
        var before = net.StateKeys.Select(net.GetTensor).ToList();
        var e = Assert.Throws<WeightsFileException>(() => net.LoadWeights(path));
        Assert.Equal(path, e.FilePath);
        Assert.StartsWith(path, e.Message);
        var after = net.StateKeys.Select(net.GetTensor).ToList();
        for (int i = 0; i < before.Count; i++) Assert.Equal(before[i], after[i]);
        return e;
    }

    /// <summary>The tiny18 state_dict as (key, shape, floats or counter) for writing variants of it.</summary>
    private static List<(string Key, int[] Shape, ReadOnlyMemory<float> Floats, long? Int64)> Tiny18Tensors()
    {
        var net = new Tiny18();
        net.LoadWeights(Reference.Fixture("tiny18.safetensors"));
        return net.StateKeys.Select(k => k.EndsWith("num_batches_tracked", StringComparison.Ordinal)
            ? (k, net.GetShape(k), ReadOnlyMemory<float>.Empty, (long?)(long)net.GetTensor(k)[0])
            : (k, net.GetShape(k), new ReadOnlyMemory<float>(net.GetTensor(k)), (long?)null)).ToList();
    }

    [Fact]
    public void PthAndSafetensorsLoadTheSameValues()
    {
        var a = new Tiny50();
        a.LoadWeights(Reference.Fixture("tiny50.pth"));
        var b = new Tiny50();
        b.LoadWeights(Reference.Fixture("tiny50.safetensors"));
        foreach (string key in a.StateKeys) Assert.Equal(a.GetTensor(key), b.GetTensor(key));
        Assert.Equal(7f, a.GetTensor("layer3.1.bn2.num_batches_tracked")[0]);
    }

    [Fact]
    public void SaveWeightsRoundTripsAndWritesNoPartialFile()
    {
        var a = new Tiny18();
        a.LoadWeights(Reference.Fixture("tiny18.pth"));
        string path = PathOf("saved.safetensors");
        a.SaveWeights(path);
        a.SaveWeights(path); // overwrite in place
        Assert.Single(Directory.GetFiles(_dir)); // no temporary file left behind
        var b = new Tiny18();
        b.LoadWeights(path);
        foreach (string key in a.StateKeys) Assert.Equal(a.GetTensor(key), b.GetTensor(key));
        Assert.Throws<ArgumentException>(() => a.SaveWeights(PathOf("model.pth")));
    }

    [Fact]
    public void AnotherNetworksFileNamesTheMissingKeys()
    {
        // Every tiny18 key is also a tiny50 key: the bottleneck's extra ones are unexpected.
        var e = FailsAndKeepsWeights(Reference.Fixture("tiny50.pth"));
        Assert.Contains("198 unexpected key(s): 'layer1.0.conv3.weight'", e.Message);
        Assert.Equal("layer1.0.conv3.weight", e.Key);

        var tensors = Tiny18Tensors();
        tensors.RemoveAll(t => t.Key == "layer2.1.bn1.running_var");
        string path = PathOf("missing.safetensors");
        SafeTensorsFile.Write(path, tensors);
        e = FailsAndKeepsWeights(path);
        Assert.Contains("1 missing key(s): 'layer2.1.bn1.running_var'", e.Message);
        Assert.Equal("layer2.1.bn1.running_var", e.Key);
    }

    [Fact]
    public void WrongShapeNamesTheKeyAndBothShapes()
    {
        var tensors = Tiny18Tensors();
        int i = tensors.FindIndex(t => t.Key == "fc.weight");
        tensors[i] = ("fc.weight", new[] { 5, 128 }, tensors[i].Floats, null);
        string path = PathOf("shape.safetensors");
        SafeTensorsFile.Write(path, tensors);
        var e = FailsAndKeepsWeights(path);
        Assert.Equal("fc.weight", e.Key);
        Assert.Contains("shape is [5, 128], expected [10, 64]", e.Message);
    }

    [Fact]
    public void WrongDtypeNamesTheKey()
    {
        var tensors = Tiny18Tensors();
        int i = tensors.FindIndex(t => t.Key == "bn1.num_batches_tracked");
        tensors[i] = ("bn1.num_batches_tracked", Array.Empty<int>(), new float[] { 7 }, null);
        string path = PathOf("dtype.safetensors");
        SafeTensorsFile.Write(path, tensors);
        var e = FailsAndKeepsWeights(path);
        Assert.Equal("bn1.num_batches_tracked", e.Key);
        Assert.Contains("dtype is float32, expected int64", e.Message);
    }

    [Fact]
    public void EmptyRandomAndTruncatedFilesFail()
    {
        FailsAndKeepsWeights(Write("empty.pth", Array.Empty<byte>()));
        FailsAndKeepsWeights(Write("random.safetensors", Enumerable.Range(0, 4096).Select(i => (byte)(i * 7919 % 251)).ToArray()));
        var pth = File.ReadAllBytes(Reference.Fixture("tiny18.pth"));
        FailsAndKeepsWeights(Write("half.pth", pth[..(pth.Length / 2)]));
        var st = File.ReadAllBytes(Reference.Fixture("tiny18.safetensors"));
        FailsAndKeepsWeights(Write("half.safetensors", st[..(st.Length / 2)]));
        var e = FailsAndKeepsWeights(PathOf("does-not-exist.pth"));
        Assert.Contains("cannot be opened", e.Message);
    }

    [Fact]
    public void HugeHeaderLengthIsRefusedBeforeAllocating()
    {
        var bytes = new byte[64];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1UL << 62);
        var e = FailsAndKeepsWeights(Write("huge.safetensors", bytes));
        Assert.Contains("header length", e.Message);
    }

    [Fact]
    public void OffsetsPastTheEndAreRefused()
    {
        string header = "{\"fc.bias\":{\"dtype\":\"F32\",\"shape\":[10],\"data_offsets\":[0,4000000000]}}";
        var bytes = new byte[8 + header.Length + 40];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        Encoding.ASCII.GetBytes(header).CopyTo(bytes, 8);
        var e = FailsAndKeepsWeights(Write("offsets.safetensors", bytes));
        Assert.Equal("fc.bias", e.Key);
        Assert.Contains("past the end", e.Message);
    }

    /// <summary>Found by the mutation test: a header key that is not UTF-8 made the JSON reader throw its own exception.</summary>
    [Fact]
    public void AHeaderThatIsNotUtf8IsRefused()
    {
        var header = Encoding.ASCII.GetBytes("{\"fc.b#as\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
        header[Array.IndexOf(header, (byte)'#')] = 0xC3; // a UTF-8 lead byte without its continuation
        var bytes = new byte[8 + header.Length + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)header.Length);
        header.CopyTo(bytes, 8);
        var e = FailsAndKeepsWeights(Write("utf8.safetensors", bytes));
        Assert.Contains("not valid UTF-8", e.Message);
    }

    private string TorchZip(string name, byte[] pickle, params (string Name, byte[] Data)[] storages)
    {
        string path = PathOf(name);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            void Add(string entry, byte[] data)
            {
                using var s = zip.CreateEntry(entry, CompressionLevel.NoCompression).Open();
                s.Write(data);
            }
            Add("archive/data.pkl", pickle);
            foreach (var (n, d) in storages) Add("archive/data/" + n, d);
        }
        return path;
    }

    [Fact]
    public void PickleThatAsksToRunAShellCommandIsRefusedByName()
    {
        // pickle.dumps of os.system("touch pwned"), protocol 2: GLOBAL 'posix system', a tuple, REDUCE.
        var pickle = Encoding.Latin1.GetBytes("\u0080\u0002cposix\nsystem\nq\u0000X\u000b\u0000\u0000\u0000touch pwned\u0085R.");
        var e = FailsAndKeepsWeights(TorchZip("evil.pth", pickle));
        Assert.Contains("refuses global 'posix.system'", e.Message);
        Assert.False(File.Exists("pwned"));
    }

    [Fact]
    public void PickleWithBuiltinsEvalIsRefused()
    {
        var pickle = Encoding.Latin1.GetBytes("\u0080\u0002cbuiltins\neval\nX\u0004\u0000\u0000\u00001+1\u0085R.");
        var e = FailsAndKeepsWeights(TorchZip("eval.pth", pickle));
        Assert.Contains("refuses global 'builtins.eval'", e.Message);
    }

    [Fact]
    public void StorageSmallerThanItsTensorIsRefused()
    {
        // {'fc.bias': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 10), 0, (10,), (1,), False, OrderedDict())}
        // with a storage entry of only 8 bytes.
        var p = new List<byte> { 0x80, 2, (byte)'}', (byte)'(' };
        void Str(string s) { p.Add((byte)'X'); p.AddRange(BitConverter.GetBytes(s.Length)); p.AddRange(Encoding.ASCII.GetBytes(s)); }
        Str("fc.bias");
        p.AddRange(Encoding.ASCII.GetBytes("ctorch._utils\n_rebuild_tensor_v2\n("));
        p.Add((byte)'(');
        Str("storage");
        p.AddRange(Encoding.ASCII.GetBytes("ctorch\nFloatStorage\n"));
        Str("0");
        Str("cpu");
        p.AddRange(new byte[] { (byte)'K', 10, (byte)'t', (byte)'Q', (byte)'K', 0, (byte)'K', 10, 0x85, (byte)'K', 1, 0x85, 0x89 });
        p.AddRange(Encoding.ASCII.GetBytes("ccollections\nOrderedDict\n)R"));
        p.AddRange(new byte[] { (byte)'t', (byte)'R', (byte)'u', (byte)'.' });
        var e = FailsAndKeepsWeights(TorchZip("short.pth", p.ToArray(), ("0", new byte[8])));
        Assert.Equal("fc.bias", e.Key);
        Assert.Contains("holds 8 bytes", e.Message);
    }

    [Fact]
    public void ZipWithoutAPickleOrWithTraversalIsRefused()
    {
        string path = PathOf("plain.zip");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create)) zip.CreateEntry("readme.txt");
        Assert.Contains("no ARCHIVE/data.pkl", FailsAndKeepsWeights(path).Message);

        string traversal = PathOf("traversal.pth");
        using (var zip = ZipFile.Open(traversal, ZipArchiveMode.Create)) zip.CreateEntry("../../etc/data.pkl");
        Assert.Contains("not a plain relative path", FailsAndKeepsWeights(traversal).Message);
    }

    [Fact]
    public void LegacyTorchSaveFormatGetsAnExplanation()
    {
        var e = FailsAndKeepsWeights(Write("legacy.pth", new byte[] { 0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e }));
        Assert.Contains("legacy", e.Message);
    }
}
