namespace Unrolled;

/// <summary>Where a network runs. Chosen once, when the network is constructed.</summary>
public enum Device
{
    /// <summary>The CPU (AVX-512 / AVX2 / portable SIMD kernels, all cores).</summary>
    Cpu = 0,
    /// <summary>CUDA when a GPU and the CUDA libraries can be used, otherwise the CPU.</summary>
    Auto = 1,
    /// <summary>CUDA, or an exception that says what is missing.</summary>
    Cuda = 2,
}
