using System;
using System.Collections.Generic;
using System.IO;
using System.IO.Compression;
using System.Runtime.InteropServices;

namespace Unrolled.IO;

/// <summary>
/// A <c>torch.save</c> file (PyTorch 1.6+): a zip holding <c>NAME/data.pkl</c> (the pickled state_dict) and
/// <c>NAME/data/KEY</c> (one raw little-endian storage per key). The pickle is read by
/// <see cref="StateDictUnpickler"/>, which builds nothing but dicts, tuples, strings, numbers and tensor references.
/// </summary>
internal sealed class TorchZipFile : TensorFile
{
    /// <summary>Largest storage entry accepted (4 GiB): bounds what a crafted zip header can make us read.</summary>
    public const long MaxStorageBytes = 4L << 30;

    private readonly FileStream _stream;
    private readonly ZipArchive _zip;
    private readonly string _prefix;
    private readonly List<TensorInfo> _tensors = new();
    private readonly Dictionary<TensorInfo, StateDictUnpickler.TensorRef> _refs = new();

    public TorchZipFile(string path, FileStream stream) : base(path)
    {
        _stream = stream;
        try
        {
            _zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException e)
        {
            throw Bad(null, "starts like a zip (a torch.save file) but its zip directory cannot be read: " + e.Message, e);
        }

        ZipArchiveEntry? pkl = null;
        try
        {
            foreach (var entry in _zip.Entries)
            {
                string name = entry.FullName;
                if (name.Contains("..", StringComparison.Ordinal) || name.StartsWith('/') || name.Contains('\\'))
                    throw Bad(null, $"zip entry name '{name}' is not a plain relative path");
                int slash = name.IndexOf('/');
                if (slash > 0 && name.AsSpan(slash + 1).SequenceEqual("data.pkl"))
                {
                    if (pkl is not null) throw Bad(null, "holds more than one data.pkl");
                    pkl = entry;
                }
            }
        }
        catch (InvalidDataException e)
        {
            throw Bad(null, "zip directory is corrupt: " + e.Message, e);
        }

        if (pkl is null) throw Bad(null, "is a zip but not a torch.save file: no ARCHIVE/data.pkl entry");
        _prefix = pkl.FullName[..(pkl.FullName.IndexOf('/') + 1)];
        if (pkl.Length > MaxHeaderBytes) throw Bad(null, $"data.pkl is {pkl.Length} bytes (at most {MaxHeaderBytes} accepted)");

        byte[] pickle = ReadEntry(pkl, (int)pkl.Length, null);
        CheckCrc(pkl, System.IO.Hashing.Crc32.HashToUInt32(pickle), null);
        var unpickler = new StateDictUnpickler(pickle, FilePath);
        foreach (var (key, tref) in unpickler.ReadStateDict())
        {
            var info = new TensorInfo(key, tref.DType, tref.Shape);
            CheckStorage(info, tref);
            _tensors.Add(info);
            _refs[info] = tref;
        }
    }

    private void CheckStorage(TensorInfo info, StateDictUnpickler.TensorRef t)
    {
        var entry = _zip.GetEntry(_prefix + "data/" + t.StorageKey)
            ?? throw Bad(info.Key, $"its storage 'data/{t.StorageKey}' is not in the archive");
        long size = DTypes.Size(t.DType);
        if (entry.Length > MaxStorageBytes)
            throw Bad(info.Key, $"storage 'data/{t.StorageKey}' claims {entry.Length} bytes (at most {MaxStorageBytes} accepted)");
        if (entry.Length != t.StorageNumel * size)
            throw Bad(info.Key, $"storage 'data/{t.StorageKey}' holds {entry.Length} bytes but the pickle says {t.StorageNumel} elements of {DTypes.TorchName(t.DType)}");
        // The largest element index the view touches must lie inside the storage.
        long last = t.Offset;
        for (int d = 0; d < t.Shape.Length; d++)
        {
            if (t.Shape[d] == 0) return;
            if (t.Stride[d] < 0) throw Bad(info.Key, "has a negative stride");
            last += (t.Shape[d] - 1) * t.Stride[d];
            if (last < 0) throw Bad(info.Key, "view size overflows");
        }
        if (t.Offset < 0 || last >= t.StorageNumel)
            throw Bad(info.Key, $"view (offset {t.Offset}, shape {info.ShapeText}) reaches element {last} of a storage with {t.StorageNumel}");
    }

    public override IReadOnlyList<TensorInfo> Tensors => _tensors;

    public override void ReadFloat32(TensorInfo tensor, Span<float> destination)
    {
        var t = _refs[tensor];
        if (t.DType != DType.F32) throw Bad(tensor.Key, "internal: float32 read of a " + DTypes.TorchName(t.DType) + " tensor");
        var entry = _zip.GetEntry(_prefix + "data/" + t.StorageKey)!;
        if (IsContiguous(t))
        {
            byte[]? skip = null;
            using var s = OpenEntry(entry, tensor.Key);
            long toSkip = t.Offset * 4;
            if (toSkip > 0)
            {
                skip = new byte[(int)Math.Min(toSkip, 1 << 16)];
                while (toSkip > 0)
                {
                    int n = s.Read(skip, 0, (int)Math.Min(toSkip, skip.Length));
                    if (n <= 0) throw Bad(tensor.Key, "storage ended early (truncated?)");
                    toSkip -= n;
                }
            }
            ReadFully(s, MemoryMarshal.AsBytes(destination), tensor.Key);
            if (t.Offset == 0 && destination.Length * 4L == entry.Length)
                CheckCrc(entry, System.IO.Hashing.Crc32.HashToUInt32(MemoryMarshal.AsBytes(destination)), tensor.Key);
            if (!BitConverter.IsLittleEndian) SafeTensorsFile.ReverseEndianness(destination);
            return;
        }

        // A strided view (rare in a state_dict): read the storage, then gather.
        if (t.StorageNumel > int.MaxValue / 4) throw Bad(tensor.Key, "strided view of a storage over 2 GiB is not supported");
        var storage = new float[t.StorageNumel];
        using (var s = OpenEntry(entry, tensor.Key)) ReadFully(s, MemoryMarshal.AsBytes(storage.AsSpan()), tensor.Key);
        CheckCrc(entry, System.IO.Hashing.Crc32.HashToUInt32(MemoryMarshal.AsBytes(storage.AsSpan())), tensor.Key);
        if (!BitConverter.IsLittleEndian) SafeTensorsFile.ReverseEndianness(storage);
        int rank = t.Shape.Length;
        Span<long> index = stackalloc long[rank];
        for (long i = 0; i < destination.Length; i++)
        {
            long src = t.Offset;
            for (int d = 0; d < rank; d++) src += index[d] * t.Stride[d];
            destination[(int)i] = storage[src];
            for (int d = rank - 1; d >= 0; d--)
            {
                if (++index[d] < t.Shape[d]) break;
                index[d] = 0;
            }
        }
    }

    public override long ReadInt64Scalar(TensorInfo tensor)
    {
        var t = _refs[tensor];
        if (t.DType != DType.I64) throw Bad(tensor.Key, "internal: int64 read of a " + DTypes.TorchName(t.DType) + " tensor");
        var entry = _zip.GetEntry(_prefix + "data/" + t.StorageKey)!;
        Span<byte> b = stackalloc byte[8];
        using var s = OpenEntry(entry, tensor.Key);
        var crc = new System.IO.Hashing.Crc32();
        for (long i = 0; i <= t.Offset; i++)
        {
            ReadFully(s, b, tensor.Key);
            crc.Append(b);
        }
        if (entry.Length == (t.Offset + 1) * 8) CheckCrc(entry, crc.GetCurrentHashAsUInt32(), tensor.Key);
        return System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(b);
    }

    /// <summary>Compares what was read with the CRC-32 the zip directory records for the entry.</summary>
    private void CheckCrc(ZipArchiveEntry entry, uint actual, string? key)
    {
        if (actual != entry.Crc32)
            throw Bad(key, $"zip entry '{entry.FullName}' is damaged: its CRC-32 is {actual:x8}, the archive records {entry.Crc32:x8}");
    }

    private static bool IsContiguous(StateDictUnpickler.TensorRef t)
    {
        long expected = 1;
        for (int d = t.Shape.Length - 1; d >= 0; d--)
        {
            if (t.Shape[d] != 1 && t.Stride[d] != expected) return false;
            expected *= t.Shape[d];
        }
        return true;
    }

    private Stream OpenEntry(ZipArchiveEntry entry, string? key)
    {
        try
        {
            return entry.Open();
        }
        catch (InvalidDataException e)
        {
            throw Bad(key, $"zip entry '{entry.FullName}' cannot be read: {e.Message}", e);
        }
    }

    private byte[] ReadEntry(ZipArchiveEntry entry, int length, string? key)
    {
        var buffer = new byte[length];
        using var s = OpenEntry(entry, key);
        ReadFully(s, buffer, key);
        return buffer;
    }

    private void ReadFully(Stream s, Span<byte> destination, string? key)
    {
        try
        {
            int got = s.ReadAtLeast(destination, destination.Length, throwOnEndOfStream: false);
            if (got < destination.Length) throw Bad(key, "the archive ended while reading (truncated?)");
        }
        catch (InvalidDataException e)
        {
            throw Bad(key, "compressed data is corrupt: " + e.Message, e);
        }
    }

    public override void Dispose()
    {
        _zip.Dispose();
        _stream.Dispose();
    }
}
