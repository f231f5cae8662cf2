using System;
using System.Collections.Generic;
using System.ComponentModel;
using System.IO;
using Unrolled.Cpu;
using Unrolled.IO;

namespace Unrolled.Runtime;

/// <summary>
/// The data behind a generated network: every state_dict entry in one float array (plus the int64 counters),
/// the weights prepared for the kernels, and the activation arena of the static memory plan. The generated
/// class owns one and calls its kernels in straight-line code; users never need this type directly.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed class NetworkState
{
    private readonly NetworkSpec _spec;
    private readonly Dictionary<string, StateEntry> _byKey;
    private float[] _values;
    private long[] _counters;

    // Weights as the kernels stream them, rebuilt when the weights, the BN statistics or the mode change.
    private readonly float[][] _packed;
    private readonly float[][] _bias;
    private readonly float[] _foldScratch;
    private long _version;
    private long _preparedVersion = -1;
    private bool _preparedTraining;

    private float[] _arena = Array.Empty<float>();

    public NetworkState(NetworkSpec spec, Device device, bool zeroInitResidual = false, int seed = 0)
    {
        _spec = spec;
        Device = device switch
        {
            Device.Cpu or Device.Auto => Device.Cpu,
            Device.Cuda => throw new PlatformNotSupportedException(
                "Device.Cuda was requested, but this build of Unrolled has no CUDA backend yet; use Device.Cpu, or Device.Auto to take a GPU when one becomes supported."),
            _ => throw new ArgumentOutOfRangeException(nameof(device), device, "expected Device.Cpu, Device.Auto or Device.Cuda"),
        };
        _values = new float[spec.ValueCount];
        _counters = new long[spec.CounterCount];
        _byKey = new Dictionary<string, StateEntry>(spec.Entries.Length, StringComparer.Ordinal);
        foreach (var e in spec.Entries) _byKey.Add(e.Key, e);
        Initialize(seed);

        _packed = new float[spec.Convs.Length][];
        _bias = new float[spec.Convs.Length][];
        int maxWeights = 0;
        for (int i = 0; i < spec.Convs.Length; i++)
        {
            var c = spec.Convs[i];
            _packed[i] = new float[(c.OutChannels + Gemm.MR - 1) / Gemm.MR * Gemm.MR * c.K];
            _bias[i] = new float[c.OutChannels];
            maxWeights = Math.Max(maxWeights, c.OutChannels * c.K);
        }
        _foldScratch = new float[maxWeights];
    }

    public Device Device { get; }

    public NetworkSpec Spec => _spec;

    /// <summary>Train-mode BatchNorm (batch statistics, running statistics updated) when true.</summary>
    public bool IsTraining { get; set; }

    public IReadOnlyList<string> StateKeys
    {
        get
        {
            var keys = new string[_spec.Entries.Length];
            for (int i = 0; i < keys.Length; i++) keys[i] = _spec.Entries[i].Key;
            return keys;
        }
    }

    /// <summary>torchvision's initialisation, from a fixed seed so that two new networks are identical.</summary>
    private void Initialize(int seed)
    {
        var rng = new Random(seed);
        foreach (var e in _spec.Entries)
        {
            if (e.IsCounter) continue;
            var span = _values.AsSpan((int)e.Offset, (int)e.Count);
            switch (e.Init)
            {
                case Init.Ones: span.Fill(1f); break;
                case Init.Zeros: span.Clear(); break;
                case Init.KaimingNormalFanOut:
                {
                    double std = Math.Sqrt(2.0 / e.FanIn);
                    for (int i = 0; i < span.Length; i++) span[i] = (float)(std * Gaussian(rng));
                    break;
                }
                case Init.UniformFanIn:
                {
                    double bound = 1.0 / Math.Sqrt(e.FanIn);
                    for (int i = 0; i < span.Length; i++) span[i] = (float)((rng.NextDouble() * 2 - 1) * bound);
                    break;
                }
            }
        }
    }

    private static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble();
        double u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    // ---------------------------------------------------------------- state access

    private StateEntry Entry(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (_byKey.TryGetValue(key, out var e)) return e;
        throw new KeyNotFoundException(
            $"'{key}' is not a state_dict key of {_spec.Name}; keys look like '{_spec.Entries[0].Key}', 'layer1.0.bn1.running_mean', 'fc.bias' (StateKeys lists all {_spec.Entries.Length}).");
    }

    /// <summary>A copy of a state_dict entry (num_batches_tracked as a one-element array).</summary>
    public float[] GetTensor(string key)
    {
        var e = Entry(key);
        return e.IsCounter ? new[] { (float)_counters[e.Offset] } : _values.AsSpan((int)e.Offset, (int)e.Count).ToArray();
    }

    public int[] GetShape(string key) => (int[])Entry(key).Shape.Clone();

    /// <summary>Overwrites one entry (exactly its element count).</summary>
    public void SetTensor(string key, ReadOnlySpan<float> values)
    {
        var e = Entry(key);
        if (values.Length != e.Count)
            throw new ArgumentException($"'{key}' has shape [{string.Join(", ", e.Shape)}] ({e.Count} elements); {values.Length} were given.", nameof(values));
        if (e.IsCounter) _counters[e.Offset] = (long)values[0];
        else values.CopyTo(_values.AsSpan((int)e.Offset, (int)e.Count));
        _version++;
    }

    /// <summary>Loads a torchvision state_dict (torch.save zip or .safetensors), strictly and all-or-nothing.</summary>
    public void LoadWeights(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var file = TensorFile.Open(path);
        var found = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (var t in file.Tensors)
            if (!found.TryAdd(t.Key, t)) throw new WeightsFileException(path, t.Key, "appears twice");

        var missing = new List<string>();
        foreach (var e in _spec.Entries)
            if (!found.ContainsKey(e.Key)) missing.Add(e.Key);
        var unexpected = new List<string>();
        foreach (var t in file.Tensors)
            if (!_byKey.ContainsKey(t.Key)) unexpected.Add(t.Key);
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            string problem = $"does not match {_spec.Name} (strict load, as load_state_dict(strict=True)):"
                + (missing.Count > 0 ? $" {missing.Count} missing key(s): {List(missing)};" : "")
                + (unexpected.Count > 0 ? $" {unexpected.Count} unexpected key(s): {List(unexpected)};" : "")
                + $" the file has {found.Count} tensors, the network {_spec.Entries.Length}.";
            throw new WeightsFileException(path, missing.Count > 0 ? missing[0] : unexpected[0], problem);
        }

        foreach (var e in _spec.Entries)
        {
            var t = found[e.Key];
            var expectedType = e.IsCounter ? DType.I64 : DType.F32;
            if (t.DType != expectedType)
                throw new WeightsFileException(path, e.Key, $"dtype is {DTypes.TorchName(t.DType)}, expected {DTypes.TorchName(expectedType)}");
            if (!SameShape(e.Shape, t.Shape))
                throw new WeightsFileException(path, e.Key, $"shape is {t.ShapeText}, expected [{string.Join(", ", e.Shape)}]");
        }

        // Read everything into fresh arrays; only a complete read replaces the weights.
        var values = new float[_spec.ValueCount];
        var counters = new long[_spec.CounterCount];
        foreach (var e in _spec.Entries)
        {
            var t = found[e.Key];
            if (e.IsCounter) counters[e.Offset] = file.ReadInt64Scalar(t);
            else file.ReadFloat32(t, values.AsSpan((int)e.Offset, (int)e.Count));
        }
        _values = values;
        _counters = counters;
        _version++;
    }

    private static string List(List<string> keys) =>
        "'" + string.Join("', '", keys.GetRange(0, Math.Min(keys.Count, 5))) + "'" + (keys.Count > 5 ? $" and {keys.Count - 5} more" : "");

    private static bool SameShape(int[] expected, long[] found)
    {
        if (expected.Length != found.Length) return false;
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != found[i]) return false;
        return true;
    }

    /// <summary>Writes the state_dict as .safetensors (torchvision's keys and shapes), atomically.</summary>
    public void SaveWeights(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"'{path}': SaveWeights writes .safetensors (readable by safetensors.torch.load_file and by LoadWeights); give the path a .safetensors extension.", nameof(path));
        var tensors = new List<(string, int[], ReadOnlyMemory<float>, long?)>(_spec.Entries.Length);
        foreach (var e in _spec.Entries)
        {
            tensors.Add(e.IsCounter
                ? (e.Key, e.Shape, ReadOnlyMemory<float>.Empty, _counters[e.Offset])
                : (e.Key, e.Shape, new ReadOnlyMemory<float>(_values, (int)e.Offset, (int)e.Count), null));
        }
        SafeTensorsFile.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["network"] = _spec.Name });
    }

    // ---------------------------------------------------------------- the kernels the generated code calls

    /// <summary>Checks the lengths, prepares weights if needed and returns the activation arena for the batch.</summary>
    public Span<float> BeginForward(int inputLength, int logitsLength, out int batch)
    {
        int perImage = _spec.InputSize;
        if (inputLength == 0 || inputLength % perImage != 0)
            throw new ArgumentException(
                $"{_spec.Name}: input has {inputLength} floats; expected a multiple of 3 x {_spec.Height} x {_spec.Width} = {perImage} (NCHW float32, batch = length / {perImage}).", "input");
        batch = inputLength / perImage;
        if (logitsLength != batch * _spec.NumClasses)
            throw new ArgumentException(
                $"{_spec.Name}: logits has {logitsLength} floats; a batch of {batch} needs {batch} x {_spec.NumClasses} = {batch * _spec.NumClasses}.", "logits");
        long need = (long)batch * _spec.ArenaPerImage;
        if (need > Array.MaxLength)
            throw new ArgumentException($"{_spec.Name}: a batch of {batch} needs {need} floats of activations, more than one array holds; use a smaller batch.", "input");
        if (_arena.Length < need) _arena = new float[need];
        Prepare();
        return _arena.AsSpan(0, (int)need);
    }

    private void Prepare()
    {
        if (_preparedVersion == _version && _preparedTraining == IsTraining) return;
        for (int i = 0; i < _spec.Convs.Length; i++)
        {
            var c = _spec.Convs[i];
            var weights = _values.AsSpan((int)c.Weight, c.OutChannels * c.K);
            if (IsTraining)
            {
                // Train mode: raw weights; BatchNorm runs after the conv with batch statistics.
                Gemm.PackA(weights, c.OutChannels, c.K, _packed[i]);
            }
            else
            {
                var folded = _foldScratch.AsSpan(0, c.OutChannels * c.K);
                Kernels.FoldBatchNorm(weights, _values.AsSpan((int)c.BatchNorm, 4 * c.OutChannels), c.OutChannels, c.K, folded, _bias[i]);
                Gemm.PackA(folded, c.OutChannels, c.K, _packed[i]);
            }
        }
        _preparedVersion = _version;
        _preparedTraining = IsTraining;
    }

    /// <summary>Conv + BatchNorm (+ residual) (+ ReLU): eval mode folds BN into the weights; train mode normalizes with batch statistics.</summary>
    public void Conv(int index, ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        var c = _spec.Convs[index];
        if (c.InChannels != cin || c.OutChannels != cout || c.Kernel != kernel)
            throw new InvalidOperationException($"{_spec.Name}: conv {index} is declared {c.InChannels}->{c.OutChannels} {c.Kernel}x{c.Kernel} but called as {cin}->{cout} {kernel}x{kernel}; regenerate the network.");
        if (!IsTraining)
        {
            Cpu.Conv.Forward(x, y, residual, _packed[index], _bias[index], batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu);
            return;
        }

        if ((long)batch * oh * ow <= 1)
            throw new ArgumentException($"{_spec.Name}: train-mode BatchNorm needs more than one value per channel (PyTorch's rule); a batch of {batch} at {oh}x{ow} has one. Use a larger batch or Eval().");
        Cpu.Conv.Forward(x, y, ReadOnlySpan<float>.Empty, _packed[index], ReadOnlySpan<float>.Empty, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu: false);
        Kernels.BatchNormTrain(y, residual, _values.AsSpan((int)c.BatchNorm, 4 * cout), batch, cout, oh * ow, relu);
        _counters[c.Counter]++;
        _version++;
    }

    public void MaxPool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int h, int w, int oh, int ow, int kernel, int stride, int pad) =>
        Kernels.MaxPool(x, y, batch * channels, h, w, oh, ow, kernel, stride, pad);

    public void GlobalAveragePool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int hw) =>
        Kernels.GlobalAveragePool(x, y, batch * channels, hw);

    public void Linear(ReadOnlySpan<float> x, Span<float> y, int batch) =>
        Kernels.Linear(x, y, _values.AsSpan((int)_spec.FcWeight, _spec.NumClasses * _spec.FcIn),
            _values.AsSpan((int)_spec.FcBias, _spec.NumClasses), batch, _spec.FcIn, _spec.NumClasses);
}
