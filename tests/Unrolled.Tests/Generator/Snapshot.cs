using System;
using System.IO;
using System.Runtime.CompilerServices;
using System.Text.RegularExpressions;

namespace Unrolled.Tests.Generator;

/// <summary>
/// Golden files with Verify's conventions: <c>Snapshots/NAME.verified.cs</c> is committed; on a mismatch the new
/// text is written to <c>NAME.received.cs</c> beside it and the test fails. Set UNROLLED_ACCEPT_SNAPSHOTS=1 to
/// accept (the received text becomes the verified file). The generator's version is normalised away.
/// </summary>
internal static partial class Snapshot
{
    public const string AcceptVariable = "UNROLLED_ACCEPT_SNAPSHOTS";

    public static void Verify(string actual, string name, [CallerFilePath] string callerFile = "")
    {
        string dir = Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(callerFile))!, "Snapshots");
        string verified = Path.Combine(dir, name + ".verified.cs");
        string received = Path.Combine(dir, name + ".received.cs");
        string text = Normalize(actual);

        if (Environment.GetEnvironmentVariable(AcceptVariable) == "1")
        {
            Directory.CreateDirectory(dir);
            File.WriteAllText(verified, text);
            File.Delete(received);
            return;
        }

        if (!File.Exists(verified))
        {
            File.WriteAllText(received, text);
            Assert.Fail($"No verified snapshot {verified}. Review {received}, then rename it or run with {AcceptVariable}=1.");
        }

        string expected = Normalize(File.ReadAllText(verified));
        if (expected == text)
        {
            File.Delete(received);
            return;
        }

        File.WriteAllText(received, text);
        string[] e = expected.Split('\n'), a = text.Split('\n');
        int line = 0;
        while (line < Math.Min(e.Length, a.Length) && e[line] == a[line]) line++;
        Assert.Fail($"{name}: the generated source differs from {verified} at line {line + 1}:\n  verified: {(line < e.Length ? e[line] : "<end>")}\n  received: {(line < a.Length ? a[line] : "<end>")}\nReview {received}; accept with {AcceptVariable}=1.");
    }

    public static string Normalize(string text) =>
        VersionPattern().Replace(text.Replace("\r\n", "\n"), "Unrolled.Generator {version}");

    [GeneratedRegex(@"Unrolled\.Generator \d+\.\d+\.\d+")]
    private static partial Regex VersionPattern();
}
