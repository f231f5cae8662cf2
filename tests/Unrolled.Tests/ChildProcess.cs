using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Text;
using System.Threading;

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
            // No build node may outlive a child build: one would inherit the output pipes and hold them open for
            // its idle timeout.
            start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
            start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
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
            // Each stream's reader reports its end with Data == null.
            using var outputEnded = new ManualResetEventSlim();
            using var errorEnded = new ManualResetEventSlim();
            process.OutputDataReceived += (_, e) => { if (e.Data is null) outputEnded.Set(); else lock (output) output.AppendLine(e.Data); };
            process.ErrorDataReceived += (_, e) => { if (e.Data is null) errorEnded.Set(); else lock (output) output.AppendLine(e.Data); };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            if (!process.WaitForExit(timeoutSeconds * 1000))
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"{file} {arguments} did not finish in {timeoutSeconds} s:\n{output}");
            }
            // Not the unbounded WaitForExit(), which also waits for the pipes to close: a process the child left
            // behind (a build server, say) may hold them open long after the child has exited.
            bool ended = outputEnded.Wait(TimeSpan.FromSeconds(30)) & errorEnded.Wait(TimeSpan.FromSeconds(30));
            lock (output)
            {
                if (!ended) output.AppendLine($"(the output of {file} was still open 30 s after it exited; read up to here)");
                return (process.ExitCode, output.ToString(), clock.Elapsed.TotalSeconds);
            }
        }
    }
}
