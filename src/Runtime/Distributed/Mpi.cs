using System;
using System.Runtime.InteropServices;

namespace Unrolled.Distributed;

/// <summary>
/// The few MPI calls data-parallel training needs, bound straight to Open MPI's <c>libmpi.so.40</c> (Debian's
/// <c>openmpi-bin</c> / <c>libopenmpi-dev</c>). One per process: <see cref="Initialize"/> once (under <c>mpirun</c>),
/// then rank, size and collectives on MPI_COMM_WORLD. Every call's status is checked.
/// </summary>
public sealed unsafe partial class Mpi : IDisposable
{
    private const string Library = "libmpi.so.40";
    private static Mpi? s_instance;

    private readonly nint _world, _float, _double, _int64, _sum;

    private Mpi()
    {
        nint lib;
        try
        {
            lib = NativeLibrary.Load(Library);
        }
        catch (DllNotFoundException e)
        {
            throw new InvalidOperationException(
                $"MPI was asked for (--distributed) but {Library} cannot be loaded: install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev) and start the program with mpirun.", e);
        }
        // Open MPI's handles are the addresses of exported objects (MPI_COMM_WORLD is &ompi_mpi_comm_world, ...).
        _world = NativeLibrary.GetExport(lib, "ompi_mpi_comm_world");
        _float = NativeLibrary.GetExport(lib, "ompi_mpi_float");
        _double = NativeLibrary.GetExport(lib, "ompi_mpi_double");
        _int64 = NativeLibrary.GetExport(lib, "ompi_mpi_int64_t");
        _sum = NativeLibrary.GetExport(lib, "ompi_mpi_op_sum");
        int initialized;
        Check(Native.MPI_Initialized(&initialized), "MPI_Initialized");
        if (initialized == 0) Check(Native.MPI_Init(null, null), "MPI_Init");
        int rank, size;
        Check(Native.MPI_Comm_rank(_world, &rank), "MPI_Comm_rank");
        Check(Native.MPI_Comm_size(_world, &size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
    }

    /// <summary>Initializes MPI for this process (once; later calls return the same instance).</summary>
    public static Mpi Initialize() => s_instance ??= new Mpi();

    /// <summary>This process's rank in MPI_COMM_WORLD.</summary>
    public int Rank { get; }

    /// <summary>The number of processes.</summary>
    public int Size { get; }

    /// <summary>In-place sum over all ranks.</summary>
    public void AllReduceSum(Span<float> values)
    {
        fixed (float* p = values) Check(Native.MPI_Allreduce(InPlace, p, values.Length, _float, _sum, _world), "MPI_Allreduce");
    }

    /// <summary>In-place sum over all ranks.</summary>
    public void AllReduceSum(Span<double> values)
    {
        fixed (double* p = values) Check(Native.MPI_Allreduce(InPlace, p, values.Length, _double, _sum, _world), "MPI_Allreduce");
    }

    /// <summary>Starts an in-place sum of <paramref name="count"/> floats at <paramref name="values"/> (which must stay pinned until it completes).</summary>
    internal nint StartAllReduceSum(float* values, int count)
    {
        nint request;
        Check(Native.MPI_Iallreduce(InPlace, values, count, _float, _sum, _world, &request), "MPI_Iallreduce");
        return request;
    }

    /// <summary>Lets MPI progress a started reduction; true once it is complete (the request is then freed).</summary>
    internal bool Test(ref nint request)
    {
        int done;
        fixed (nint* r = &request) Check(Native.MPI_Test(r, &done, null), "MPI_Test");
        return done != 0;
    }

    /// <summary>Waits for a started reduction.</summary>
    internal void Wait(ref nint request)
    {
        fixed (nint* r = &request) Check(Native.MPI_Wait(r, null), "MPI_Wait");
    }

    /// <summary>Copies rank <paramref name="root"/>'s values to every rank.</summary>
    public void Broadcast(Span<float> values, int root = 0)
    {
        fixed (float* p = values) Check(Native.MPI_Bcast(p, values.Length, _float, root, _world), "MPI_Bcast");
    }

    /// <summary>Copies rank <paramref name="root"/>'s values to every rank.</summary>
    public void Broadcast(Span<long> values, int root = 0)
    {
        fixed (long* p = values) Check(Native.MPI_Bcast(p, values.Length, _int64, root, _world), "MPI_Bcast");
    }

    public void Barrier() => Check(Native.MPI_Barrier(_world), "MPI_Barrier");

    /// <summary>Ends every rank of the job (MPI_Abort), for a failure this rank cannot recover from.</summary>
    public void Abort(int code) => Native.MPI_Abort(_world, code);

    /// <summary>MPI_Finalize (call once, at the end, on every rank).</summary>
    public void Dispose()
    {
        int finalized;
        if (Native.MPI_Finalized(&finalized) == 0 && finalized == 0) Check(Native.MPI_Finalize(), "MPI_Finalize");
    }

    private static void* InPlace => (void*)1; // Open MPI's MPI_IN_PLACE

    private static void Check(int status, string call)
    {
        if (status != 0) throw new InvalidOperationException($"{call} failed with MPI error code {status}.");
    }

    private static partial class Native
    {
        [LibraryImport(Library)] public static partial int MPI_Init(int* argc, byte*** argv);
        [LibraryImport(Library)] public static partial int MPI_Initialized(int* flag);
        [LibraryImport(Library)] public static partial int MPI_Finalize();
        [LibraryImport(Library)] public static partial int MPI_Finalized(int* flag);
        [LibraryImport(Library)] public static partial int MPI_Comm_rank(nint comm, int* rank);
        [LibraryImport(Library)] public static partial int MPI_Comm_size(nint comm, int* size);
        [LibraryImport(Library)] public static partial int MPI_Allreduce(void* send, void* receive, int count, nint type, nint op, nint comm);
        [LibraryImport(Library)] public static partial int MPI_Iallreduce(void* send, void* receive, int count, nint type, nint op, nint comm, nint* request);
        [LibraryImport(Library)] public static partial int MPI_Test(nint* request, int* flag, void* status);
        [LibraryImport(Library)] public static partial int MPI_Wait(nint* request, void* status);
        [LibraryImport(Library)] public static partial int MPI_Bcast(void* buffer, int count, nint type, int root, nint comm);
        [LibraryImport(Library)] public static partial int MPI_Barrier(nint comm);
        [LibraryImport(Library)] public static partial int MPI_Abort(nint comm, int code);
    }
}
