using System;
using System.Collections.Generic;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Unrolled.Runtime;
using static Unrolled.Gpu.CudaNative;

namespace Unrolled.Gpu;

/// <summary>
/// The CUDA backend of a network: inference and training on one GPU through cuDNN and cuBLAS. The generated code stays
/// the same program: it slices host arenas as it does on the CPU, and this backend maps every slice to the same offset
/// of a device arena of the same plan. On the GPU the host arenas are only address ranges (native memory that is
/// reserved, never written, so the kernel never backs it with pages), except the few values the host computes itself
/// (dL/dlogits). Per conv, the cuDNN descriptors and the algorithms (found by cudnnFind, cached per conv and batch
/// size) are made once; one workspace serves every conv. TF32 is off (fp32 math in cuDNN and cuBLAS), so results
/// compare with PyTorch's fp32.
/// </summary>
/// <remarks>
/// Every host API (GetTensor, checkpoints, the optimizers, the data-parallel hooks) works as on the CPU; the state
/// moves only when it has to. The values go up when the host changed them (their version); a training forward moves
/// the running statistics on the device, and an SGD step the parameters (momentum kept there), after which the
/// values come down only when the host reads them; the gradients stay on the device after backward and come down
/// when read, or layer by layer as backward finishes them when a <c>GradientsReady</c> hook wants them; another
/// optimizer steps on the host (gradients down, values up). A training step with SGD waits for the device three times:
/// the input's upload, the logits (the loss is computed on the host), and the gradient check before the step.
/// </remarks>
internal sealed unsafe class CudaBackend
{
    private readonly NetworkSpec _spec;
    private readonly nint _stream, _blas, _dnn, _relu;
    private readonly float* _values, _gradients;
    private (long Weights, long Statistics) _uploadedVersion = (-1, -1);
    private Region _arena, _train, _gradientArena;
    private float* _input, _pinned;
    private long _inputFloats;
    // The host span the pinned buffer last uploaded, reused while one Forward or ForwardBackward lasts.
    private float* _uploadedFrom;
    private int _uploadedLength;
    private float* _scratch;
    private long _scratchFloats;
    private void* _workspace;
    private nuint _workspaceBytes;
    private float* _logits;
    private long _logitsFloats;
    private float* _ones;
    private long _onesFloats;
    private readonly Dictionary<(int N, int C, int H, int W), nint> _tensors = new();
    private readonly Dictionary<(int Mode, int KernelH, int KernelW, int Stride, int Pad), nint> _pools = new();
    // Max pooling's backward needs its forward output: the output written for each input, by device address.
    private readonly Dictionary<nint, nint> _maxPoolOutputs = new();
    private readonly ConvPlan[] _plans;

    private sealed class ConvPlan
    {
        public nint Filter, Convolution;
        public bool Configured;
        public float* SavedMean, SavedInvStd; // train-mode BatchNorm's batch statistics, for its backward
        public readonly Dictionary<int, (int Algo, nuint Workspace)> Forward = new(), BackwardData = new(), BackwardFilter = new();
    }

    /// <summary>A host address range and the device memory it stands for.</summary>
    private struct Region
    {
        public float* Host, Device;
        public long Floats;

        public void Grow(long floats, string what)
        {
            if (floats <= Floats) return;
            if (Host != null) NativeMemory.Free(Host);
            if (Device != null) Check(cudaFree(Device), "cudaFree");
            Host = null;
            Device = null;
            Floats = 0;
            // Never written on the host: the kernel maps pages only when touched.
            Host = (float*)NativeMemory.Alloc((nuint)floats, sizeof(float));
            Device = (float*)Allocate(floats, what);
            Floats = floats;
        }

        public readonly float* DeviceOf(float* host, int length) =>
            host >= Host && host + length <= Host + Floats ? Device + (host - Host) : null;
    }

    public CudaBackend(NetworkSpec spec)
    {
        _spec = spec;
        CudaLibraries.UseProbedLibraries();
        Check(cudaSetDevice(0), "cudaSetDevice(0)");
        nint stream, blas, dnn, relu;
        Check(cudaStreamCreate(&stream), "cudaStreamCreate");
        CheckBlas(cublasCreate(&blas), "cublasCreate");
        CheckBlas(cublasSetStream(blas, stream), "cublasSetStream");
        CheckBlas(cublasSetMathMode(blas, CublasDefaultMath), "cublasSetMathMode(CUBLAS_DEFAULT_MATH)");
        CheckDnn(cudnnCreate(&dnn), "cudnnCreate");
        CheckDnn(cudnnSetStream(dnn, stream), "cudnnSetStream");
        CheckDnn(cudnnCreateActivationDescriptor(&relu), "cudnnCreateActivationDescriptor");
        CheckDnn(cudnnSetActivationDescriptor(relu, ActivationRelu, PropagateNan, 0), "cudnnSetActivationDescriptor(RELU)");
        (_stream, _blas, _dnn, _relu) = (stream, blas, dnn, relu);

        _plans = new ConvPlan[spec.Convs.Length];
        for (int i = 0; i < _plans.Length; i++)
        {
            var c = spec.Convs[i];
            var plan = new ConvPlan();
            nint filter, convolution;
            CheckDnn(cudnnCreateFilterDescriptor(&filter), "cudnnCreateFilterDescriptor");
            CheckDnn(cudnnSetFilter4dDescriptor(filter, DataFloat, TensorNchw, c.OutChannels, c.InChannels, c.Kernel, c.Kernel),
                $"cudnnSetFilter4dDescriptor (conv {i}: {c.OutChannels}x{c.InChannels}x{c.Kernel}x{c.Kernel})");
            CheckDnn(cudnnCreateConvolutionDescriptor(&convolution), "cudnnCreateConvolutionDescriptor");
            plan.Filter = filter;
            plan.Convolution = convolution;
            _plans[i] = plan;
        }
        _values = (float*)Allocate(spec.ValueCount, "weights");
        _gradients = (float*)Allocate(spec.ValueCount, "gradients");
    }

    private static void* Allocate(long floats, string what)
    {
        void* pointer;
        Check(cudaMalloc(&pointer, (nuint)(Math.Max(1, floats) * sizeof(float))), $"cudaMalloc ({floats} floats of {what})");
        return pointer;
    }

    private static void Grow(ref float* buffer, ref long capacity, long floats, string what)
    {
        if (floats <= capacity) return;
        if (buffer != null) Check(cudaFree(buffer), "cudaFree");
        buffer = null;
        capacity = 0;
        buffer = (float*)Allocate(floats, what);
        capacity = floats;
    }

    private void UploadValues(ReadOnlySpan<float> values, (long Weights, long Statistics) version)
    {
        if (version == _uploadedVersion) return;
        if (values.Length < _spec.ValueCount) throw new ArgumentException($"{_spec.Name}: {values.Length} values, expected {_spec.ValueCount}", nameof(values));
        fixed (float* host = values)
            Check(cudaMemcpyAsync(_values, host, (nuint)_spec.ValueCount * sizeof(float), MemcpyHostToDevice, _stream), "cudaMemcpyAsync (weights)");
        Check(cudaStreamSynchronize(_stream), "cudaStreamSynchronize (weights)");
        _uploadedVersion = version;
    }

    /// <summary>Before a forward: the arena for <paramref name="batch"/> images (host addresses standing for device memory), and the weights if they changed.</summary>
    public Span<float> BeginForward(int batch, ReadOnlySpan<float> values, (long Weights, long Statistics) version)
    {
        long floats = batch * _spec.ArenaPerImage;
        _arena.Grow(floats, "activations");
        UploadValues(values, version);
        _uploadedFrom = null;
        return new Span<float>(_arena.Host, (int)floats);
    }

    /// <summary>
    /// Before a training step: the arenas of saved activations and of activation gradients, the weights if they
    /// changed, and the device's parameter gradients: zeroed, or set to <paramref name="hostGradients"/>, or (when
    /// that is empty) kept, so that this step's add to the previous one's.
    /// </summary>
    public void BeginTraining(int batch, ReadOnlySpan<float> values, (long Weights, long Statistics) version, ReadOnlySpan<float> hostGradients,
        bool gradientsAreZero, out Span<float> saved, out Span<float> activationGradients)
    {
        long savedFloats = batch * _spec.TrainArenaPerImage, gradientFloats = batch * _spec.GradientArenaPerImage;
        _train.Grow(savedFloats, "saved activations");
        _gradientArena.Grow(gradientFloats, "activation gradients");
        UploadValues(values, version);
        nuint bytes = (nuint)_spec.ValueCount * sizeof(float);
        if (gradientsAreZero) Check(cudaMemsetAsync(_gradients, 0, bytes, _stream), "cudaMemsetAsync (gradients)");
        else if (!hostGradients.IsEmpty)
            fixed (float* host = hostGradients)
                Check(cudaMemcpyAsync(_gradients, host, bytes, MemcpyHostToDevice, _stream), "cudaMemcpyAsync (gradients)");
        _uploadedFrom = null;
        saved = new Span<float>(_train.Host, (int)savedFloats);
        activationGradients = new Span<float>(_gradientArena.Host, (int)gradientFloats);
    }

    /// <summary>
    /// The host moved its version to match what the device computed (running statistics it copied down, or an
    /// optimizer step taken on the device): the device copy stays current unless something else had changed.
    /// </summary>
    public void NoteDeviceCurrent((long Weights, long Statistics) before, (long Weights, long Statistics) after)
    {
        if (_uploadedVersion == before) _uploadedVersion = after;
    }

    private float* _backup;

    /// <summary>Keeps a copy of every value (before a training forward moves the running statistics).</summary>
    public void BackUpValues()
    {
        if (_backup == null) _backup = (float*)Allocate(_spec.ValueCount, "values backup");
        Check(cudaMemcpyAsync(_backup, _values, (nuint)_spec.ValueCount * sizeof(float), MemcpyDeviceToDevice, _stream), "cudaMemcpyAsync (values backup)");
    }

    /// <summary>Puts back the copy <see cref="BackUpValues"/> kept (a batch whose loss was not finite).</summary>
    public void RestoreValues()
    {
        if (_backup == null) throw new InvalidOperationException($"{_spec.Name}: no values were backed up on the GPU.");
        Check(cudaMemcpyAsync(_values, _backup, (nuint)_spec.ValueCount * sizeof(float), MemcpyDeviceToDevice, _stream), "cudaMemcpyAsync (values restore)");
    }

    /// <summary>Before an optimizer step on the device: the values, if the host's are newer.</summary>
    public void BeginStep(ReadOnlySpan<float> values, (long Weights, long Statistics) version) => UploadValues(values, version);

    /// <summary>Copies every value (after a step taken on the device) into <paramref name="host"/>.</summary>
    public void DownloadValues(Span<float> host)
    {
        Download(host.Slice(0, (int)_spec.ValueCount), _values, "values");
        Synchronize("values");
    }

    /// <summary>Copies every parameter gradient into <paramref name="host"/>.</summary>
    public void DownloadGradients(Span<float> host)
    {
        Download(host.Slice(0, (int)_spec.ValueCount), _gradients, "gradients");
        Synchronize("gradients");
    }

    /// <summary>
    /// Whether every gradient is finite: the sum of their magnitudes (cublasSasum) is NaN or infinite as soon as one
    /// is (or, for absurdly large finite ones, overflows: the host then looks at each).
    /// </summary>
    public bool GradientsFinite()
    {
        float sum;
        CheckBlas(cublasSasum(_blas, (int)_spec.ValueCount, _gradients, 1, &sum), "cublasSasum (gradients)");
        return float.IsFinite(sum);
    }

    private float* _direction;
    // Each SGD optimizer's momentum buffer on the device (in the values' layout), made at its first step here.
    private readonly Dictionary<object, nint> _momenta = new(ReferenceEqualityComparer.Instance);

    private float* Momentum(object optimizer)
    {
        if (!_momenta.TryGetValue(optimizer, out nint buffer))
        {
            buffer = (nint)Allocate(_spec.ValueCount, "momentum buffer");
            _momenta.Add(optimizer, buffer);
        }
        return (float*)buffer;
    }

    /// <summary>Copies <paramref name="optimizer"/>'s SGD momentum buffer (the values' layout) between the host and the device.</summary>
    public void TransferMomentum(object optimizer, Span<float> host, bool toDevice)
    {
        float* device = Momentum(optimizer);
        nuint bytes = (nuint)_spec.ValueCount * sizeof(float);
        fixed (float* h = host)
            Check(toDevice ? cudaMemcpyAsync(device, h, bytes, MemcpyHostToDevice, _stream) : cudaMemcpyAsync(h, device, bytes, MemcpyDeviceToHost, _stream),
                "cudaMemcpyAsync (momentum buffer)");
        Synchronize("momentum buffer");
    }

    /// <summary>
    /// One torch.optim.SGD step on the device over each run of parameters (the values between them, BatchNorm's
    /// running statistics, are left alone): d = g + weightDecay * p; with momentum, buf = d on the first step, else
    /// buf = momentum * buf + (1 - dampening) * d, and d = buf (Nesterov: d + momentum * buf); p -= lr * d. The
    /// gradients are not changed (d is built in scratch memory).
    /// </summary>
    public void SgdStep(object optimizer, ReadOnlySpan<(int Offset, int Count)> runs, float learningRate, float momentum, float dampening,
        float weightDecay, bool nesterov, bool first)
    {
        float* momenta = momentum != 0 ? Momentum(optimizer) : null;
        if (_direction == null) _direction = (float*)Allocate(_spec.ValueCount, "SGD step scratch");
        float keep = 1 - dampening, minusLr = -learningRate;
        foreach (var (offset, count) in runs)
        {
            float* p = _values + offset, d = _direction + offset, buf = momenta + offset;
            Check(cudaMemcpyAsync(d, _gradients + offset, (nuint)count * sizeof(float), MemcpyDeviceToDevice, _stream), "cudaMemcpyAsync (SGD step)");
            if (weightDecay != 0) CheckBlas(cublasSaxpy(_blas, count, &weightDecay, p, 1, d, 1), "cublasSaxpy (weight decay)");
            if (momentum != 0)
            {
                if (first) Check(cudaMemcpyAsync(buf, d, (nuint)count * sizeof(float), MemcpyDeviceToDevice, _stream), "cudaMemcpyAsync (momentum)");
                else
                {
                    CheckBlas(cublasSscal(_blas, count, &momentum, buf, 1), "cublasSscal (momentum)");
                    CheckBlas(cublasSaxpy(_blas, count, &keep, d, 1, buf, 1), "cublasSaxpy (momentum)");
                }
                if (nesterov) CheckBlas(cublasSaxpy(_blas, count, &momentum, buf, 1, d, 1), "cublasSaxpy (Nesterov)");
                else Check(cudaMemcpyAsync(d, buf, (nuint)count * sizeof(float), MemcpyDeviceToDevice, _stream), "cudaMemcpyAsync (momentum)");
            }
            CheckBlas(cublasSaxpy(_blas, count, &minusLr, d, 1, p, 1), "cublasSaxpy (SGD update)");
        }
    }

    /// <summary>
    /// The device address of a tensor the generated code passes: a slice of a host arena maps to the same offset of
    /// its device arena; anything else is the network's input, uploaded through the pinned buffer.
    /// </summary>
    private float* Map(ReadOnlySpan<float> tensor)
    {
        if (tensor.IsEmpty) return null;
        float* host = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor));
        float* device = ArenaDevice(host, tensor.Length);
        if (device != null) return device;
        // The input: its upload is reused while the same span comes back within one forward (or training step).
        if (host == _uploadedFrom && tensor.Length == _uploadedLength) return _input;
        if (_inputFloats < tensor.Length)
        {
            if (_input != null) Check(cudaFree(_input), "cudaFree");
            if (_pinned != null) Check(cudaFreeHost(_pinned), "cudaFreeHost");
            _input = null;
            _pinned = null;
            _inputFloats = 0;
            _input = (float*)Allocate(tensor.Length, "input");
            void* pinned;
            Check(cudaMallocHost(&pinned, (nuint)tensor.Length * sizeof(float)), $"cudaMallocHost ({tensor.Length} floats of input)");
            _pinned = (float*)pinned;
            _inputFloats = tensor.Length;
        }
        // The previous upload from the pinned buffer must be done before it is overwritten.
        Check(cudaStreamSynchronize(_stream), "cudaStreamSynchronize (input)");
        tensor.CopyTo(new Span<float>(_pinned, tensor.Length));
        Check(cudaMemcpyAsync(_input, _pinned, (nuint)tensor.Length * sizeof(float), MemcpyHostToDevice, _stream), "cudaMemcpyAsync (input)");
        _uploadedFrom = host;
        _uploadedLength = tensor.Length;
        return _input;
    }

    /// <summary>Where a slice of one of the host arenas lies on the device, or null when it is in none of them.</summary>
    private float* ArenaDevice(float* host, int length)
    {
        float* device = _arena.DeviceOf(host, length);
        if (device == null) device = _train.DeviceOf(host, length);
        if (device == null) device = _gradientArena.DeviceOf(host, length);
        return device;
    }

    /// <summary>The device address of an arena slice; <paramref name="what"/> (of conv <paramref name="conv"/>, if any) names it in the error.</summary>
    private float* MapArena(ReadOnlySpan<float> tensor, string what, int conv = -1)
    {
        float* device = ArenaDevice((float*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(tensor)), tensor.Length);
        if (device == null)
            throw new InvalidOperationException($"{_spec.Name}: {Describe(what, conv)} is not a slice of the network's arenas; the CUDA backend cannot place it (regenerate the network).");
        return device;
    }

    /// <summary>Zeroes an activation gradient's device memory (the generated code zeroes each before its first contribution).</summary>
    public void Zero(Span<float> gradient)
    {
        if (gradient.IsEmpty) return;
        Check(cudaMemsetAsync(MapArena(gradient, "a zeroed gradient"), 0, (nuint)gradient.Length * sizeof(float), _stream), "cudaMemsetAsync (activation gradient)");
    }

    /// <summary>Copies values the host computed in an arena slice (dL/dlogits) to the device.</summary>
    public void Upload(ReadOnlySpan<float> slice)
    {
        if (slice.IsEmpty) return;
        float* device = MapArena(slice, "an uploaded slice");
        fixed (float* host = slice)
            Check(cudaMemcpyAsync(device, host, (nuint)slice.Length * sizeof(float), MemcpyHostToDevice, _stream), "cudaMemcpyAsync (dL/dlogits)");
    }

    private void Download(Span<float> host, float* device, string what, int conv = -1)
    {
        if (host.IsEmpty) return;
        fixed (float* h = host)
            Check(cudaMemcpyAsync(h, device, (nuint)host.Length * sizeof(float), MemcpyDeviceToHost, _stream), $"cudaMemcpyAsync ({Describe(what, conv)})");
    }

    private void Synchronize(string what, int conv = -1) => Check(cudaStreamSynchronize(_stream), $"cudaStreamSynchronize ({Describe(what, conv)})");

    // Error texts are formatted only when a call fails (see CudaNative.FailureText): a step allocates nothing.
    private static string Describe(string what, int conv) => conv < 0 ? what : $"conv {conv}'s {what}";

    private nint Tensor(int n, int c, int h, int w)
    {
        if (_tensors.TryGetValue((n, c, h, w), out nint descriptor)) return descriptor;
        CheckDnn(cudnnCreateTensorDescriptor(&descriptor), "cudnnCreateTensorDescriptor");
        CheckDnn(cudnnSetTensor4dDescriptor(descriptor, TensorNchw, DataFloat, n, c, h, w), $"cudnnSetTensor4dDescriptor ({n}x{c}x{h}x{w})");
        _tensors.Add((n, c, h, w), descriptor);
        return descriptor;
    }

    private nint Pool(int mode, int kernelH, int kernelW, int stride, int pad)
    {
        if (_pools.TryGetValue((mode, kernelH, kernelW, stride, pad), out nint descriptor)) return descriptor;
        CheckDnn(cudnnCreatePoolingDescriptor(&descriptor), "cudnnCreatePoolingDescriptor");
        CheckDnn(cudnnSetPooling2dDescriptor(descriptor, mode, PropagateNan, kernelH, kernelW, pad, pad, stride, stride), "cudnnSetPooling2dDescriptor");
        _pools.Add((mode, kernelH, kernelW, stride, pad), descriptor);
        return descriptor;
    }

    private ConvPlan Plan(int index, int stride, int pad)
    {
        var plan = _plans[index];
        if (!plan.Configured)
        {
            CheckDnn(cudnnSetConvolution2dDescriptor(plan.Convolution, pad, pad, stride, stride, 1, 1, CrossCorrelation, DataFloat),
                $"cudnnSetConvolution2dDescriptor (conv {index})");
            CheckDnn(cudnnSetConvolutionMathType(plan.Convolution, CudnnFmaMath), $"cudnnSetConvolutionMathType (conv {index}, FMA: no TF32)");
            plan.Configured = true;
        }
        return plan;
    }

    private const int FindForward = 0, FindBackwardData = 1, FindBackwardFilter = 2;

    /// <summary>The fastest algorithm cudnnFind measured for this conv, pass and batch (searched once), and a workspace that fits it.</summary>
    private int Algorithm(int index, ConvPlan plan, int kind, int batch, nint xDesc, nint yDesc)
    {
        var cache = kind == FindForward ? plan.Forward : kind == FindBackwardData ? plan.BackwardData : plan.BackwardFilter;
        if (!cache.TryGetValue(batch, out var algo))
        {
            string call = kind == FindForward ? "cudnnFindConvolutionForwardAlgorithm"
                : kind == FindBackwardData ? "cudnnFindConvolutionBackwardDataAlgorithm" : "cudnnFindConvolutionBackwardFilterAlgorithm";
            var results = stackalloc ConvolutionFwdAlgoPerf[FwdAlgoCount];
            int returned;
            int status = kind == FindForward
                ? cudnnFindConvolutionForwardAlgorithm(_dnn, xDesc, plan.Filter, plan.Convolution, yDesc, FwdAlgoCount, &returned, results)
                : kind == FindBackwardData
                    ? cudnnFindConvolutionBackwardDataAlgorithm(_dnn, plan.Filter, yDesc, plan.Convolution, xDesc, BwdDataAlgoCount, &returned, results)
                    : cudnnFindConvolutionBackwardFilterAlgorithm(_dnn, xDesc, yDesc, plan.Convolution, plan.Filter, BwdFilterAlgoCount, &returned, results);
            CheckDnn(status, $"{call} (conv {index}, batch {batch})");
            algo = (-1, 0);
            for (int i = 0; i < returned; i++)
                if (results[i].Status == 0) { algo = (results[i].Algo, results[i].Memory); break; }
            if (algo.Algo < 0) throw new CudaException($"{call} (conv {index}, batch {batch})", -1, "no algorithm ran");
            cache.Add(batch, algo);
        }
        if (algo.Workspace > _workspaceBytes)
        {
            if (_workspace != null) Check(cudaFree(_workspace), "cudaFree");
            _workspace = null;
            _workspaceBytes = 0;
            void* workspace;
            Check(cudaMalloc(&workspace, algo.Workspace), $"cudaMalloc ({algo.Workspace} bytes of cuDNN workspace)");
            _workspace = workspace;
            _workspaceBytes = algo.Workspace;
        }
        return algo.Algo;
    }

    /// <summary>
    /// z = conv(x), a = relu?(BN(z) + residual): BatchNorm with the batch's statistics (updating the running ones on the
    /// device) when <paramref name="batchStatistics"/>, else with the running ones. <paramref name="z"/> may be <paramref name="a"/> itself (a forward that keeps nothing): z then
    /// goes to scratch memory.
    /// </summary>
    public void ConvForward(int index, ReadOnlySpan<float> x, Span<float> z, Span<float> a, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int stride, int pad, bool relu, bool batchStatistics)
    {
        var c = _spec.Convs[index];
        var plan = Plan(index, stride, pad);
        float* px = Map(x), pa = MapArena(a, "output", index), pr = Map(residual);
        if (pr != null && pr == pa)
            throw new InvalidOperationException($"{_spec.Name}: conv {index} adds a residual that shares the output's memory; the CUDA backend needs them apart (regenerate the network).");
        long outFloats = (long)batch * cout * oh * ow;
        float* pz;
        if (Unsafe.AreSame(ref MemoryMarshal.GetReference(z), ref MemoryMarshal.GetReference(a)))
        {
            Grow(ref _scratch, ref _scratchFloats, outFloats, "convolution output");
            pz = _scratch;
        }
        else pz = MapArena(z, "output before BatchNorm", index);
        nint xDesc = Tensor(batch, cin, h, w), yDesc = Tensor(batch, cout, oh, ow), bnDesc = Tensor(1, cout, 1, 1);
        int algo = Algorithm(index, plan, FindForward, batch, xDesc, yDesc);

        float one = 1, zero = 0;
        CheckDnn(cudnnConvolutionForward(_dnn, &one, xDesc, px, plan.Filter, _values + c.Weight, plan.Convolution, algo,
            _workspace, _workspaceBytes, &zero, yDesc, pz), $"cudnnConvolutionForward (conv {index})");
        // BatchNorm's four vectors are stored one after the other: weight, bias, running_mean, running_var.
        float* bn = _values + c.BatchNorm;
        if (batchStatistics)
        {
            if (plan.SavedMean == null)
            {
                plan.SavedMean = (float*)Allocate(cout, "saved batch means");
                plan.SavedInvStd = (float*)Allocate(cout, "saved batch inverse deviations");
            }
            // cuDNN, as PyTorch on the GPU: the biased variance normalizes, the unbiased one goes into the running variance.
            CheckDnn(cudnnBatchNormalizationForwardTraining(_dnn, BatchNormSpatial, &one, &zero, yDesc, pz, yDesc, pa, bnDesc,
                bn, bn + cout, Cpu.Kernels.BatchNormMomentum, bn + 2 * cout, bn + 3 * cout, Cpu.Kernels.BatchNormEpsilon, plan.SavedMean, plan.SavedInvStd),
                $"cudnnBatchNormalizationForwardTraining (conv {index})");
        }
        else
        {
            CheckDnn(cudnnBatchNormalizationForwardInference(_dnn, BatchNormSpatial, &one, &zero, yDesc, pz, yDesc, pa, bnDesc,
                bn, bn + cout, bn + 2 * cout, bn + 3 * cout, Cpu.Kernels.BatchNormEpsilon), $"cudnnBatchNormalizationForwardInference (conv {index})");
        }
        if (pr != null) CheckDnn(cudnnAddTensor(_dnn, &one, yDesc, pr, &one, yDesc, pa), $"cudnnAddTensor (conv {index} residual)");
        if (relu) CheckDnn(cudnnActivationForward(_dnn, _relu, &one, yDesc, pa, &zero, yDesc, pa), $"cudnnActivationForward (conv {index} ReLU)");
    }

    /// <summary>
    /// Backward of <see cref="ConvForward"/> with batch statistics: g = dL/da to dL/dz (ReLU mask, BatchNorm backward),
    /// the residual's gradient added to <paramref name="gResidual"/>, the weight and BatchNorm gradients added to the
    /// device's (and copied into <paramref name="hostGradients"/> unless it is empty), and dL/dx added to <paramref name="gx"/>.
    /// </summary>
    public void ConvBackward(int index, ReadOnlySpan<float> x, ReadOnlySpan<float> z, ReadOnlySpan<float> a, Span<float> g,
        Span<float> gResidual, Span<float> gx, int batch, int cin, int h, int w, int cout, int oh, int ow, int stride, int pad, bool relu,
        bool batchStatistics, Span<float> hostGradients)
    {
        var c = _spec.Convs[index];
        var plan = Plan(index, stride, pad);
        if (batchStatistics && plan.SavedMean == null)
            throw new InvalidOperationException($"{_spec.Name}: conv {index}'s backward on the GPU needs its train-mode forward first.");
        float* px = Map(x), pz = MapArena(z, "saved input to BatchNorm", index), pa = MapArena(a, "saved output", index);
        float* pg = MapArena(g, "output gradient", index);
        float* pgr = gResidual.IsEmpty ? null : MapArena(gResidual, "residual gradient", index);
        float* pgx = gx.IsEmpty ? null : MapArena(gx, "input gradient", index);
        nint xDesc = Tensor(batch, cin, h, w), yDesc = Tensor(batch, cout, oh, ow), bnDesc = Tensor(1, cout, 1, 1);
        long outFloats = (long)batch * cout * oh * ow;
        Grow(ref _scratch, ref _scratchFloats, outFloats, "masked output gradient");
        float one = 1, zero = 0;

        // dL/d(BN(z) + residual): g where a > 0 (a > 0 exactly where the ReLU's input was).
        float* gy = pg;
        if (relu)
        {
            CheckDnn(cudnnActivationBackward(_dnn, _relu, &one, yDesc, pa, yDesc, pg, yDesc, pa, &zero, yDesc, _scratch),
                $"cudnnActivationBackward (conv {index} ReLU)");
            gy = _scratch;
        }
        if (pgr != null) CheckDnn(cudnnAddTensor(_dnn, &one, yDesc, gy, &one, yDesc, pgr), $"cudnnAddTensor (conv {index} residual gradient)");
        // dL/dz into whichever buffer does not hold gy; dgamma and dbeta added to the gradients.
        float* gz = gy == _scratch ? pg : _scratch;
        float* bn = _values + c.BatchNorm, dbn = _gradients + c.BatchNorm;
        if (batchStatistics)
            CheckDnn(cudnnBatchNormalizationBackward(_dnn, BatchNormSpatial, &one, &zero, &one, &one, yDesc, pz, yDesc, gy, yDesc, gz,
                bnDesc, bn, dbn, dbn + cout, Cpu.Kernels.BatchNormEpsilon, plan.SavedMean, plan.SavedInvStd), $"cudnnBatchNormalizationBackward (conv {index})");
        else
            RunningBatchNormBackward(index, pz, gy, gz, yDesc, bnDesc, cout, outFloats);
        int filterAlgo = Algorithm(index, plan, FindBackwardFilter, batch, xDesc, yDesc);
        CheckDnn(cudnnConvolutionBackwardFilter(_dnn, &one, xDesc, px, yDesc, gz, plan.Convolution, filterAlgo, _workspace, _workspaceBytes,
            &one, plan.Filter, _gradients + c.Weight), $"cudnnConvolutionBackwardFilter (conv {index})");
        if (pgx != null)
        {
            int dataAlgo = Algorithm(index, plan, FindBackwardData, batch, xDesc, yDesc);
            CheckDnn(cudnnConvolutionBackwardData(_dnn, &one, plan.Filter, _values + c.Weight, yDesc, gz, plan.Convolution, dataAlgo,
                _workspace, _workspaceBytes, &one, xDesc, pgx), $"cudnnConvolutionBackwardData (conv {index})");
        }
        if (!hostGradients.IsEmpty)
        {
            Download(hostGradients.Slice((int)c.Weight, cout * c.K), _gradients + c.Weight, "weight gradient", index);
            Download(hostGradients.Slice((int)c.BatchNorm, 2 * cout), dbn, "BatchNorm gradients", index);
            Synchronize("gradients", index);
        }
    }

    private float* _zeros, _normalized, _product;
    private long _normalizedFloats, _productFloats;
    private nint _multiply;

    /// <summary>
    /// BatchNorm's backward with the running statistics (a network in eval mode, as in fine-tuning with frozen
    /// BatchNorm): dz = gy * gamma / sqrt(var + eps), dbeta += sum(gy), dgamma += sum(gy * (z - mean) / sqrt(var + eps)),
    /// each per channel. cuDNN has no call for it; its BatchNorm inference does the per-channel affine maps (with
    /// zero means and biases, unit scales where needed), cudnnOpTensor the product, cudnnConvolutionBackwardBias the sums.
    /// </summary>
    private void RunningBatchNormBackward(int index, float* z, float* gy, float* gz, nint yDesc, nint bnDesc, int cout, long outFloats)
    {
        var c = _spec.Convs[index];
        if (_zeros == null)
        {
            int widest = 0;
            foreach (var conv in _spec.Convs) widest = Math.Max(widest, conv.OutChannels);
            _zeros = (float*)Allocate(widest, "zeros");
            Check(cudaMemsetAsync(_zeros, 0, (nuint)widest * sizeof(float), _stream), "cudaMemsetAsync (zeros)");
            nint multiply;
            CheckDnn(cudnnCreateOpTensorDescriptor(&multiply), "cudnnCreateOpTensorDescriptor");
            CheckDnn(cudnnSetOpTensorDescriptor(multiply, OpTensorMul, DataFloat, PropagateNan), "cudnnSetOpTensorDescriptor (MUL)");
            _multiply = multiply;
        }
        Grow(ref _normalized, ref _normalizedFloats, outFloats, "normalized BatchNorm input");
        Grow(ref _product, ref _productFloats, outFloats, "BatchNorm gradient product");
        float* bn = _values + c.BatchNorm, dbn = _gradients + c.BatchNorm;
        float* mean = bn + 2 * cout, variance = bn + 3 * cout;
        float one = 1, zero = 0;
        double eps = Cpu.Kernels.BatchNormEpsilon;
        // dz = gamma * (gy - 0) / sqrt(var + eps) + 0
        CheckDnn(cudnnBatchNormalizationForwardInference(_dnn, BatchNormSpatial, &one, &zero, yDesc, gy, yDesc, gz, bnDesc,
            bn, _zeros, _zeros, variance, eps), $"cudnnBatchNormalizationForwardInference (conv {index}'s input gradient)");
        CheckDnn(cudnnConvolutionBackwardBias(_dnn, &one, yDesc, gy, &one, bnDesc, dbn + cout), $"cudnnConvolutionBackwardBias (conv {index}'s BatchNorm bias gradient)");
        // xhat = 1 * (z - mean) / sqrt(var + eps) + 0, then gy * xhat summed per channel.
        CheckDnn(cudnnBatchNormalizationForwardInference(_dnn, BatchNormSpatial, &one, &zero, yDesc, z, yDesc, _normalized, bnDesc,
            Ones(cout), _zeros, mean, variance, eps), $"cudnnBatchNormalizationForwardInference (conv {index}'s normalized input)");
        CheckDnn(cudnnOpTensor(_dnn, _multiply, &one, yDesc, gy, &one, yDesc, _normalized, &zero, yDesc, _product),
            $"cudnnOpTensor (conv {index}'s BatchNorm weight gradient)");
        CheckDnn(cudnnConvolutionBackwardBias(_dnn, &one, yDesc, _product, &one, bnDesc, dbn), $"cudnnConvolutionBackwardBias (conv {index}'s BatchNorm weight gradient)");
    }

    public void MaxPool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        float one = 1, zero = 0;
        float* px = Map(x), py = MapArena(y, "max pooling's output");
        CheckDnn(cudnnPoolingForward(_dnn, Pool(PoolingMax, kernel, kernel, stride, pad), &one, Tensor(batch, channels, h, w), px,
            &zero, Tensor(batch, channels, oh, ow), py), "cudnnPoolingForward (max)");
        _maxPoolOutputs[(nint)px] = (nint)py;
    }

    /// <summary>gx += dL/dx of max pooling: each output's gradient to the input that was its maximum.</summary>
    public void MaxPoolBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> g, Span<float> gx, int batch, int channels, int h, int w, int oh, int ow,
        int kernel, int stride, int pad)
    {
        float* px = Map(x);
        if (!_maxPoolOutputs.TryGetValue((nint)px, out nint py))
            throw new InvalidOperationException($"{_spec.Name}: max pooling's backward on the GPU needs its forward first.");
        float one = 1;
        nint xDesc = Tensor(batch, channels, h, w), yDesc = Tensor(batch, channels, oh, ow);
        CheckDnn(cudnnPoolingBackward(_dnn, Pool(PoolingMax, kernel, kernel, stride, pad), &one, yDesc, (float*)py, yDesc,
            MapArena(g, "max pooling's output gradient"), xDesc, px, &one, xDesc, MapArena(gx, "max pooling's input gradient")), "cudnnPoolingBackward (max)");
    }

    /// <summary>The mean over each plane's <paramref name="hw"/> values: an average pool over a 1 x hw window.</summary>
    public void GlobalAveragePool(ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int hw)
    {
        float one = 1, zero = 0;
        CheckDnn(cudnnPoolingForward(_dnn, Pool(PoolingAverageExcludePadding, 1, hw, 1, 0), &one, Tensor(batch, channels, 1, hw), Map(x),
            &zero, Tensor(batch, channels, 1, 1), MapArena(y, "the pooled features")), "cudnnPoolingForward (average)");
    }

    /// <summary>gx += g / hw over each plane: the average's gradient, broadcast by cudnnAddTensor.</summary>
    public void GlobalAveragePoolBackward(ReadOnlySpan<float> g, Span<float> gx, int batch, int channels, int hw)
    {
        float scale = 1f / hw, one = 1;
        CheckDnn(cudnnAddTensor(_dnn, &scale, Tensor(batch, channels, 1, 1), MapArena(g, "the pooled features' gradient"), &one,
            Tensor(batch, channels, 1, hw), MapArena(gx, "the pooled map's gradient")), "cudnnAddTensor (average pooling's gradient)");
    }

    /// <summary>logits = x . W^T + b on the device (cuBLAS, column-major: logits^T = W . x^T), then copied to <paramref name="logits"/>.</summary>
    public void Linear(ReadOnlySpan<float> x, Span<float> logits, int batch)
    {
        int classes = _spec.NumClasses, inputs = _spec.FcIn;
        Grow(ref _logits, ref _logitsFloats, (long)batch * classes, "logits");
        float one = 1, zero = 0;
        CheckBlas(cublasSgemm(_blas, OpT, OpN, classes, batch, inputs, &one, _values + _spec.FcWeight, inputs, Map(x), inputs,
            &zero, _logits, classes), "cublasSgemm (fc)");
        CheckDnn(cudnnAddTensor(_dnn, &one, Tensor(1, classes, 1, 1), _values + _spec.FcBias, &one, Tensor(batch, classes, 1, 1), _logits),
            "cudnnAddTensor (fc bias)");
        Download(logits.Slice(0, batch * classes), _logits, "logits");
        Synchronize("logits");
    }

    /// <summary>A device vector of at least <paramref name="count"/> ones (the fc bias gradient's sum, BatchNorm's unit scales).</summary>
    private float* Ones(long count)
    {
        if (_onesFloats < count)
        {
            Grow(ref _ones, ref _onesFloats, count, "ones");
            var ones = new float[count];
            Array.Fill(ones, 1f);
            fixed (float* host = ones)
                Check(cudaMemcpyAsync(_ones, host, (nuint)count * sizeof(float), MemcpyHostToDevice, _stream), "cudaMemcpyAsync (ones)");
            Synchronize("ones"); // the host array goes out of scope
        }
        return _ones;
    }

    /// <summary>
    /// The fc layer's backward from g = dL/dlogits (already on the device): dW += g^T x, db += sum over the batch of g,
    /// gx += g W; dW and db copied into <paramref name="hostGradients"/> unless it is empty.
    /// </summary>
    public void LinearBackward(ReadOnlySpan<float> x, ReadOnlySpan<float> g, Span<float> gx, int batch, Span<float> hostGradients)
    {
        int classes = _spec.NumClasses, inputs = _spec.FcIn;
        float* px = Map(x), pg = MapArena(g, "dL/dlogits"), pgx = MapArena(gx, "the fc input's gradient");
        float* dw = _gradients + _spec.FcWeight, db = _gradients + _spec.FcBias;
        float one = 1;
        // Column-major views: x^T is [inputs x batch], g^T is [classes x batch], W^T is [inputs x classes].
        CheckBlas(cublasSgemm(_blas, OpN, OpT, inputs, classes, batch, &one, px, inputs, pg, classes, &one, dw, inputs), "cublasSgemm (fc weight gradient)");
        CheckBlas(cublasSgemv(_blas, OpN, classes, batch, &one, pg, classes, Ones(batch), 1, &one, db, 1), "cublasSgemv (fc bias gradient)");
        CheckBlas(cublasSgemm(_blas, OpN, OpN, inputs, batch, classes, &one, _values + _spec.FcWeight, inputs, pg, classes, &one, pgx, inputs),
            "cublasSgemm (fc input gradient)");
        if (!hostGradients.IsEmpty)
        {
            Download(hostGradients.Slice((int)_spec.FcWeight, classes * inputs), dw, "fc weight gradient");
            Download(hostGradients.Slice((int)_spec.FcBias, classes), db, "fc bias gradient");
            Synchronize("fc gradients");
        }
    }

    /// <summary>One line about the GPU and the libraries' versions.</summary>
    public static string Describe()
    {
        CudaLibraries.UseProbedLibraries();
        int runtime, driver, sms, major, minor;
        nuint free, total;
        Check(cudaRuntimeGetVersion(&runtime), "cudaRuntimeGetVersion");
        Check(cudaDriverGetVersion(&driver), "cudaDriverGetVersion");
        Check(cudaDeviceGetAttribute(&sms, DevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
        Check(cudaDeviceGetAttribute(&major, DevAttrComputeCapabilityMajor, 0), "cudaDeviceGetAttribute");
        Check(cudaDeviceGetAttribute(&minor, DevAttrComputeCapabilityMinor, 0), "cudaDeviceGetAttribute");
        Check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
        return $"GPU 0: compute capability {major}.{minor}, {sms} SMs, {total / (1024 * 1024 * 1024.0):F0} GiB ({free / (1024 * 1024 * 1024.0):F0} free); " +
            $"CUDA runtime {runtime / 1000}.{runtime % 1000 / 10}, driver {driver / 1000}.{driver % 1000 / 10}, cuDNN {cudnnGetVersion()}";
    }
}
