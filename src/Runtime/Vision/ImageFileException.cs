using System;

namespace Unrolled.Vision;

/// <summary>An image that cannot be used: unreadable, corrupt, truncated, unsupported, or larger than allowed. Names the file.</summary>
public sealed class ImageFileException : Exception
{
    public ImageFileException(string filePath, string problem, Exception? inner = null)
        : base($"{filePath}: {problem}", inner)
    {
        FilePath = filePath;
        Problem = problem;
    }

    public string FilePath { get; }

    public string Problem { get; }
}
