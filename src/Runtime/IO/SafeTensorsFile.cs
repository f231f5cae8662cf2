using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.IO;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Unrolled.IO;

/// <summary>
/// The safetensors format: an 8-byte little-endian header length, a JSON header
/// (<c>{"key": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}</c>),
/// then the raw little-endian row-major data. Offsets are relative to the end of the header.
/// </summary>
internal sealed class SafeTensorsFile : TensorFile
{
    private readonly FileStream _stream;
    private readonly List<TensorInfo> _tensors = new();
    private readonly Dictionary<TensorInfo, (long Begin, long End)> _ranges = new();
    private readonly long _dataStart;
    private readonly Dictionary<string, string> _metadata = new(StringComparer.Ordinal);

    public override IReadOnlyDictionary<string, string> Metadata => _metadata;

    public SafeTensorsFile(string path, FileStream stream) : base(path)
    {
        _stream = stream;
        long fileLength = stream.Length;
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength == 0 || headerLength > (ulong)MaxHeaderBytes || headerLength > (ulong)(fileLength - 8))
            throw Bad(null, $"not a torch.save zip, and as a .safetensors file its header length {headerLength} does not fit the file's {fileLength} bytes (at most {Math.Min(MaxHeaderBytes, fileLength - 8)})");
        _dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - _dataStart;

        byte[] header = new byte[(int)headerLength];
        stream.ReadExactly(header);
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw Bad(null, "the .safetensors header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw Bad(null, "the .safetensors header is not valid JSON: " + e.Message, e);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw Bad(null, "the .safetensors header is not a JSON object");
            foreach (JsonProperty p in doc.RootElement.EnumerateObject())
            {
                if (p.Name == "__metadata__")
                {
                    if (p.Value.ValueKind != JsonValueKind.Object) throw Bad(null, "\"__metadata__\" is not an object of strings");
                    foreach (var m in p.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Bad(null, $"metadata '{m.Name}' is not a string");
                        _metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                var info = ParseEntry(p.Name, p.Value, dataLength, out long begin, out long end);
                _tensors.Add(info);
                _ranges[info] = (begin, end);
            }
        }
    }

    private TensorInfo ParseEntry(string key, JsonElement e, long dataLength, out long begin, out long end)
    {
        if (e.ValueKind != JsonValueKind.Object
            || !e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String
            || !e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array
            || !e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw Bad(key, "entry must be an object with \"dtype\" (string), \"shape\" (array) and \"data_offsets\" ([begin, end])");

        DType dtype = dtypeEl.GetString() switch
        {
            "F32" => DType.F32, "F64" => DType.F64, "F16" => DType.F16, "BF16" => DType.BF16,
            "I64" => DType.I64, "I32" => DType.I32, "I16" => DType.I16, "I8" => DType.I8,
            "U8" => DType.U8, "BOOL" => DType.Bool,
            var other => throw Bad(key, $"unknown dtype \"{other}\""),
        };
        if (shapeEl.GetArrayLength() > 8) throw Bad(key, $"has {shapeEl.GetArrayLength()} dimensions (at most 8 are accepted)");
        var shape = new long[shapeEl.GetArrayLength()];
        int i = 0;
        long count = 1;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0 || v > int.MaxValue)
                throw Bad(key, "shape must hold non-negative integers below 2^31");
            shape[i++] = v;
            count = v == 0 || count <= long.MaxValue / v ? count * v : long.MaxValue;
        }

        var a = offEl[0];
        var b = offEl[1];
        if (a.ValueKind != JsonValueKind.Number || b.ValueKind != JsonValueKind.Number
            || !a.TryGetInt64(out begin) || !b.TryGetInt64(out end) || begin < 0 || end < begin)
            throw Bad(key, "data_offsets must be two non-negative integers [begin, end] with begin <= end");
        if (end > dataLength)
            throw Bad(key, $"data_offsets [{begin}, {end}] run past the end of the data ({dataLength} bytes)");
        int size = DTypes.Size(dtype);
        if (count > (end - begin) / size || count * size != end - begin)
            throw Bad(key, $"shape [{string.Join(", ", shape)}] of {DTypes.TorchName(dtype)} needs {(count > long.MaxValue / size ? "more than 2^63" : (count * size).ToString())} bytes but data_offsets span {end - begin}");
        return new TensorInfo(key, dtype, shape);
    }

    public override IReadOnlyList<TensorInfo> Tensors => _tensors;

    public override void ReadFloat32(TensorInfo tensor, Span<float> destination)
    {
        var (begin, end) = _ranges[tensor];
        if (tensor.DType != DType.F32 || destination.Length * 4L != end - begin)
            throw Bad(tensor.Key, "internal: float32 read of a mismatched tensor");
        ReadAt(_dataStart + begin, MemoryMarshal.AsBytes(destination), tensor.Key);
        if (!BitConverter.IsLittleEndian) ReverseEndianness(destination);
    }

    public override long ReadInt64Scalar(TensorInfo tensor)
    {
        var (begin, end) = _ranges[tensor];
        if (tensor.DType != DType.I64 || end - begin != 8)
            throw Bad(tensor.Key, "internal: int64 read of a mismatched tensor");
        Span<byte> b = stackalloc byte[8];
        ReadAt(_dataStart + begin, b, tensor.Key);
        return BinaryPrimitives.ReadInt64LittleEndian(b);
    }

    /// <summary>An int64 tensor's values (labels in the reference files), little-endian on disk.</summary>
    public void ReadInt64(TensorInfo tensor, Span<long> destination)
    {
        var (begin, end) = _ranges[tensor];
        if (tensor.DType != DType.I64 || destination.Length * 8L != end - begin)
            throw Bad(tensor.Key, "internal: int64 read of a mismatched tensor");
        ReadAt(_dataStart + begin, MemoryMarshal.AsBytes(destination), tensor.Key);
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(destination, destination);
    }

    private void ReadAt(long position, Span<byte> destination, string key)
    {
        int got = RandomAccess.Read(_stream.SafeFileHandle, destination, position);
        while (got < destination.Length)
        {
            int more = RandomAccess.Read(_stream.SafeFileHandle, destination[got..], position + got);
            if (more <= 0) throw Bad(key, "the file ended while reading this tensor's data (truncated?)");
            got += more;
        }
    }

    internal static void ReverseEndianness(Span<float> values)
    {
        var ints = MemoryMarshal.Cast<float, int>(values);
        BinaryPrimitives.ReverseEndianness(ints, ints);
    }

    public override void Dispose() => _stream.Dispose();

    /// <summary>
    /// Writes tensors as .safetensors to a temporary file beside <paramref name="path"/>, flushes it to disk,
    /// then renames it over <paramref name="path"/>: a crash never leaves a half-written file under the real name.
    /// </summary>
    public static void Write(string path, IReadOnlyList<(string Key, int[] Shape, ReadOnlyMemory<float> Floats, long? Int64)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var json = new StringBuilder("{");
        if (metadata is { Count: > 0 })
        {
            json.Append("\"__metadata__\":{");
            bool firstMeta = true;
            foreach (var (k, v) in metadata)
            {
                if (!firstMeta) json.Append(',');
                firstMeta = false;
                json.Append(JsonEncode(k)).Append(':').Append(JsonEncode(v));
            }
            json.Append("},");
        }

        long offset = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var t = tensors[i];
            long bytes = t.Int64.HasValue ? 8 : t.Floats.Length * 4L;
            if (i > 0) json.Append(',');
            json.Append(JsonEncode(t.Key)).Append(":{\"dtype\":\"").Append(t.Int64.HasValue ? "I64" : "F32")
                .Append("\",\"shape\":[").Append(string.Join(",", t.Shape)).Append("],\"data_offsets\":[")
                .Append(offset).Append(',').Append(offset + bytes).Append("]}");
            offset += bytes;
        }
        json.Append('}');
        // Pad the header with spaces so the data starts 8-byte aligned, as the reference implementation does.
        while ((json.Length + 8) % 8 != 0) json.Append(' ');
        byte[] header = Encoding.UTF8.GetBytes(json.ToString());

        AtomicFile.Write(path, stream =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
            stream.Write(len);
            stream.Write(header);
            Span<byte> scalar = stackalloc byte[8];
            foreach (var t in tensors)
            {
                if (t.Int64 is long v)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(scalar, v);
                    stream.Write(scalar);
                }
                else if (BitConverter.IsLittleEndian)
                {
                    stream.Write(MemoryMarshal.AsBytes(t.Floats.Span));
                }
                else
                {
                    float[] copy = t.Floats.ToArray();
                    ReverseEndianness(copy);
                    stream.Write(MemoryMarshal.AsBytes(copy.AsSpan()));
                }
            }
        });
    }

    private static string JsonEncode(string s) => JsonSerializer.Serialize(s, SafeTensorsJson.Default.String);
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class SafeTensorsJson : System.Text.Json.Serialization.JsonSerializerContext;
