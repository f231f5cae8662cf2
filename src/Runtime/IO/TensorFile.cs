using System;
using System.Collections.Generic;
using System.IO;

namespace Unrolled.IO;

/// <summary>Element types a weights file may declare.</summary>
internal enum DType { F32, F64, F16, BF16, I64, I32, I16, I8, U8, Bool }

internal static class DTypes
{
    public static int Size(DType t) => t switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        _ => 1,
    };

    /// <summary>The name PyTorch prints (torch.float32, ...).</summary>
    public static string TorchName(DType t) => t switch
    {
        DType.F32 => "float32", DType.F64 => "float64", DType.F16 => "float16", DType.BF16 => "bfloat16",
        DType.I64 => "int64", DType.I32 => "int32", DType.I16 => "int16", DType.I8 => "int8",
        DType.U8 => "uint8", _ => "bool",
    };
}

/// <summary>One tensor as a file describes it, before any of its data is read.</summary>
internal sealed class TensorInfo
{
    public TensorInfo(string key, DType dtype, long[] shape)
    {
        Key = key;
        DType = dtype;
        Shape = shape;
    }

    public string Key { get; }
    public DType DType { get; }
    public long[] Shape { get; }
    public long Count
    {
        get
        {
            long n = 1;
            foreach (long d in Shape) n = checked(n * d);
            return n;
        }
    }

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>
/// A state_dict on disk: the tensor table is read and checked when opened; data is read on request into
/// caller-owned memory, with every size and offset checked against the file first.
/// </summary>
internal abstract class TensorFile : IDisposable
{
    /// <summary>Largest JSON header or pickle accepted (the real ones are kilobytes).</summary>
    public const long MaxHeaderBytes = 64L << 20;

    protected TensorFile(string path) => FilePath = path;

    public string FilePath { get; }

    /// <summary>String metadata (.safetensors' "__metadata__"; empty for torch.save files).</summary>
    public virtual IReadOnlyDictionary<string, string> Metadata { get; } = new Dictionary<string, string>();

    /// <summary>Tensors in the file's order.</summary>
    public abstract IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>Reads a float32 tensor into <paramref name="destination"/> (exactly its element count).</summary>
    public abstract void ReadFloat32(TensorInfo tensor, Span<float> destination);

    /// <summary>Reads an int64 scalar (num_batches_tracked).</summary>
    public abstract long ReadInt64Scalar(TensorInfo tensor);

    public abstract void Dispose();

    protected WeightsFileException Bad(string? key, string problem, Exception? inner = null) =>
        new(FilePath, key, problem, inner);

    /// <summary>Opens a torch.save zip or a .safetensors file, telling them apart by their first bytes.</summary>
    public static TensorFile Open(string path)
    {
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.RandomAccess);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new WeightsFileException(path, null, "cannot be opened: " + e.Message, e);
        }

        try
        {
            Span<byte> magic = stackalloc byte[8];
            int got = stream.ReadAtLeast(magic, 8, throwOnEndOfStream: false);
            stream.Position = 0;
            if (got >= 4 && magic[0] == (byte)'P' && magic[1] == (byte)'K' && magic[2] == 3 && magic[3] == 4)
                return new TorchZipFile(path, stream);
            if (got >= 2 && magic[0] == 0x80 && magic[1] <= 5)
                throw new WeightsFileException(path, null,
                    "is a legacy (pre-1.6, non-zip) torch.save file, which is not supported; re-save it with torch.save(model.state_dict(), path) or as .safetensors");
            if (got < 8)
                throw new WeightsFileException(path, null, $"is {stream.Length} bytes long: too short to be a torch.save zip or a .safetensors file");
            return new SafeTensorsFile(path, stream);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }
}
