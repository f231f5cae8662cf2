using System;
using System.IO;
using Unrolled.Vision;

namespace Unrolled.Tests;

/// <summary>Every input the fuzzers found to crash a loader now loads or fails with the typed error.</summary>
public sealed class FuzzRegressionTests
{
    private static string[] Inputs(string target)
    {
        string dir = Path.Combine(AppContext.BaseDirectory, "FuzzRegressions", target);
        return Directory.Exists(dir) ? Directory.GetFiles(dir) : Array.Empty<string>();
    }

    [Fact]
    public void ImageInputsFailWithTheTypedError()
    {
        var inputs = Inputs("image");
        Assert.NotEmpty(inputs); // the TGA header that made ImageSharp throw ArgumentOutOfRangeException
        foreach (string file in inputs)
        {
            var e = Assert.Throws<ImageFileException>(() => Preprocess.ImageNetEval(file, resize: 40, crop: 32));
            Assert.Equal(file, e.FilePath);
        }
    }
}
