using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Unrolled.Gpu;

/// <summary>
/// Source-generated bindings (AOT-safe) to what the network uses of cudart, cuBLAS and cuDNN 9 (its stable
/// "legacy" API: descriptors, convolution, BatchNorm, activation, pooling, add). The library names are resolved by
/// <see cref="CudaLibraries.UseProbedLibraries"/> to the files the probe found. Every call returns a status that
/// <see cref="Check(int, string)"/> turns into a <see cref="CudaException"/> naming the call and the library's error string.
/// </summary>
internal static unsafe partial class CudaNative
{
    private const string Cudart = "unrolled-cudart";
    private const string Cublas = "unrolled-cublas";
    private const string Cudnn = "unrolled-cudnn";

    // ---------------------------------------------------------------- cudart
    public const int MemcpyHostToDevice = 1, MemcpyDeviceToHost = 2, MemcpyDeviceToDevice = 3;
    public const int DevAttrMultiProcessorCount = 16, DevAttrComputeCapabilityMajor = 75, DevAttrComputeCapabilityMinor = 76;

    [LibraryImport(Cudart)] public static partial int cudaGetDeviceCount(int* count);
    [LibraryImport(Cudart)] public static partial int cudaSetDevice(int device);
    [LibraryImport(Cudart)] public static partial int cudaDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(Cudart)] public static partial int cudaRuntimeGetVersion(int* version);
    [LibraryImport(Cudart)] public static partial int cudaDriverGetVersion(int* version);
    [LibraryImport(Cudart)] public static partial int cudaMemGetInfo(nuint* free, nuint* total);
    [LibraryImport(Cudart)] public static partial int cudaMalloc(void** pointer, nuint bytes);
    [LibraryImport(Cudart)] public static partial int cudaFree(void* pointer);
    [LibraryImport(Cudart)] public static partial int cudaMallocHost(void** pointer, nuint bytes);
    [LibraryImport(Cudart)] public static partial int cudaFreeHost(void* pointer);
    [LibraryImport(Cudart)] public static partial int cudaMemcpyAsync(void* destination, void* source, nuint bytes, int kind, nint stream);
    [LibraryImport(Cudart)] public static partial int cudaMemsetAsync(void* destination, int value, nuint bytes, nint stream);
    [LibraryImport(Cudart)] public static partial int cudaStreamCreate(nint* stream);
    [LibraryImport(Cudart)] public static partial int cudaStreamDestroy(nint stream);
    [LibraryImport(Cudart)] public static partial int cudaStreamSynchronize(nint stream);
    [LibraryImport(Cudart)] public static partial int cudaEventCreate(nint* evt);
    [LibraryImport(Cudart)] public static partial int cudaEventDestroy(nint evt);
    [LibraryImport(Cudart)] public static partial int cudaEventRecord(nint evt, nint stream);
    [LibraryImport(Cudart)] public static partial int cudaEventSynchronize(nint evt);
    [LibraryImport(Cudart)] public static partial int cudaEventElapsedTime(float* milliseconds, nint start, nint end);
    [LibraryImport(Cudart)] public static partial nint cudaGetErrorString(int error);

    // ---------------------------------------------------------------- cuBLAS (column-major)
    public const int OpN = 0, OpT = 1;
    /// <summary>CUBLAS_DEFAULT_MATH: no TF32 unless asked, so results compare with PyTorch's fp32.</summary>
    public const int CublasDefaultMath = 0;

    [LibraryImport(Cublas, EntryPoint = "cublasCreate_v2")] public static partial int cublasCreate(nint* handle);
    [LibraryImport(Cublas, EntryPoint = "cublasDestroy_v2")] public static partial int cublasDestroy(nint handle);
    [LibraryImport(Cublas, EntryPoint = "cublasSetStream_v2")] public static partial int cublasSetStream(nint handle, nint stream);
    [LibraryImport(Cublas)] public static partial int cublasSetMathMode(nint handle, int mode);
    [LibraryImport(Cublas, EntryPoint = "cublasSgemm_v2")]
    public static partial int cublasSgemm(nint handle, int transa, int transb, int m, int n, int k,
        float* alpha, float* a, int lda, float* b, int ldb, float* beta, float* c, int ldc);
    [LibraryImport(Cublas, EntryPoint = "cublasSaxpy_v2")] public static partial int cublasSaxpy(nint handle, int n, float* alpha, float* x, int incx, float* y, int incy);
    [LibraryImport(Cublas, EntryPoint = "cublasSscal_v2")] public static partial int cublasSscal(nint handle, int n, float* alpha, float* x, int incx);
    [LibraryImport(Cublas, EntryPoint = "cublasSgemv_v2")]
    public static partial int cublasSgemv(nint handle, int trans, int m, int n, float* alpha, float* a, int lda, float* x, int incx,
        float* beta, float* y, int incy);
    [LibraryImport(Cublas, EntryPoint = "cublasSasum_v2")] public static partial int cublasSasum(nint handle, int n, float* x, int incx, float* result);
    [LibraryImport(Cublas)] public static partial nint cublasGetStatusString(int status);

    // ---------------------------------------------------------------- cuDNN 9
    public const int TensorNchw = 0, DataFloat = 0;
    public const int CrossCorrelation = 1;
    /// <summary>CUDNN_FMA_MATH: plain fp32 arithmetic (no TF32 tensor cores), for comparing with PyTorch's fp32.</summary>
    public const int CudnnFmaMath = 3;
    public const int BatchNormSpatial = 1;
    public const int ActivationRelu = 1, PropagateNan = 1;
    public const int PoolingMax = 0, PoolingAverageExcludePadding = 2;
    public const int FwdAlgoCount = 8, BwdDataAlgoCount = 6, BwdFilterAlgoCount = 7;

    /// <summary>
    /// cudnnConvolutionFwdAlgoPerf_t; cudnnConvolutionBwdDataAlgoPerf_t and cudnnConvolutionBwdFilterAlgoPerf_t have
    /// the same layout (an algorithm enum, a status, a time, a workspace size, determinism, math type, 3 reserved).
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ConvolutionFwdAlgoPerf
    {
        public int Algo;
        public int Status;
        public float Time;
        public nuint Memory;
        public int Determinism;
        public int MathType;
        public int Reserved0, Reserved1, Reserved2;
    }

    [LibraryImport(Cudnn)] public static partial int cudnnCreate(nint* handle);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroy(nint handle);
    [LibraryImport(Cudnn)] public static partial int cudnnSetStream(nint handle, nint stream);
    [LibraryImport(Cudnn)] public static partial nint cudnnGetErrorString(int status);
    [LibraryImport(Cudnn)] public static partial nuint cudnnGetVersion();
    [LibraryImport(Cudnn)] public static partial int cudnnCreateTensorDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnSetTensor4dDescriptor(nint descriptor, int format, int dataType, int n, int c, int h, int w);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroyTensorDescriptor(nint descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnCreateFilterDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnSetFilter4dDescriptor(nint descriptor, int dataType, int format, int k, int c, int h, int w);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroyFilterDescriptor(nint descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnCreateConvolutionDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)]
    public static partial int cudnnSetConvolution2dDescriptor(nint descriptor, int padH, int padW, int strideH, int strideW,
        int dilationH, int dilationW, int mode, int computeType);
    [LibraryImport(Cudnn)] public static partial int cudnnSetConvolutionMathType(nint descriptor, int mathType);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroyConvolutionDescriptor(nint descriptor);
    [LibraryImport(Cudnn)]
    public static partial int cudnnFindConvolutionForwardAlgorithm(nint handle, nint xDesc, nint wDesc, nint convDesc, nint yDesc,
        int requested, int* returned, ConvolutionFwdAlgoPerf* results);
    [LibraryImport(Cudnn)]
    public static partial int cudnnGetConvolutionForwardWorkspaceSize(nint handle, nint xDesc, nint wDesc, nint convDesc, nint yDesc, int algo, nuint* bytes);
    [LibraryImport(Cudnn)]
    public static partial int cudnnConvolutionForward(nint handle, float* alpha, nint xDesc, float* x, nint wDesc, float* w, nint convDesc,
        int algo, void* workspace, nuint workspaceBytes, float* beta, nint yDesc, float* y);
    [LibraryImport(Cudnn)]
    public static partial int cudnnBatchNormalizationForwardInference(nint handle, int mode, float* alpha, float* beta, nint xDesc, float* x,
        nint yDesc, float* y, nint bnDesc, float* scale, float* bias, float* mean, float* variance, double epsilon);
    [LibraryImport(Cudnn)]
    public static partial int cudnnBatchNormalizationForwardTraining(nint handle, int mode, float* alpha, float* beta, nint xDesc, float* x,
        nint yDesc, float* y, nint bnDesc, float* scale, float* bias, double exponentialAverageFactor, float* runningMean, float* runningVariance,
        double epsilon, float* saveMean, float* saveInvVariance);
    [LibraryImport(Cudnn)]
    public static partial int cudnnBatchNormalizationBackward(nint handle, int mode, float* alphaDataDiff, float* betaDataDiff,
        float* alphaParamDiff, float* betaParamDiff, nint xDesc, float* x, nint dyDesc, float* dy, nint dxDesc, float* dx,
        nint bnDesc, float* scale, float* dScale, float* dBias, double epsilon, float* savedMean, float* savedInvVariance);
    [LibraryImport(Cudnn)]
    public static partial int cudnnFindConvolutionBackwardDataAlgorithm(nint handle, nint wDesc, nint dyDesc, nint convDesc, nint dxDesc,
        int requested, int* returned, ConvolutionFwdAlgoPerf* results);
    [LibraryImport(Cudnn)]
    public static partial int cudnnFindConvolutionBackwardFilterAlgorithm(nint handle, nint xDesc, nint dyDesc, nint convDesc, nint dwDesc,
        int requested, int* returned, ConvolutionFwdAlgoPerf* results);
    [LibraryImport(Cudnn)]
    public static partial int cudnnConvolutionBackwardData(nint handle, float* alpha, nint wDesc, float* w, nint dyDesc, float* dy, nint convDesc,
        int algo, void* workspace, nuint workspaceBytes, float* beta, nint dxDesc, float* dx);
    [LibraryImport(Cudnn)]
    public static partial int cudnnConvolutionBackwardFilter(nint handle, float* alpha, nint xDesc, float* x, nint dyDesc, float* dy, nint convDesc,
        int algo, void* workspace, nuint workspaceBytes, float* beta, nint dwDesc, float* dw);
    [LibraryImport(Cudnn)]
    public static partial int cudnnConvolutionBackwardBias(nint handle, float* alpha, nint dyDesc, float* dy, float* beta, nint dbDesc, float* db);
    public const int OpTensorMul = 1;
    [LibraryImport(Cudnn)] public static partial int cudnnCreateOpTensorDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnSetOpTensorDescriptor(nint descriptor, int op, int computeType, int nanPropagation);
    [LibraryImport(Cudnn)]
    public static partial int cudnnOpTensor(nint handle, nint opDesc, float* alpha1, nint aDesc, float* a, float* alpha2, nint bDesc, float* b,
        float* beta, nint cDesc, float* c);
    [LibraryImport(Cudnn)] public static partial int cudnnCreateActivationDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)] public static partial int cudnnSetActivationDescriptor(nint descriptor, int mode, int nanPropagation, double coefficient);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroyActivationDescriptor(nint descriptor);
    [LibraryImport(Cudnn)]
    public static partial int cudnnActivationForward(nint handle, nint activation, float* alpha, nint xDesc, float* x, float* beta, nint yDesc, float* y);
    [LibraryImport(Cudnn)] public static partial int cudnnAddTensor(nint handle, float* alpha, nint aDesc, float* a, float* beta, nint cDesc, float* c);
    [LibraryImport(Cudnn)] public static partial int cudnnCreatePoolingDescriptor(nint* descriptor);
    [LibraryImport(Cudnn)]
    public static partial int cudnnSetPooling2dDescriptor(nint descriptor, int mode, int nanPropagation, int windowH, int windowW,
        int padH, int padW, int strideH, int strideW);
    [LibraryImport(Cudnn)] public static partial int cudnnDestroyPoolingDescriptor(nint descriptor);
    [LibraryImport(Cudnn)]
    public static partial int cudnnPoolingForward(nint handle, nint pooling, float* alpha, nint xDesc, float* x, float* beta, nint yDesc, float* y);
    [LibraryImport(Cudnn)]
    public static partial int cudnnPoolingBackward(nint handle, nint pooling, float* alpha, nint yDesc, float* y, nint dyDesc, float* dy,
        nint xDesc, float* x, float* beta, nint dxDesc, float* dx);
    [LibraryImport(Cudnn)]
    public static partial int cudnnActivationBackward(nint handle, nint activation, float* alpha, nint yDesc, float* y, nint dyDesc, float* dy,
        nint xDesc, float* x, float* beta, nint dxDesc, float* dx);

    // ---------------------------------------------------------------- status checking

    /// <summary>Throws a <see cref="CudaException"/> naming <paramref name="call"/> when a cudart status is not cudaSuccess.</summary>
    public static void Check(int status, string call)
    {
        if (status != 0) throw new CudaException(call, status, Text(cudaGetErrorString(status)));
    }

    /// <summary>As <see cref="Check(int, string)"/>, the call's name formatted only when it failed.</summary>
    public static void Check(int status, [InterpolatedStringHandlerArgument("status")] ref FailureText call)
    {
        if (status != 0) Check(status, call.ToStringAndClear());
    }

    /// <summary>As <see cref="Check(int, string)"/> for a cuBLAS status.</summary>
    public static void CheckBlas(int status, string call)
    {
        if (status != 0) throw new CudaException(call, status, Text(cublasGetStatusString(status)));
    }

    /// <summary>As <see cref="CheckBlas(int, string)"/>, the call's name formatted only when it failed.</summary>
    public static void CheckBlas(int status, [InterpolatedStringHandlerArgument("status")] ref FailureText call)
    {
        if (status != 0) CheckBlas(status, call.ToStringAndClear());
    }

    /// <summary>As <see cref="Check(int, string)"/> for a cuDNN status.</summary>
    public static void CheckDnn(int status, string call)
    {
        if (status != 0) throw new CudaException(call, status, Text(cudnnGetErrorString(status)));
    }

    /// <summary>As <see cref="CheckDnn(int, string)"/>, the call's name formatted only when it failed.</summary>
    public static void CheckDnn(int status, [InterpolatedStringHandlerArgument("status")] ref FailureText call)
    {
        if (status != 0) CheckDnn(status, call.ToStringAndClear());
    }

    /// <summary>
    /// An interpolated call name (<c>$"cudnnConvolutionForward (conv {index})"</c>) that is formatted only when the
    /// status is an error, so that checking every call of a training step allocates nothing.
    /// </summary>
    [InterpolatedStringHandler]
    public ref struct FailureText
    {
        private DefaultInterpolatedStringHandler _text;
        private readonly bool _failed;

        public FailureText(int literalLength, int formattedCount, int status, out bool failed)
        {
            _failed = failed = status != 0;
            _text = failed ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public void AppendLiteral(string value) => _text.AppendLiteral(value);

        public void AppendFormatted<T>(T value) => _text.AppendFormatted(value);

        public void AppendFormatted<T>(T value, string? format) => _text.AppendFormatted(value, format);

        public string ToStringAndClear() => _failed ? _text.ToStringAndClear() : "";
    }

    private static string Text(nint text) => text == 0 ? "no error string" : Marshal.PtrToStringUTF8(text) ?? "no error string";
}

/// <summary>A CUDA, cuBLAS or cuDNN call failed: the call, its status code and the library's own words.</summary>
public sealed class CudaException(string call, int status, string message)
    : Exception($"{call} failed with status {status}: {message}")
{
    public string Call { get; } = call;
    public int Status { get; } = status;
}
