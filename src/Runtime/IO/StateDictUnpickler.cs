using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Text;

namespace Unrolled.IO;

/// <summary>
/// A pickle reader that understands exactly what a PyTorch state_dict holds and nothing more.
/// It builds only dicts, tuples, lists, strings, numbers, booleans and tensor references; the only
/// globals it accepts are <c>collections.OrderedDict</c>, <c>torch._utils._rebuild_tensor_v2</c>,
/// <c>torch._utils._rebuild_parameter</c> and the typed storage classes (<c>torch.FloatStorage</c>, ...).
/// Any other global is refused by name before anything is built; nothing is ever executed.
/// </summary>
internal sealed class StateDictUnpickler
{
    public const int MaxStack = 1 << 20;
    public const int MaxMemo = 1 << 20;
    public const int MaxMarks = 1 << 10;
    public const int MaxRank = 8;

    private readonly byte[] _data;
    private readonly string _file;
    private int _pos;
    private readonly List<object> _stack = new();
    private readonly List<int> _marks = new();
    private readonly Dictionary<long, object> _memo = new();

    public StateDictUnpickler(byte[] data, string file)
    {
        _data = data;
        _file = file;
    }

    /// <summary>A tensor as the pickle describes it: a view of a storage.</summary>
    public sealed record TensorRef(DType DType, string StorageKey, long StorageNumel, long Offset, long[] Shape, long[] Stride);

    private sealed record Global(string Module, string Name)
    {
        public override string ToString() => Module + "." + Name;
    }

    private sealed record StorageRef(DType DType, string Key, long Numel);

    private sealed class PyDict
    {
        public readonly List<KeyValuePair<object, object>> Items = new();
    }

    private sealed class None
    {
        public static readonly None Value = new();
    }

    private WeightsFileException Bad(string problem) =>
        new(_file, null, $"data.pkl at byte {_pos}: {problem}");

    /// <summary>Reads the pickle and returns its (key, tensor) pairs in order.</summary>
    public List<(string Key, TensorRef Tensor)> ReadStateDict()
    {
        object root = Run();
        if (root is not PyDict dict) throw Bad($"the pickle holds a {Describe(root)}, not a state_dict (a dict of tensors)");
        var result = new List<(string, TensorRef)>(dict.Items.Count);
        var seen = new HashSet<string>();
        foreach (var (k, v) in dict.Items)
        {
            if (k is not string key) throw Bad($"a state_dict key is a {Describe(k)}, not a string");
            if (v is not TensorRef t) throw new WeightsFileException(_file, key, $"is a {Describe(v)}, not a tensor");
            if (!seen.Add(key)) throw new WeightsFileException(_file, key, "appears twice");
            result.Add((key, t));
        }
        return result;
    }

    private static string Describe(object o) => o switch
    {
        PyDict => "dict", object[] => "tuple", List<object> => "list", string => "string", long => "int",
        double => "float", bool => "bool", None => "None", TensorRef => "tensor", StorageRef => "storage",
        Global g => "reference to " + g, _ => o.GetType().Name,
    };

    private object Run()
    {
        while (true)
        {
            if (_pos >= _data.Length) throw Bad("ended without STOP (truncated?)");
            byte op = _data[_pos++];
            switch (op)
            {
                case 0x80: ReadByte(); break;                             // PROTO
                case 0x95: ReadBytes(8); break;                           // FRAME
                case (byte)'.':                                           // STOP
                    if (_stack.Count != 1) throw Bad($"STOP with {_stack.Count} values on the stack");
                    return _stack[0];
                case (byte)'(':                                           // MARK
                    if (_marks.Count >= MaxMarks) throw Bad($"more than {MaxMarks} nested MARKs");
                    _marks.Add(_stack.Count);
                    break;
                case (byte)'}': Push(new PyDict()); break;                // EMPTY_DICT
                case (byte)']': Push(new List<object>()); break;          // EMPTY_LIST
                case (byte)')': Push(Array.Empty<object>()); break;       // EMPTY_TUPLE
                case (byte)'t': Push(PopMark().ToArray()); break;         // TUPLE
                case 0x85: Push(new[] { Pop() }); break;                  // TUPLE1
                case 0x86: { var b = Pop(); var a = Pop(); Push(new[] { a, b }); break; }       // TUPLE2
                case 0x87: { var c = Pop(); var b = Pop(); var a = Pop(); Push(new[] { a, b, c }); break; } // TUPLE3
                case (byte)'l': Push(PopMark()); break;                   // LIST
                case (byte)'d':                                           // DICT
                {
                    var items = PopMark();
                    var d = new PyDict();
                    AddPairs(d, items);
                    Push(d);
                    break;
                }
                case (byte)'a': { var v = Pop(); AsList(Peek()).Add(v); break; }            // APPEND
                case (byte)'e': { var items = PopMark(); AsList(Peek()).AddRange(items); break; } // APPENDS
                case (byte)'s': { var v = Pop(); var k = Pop(); AsDict(Peek()).Items.Add(new(k, v)); break; } // SETITEM
                case (byte)'u': { var items = PopMark(); AddPairs(AsDict(Peek()), items); break; } // SETITEMS
                case (byte)'J': Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadBytes(4))); break; // BININT
                case (byte)'K': Push((long)ReadByte()); break;            // BININT1
                case (byte)'M': Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadBytes(2))); break; // BININT2
                case 0x8a:                                                // LONG1
                {
                    int n = ReadByte();
                    if (n > 8) throw Bad($"integer of {n} bytes (at most 8 accepted)");
                    var bytes = ReadBytes(n);
                    long v = 0;
                    for (int i = n - 1; i >= 0; i--) v = (v << 8) | bytes[i];
                    if (n is > 0 and < 8 && (bytes[n - 1] & 0x80) != 0) v -= 1L << (8 * n);
                    Push(v);
                    break;
                }
                case (byte)'N': Push(None.Value); break;
                case 0x88: Push(true); break;                             // NEWTRUE
                case 0x89: Push(false); break;                            // NEWFALSE
                case (byte)'G':                                           // BINFLOAT (big-endian)
                    Push(BinaryPrimitives.ReadDoubleBigEndian(ReadBytes(8)));
                    break;
                case (byte)'X': Push(ReadString(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4)))); break; // BINUNICODE
                case 0x8c: Push(ReadString(ReadByte())); break;           // SHORT_BINUNICODE
                case 0x8d: Push(ReadString(BinaryPrimitives.ReadUInt64LittleEndian(ReadBytes(8)))); break; // BINUNICODE8
                case (byte)'q': Memo(ReadByte()); break;                  // BINPUT
                case (byte)'r': Memo(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4))); break; // LONG_BINPUT
                case 0x94: Memo(_memo.Count); break;                      // MEMOIZE
                case (byte)'h': Push(Recall(ReadByte())); break;          // BINGET
                case (byte)'j': Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(ReadBytes(4)))); break; // LONG_BINGET
                case (byte)'c':                                           // GLOBAL "module\nname\n"
                {
                    string module = ReadLine();
                    string name = ReadLine();
                    Push(Resolve(module, name));
                    break;
                }
                case 0x93:                                                // STACK_GLOBAL
                {
                    var name = Pop();
                    var module = Pop();
                    if (module is not string m || name is not string n) throw Bad("STACK_GLOBAL needs two strings");
                    Push(Resolve(m, n));
                    break;
                }
                case (byte)'R':                                           // REDUCE
                {
                    var args = Pop();
                    var callable = Pop();
                    if (args is not object[] tuple) throw Bad("REDUCE arguments are not a tuple");
                    Push(Call(callable, tuple));
                    break;
                }
                case (byte)'b':                                           // BUILD
                {
                    Pop(); // the state: OrderedDict's _metadata; not needed
                    if (Peek() is not PyDict) throw Bad($"BUILD on a {Describe(Peek())}: only a state_dict's OrderedDict may carry state");
                    break;
                }
                case (byte)'Q': Push(PersistentLoad(Pop())); break;       // BINPERSID
                case (byte)'0': Pop(); break;                             // POP
                case (byte)'1': PopMark(); break;                         // POP_MARK
                case (byte)'2': Push(Peek()); break;                      // DUP
                default:
                    throw Bad($"opcode 0x{op:x2} is not one a state_dict needs; refused");
            }
        }
    }

    /// <summary>The whitelist. Everything else a pickle can name is refused here, by name.</summary>
    private object Resolve(string module, string name)
    {
        bool ok = (module, name) switch
        {
            ("collections", "OrderedDict") => true,
            ("torch._utils", "_rebuild_tensor_v2") => true,
            ("torch._utils", "_rebuild_parameter") => true,
            ("torch", _) => StorageType(name).HasValue,
            _ => false,
        };
        if (!ok)
            throw Bad($"refuses global '{module}.{name}': a state_dict holds only tensors, and this file asks for other code to be loaded or run");
        return new Global(module, name);
    }

    private static DType? StorageType(string name) => name switch
    {
        "FloatStorage" => DType.F32, "DoubleStorage" => DType.F64, "HalfStorage" => DType.F16,
        "BFloat16Storage" => DType.BF16, "LongStorage" => DType.I64, "IntStorage" => DType.I32,
        "ShortStorage" => DType.I16, "CharStorage" => DType.I8, "ByteStorage" => DType.U8,
        "BoolStorage" => DType.Bool, _ => null,
    };

    private object Call(object callable, object[] args)
    {
        if (callable is not Global g) throw Bad($"REDUCE calls a {Describe(callable)}");
        switch (g.Name)
        {
            case "OrderedDict" when args.Length == 0:
                return new PyDict();
            case "_rebuild_parameter" when args.Length >= 1 && args[0] is TensorRef t:
                return t;
            case "_rebuild_tensor_v2" when args.Length is 6 or 7:
            {
                if (args[0] is not StorageRef s) throw Bad("_rebuild_tensor_v2: first argument is not a storage");
                if (args[1] is not long offset || offset < 0) throw Bad("_rebuild_tensor_v2: storage offset is not a non-negative int");
                long[] shape = Ints(args[2], "size");
                long[] stride = Ints(args[3], "stride");
                if (shape.Length != stride.Length) throw Bad("_rebuild_tensor_v2: size and stride differ in length");
                return new TensorRef(s.DType, s.Key, s.Numel, offset, shape, stride);
            }
            default:
                throw Bad($"refuses to call {g} with {args.Length} arguments");
        }
    }

    private long[] Ints(object o, string what)
    {
        if (o is not object[] t) throw Bad($"_rebuild_tensor_v2: {what} is not a tuple");
        if (t.Length > MaxRank) throw Bad($"_rebuild_tensor_v2: {what} has {t.Length} dimensions (at most {MaxRank})");
        var r = new long[t.Length];
        for (int i = 0; i < t.Length; i++)
        {
            if (t[i] is not long v || v < 0 || v > int.MaxValue) throw Bad($"_rebuild_tensor_v2: {what} holds a value that is not an int in [0, 2^31)");
            r[i] = v;
        }
        return r;
    }

    private object PersistentLoad(object pid)
    {
        if (pid is not object[] { Length: 5 } t || t[0] is not "storage" || t[1] is not Global type
            || t[2] is not string key || t[3] is not string || t[4] is not long numel)
            throw Bad("persistent id is not ('storage', StorageType, key, location, numel)");
        var dtype = StorageType(type.Name) ?? throw Bad($"{type} is not a storage type");
        if (numel < 0) throw Bad("negative storage size");
        if (key.Length == 0 || key.Length > 64 || key.Contains('/') || key.Contains('\\') || key.Contains(".."))
            throw Bad($"storage key '{key}' is not a plain name");
        return new StorageRef(dtype, key, numel);
    }

    private void AddPairs(PyDict d, List<object> items)
    {
        if (items.Count % 2 != 0) throw Bad("odd number of items for a dict");
        for (int i = 0; i < items.Count; i += 2) d.Items.Add(new(items[i], items[i + 1]));
    }

    private List<object> AsList(object o) => o as List<object> ?? throw Bad($"APPEND to a {Describe(o)}");
    private PyDict AsDict(object o) => o as PyDict ?? throw Bad($"SETITEM on a {Describe(o)}");

    private void Push(object o)
    {
        if (_stack.Count >= MaxStack) throw Bad($"stack deeper than {MaxStack}");
        _stack.Add(o);
    }

    private object Pop()
    {
        int floor = _marks.Count > 0 ? _marks[^1] : 0;
        if (_stack.Count <= floor) throw Bad("stack underflow");
        var o = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return o;
    }

    private object Peek()
    {
        int floor = _marks.Count > 0 ? _marks[^1] : 0;
        if (_stack.Count <= floor) throw Bad("stack underflow");
        return _stack[^1];
    }

    private List<object> PopMark()
    {
        if (_marks.Count == 0) throw Bad("no MARK to pop to");
        int start = _marks[^1];
        _marks.RemoveAt(_marks.Count - 1);
        var items = _stack.GetRange(start, _stack.Count - start);
        _stack.RemoveRange(start, _stack.Count - start);
        return items;
    }

    private void Memo(long index)
    {
        if (_memo.Count >= MaxMemo && !_memo.ContainsKey(index)) throw Bad($"more than {MaxMemo} memo entries");
        _memo[index] = Peek();
    }

    private object Recall(long index) =>
        _memo.TryGetValue(index, out var o) ? o : throw Bad($"memo entry {index} was never stored");

    private byte ReadByte()
    {
        if (_pos >= _data.Length) throw Bad("ended in the middle of an opcode (truncated?)");
        return _data[_pos++];
    }

    private ReadOnlySpan<byte> ReadBytes(long n)
    {
        if (n < 0 || n > _data.Length - _pos) throw Bad($"needs {n} more bytes, {_data.Length - _pos} left (truncated?)");
        var s = _data.AsSpan(_pos, (int)n);
        _pos += (int)n;
        return s;
    }

    private string ReadString(ulong n)
    {
        if (n > (ulong)(_data.Length - _pos)) throw Bad($"string of {n} bytes, {_data.Length - _pos} left (truncated?)");
        try
        {
            return new UTF8Encoding(false, true).GetString(ReadBytes((long)n));
        }
        catch (DecoderFallbackException e)
        {
            throw new WeightsFileException(_file, null, $"data.pkl at byte {_pos}: a string is not valid UTF-8", e);
        }
    }

    private string ReadLine()
    {
        int end = Array.IndexOf(_data, (byte)'\n', _pos);
        if (end < 0 || end - _pos > 256) throw Bad("GLOBAL name is not a short newline-terminated line");
        string s = Encoding.ASCII.GetString(_data, _pos, end - _pos);
        _pos = end + 1;
        return s;
    }
}
