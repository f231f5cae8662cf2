using System;
using System.Collections.Generic;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Unrolled.Runtime;
using static Unrolled.Gpu.CudaNative;

namespace Unrolled.Gpu;

/// <summary>
/// The CUDA backend of a network: inference on one GPU through cuDNN and cuBLAS. The generated code stays the same
/// program: it slices the host activation arena as it does on the CPU, and this backend maps every slice to the
/// same offset of a device arena of the same plan (the host arena is never written). The weights are uploaded once
/// per change; the input goes through a pinned buffer; the logits come back at the fc layer. Per conv, the cuDNN
/// descriptors and the algorithm (found by cudnnFind, cached per conv and batch size) are made once; one workspace
/// serves every conv. TF32 is off (fp32 math in cuDNN and cuBLAS), so results compare with PyTorch's fp32.
/// </summary>
/// <remarks>Training on the GPU (backward, train-mode BatchNorm, the optimizer step) is not implemented yet.</remarks>
internal sealed unsafe class CudaBackend
{
    private readonly NetworkSpec _spec;
    private readonly nint _stream, _blas, _dnn, _relu;
    private float* _values;
    private (long Weights, long Statistics) _uploadedVersion = (-1, -1);
    private float* _arena;
    private long _arenaFloats;
    private float* _input, _pinned;
    private long _inputFloats;
    private float* _convOut;
    private long _convOutFloats;
    private void* _workspace;
    private nuint _workspaceBytes;
    private float* _logits;
    private long _logitsFloats;
    private readonly Dictionary<(int N, int C, int H, int W), nint> _tensors = new();
    private readonly Dictionary<(int Mode, int KernelH, int KernelW, int Stride, int Pad), nint> _pools = new();
    private readonly ConvPlan[] _plans;

    private sealed class ConvPlan
    {
        public nint Filter, Convolution;
        public readonly Dictionary<int, (int Algo, nuint Workspace)> AlgoByBatch = new();
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
        buffer = (float*)Allocate(floats, what);
        capacity = floats;
    }

    /// <summary>Before a forward: the device arena for <paramref name="batch"/> images, and the weights if they changed.</summary>
    public void BeginForward(int batch, ReadOnlySpan<float> values, (long Weights, long Statistics) version)
    {
        Grow(ref _arena, ref _arenaFloats, batch * _spec.ArenaPerImage, "activations");
        if (version != _uploadedVersion)
        {
            if (values.Length < _spec.ValueCount) throw new ArgumentException($"{_spec.Name}: {values.Length} values, expected {_spec.ValueCount}", nameof(values));
            fixed (float* host = values)
                Check(cudaMemcpyAsync(_values, host, (nuint)_spec.ValueCount * sizeof(float), MemcpyHostToDevice, _stream), "cudaMemcpyAsync (weights)");
            Check(cudaStreamSynchronize(_stream), "cudaStreamSynchronize (weights)");
            _uploadedVersion = version;
        }
    }

    /// <summary>
    /// The device address of a tensor the generated code passes: a slice of the host arena maps to the same offset
    /// of the device arena; anything else is the network's input, uploaded through the pinned buffer.
    /// </summary>
    private float* Map(ReadOnlySpan<float> tensor, float[] hostArena)
    {
        if (tensor.IsEmpty) return null;
        nint offset = Unsafe.ByteOffset(ref MemoryMarshal.GetArrayDataReference(hostArena), ref MemoryMarshal.GetReference(tensor)) / sizeof(float);
        if (offset >= 0 && offset + tensor.Length <= hostArena.Length) return _arena + offset;
        if (_inputFloats < tensor.Length)
        {
            if (_input != null) Check(cudaFree(_input), "cudaFree");
            if (_pinned != null) Check(cudaFreeHost(_pinned), "cudaFreeHost");
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
        return _input;
    }

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

    /// <summary>y = relu?(BN(conv(x)) + residual) with the running statistics: conv, BatchNorm inference, add, ReLU.</summary>
    public void Conv(int index, float[] hostArena, ReadOnlySpan<float> x, Span<float> y, ReadOnlySpan<float> residual,
        int batch, int cin, int h, int w, int cout, int oh, int ow, int kernel, int stride, int pad, bool relu)
    {
        var c = _spec.Convs[index];
        var plan = _plans[index];
        float* px = Map(x, hostArena), py = Map(y, hostArena), pr = Map(residual, hostArena);
        if (pr != null && pr == py)
            throw new InvalidOperationException($"{_spec.Name}: conv {index} adds a residual that shares the output's memory; the CUDA backend needs them apart (regenerate the network).");
        nint xDesc = Tensor(batch, cin, h, w), yDesc = Tensor(batch, cout, oh, ow), bnDesc = Tensor(1, cout, 1, 1);
        if (!plan.AlgoByBatch.TryGetValue(batch, out var algo))
        {
            CheckDnn(cudnnSetConvolution2dDescriptor(plan.Convolution, pad, pad, stride, stride, 1, 1, CrossCorrelation, DataFloat),
                $"cudnnSetConvolution2dDescriptor (conv {index})");
            CheckDnn(cudnnSetConvolutionMathType(plan.Convolution, CudnnFmaMath), $"cudnnSetConvolutionMathType (conv {index}, FMA: no TF32)");
            var results = stackalloc ConvolutionFwdAlgoPerf[FwdAlgoCount];
            int returned;
            CheckDnn(cudnnFindConvolutionForwardAlgorithm(_dnn, xDesc, plan.Filter, plan.Convolution, yDesc, FwdAlgoCount, &returned, results),
                $"cudnnFindConvolutionForwardAlgorithm (conv {index}, batch {batch})");
            algo = (-1, 0);
            for (int i = 0; i < returned; i++)
                if (results[i].Status == 0) { algo = (results[i].Algo, results[i].Memory); break; }
            if (algo.Algo < 0) throw new CudaException($"cudnnFindConvolutionForwardAlgorithm (conv {index}, batch {batch})", -1, "no algorithm ran");
            plan.AlgoByBatch.Add(batch, algo);
        }
        if (algo.Workspace > _workspaceBytes)
        {
            if (_workspace != null) Check(cudaFree(_workspace), "cudaFree");
            void* workspace;
            Check(cudaMalloc(&workspace, algo.Workspace), $"cudaMalloc ({algo.Workspace} bytes of cuDNN workspace)");
            _workspace = workspace;
            _workspaceBytes = algo.Workspace;
        }
        long outFloats = (long)batch * cout * oh * ow;
        Grow(ref _convOut, ref _convOutFloats, outFloats, "convolution output");

        float one = 1, zero = 0;
        CheckDnn(cudnnConvolutionForward(_dnn, &one, xDesc, px, plan.Filter, _values + c.Weight, plan.Convolution, algo.Algo,
            _workspace, _workspaceBytes, &zero, yDesc, _convOut), $"cudnnConvolutionForward (conv {index})");
        // BatchNorm's four vectors are stored one after the other: weight, bias, running_mean, running_var.
        float* bn = _values + c.BatchNorm;
        CheckDnn(cudnnBatchNormalizationForwardInference(_dnn, BatchNormSpatial, &one, &zero, yDesc, _convOut, yDesc, py, bnDesc,
            bn, bn + cout, bn + 2 * cout, bn + 3 * cout, Cpu.Kernels.BatchNormEpsilon), $"cudnnBatchNormalizationForwardInference (conv {index})");
        if (pr != null) CheckDnn(cudnnAddTensor(_dnn, &one, yDesc, pr, &one, yDesc, py), $"cudnnAddTensor (conv {index} residual)");
        if (relu) CheckDnn(cudnnActivationForward(_dnn, _relu, &one, yDesc, py, &zero, yDesc, py), $"cudnnActivationForward (conv {index} ReLU)");
    }

    public void MaxPool(float[] hostArena, ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int h, int w, int oh, int ow, int kernel, int stride, int pad)
    {
        float one = 1, zero = 0;
        CheckDnn(cudnnPoolingForward(_dnn, Pool(PoolingMax, kernel, kernel, stride, pad), &one, Tensor(batch, channels, h, w), Map(x, hostArena),
            &zero, Tensor(batch, channels, oh, ow), Map(y, hostArena)), "cudnnPoolingForward (max)");
    }

    /// <summary>The mean over each plane's <paramref name="hw"/> values: an average pool over a 1 x hw window.</summary>
    public void GlobalAveragePool(float[] hostArena, ReadOnlySpan<float> x, Span<float> y, int batch, int channels, int hw)
    {
        float one = 1, zero = 0;
        CheckDnn(cudnnPoolingForward(_dnn, Pool(PoolingAverageExcludePadding, 1, hw, 1, 0), &one, Tensor(batch, channels, 1, hw), Map(x, hostArena),
            &zero, Tensor(batch, channels, 1, 1), Map(y, hostArena)), "cudnnPoolingForward (average)");
    }

    /// <summary>logits = x . W^T + b on the device (cuBLAS, column-major: logits^T = W . x^T), then copied to <paramref name="logits"/>.</summary>
    public void Linear(float[] hostArena, ReadOnlySpan<float> x, Span<float> logits, int batch)
    {
        int classes = _spec.NumClasses, inputs = _spec.FcIn;
        Grow(ref _logits, ref _logitsFloats, (long)batch * classes, "logits");
        float one = 1, zero = 0;
        CheckBlas(cublasSgemm(_blas, OpT, OpN, classes, batch, inputs, &one, _values + _spec.FcWeight, inputs, Map(x, hostArena), inputs,
            &zero, _logits, classes), "cublasSgemm (fc)");
        CheckDnn(cudnnAddTensor(_dnn, &one, Tensor(1, classes, 1, 1), _values + _spec.FcBias, &one, Tensor(batch, classes, 1, 1), _logits),
            "cudnnAddTensor (fc bias)");
        fixed (float* host = logits)
            Check(cudaMemcpyAsync(host, _logits, (nuint)((long)batch * classes * sizeof(float)), MemcpyDeviceToHost, _stream), "cudaMemcpyAsync (logits)");
        Check(cudaStreamSynchronize(_stream), "cudaStreamSynchronize (logits)");
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
