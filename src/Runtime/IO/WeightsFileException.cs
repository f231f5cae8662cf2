using System;

namespace Unrolled;

/// <summary>
/// A weights file that cannot be used: unreadable, malformed, hostile, or not matching the network
/// (a missing or unexpected key, a wrong shape or dtype). Names the file and, where one is involved, the key.
/// A load that throws this leaves the network's weights as they were.
/// </summary>
public sealed class WeightsFileException : Exception
{
    public WeightsFileException(string filePath, string? key, string problem, Exception? inner = null)
        : base(Format(filePath, key, problem), inner)
    {
        FilePath = filePath;
        Key = key;
        Problem = problem;
    }

    /// <summary>The file that was being read or written.</summary>
    public string FilePath { get; }

    /// <summary>The state_dict key involved, if any.</summary>
    public string? Key { get; }

    /// <summary>What was wrong, without the file and key.</summary>
    public string Problem { get; }

    private static string Format(string filePath, string? key, string problem) =>
        key is null ? $"{filePath}: {problem}" : $"{filePath}: '{key}': {problem}";
}
