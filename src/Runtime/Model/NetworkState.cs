using System;
using System.Threading;
using System.Collections.Generic;
using System.Linq;
using System.ComponentModel;
using Unrolled.Cpu;
using Unrolled.IO;

namespace Unrolled.Runtime;

/// <summary>
/// The data behind a generated network: every state_dict entry in one float array (plus the int64 counters),
/// the gradients, the weights prepared for the kernels, and the arenas of the static memory plans. The generated
/// class owns one and calls its kernels in straight-line code; users never need this type directly.
/// </summary>
[EditorBrowsable(EditorBrowsableState.Never)]
public sealed unsafe class NetworkState
{
    private readonly NetworkSpec _spec;
    private readonly Dictionary<string, StateEntry> _byKey;
    // Created on first use: a network whose first call is LoadWeights never pays for (or holds) its random initialisation.
    private float[]? _values;
    private readonly int _seed;
    private long[] _counters;
    private float[]? _gradientStore; // created on first use: inference never holds gradients

    // The convolutions read their weights in place. Derived from them, rebuilt only when they change:
    // per conv, eval-mode BatchNorm as the scale and bias the convolution's store applies,
    private readonly float[][] _scale;
    private readonly float[][] _bias;
    // Training reads them in place too: W with row stride K for the forward, W^T as (row stride 1, k stride K) for
    // the data gradient; packing both after every optimizer step cost more than it saved.
    private long _weightsVersion;
    private long _statisticsVersion;
    private (long Weights, long Statistics) _preparedScale = (-1, -1);

    // Per conv: the mean and 1/sqrt(var + eps) its BatchNorm used in the last training forward.
    private readonly float[][] _bnMean;
    private readonly float[][] _bnInvStd;
    private bool _batchStatistics;

    // The activations and scratch the kernels stream with vectors: on cache-line boundaries (see AlignedFloats).
    private AlignedFloats _arena = AlignedFloats.Empty;
    private AlignedFloats _trainArena = AlignedFloats.Empty;
    private AlignedFloats _gradientArena = AlignedFloats.Empty;
    private AlignedFloats _columns = AlignedFloats.Empty;
    private AlignedFloats _gradientRows = AlignedFloats.Empty;

    // Batch-1 eval forwards on the CPU: which activations are pixel-major (LayoutPlan), whether the forward under way
    // follows (or traces) the plan.
    private LayoutPlan? _plan;
    private bool _planned;

    public NetworkState(NetworkSpec spec, Device device, int seed = 0)
    {
        _spec = spec;
        Device = Choose(device, spec.Name);
        if (Device == Device.Cuda)
        {
            try
            {
                _gpu = new Gpu.CudaBackend(spec);
            }
            catch (Exception e) when (device == Device.Auto && e is Gpu.CudaException or DllNotFoundException or EntryPointNotFoundException)
            {
                // Auto never fails for the GPU's sake: a GPU that cannot make the backend (a cuDNN sub-library missing,
                // a driver too old) means the CPU, said once.
                Device = Device.Cpu;
                if (Interlocked.Exchange(ref s_autoFellBack, 1) == 0 && Environment.GetEnvironmentVariable("UNROLLED_QUIET") != "1")
                    Console.Error.WriteLine($"Unrolled: Device.Auto -> CPU: the CUDA backend could not start ({e.GetType().Name}: {e.Message})");
            }
        }
        _seed = seed;
        _counters = new long[spec.CounterCount];
        _byKey = new Dictionary<string, StateEntry>(spec.Entries.Length, StringComparer.Ordinal);
        var keys = new string[spec.Entries.Length];
        for (int i = 0; i < keys.Length; i++) keys[i] = spec.Entries[i].Key;
        StateKeys = Array.AsReadOnly(keys);
        var parameters = new List<(int, int)>();
        foreach (var e in spec.Entries)
        {
            _byKey.Add(e.Key, e);
            if (e.IsParameter) parameters.Add(((int)e.Offset, (int)e.Count));
        }
        ParameterRanges = parameters.ToArray();

        int convs = spec.Convs.Length;
        _scale = new float[convs][];
        _bias = new float[convs][];
        _bnMean = new float[convs][];
        _bnInvStd = new float[convs][];
        for (int i = 0; i < convs; i++)
        {
            var c = spec.Convs[i];
            _scale[i] = new float[c.OutChannels];
            _bias[i] = new float[c.OutChannels];
            _bnMean[i] = new float[c.OutChannels];
            _bnInvStd[i] = new float[c.OutChannels];
        }
    }

    private static int s_autoNoted, s_autoFellBack;

    // The CUDA backend when the network runs on the GPU.
    private readonly Gpu.CudaBackend? _gpu;

    // True while the host's parameter gradients are known to be all zero (new, or just zeroed): a training step on
    // the GPU then zeroes the device's instead of uploading them.
    private bool _gradientsAreZero = true;

    // On the CPU, ZeroGrad clears nothing at once: it marks every layer's gradients (convolution i's weight and
    // BatchNorm, the fc's at the end) to be cleared, each just before backward first writes it, while it is about to
    // be in cache anyway; a read of Gradients clears whatever is still marked. That saves a pass over all the
    // gradients in memory (94 MB for ResNet-50) per step.
    private bool[]? _clearPending;
    private bool _anyClearPending;

    /// <summary>
    /// Device.Cpu is the CPU; Device.Auto probes for CUDA (once per process) and says in one line on stderr what it
    /// chose and why (UNROLLED_QUIET=1 silences it); Device.Cuda fails with what is missing and how to point to it.
    /// </summary>
    private static Device Choose(Device requested, string name)
    {
        switch (requested)
        {
            case Device.Cpu:
                return Device.Cpu;
            case Device.Auto:
            {
                var probe = Gpu.CudaLibraries.Probe();
                if (Interlocked.Exchange(ref s_autoNoted, 1) == 0 && Environment.GetEnvironmentVariable("UNROLLED_QUIET") != "1")
                    Console.Error.WriteLine(probe.Usable
                        ? $"Unrolled: Device.Auto -> CUDA: {probe.Reason} (Device.Cpu keeps a network on the CPU)"
                        : $"Unrolled: Device.Auto -> CPU: CUDA {probe.Reason}");
                return probe.Usable ? Device.Cuda : Device.Cpu;
            }
            case Device.Cuda:
            {
                var probe = Gpu.CudaLibraries.Probe();
                if (probe.Usable) return Device.Cuda;
                throw new PlatformNotSupportedException(
                    $"{name}: Device.Cuda: CUDA cannot be used: {probe.Reason}. Use Device.Cpu, or Device.Auto to fall back to the CPU.");
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(requested), requested, "expected Device.Cpu, Device.Auto or Device.Cuda");
        }
    }

    public Device Device { get; }

    public NetworkSpec Spec => _spec;

    /// <summary>Train-mode BatchNorm (batch statistics, running statistics updated) when true.</summary>
    public bool IsTraining { get; set; }

    /// <summary>(offset, count) of every trainable parameter in the value and gradient arrays, in state_dict order.</summary>
    public (int Offset, int Count)[] ParameterRanges { get; }

    /// <summary>Every value, in the layout of the spec's entries (optimizers update it in place).</summary>
    public Span<float> Values => ValueArray;

    // On the GPU the newest values (after an SGD step taken there) and gradients (after a backward) may be on the
    // device only: the host copies are then brought up to date when they are first read, so every host API sees
    // them as on the CPU, and a training loop that only steps moves no parameters over the bus. Host gradients that
    // ZeroGrad zeroed are cleared when next read.
    private bool _valuesOnDevice, _gradientsOnDevice, _hostGradientsNeedClearing;

    /// <summary>The device holds the gradients of the last backward (and the host's are stale): an optimizer may step there.</summary>
    internal bool GradientsOnDevice => _gradientsOnDevice;

    /// <summary>
    /// The values without bringing them from the device: for the GPU's own paths, which hand them to the backend only
    /// with their version (uploaded when the host's are the newer).
    /// </summary>
    private float[] RawValues => _values ??= Initialize(_seed);

    private Span<float> GradientStore => (_gradientStore ??= new float[_spec.ValueCount + Skew.Gradients]).AsSpan(Skew.Gradients, (int)_spec.ValueCount);

    /// <summary>Whether every gradient held on the device is finite (one reduction there).</summary>
    internal bool DeviceGradientsFinite() => _gpu!.GradientsFinite();

    private (int Offset, int Count)[]? _parameterRuns;

    /// <summary>
    /// An SGD step on the device (see <see cref="Gpu.CudaBackend.SgdStep"/>), the optimizer's momentum buffer first
    /// copied up from <paramref name="hostMomentum"/> when <paramref name="uploadMomentum"/>; the values are then newer
    /// on the device, and come down when the host reads them.
    /// </summary>
    internal void SgdStepOnDevice(object optimizer, Span<float> hostMomentum, bool uploadMomentum, float learningRate, float momentum,
        float dampening, float weightDecay, bool nesterov, bool first)
    {
        var gpu = _gpu!;
        if (_parameterRuns is null)
        {
            // Adjacent parameters in one run (a conv's weight and its BatchNorm's weight and bias): fewer calls.
            var runs = new List<(int Offset, int Count)>();
            foreach (var (offset, count) in ParameterRanges.OrderBy(r => r.Offset))
                if (runs.Count > 0 && runs[^1].Offset + runs[^1].Count == offset) runs[^1] = (runs[^1].Offset, runs[^1].Count + count);
                else runs.Add((offset, count));
            _parameterRuns = runs.ToArray();
        }
        // The device's values must be the host's newest before they are stepped (a no-op when they already are).
        var version = (_weightsVersion, _statisticsVersion);
        gpu.BeginStep(RawValues, version);
        if (uploadMomentum) gpu.TransferMomentum(optimizer, hostMomentum, toDevice: true);
        gpu.SgdStep(optimizer, _parameterRuns, learningRate, momentum, dampening, weightDecay, nesterov, first);
        _weightsVersion++;
        gpu.NoteDeviceCurrent(version, (_weightsVersion, _statisticsVersion));
        _valuesOnDevice = true;
    }

    /// <summary>Copies an optimizer's momentum buffer down from the device.</summary>
    internal void DownloadMomentum(object optimizer, Span<float> hostMomentum) => _gpu!.TransferMomentum(optimizer, hostMomentum, toDevice: false);

    /// <summary>Brings the host's values and gradients up to date (before work on several threads reads them).</summary>
    internal void SynchronizeHost()
    {
        _ = ValueArray;
        _ = Gradients;
    }

    /// <summary>Every gradient, in the layout of the values (zero outside the parameters).</summary>
    public Span<float> Gradients
    {
        get
        {
            var store = GradientStore;
            if (_gradientsOnDevice)
            {
                _gpu!.DownloadGradients(store);
                _gradientsOnDevice = false;
                _hostGradientsNeedClearing = false;
            }
            else if (_hostGradientsNeedClearing)
            {
                _hostGradientsNeedClearing = false;
                ClearRange(store);
            }
            else if (_anyClearPending)
            {
                for (int layer = 0; layer < _clearPending!.Length; layer++) ClearPendingLayer(layer);
                _anyClearPending = false;
            }
            return store;
        }
    }

    /// <summary>The int64 counters (num_batches_tracked).</summary>
    public Span<long> Counters => _counters;

    /// <summary>Call after changing <see cref="Values"/> directly, so prepared weights are rebuilt.</summary>
    public void MarkWeightsChanged() => _weightsVersion++;

    /// <summary>Call after changing weights and BatchNorm statistics directly.</summary>
    public void MarkStateChanged()
    {
        _weightsVersion++;
        _statisticsVersion++;
    }

    // Per-channel sums of one BatchNorm (forward statistics or backward reductions), sized once for the widest.
    private double[] _bnSums = Array.Empty<double>();

    private Span<double> BnSums(int channels)
    {
        if (_bnSums.Length < 2 * channels + 1) _bnSums = new double[2 * channels + 1];
        return _bnSums.AsSpan(0, 2 * channels + 1);
    }

    /// <summary>
    /// With synchronized BatchNorm: sums per-channel partial statistics over all data-parallel processes, in place
    /// (null: each process normalizes with its own batch).
    /// </summary>
    internal Action<Span<double>>? StatisticsReducer;

    /// <summary>Every state_dict key in torchvision's order.</summary>
    public IReadOnlyList<string> StateKeys { get; }

    /// <summary>The values, initialised (torchvision's rules, from the network's seed) on first use.</summary>
    private float[] ValueArray
    {
        get
        {
            var values = RawValues;
            if (_valuesOnDevice)
            {
                _gpu!.DownloadValues(values);
                _valuesOnDevice = false;
            }
            return values;
        }
    }

    /// <summary>torchvision's initialisation, from a fixed seed so that two new networks are identical.</summary>
    private float[] Initialize(int seed)
    {
        var values = new float[_spec.ValueCount];
        var rng = new Random(seed);
        foreach (var e in _spec.Entries)
        {
            if (e.IsCounter) continue;
            var span = values.AsSpan((int)e.Offset, (int)e.Count);
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
        return values;
    }

    private static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble();
        double u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    // ---------------------------------------------------------------- state access

    public StateEntry Entry(string key)
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
        return e.IsCounter ? new[] { (float)_counters[e.Offset] } : ValueArray.AsSpan((int)e.Offset, (int)e.Count).ToArray();
    }

    /// <summary>A copy of a parameter's accumulated gradient (as <c>param.grad</c> after <c>loss.backward()</c>).</summary>
    public float[] GetGradient(string key)
    {
        var e = Entry(key);
        if (!e.IsParameter)
            throw new ArgumentException($"'{key}' is a buffer (running statistics or a counter), not a parameter, and has no gradient.", nameof(key));
        return Gradients.Slice((int)e.Offset, (int)e.Count).ToArray();
    }

    public int[] GetShape(string key) => (int[])Entry(key).Shape.Clone();

    /// <summary>Overwrites one entry (exactly its element count).</summary>
    public void SetTensor(string key, ReadOnlySpan<float> values)
    {
        var e = Entry(key);
        if (values.Length != e.Count)
            throw new ArgumentException($"'{key}' has shape [{string.Join(", ", e.Shape)}] ({e.Count} elements); {values.Length} were given.", nameof(values));
        if (e.IsCounter) _counters[e.Offset] = (long)values[0];
        else values.CopyTo(ValueArray.AsSpan((int)e.Offset, (int)e.Count));
        _weightsVersion++;
        _statisticsVersion++;
    }

    /// <summary>Sets every gradient to zero (as <c>optimizer.zero_grad()</c>).</summary>
    public void ZeroGrad()
    {
        _gradientsAreZero = true;
        if (_gpu is not null)
        {
            // The device zeroes its own at the next step; the host's are cleared if they are read before that.
            _gradientsOnDevice = false;
            _hostGradientsNeedClearing = true;
            return;
        }
        _clearPending ??= new bool[_spec.Convs.Length + 1];
        Array.Fill(_clearPending, true);
        _anyClearPending = true;
    }

    /// <summary>
    /// The gradient store for backward to write layer <paramref name="layer"/> (a convolution's index, or the fc's,
    /// one past the last), after clearing that layer's gradients if ZeroGrad marked them. <paramref name="cleared"/>
    /// says whether it was marked: then the gradients start from zero, and with <paramref name="weightsStoredWhole"/>
    /// (a convolution whose filter gradient is stored, not added) its weight gradient is left for that store to write.
    /// </summary>
    private Span<float> GradientsOfLayer(int layer, out bool cleared, bool weightsStoredWhole = false)
    {
        cleared = _anyClearPending && ClearPendingLayer(layer, weightsStoredWhole);
        return GradientStore;
    }

    private bool ClearPendingLayer(int layer, bool skipWeights = false)
    {
        if (!_clearPending![layer]) return false;
        _clearPending[layer] = false;
        var store = GradientStore;
        if (layer < _spec.Convs.Length)
        {
            var c = _spec.Convs[layer];
            if (!skipWeights) ClearRange(store.Slice((int)c.Weight, c.OutChannels * c.K));
            store.Slice((int)c.BatchNorm, 2 * c.OutChannels).Clear(); // dgamma, dbeta
        }
        else
        {
            ClearRange(store.Slice((int)_spec.FcWeight, _spec.NumClasses * _spec.FcIn));
            store.Slice((int)_spec.FcBias, _spec.NumClasses).Clear();
        }
        return true;
    }

    /// <summary>Zeroes <paramref name="range"/>, on every core when it is large: one core alone cannot fill the memory bandwidth.</summary>
    private static void ClearRange(Span<float> range)
    {
        const int Chunk = 1 << 18;
        if (range.Length < 2 * Chunk)
        {
            range.Clear();
            return;
        }
        fixed (float* start = range)
        {
            var job = new ClearJob { Start = start, Length = range.Length };
            WorkerPool.Shared.Run(&ClearChunk, &job, (range.Length + Chunk - 1) / Chunk);
        }
    }

    private struct ClearJob
    {
        public float* Start;
        public int Length;
    }

    private static void ClearChunk(void* context, int chunk)
    {
        ref ClearJob j = ref System.Runtime.CompilerServices.Unsafe.AsRef<ClearJob>(context);
        int first = chunk << 18;
        new Span<float>(j.Start + first, Math.Min(1 << 18, j.Length - first)).Clear();
    }

    /// <summary>Loads a torchvision state_dict (torch.save zip or .safetensors), strictly and all-or-nothing.</summary>
    public void LoadWeights(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var file = TensorFile.Open(path);
        var (values, counters) = ReadState(file, "", strict: true);
        Commit(values, counters);
    }

    /// <summary>
    /// Reads every entry (under <paramref name="prefix"/>) into fresh arrays after checking keys, shapes and dtypes;
    /// with <paramref name="strict"/>, keys outside the network (under the prefix) are an error too.
    /// </summary>
    internal (float[] Values, long[] Counters) ReadState(TensorFile file, string prefix, bool strict)
    {
        string path = file.FilePath;
        var found = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        foreach (var t in file.Tensors)
        {
            if (!t.Key.StartsWith(prefix, StringComparison.Ordinal)) continue;
            if (!found.TryAdd(t.Key[prefix.Length..], t)) throw new WeightsFileException(path, t.Key, "appears twice");
        }

        var missing = new List<string>();
        foreach (var e in _spec.Entries)
            if (!found.ContainsKey(e.Key)) missing.Add(prefix + e.Key);
        var unexpected = new List<string>();
        if (strict)
            foreach (var key in found.Keys)
                if (!_byKey.ContainsKey(key)) unexpected.Add(prefix + key);
        if (missing.Count > 0 || unexpected.Count > 0)
        {
            string problem = $"does not match {_spec.Name} (strict load, as load_state_dict(strict=True)):"
                + (missing.Count > 0 ? $" {missing.Count} missing key(s): {List(missing)};" : "")
                + (unexpected.Count > 0 ? $" {unexpected.Count} unexpected key(s): {List(unexpected)};" : "")
                + $" the file has {found.Count} tensors{(prefix.Length > 0 ? $" under '{prefix}'" : "")}, the network {_spec.Entries.Length}.";
            throw new WeightsFileException(path, missing.Count > 0 ? missing[0] : unexpected[0], problem);
        }

        foreach (var e in _spec.Entries)
        {
            var t = found[e.Key];
            var expectedType = e.IsCounter ? DType.I64 : DType.F32;
            if (t.DType != expectedType)
                throw new WeightsFileException(path, t.Key, $"dtype is {DTypes.TorchName(t.DType)}, expected {DTypes.TorchName(expectedType)}");
            if (!SameShape(e.Shape, t.Shape))
                throw new WeightsFileException(path, t.Key, $"shape is {t.ShapeText}, expected [{string.Join(", ", e.Shape)}]");
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
        return (values, counters);
    }

    /// <summary>Replaces the state with arrays from <see cref="ReadState"/>.</summary>
    internal void Commit(float[] values, long[] counters)
    {
        _values = values;
        _counters = counters;
        _weightsVersion++;
        _statisticsVersion++;
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

    /// <summary>The state_dict as tensors to write (keys and shapes as torchvision's).</summary>
    internal List<(string Key, int[] Shape, ReadOnlyMemory<float> Floats, long? Int64)> StateTensors()
    {
        var tensors = new List<(string, int[], ReadOnlyMemory<float>, long?)>(_spec.Entries.Length);
        foreach (var e in _spec.Entries)
        {
            tensors.Add(e.IsCounter
                ? (e.Key, e.Shape, ReadOnlyMemory<float>.Empty, _counters[e.Offset])
                : (e.Key, e.Shape, new ReadOnlyMemory<float>(ValueArray, (int)e.Offset, (int)e.Count), null));
        }
        return tensors;
    }

    /// <summary>Writes the state_dict as .safetensors (torchvision's keys and shapes), atomically.</summary>
    public void SaveWeights(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"'{path}': SaveWeights writes .safetensors (readable by safetensors.torch.load_file and by LoadWeights); give the path a .safetensors extension.", nameof(path));
        SafeTensorsFile.Write(path, StateTensors(), new Dictionary<string, string> { ["format"] = "pt", ["network"] = _spec.Name });
    }

    // ---------------------------------------------------------------- preparing

    private int BatchOf(int inputLength, int logitsLength)
    {
        int perImage = _spec.InputSize;
        if (inputLength == 0 || inputLength % perImage != 0)
            throw new ArgumentException(
                $"{_spec.Name}: input has {inputLength} floats; expected a multiple of 3 x {_spec.Height} x {_spec.Width} = {perImage} (NCHW float32, batch = length / {perImage}).", "input");
        int batch = inputLength / perImage;
        if (logitsLength != batch * _spec.NumClasses)
            throw new ArgumentException(
                $"{_spec.Name}: logits has {logitsLength} floats; a batch of {batch} needs {batch} x {_spec.NumClasses} = {batch * _spec.NumClasses}.", "logits");
        return batch;
    }

    private static void Ensure(ref AlignedFloats buffer, long floats, string what, string name, int batch)
    {
        CheckSize(floats, what, name, batch);
        if (buffer.Length < floats) buffer = new AlignedFloats(floats);
    }

    private static void CheckSize(long floats, string what, string name, int batch)
    {
        if (floats > Array.MaxLength - 15)
            throw new ArgumentException($"{name}: a batch of {batch} needs {floats} floats of {what}, more than one array holds; use a smaller batch.", "input");
    }

    /// <summary>Checks the lengths, prepares weights if needed and returns the activation arena for the batch.</summary>
    public Span<float> BeginForward(int inputLength, int logitsLength, out int batch)
    {
        batch = BatchOf(inputLength, logitsLength);
        long need = (long)batch * _spec.ArenaPerImage;
        if (_gpu is not null)
        {
            // The backend's host arena only gives the generated code's slices their offsets: never written.
            CheckSize(need, "activations", _spec.Name, batch);
            return _gpu.BeginForward(batch, RawValues, (_weightsVersion, _statisticsVersion));
        }
        Ensure(ref _arena, need, "activations", _spec.Name, batch);
        Prepare();
        _planned = batch == 1 && !IsTraining && !LayoutPlan.Off;
        if (_planned)
        {
            _plan ??= new LayoutPlan(_spec.Convs.Length);
            _plan.Begin();
        }
        return _arena.Slice(0, (int)need);
    }

    /// <summary>
    /// Checks the lengths and labels before any work, prepares the weights and returns the arena of saved
    /// activations; <paramref name="gradients"/> receives the arena of activation gradients.
    /// </summary>
    public Span<float> BeginTraining(int inputLength, ReadOnlySpan<int> labels, int logitsLength, out int batch, out Span<float> gradients)
    {
        batch = BatchOf(inputLength, logitsLength);
        if (labels.Length != batch)
            throw new ArgumentException($"{_spec.Name}: {labels.Length} labels for a batch of {batch} images; give one label per image.", nameof(labels));
        for (int i = 0; i < labels.Length; i++)
            if ((uint)labels[i] >= (uint)_spec.NumClasses)
                throw new ArgumentOutOfRangeException(nameof(labels), labels[i], $"{_spec.Name}: label {i} is {labels[i]}; labels must lie in [0, {_spec.NumClasses}).");

        long saved = (long)batch * _spec.TrainArenaPerImage;
        long grads = (long)batch * _spec.GradientArenaPerImage;
        if (_gpu is not null)
        {
            CheckSize(saved, "saved activations", _spec.Name, batch);
            CheckSize(grads, "activation gradients", _spec.Name, batch);
            _batchStatistics = IsTraining;
            // Gradients on the device already (a step without ZeroGrad accumulates) stay there; host ones go up.
            var hostGradients = _gradientsAreZero || _gradientsOnDevice ? Span<float>.Empty : Gradients;
            _gpu.BeginTraining(batch, RawValues, (_weightsVersion, _statisticsVersion), hostGradients, _gradientsAreZero, out var savedArena, out gradients);
            if (_batchStatistics) BackUpStatistics(); // on the device, now that the values there are current
            _gradientsAreZero = false;
            _hostGradientsNeedClearing = false;
            // Backward leaves them on the device unless a hook wants each layer's on the host as it is done.
            _gradientsOnDevice = GradientsReady is null;
            return savedArena;
        }
        _gradientsAreZero = false;
        _planned = false;
        Ensure(ref _trainArena, saved, "saved activations", _spec.Name, batch);
        Ensure(ref _gradientArena, grads, "activation gradients", _spec.Name, batch);
        Ensure(ref _columns, _spec.MaxColumns, "im2col scratch", _spec.Name, batch);
        _batchStatistics = IsTraining;
        if (_batchStatistics) BackUpStatistics();
        gradients = _gradientArena.Slice(0, (int)grads);
        return _trainArena.Slice(0, (int)saved);
    }

    private void Prepare()
    {
        // Eval mode: BatchNorm with its running statistics is a per-channel scale and bias (a few thousand values).
        if (!IsTraining && _preparedScale != (_weightsVersion, _statisticsVersion))
        {
            for (int i = 0; i < _spec.Convs.Length; i++)
            {
                var c = _spec.Convs[i];
                Kernels.BatchNormScaleShift(ValueArray.AsSpan((int)c.BatchNorm, 4 * c.OutChannels), _scale[i], _bias[i]);
            }
            _preparedScale = (_weightsVersion, _statisticsVersion);
        }
    }

    // ---------------------------------------------------------------- the kernels the generated code calls

    private ConvSpec CheckConv(int index, int cin, int cout, int kernel)
    {
        var c = _spec.Convs[index];
        if (c.InChannels != cin || c.OutChannels != cout || c.Kernel != kernel)
            throw new InvalidOperationException($"{_spec.Name}: conv {index} is declared {c.InChannels}->{c.OutChannels} {c.Kernel}x{c.Kernel} but called as {cin}->{cout} {kernel}x{kernel}; regenerate the network.");
        return c;
    }

    private ReadOnlySpan<float> Weights(ConvSpec c) => ValueArray.AsSpan((int)c.Weight, c.OutChannels * c.K);

    // 3x3 stride-1 convolutions by Winograd (eval mode, and a training step's forward and data gradient): their
    // transformed weights, for the forward and (transposed) for the data gradient, for each tile size a layer has used
    // (it depends on the batch), made when first needed and again after the weights change (allocated once).
    private AlignedFloats?[]? _winograd, _winogradTransposed;
    private long[]? _winogradVersion, _winogradTransposedVersion;

    private ReadOnlySpan<float> WinogradWeights(int index, ConvSpec c, Cpu.Winograd.Tiles tiles, bool transposed = false)
    {
        ref AlignedFloats?[]? cache = ref transposed ? ref _winogradTransposed : ref _winograd;
        ref long[]? versions = ref transposed ? ref _winogradTransposedVersion : ref _winogradVersion;
        cache ??= new AlignedFloats?[2 * _spec.Convs.Length];
        versions ??= new long[2 * _spec.Convs.Length];
        int slot = 2 * index + (tiles == Cpu.Winograd.Tiles.F4 ? 1 : 0);
        var u = cache[slot];
        if (u is null || versions[slot] != _weightsVersion)
        {
            u ??= cache[slot] = new AlignedFloats(Cpu.Winograd.TransformedSize(c.OutChannels, c.InChannels, tiles));
            if (transposed) Cpu.Winograd.TransformTransposedWeights(Weights(c), u.Span, c.OutChannels, c.InChannels, tiles);
            else Cpu.Winograd.TransformWeights(Weights(c), u.Span, c.OutChannels, c.InChannels, tiles);
            versions[slot] = _weightsVersion;
        }
        return u.Span;
    }

    // Eval mode's direct convolutions: their weights packed into the GEMM's row panels (one stream per panel instead
    // of a stream per row), or, for the batch-1 convolutions computed transposed, into its column panels; made when
    // first needed and again after the weights change (allocated once).
    private AlignedFloats?[]? _packed, _packedTransposed;
    private long[]? _packedVersion, _packedTransposedVersion;

    private ReadOnlySpan<float> PackedWeights(int index, ConvSpec c, bool transposed = false)
    {
        ref AlignedFloats?[]? cache = ref transposed ? ref _packedTransposed : ref _packed;
        ref long[]? versions = ref transposed ? ref _packedTransposedVersion : ref _packedVersion;
        cache ??= new AlignedFloats?[_spec.Convs.Length];
        versions ??= new long[_spec.Convs.Length];
        var p = cache[index];
        if (p is null || versions[index] != _weightsVersion)
        {
            if (transposed)
            {
                p ??= cache[index] = new AlignedFloats(Cpu.Gemm.TransposedBFloats(c.OutChannels, c.K));
                Cpu.Gemm.PackTransposedB(Weights(c), c.OutChannels, c.K, p.Span);
            }
            else
            {
                p ??= cache[index] = new AlignedFloats((long)Cpu.Gemm.PackedRows(c.OutChannels) * c.K);
                Cpu.Gemm.PackA(Weights(c), c.OutChannels, c.K, p.Span);
            }
            versions[index] = _weightsVersion;
        }
        return p.Span;
    }

    /// <summary>
    /// Benchmarks only (`--layer-profile`): while set, each eval-mode CPU convolution adds its wall time, in
    /// <see cref="System.Diagnostics.Stopwatch"/> ticks, at its index, and records its shape there; the pools and the
    /// classifier add theirs too.
    /// </summary>
    internal sealed class ConvClock(int capacity)
    {
        public readonly long[] Ticks = new long[capacity];
        public readonly (int Cin, int Size, int Cout, int Kernel, int Stride)[] Shapes = new (int, int, int, int, int)[capacity];
        // Whether the convolution read its input and wrote its output pixel-major (LayoutPlan).
        public readonly (bool In, bool Out)[] PixelMajor = new (bool, bool)[capacity];
        // The other layers of an eval-mode CPU forward, in ticks too.
        public long MaxPool, AveragePool, Linear;
    }

    /// <summary>Where <paramref name="s"/> lies in the activation arena, in floats: (start, length), the start -1 for a span outside it or none.</summary>
    private (long At, long Length) Region(ReadOnlySpan<float> s)
    {
        if (s.IsEmpty) return (-1, 0);
        long at = System.Runtime.CompilerServices.Unsafe.ByteOffset(
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(_arena.Span),
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(s)) / sizeof(float);
        return at >= 0 && at < _arena.Length ? (at, s.Length) : (-1, s.Length);
    }

    private static long Tick() => System.Diagnostics.Stopwatch.GetTimestamp();

    internal static ConvClock? Clock;

    /// <summary>Conv + BatchNorm (+ residual) (+ ReLU): eval mode applies BN as a per-channel scale and bias in the conv's store; train mode normalizes with batch statistics.</summary>
    public void Conv(int index, ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        var c = CheckConv(index, cin, cout, kernel);
        if (_gpu is not null && !IsTraining)
        {
            _gpu.ConvForward(index, x, y, y, residual, batch, cin, h, w, cout, oh, ow, stride, pad, relu, batchStatistics: false);
            return;
        }
        if (!IsTraining)
        {
            bool pixelsIn = false, pixelsOut = false;
            if (_planned)
            {
                // Only the trace needs to know whether the convolution is computed transposed.
                bool canWrite = !_plan!.Ready && Cpu.Winograd.Choose(kernel, stride, pad, 1, cin, h, w, cout) == Cpu.Winograd.Tiles.None &&
                    Cpu.Conv.TransposedPays(1, cin, h, w, oh, ow, kernel, pad);
                var (xAt, xLength) = Region(x);
                var (yAt, yLength) = Region(y);
                var (rAt, rLength) = Region(residual);
                (pixelsIn, pixelsOut) = _plan!.Conv(index, xAt, xLength, yAt, yLength, rAt, rLength, canWrite, canRead: canWrite);
            }
            var clock = Clock;
            if (clock is null || index >= clock.Ticks.Length)
            {
                ConvEval(index, c, x, y, residual, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu, pixelsIn, pixelsOut);
                return;
            }
            long start = Tick();
            ConvEval(index, c, x, y, residual, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu, pixelsIn, pixelsOut);
            clock.Ticks[index] += Tick() - start;
            clock.Shapes[index] = (cin, h, cout, kernel, stride);
            clock.PixelMajor[index] = (pixelsIn, pixelsOut);
            return;
        }
        ConvTrain(index, x, y, y, residual, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu);
    }

    /// <summary>
    /// Eval mode on the CPU: the fastest of Winograd, the transposed GEMM and the direct one for the shape, BN folded
    /// into the store; the transposed GEMM wherever the layout plan makes the input or the output pixel-major.
    /// </summary>
    private void ConvEval(int index, ConvSpec c, ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu, bool pixelsIn, bool pixelsOut)
    {
        if (pixelsIn || pixelsOut)
        {
            Cpu.Conv.ForwardTransposed(x, y, residual, PackedWeights(index, c, transposed: true), _scale[index], _bias[index],
                cin, h, w, cout, oh, ow, kernel, stride, pad, relu, pixelsIn, pixelsOut);
            return;
        }
        var tiles = Cpu.Winograd.Choose(kernel, stride, pad, batch, cin, h, w, cout);
        if (tiles != Cpu.Winograd.Tiles.None)
            Cpu.Winograd.Forward(x, y, residual, WinogradWeights(index, c, tiles), _scale[index], _bias[index], batch, cin, h, w, cout, relu, tiles);
        else if (Cpu.Conv.TransposedPays(batch, cin, h, w, oh, ow, kernel, pad))
            Cpu.Conv.ForwardTransposed(x, y, residual, PackedWeights(index, c, transposed: true), _scale[index], _bias[index], cin, h, w, cout, oh, ow, kernel, stride, pad, relu);
        else if (!Cpu.Conv.CentreTapOnly(h, w, kernel, pad))
            Cpu.Conv.Forward(x, y, residual, PackedWeights(index, c), _scale[index], _bias[index], batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu, packedWeights: true);
        else
            Cpu.Conv.Forward(x, y, residual, Weights(c), _scale[index], _bias[index], batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu);
    }

    /// <summary>
    /// The forward of a training step: z = conv(x) and a = relu?(BN(z) + residual), both kept for backward
    /// (a may be z itself when nothing needs z). BN uses batch statistics in train mode, running ones in eval mode.
    /// </summary>
    public void ConvTrain(int index, ReadOnlySpan<float> x, Span<float> z, Span<float> a, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        var c = CheckConv(index, cin, cout, kernel);
        bool batchStatistics = IsTraining;
        if (batchStatistics && (long)batch * oh * ow <= 1)
            throw new ArgumentException($"{_spec.Name}: train-mode BatchNorm needs more than one value per channel (PyTorch's rule); a batch of {batch} at {oh}x{ow} has one. Use a larger batch or Eval().");
        if (_gpu is not null)
        {
            _gpu.ConvForward(index, x, z, a, residual, batch, cin, h, w, cout, oh, ow, stride, pad, relu, batchStatistics);
            // The running statistics just moved on the device: they come down when the host reads the values.
            if (batchStatistics) _valuesOnDevice = true;
        }
        else
        {
            var tiles = Cpu.Winograd.Choose(kernel, stride, pad, batch, cin, h, w, cout);
            if (tiles != Cpu.Winograd.Tiles.None)
                Cpu.Winograd.Forward(x, z, ReadOnlySpan<float>.Empty, WinogradWeights(index, c, tiles), ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty,
                    batch, cin, h, w, cout, relu: false, tiles);
            else
                Cpu.Conv.Forward(x, z, ReadOnlySpan<float>.Empty, Weights(c), ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty,
                    batch, cin, h, w, cout, oh, ow, kernel, stride, pad, relu: false);
            Kernels.BatchNormForward(z, a, residual, ValueArray.AsSpan((int)c.BatchNorm, 4 * cout), _bnMean[index], _bnInvStd[index],
                batch, cout, oh * ow, relu, batchStatistics, BnSums(cout), StatisticsReducer);
        }
        if (batchStatistics)
        {
            _counters[c.Counter]++;
            var before = (_weightsVersion, _statisticsVersion);
            _statisticsVersion++;
            // The device computed these statistics and holds the new version.
            _gpu?.NoteDeviceCurrent(before, (_weightsVersion, _statisticsVersion));
        }
    }

    /// <summary>
    /// Backward of <see cref="ConvTrain"/>: from g = dL/da (overwritten) to dL/dz, the residual's gradient added to
    /// <paramref name="gResidual"/>, BN and conv weight gradients accumulated, and dL/dx added to <paramref name="gx"/>
    /// (empty when x is the network input).
    /// </summary>
    public void ConvBackward(int index, ReadOnlySpan<float> x, ReadOnlySpan<float> z, ReadOnlySpan<float> a, Span<float> g,
        Span<float> gResidual, Span<float> gx, int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        var c = CheckConv(index, cin, cout, kernel);
        if (_gpu is not null)
        {
            _gpu.ConvBackward(index, x, z, a, g, gResidual, gx, batch, cin, h, w, cout, oh, ow, stride, pad, relu, _batchStatistics,
                _gradientsOnDevice ? Span<float>.Empty : GradientStore);
            GradientsReady?.Invoke(index);
            return;
        }
        int hw = oh * ow;
        bool fold = batch > 1 && hw <= Cpu.Conv.FoldBelow;
        long columns = fold ? (long)batch * hw : hw;
        // The filter gradient of the larger (unfolded) maps: 3x3 stride 1 over padded planes (no nine-fold im2col);
        // 1x1 with more input than output channels as its transpose. Not for the folded small maps: there each image's
        // nine products would pass through memory (at 14x14 and batch 16: 159 against 134 ms per training step).
        bool planes = !fold && Cpu.Backward.PlanesApply(kernel, stride, pad);
        bool pointwise = !fold && Cpu.Backward.PointwiseApplies(kernel, stride, pad, cin, cout);
        // A map of one pixel, padded: only the centre tap meets the input (as in the forward), so both gradients are
        // those of a 1x1 convolution; the filter gradient's product [Cout x Cin] is added into the centre taps.
        bool centre = fold && Cpu.Conv.CentreTapOnly(h, w, kernel, pad);
        int taps = kernel * kernel, centreTap = pad * kernel + pad;
        // Scratch grows during the first step only: the filter gradient's column panels (K padded to the panel
        // width) or planes, then the data gradient's columns.
        long scratch = Math.Max(
            centre ? Cpu.Backward.FilterPanelFloats(columns, cin) + (long)cout * cin
            : planes ? Cpu.Backward.PlanesFloats(cin, h, w, cout) : pointwise ? Cpu.Backward.PointwiseFloats(cin, hw, cout) : Cpu.Backward.FilterPanelFloats(columns, c.K),
            gx.IsEmpty ? 0 : (long)(centre ? cin : c.K) * columns);
        if (_columns.Length < scratch) _columns = new AlignedFloats(scratch);
        if (fold && _gradientRows.Length < cout * columns) _gradientRows = new AlignedFloats(cout * columns);
        // The folded filter gradient is one GEMM over the whole batch: right after ZeroGrad it stores dW instead of
        // adding to zeros, so that dW is neither cleared nor read first.
        bool folded = fold && !centre;
        var gradients = GradientsOfLayer(index, out bool cleared, weightsStoredWhole: folded);
        fixed (float* px = x, pz = z, pa = a, pg = g, pgr = gResidual, pgx = gx, pvalues = ValueArray, pgrads = gradients,
               pmean = _bnMean[index], pinv = _bnInvStd[index], pcols = _columns.Span, prows = _gradientRows.Span)
        fixed (double* psums = BnSums(cout))
        {
            Cpu.Backward.BatchNorm(pz, pa, pg, gResidual.IsEmpty ? null : pgr, pvalues + c.BatchNorm, pmean, pinv,
                pgrads + c.BatchNorm, pgrads + c.BatchNorm + cout, batch, cout, hw, relu, _batchStatistics, psums, StatisticsReducer);
            // dL/dx of a 3x3 stride-1 convolution is the 3x3 stride-1 convolution of dL/dz with the kernels flipped and
            // transposed: Winograd where it pays, added to gx (gx as its own residual).
            var tiles = gx.IsEmpty ? Cpu.Winograd.Tiles.None : Cpu.Winograd.Choose(kernel, stride, pad, batch, cout, oh, ow, cin);
            bool winograd = tiles != Cpu.Winograd.Tiles.None;
            long inPerImage = (long)cin * h * w, outPerImage = (long)cout * hw;
            if (centre)
            {
                float* product = pcols + Cpu.Backward.FilterPanelFloats(columns, cin);
                Cpu.Backward.ConvFilterFolded(px, pg, product, pcols, prows, batch, cin, 1, 1, cout, 1, 1, 1, 1, 0, accumulate: false);
                Cpu.Backward.AddTap(product, pgrads + c.Weight + centreTap, cin, cout, taps);
            }
            else if (planes) Cpu.Backward.ConvFilterPlanes(px, pg, pgrads + c.Weight, pcols, batch, cin, h, w, cout);
            else if (pointwise) Cpu.Backward.ConvFilterPointwise(px, pg, pgrads + c.Weight, pcols, batch, cin, hw, cout);
            else if (folded)
                Cpu.Backward.ConvFilterFolded(px, pg, pgrads + c.Weight, pcols, prows, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, accumulate: !cleared);
            else
                for (int n = 0; n < batch; n++)
                    Cpu.Backward.ConvFilter(px + n * inPerImage, pg + n * outPerImage, pgrads + c.Weight, pcols, cin, h, w, cout, oh, ow, kernel, stride, pad);
            if (!gx.IsEmpty && !winograd)
            {
                // The folded filter gradient has gathered gz into rows already.
                if (centre) Cpu.Backward.ConvDataFolded(pg, pvalues + c.Weight + centreTap, pgx, pcols, prows, batch, cin, 1, 1, cout, 1, 1, 1, 1, 0, gzGathered: true, taps);
                else if (fold) Cpu.Backward.ConvDataFolded(pg, pvalues + c.Weight, pgx, pcols, prows, batch, cin, h, w, cout, oh, ow, kernel, stride, pad, gzGathered: true);
                else
                    for (int n = 0; n < batch; n++)
                        Cpu.Backward.ConvData(pg + n * outPerImage, pvalues + c.Weight, pgx + n * inPerImage, pcols, cin, h, w, cout, oh, ow, kernel, stride, pad);
            }
            if (winograd)
                Cpu.Winograd.Forward(g, gx, gx, WinogradWeights(index, c, tiles, transposed: true), ReadOnlySpan<float>.Empty, ReadOnlySpan<float>.Empty,
                    batch, cout, oh, ow, cin, relu: false, tiles);
        }
        GradientsReady?.Invoke(index);
    }

    /// <summary>
    /// Called on the training thread as soon as a layer's parameter gradients are final for the current
    /// <c>ForwardBackward</c>: with the conv index (its weight and BatchNorm), or -1 for the fc layer. Data-parallel
    /// training starts reducing a bucket of gradients while backward goes on with earlier layers.
    /// </summary>
    internal Action<int>? GradientsReady;

    public void MaxPool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        if (_gpu is not null)
        {
            _gpu.MaxPool(x, y, batch, channels, h, w, oh, ow, kernel, stride, pad);
            return;
        }
        if (_planned)
        {
            var (xAt, xLength) = Region(x);
            var (yAt, yLength) = Region(y);
            _plan!.MaxPool(xAt, xLength, yAt, yLength);
        }
        long start = Clock is null ? 0 : Tick();
        Kernels.MaxPool(x, y, batch * channels, h, w, oh, ow, kernel, stride, pad);
        if (Clock is { } clock) clock.MaxPool += Tick() - start;
    }

    public void MaxPoolBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> g, Span<float> gx, int batch, int channels, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        if (_gpu is not null)
        {
            _gpu.MaxPoolBackward(x, g, gx, batch, channels, h, w, oh, ow, kernel, stride, pad);
            return;
        }
        fixed (float* px = x, pg = g, pgx = gx)
            Cpu.Backward.MaxPool(px, pg, pgx, batch * channels, h, w, oh, ow, kernel, stride, pad);
    }

    public void GlobalAveragePool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int hw)
    {
        if (_gpu is not null)
        {
            _gpu.GlobalAveragePool(x, y, batch, channels, hw);
            return;
        }
        long start = Clock is null ? 0 : Tick();
        if (_planned && _plan!.AveragePool(Region(x).At, x.Length)) Kernels.GlobalAveragePoolPixels(x, y, channels, hw);
        else Kernels.GlobalAveragePool(x, y, batch * channels, hw);
        if (Clock is { } clock) clock.AveragePool += Tick() - start;
    }

    public void GlobalAveragePoolBackward(ReadOnlySpan<float> g, Span<float> gx, int batch, int channels, int hw)
    {
        if (_gpu is not null) _gpu.GlobalAveragePoolBackward(g, gx, batch, channels, hw);
        else Cpu.Backward.GlobalAveragePool(g, gx, batch * channels, hw);
    }

    /// <summary>Zeroes an activation gradient before its first contribution (on the GPU, its device memory).</summary>
    public void ZeroGradient(Span<float> gradient)
    {
        if (_gpu is not null) _gpu.Zero(gradient);
        else gradient.Clear();
    }

    public void Linear(ReadOnlySpan<float> x, Span<float> y, int batch)
    {
        if (_gpu is not null)
        {
            _gpu.Linear(x, y, batch);
            return;
        }
        if (_planned) _plan!.End();
        long start = Clock is null ? 0 : Tick();
        LinearOnCpu(x, y, batch);
        if (Clock is { } clock) clock.Linear += Tick() - start;
    }

    private void LinearOnCpu(ReadOnlySpan<float> x, Span<float> y, int batch) =>
        Kernels.Linear(x, y, ValueArray.AsSpan((int)_spec.FcWeight, _spec.NumClasses * _spec.FcIn),
            ValueArray.AsSpan((int)_spec.FcBias, _spec.NumClasses), batch, _spec.FcIn, _spec.NumClasses);

    public void LinearBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> g, Span<float> gx, int batch)
    {
        if (_gpu is not null)
        {
            _gpu.LinearBackward(x, g, gx, batch, _gradientsOnDevice ? Span<float>.Empty : GradientStore);
            GradientsReady?.Invoke(-1);
            return;
        }
        var gradients = GradientsOfLayer(_spec.Convs.Length, out _);
        Cpu.Backward.Linear(x, g, ValueArray.AsSpan((int)_spec.FcWeight, _spec.NumClasses * _spec.FcIn),
            gradients.Slice((int)_spec.FcWeight, _spec.NumClasses * _spec.FcIn), gradients.Slice((int)_spec.FcBias, _spec.NumClasses),
            gx, batch, _spec.FcIn, _spec.NumClasses);
        GradientsReady?.Invoke(-1);
    }

    /// <summary>
    /// Mean cross-entropy (as nn.CrossEntropyLoss) and dL/dlogits. A loss that is NaN or infinite puts the BatchNorm
    /// running statistics back as they were before this batch (the optimizer then refuses the step: see
    /// <see cref="Optimizer.OnNonFinite"/>), so a bad batch cannot corrupt them.
    /// </summary>
    public float CrossEntropy(ReadOnlySpan<float> logits, ReadOnlySpan<int> labels, Span<float> gLogits, int batch)
    {
        float loss = Cpu.Backward.CrossEntropy(logits, labels, gLogits, batch, _spec.NumClasses);
        _gpu?.Upload(gLogits);
        LastLoss = loss;
        if (!float.IsFinite(loss) && _batchStatistics) RestoreStatistics();
        return loss;
    }

    /// <summary>The loss of the last <c>ForwardBackward</c>.</summary>
    public float LastLoss { get; private set; } = float.NaN;

    // The running statistics and counters before the current training batch (a few thousand values for ResNet-50).
    private float[] _statisticsBackup = Array.Empty<float>();
    private long[] _countersBackup = Array.Empty<long>();

    private void BackUpStatistics()
    {
        if (_countersBackup.Length != _counters.Length) _countersBackup = new long[_counters.Length];
        _counters.CopyTo(_countersBackup, 0);
        if (_gpu is not null)
        {
            _gpu.BackUpValues();
            return;
        }
        if (_statisticsBackup.Length == 0)
        {
            int n = 0;
            foreach (var c in _spec.Convs) n += 2 * c.OutChannels;
            _statisticsBackup = new float[n];
        }
        int at = 0;
        foreach (var c in _spec.Convs)
        {
            ValueArray.AsSpan((int)c.BatchNorm + 2 * c.OutChannels, 2 * c.OutChannels).CopyTo(_statisticsBackup.AsSpan(at));
            at += 2 * c.OutChannels;
        }
    }

    private void RestoreStatistics()
    {
        _countersBackup.CopyTo(_counters, 0);
        if (_gpu is not null)
        {
            // The device's values as they were before this batch's forward (only the running statistics had changed).
            _gpu.RestoreValues();
            var before = (_weightsVersion, _statisticsVersion);
            _statisticsVersion++;
            _gpu.NoteDeviceCurrent(before, (_weightsVersion, _statisticsVersion));
            _valuesOnDevice = true;
            return;
        }
        int at = 0;
        foreach (var c in _spec.Convs)
        {
            _statisticsBackup.AsSpan(at, 2 * c.OutChannels).CopyTo(ValueArray.AsSpan((int)c.BatchNorm + 2 * c.OutChannels));
            at += 2 * c.OutChannels;
        }
        _statisticsVersion++;
    }

    /// <summary>The state_dict key of the parameter that holds value <paramref name="offset"/>.</summary>
    internal string KeyAt(int offset)
    {
        foreach (var e in _spec.Entries)
            if (!e.IsCounter && offset >= e.Offset && offset < e.Offset + e.Count) return e.Key;
        return "?";
    }
}
