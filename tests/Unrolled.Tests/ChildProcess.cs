using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text;

namespace Unrolled.Tests;

/// <summary>Runs a program to its end (or kills it at a time limit) and returns its exit code, output and duration.</summary>
internal static class ChildProcess
{
    public static (int Code, string Output, double Seconds) Run(string file, string arguments, string workingDirectory,
        int timeoutSeconds, bool emptyEnvironment = false, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file, arguments)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (emptyEnvironment) start.Environment.Clear();
        else
        {
            // The test host's own settings must not leak into child builds.
            start.Environment.Remove("MSBuildExtensionsPath");
            start.Environment.Remove("MSBUILD_EXE_PATH");
            start.Environment.Remove("MSBuildSDKsPath");
            start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
            start.Environment["DOTNET_NOLOGO"] = "1";
        }
        if (environment is not null)
            foreach (var (name, value) in environment) start.Environment[name] = value;
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"{file} could not be started: {e.Message}", e);
        }
        using (process)
        {
            var clock = Stopwatch.StartNew();
            var output = new StringBuilder();
            process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
            process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (output) output.AppendLine(e.Data); };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            if (!process.WaitForExit(timeoutSeconds * 1000))
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"{file} {arguments} did not finish in {timeoutSeconds} s:\n{output}");
            }
            process.WaitForExit();
            lock (output) return (process.ExitCode, output.ToString(), clock.Elapsed.TotalSeconds);
        }
    }
}
