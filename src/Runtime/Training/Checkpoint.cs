using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Numerics;
using Unrolled.IO;

namespace Unrolled;

/// <summary>What a checkpoint held besides the tensors.</summary>
public sealed record CheckpointInfo(int Epoch, long Step, IReadOnlyDictionary<string, string> Metadata);

/// <summary>
/// The full training state in one .safetensors file: the network's state_dict under <c>model.</c>, the optimizer's
/// buffers under <c>optimizer.BUFFER.</c> (by parameter key), and the scalars (optimizer steps and learning rate,
/// scheduler epoch, epoch and step, your own extras) in the metadata. Written to a temporary file, flushed and
/// renamed; loaded all-or-nothing. Loading and continuing gives bit-identical next steps on the CPU.
/// </summary>
public static class Checkpoint
{
    private const string Format = "unrolled-checkpoint-1";

    public static void Save(string path, IResNet network, Optimizer? optimizer = null, LearningRateScheduler? scheduler = null,
        int epoch = 0, long step = 0, IReadOnlyDictionary<string, string>? extra = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(network);
        var state = network.State;
        var tensors = new List<(string Key, int[] Shape, ReadOnlyMemory<float> Floats, long? Int64)>();
        foreach (var t in state.StateTensors()) tensors.Add(("model." + t.Key, t.Shape, t.Floats, t.Int64));

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = Format,
            ["network"] = state.Spec.Name,
            ["epoch"] = epoch.ToString(CultureInfo.InvariantCulture),
            ["step"] = step.ToString(CultureInfo.InvariantCulture),
        };
        if (extra is not null)
            foreach (var (k, v) in extra) metadata["extra." + k] = v;

        if (optimizer is not null)
        {
            metadata["optimizer"] = optimizer.GetType().Name;
            metadata["optimizer.steps"] = optimizer.Steps.ToString(CultureInfo.InvariantCulture);
            metadata["optimizer.lr"] = optimizer.LearningRate.ToString("R", CultureInfo.InvariantCulture);
            optimizer.SaveScalars(metadata);
            foreach (var (name, buffer) in optimizer.Buffers)
                foreach (var e in state.Spec.Entries)
                    if (e.IsParameter)
                        tensors.Add(($"optimizer.{name}.{e.Key}", e.Shape, buffer.Slice((int)e.Offset, (int)e.Count), null));
        }
        if (scheduler is not null) metadata["scheduler.epoch"] = scheduler.Epoch.ToString(CultureInfo.InvariantCulture);
        SafeTensorsFile.Write(path, tensors, metadata);
    }

    /// <summary>Restores what <see cref="Save"/> wrote; nothing changes unless everything reads and matches.</summary>
    public static CheckpointInfo Load(string path, IResNet network, Optimizer? optimizer = null, LearningRateScheduler? scheduler = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(network);
        var state = network.State;
        using var file = TensorFile.Open(path);
        var meta = file.Metadata;
        if (!meta.TryGetValue("format", out var format) || format != Format)
            throw new WeightsFileException(path, null, $"is not an Unrolled training checkpoint (metadata format '{format ?? "absent"}', expected '{Format}'); use LoadWeights for a plain state_dict.");

        var (values, counters) = state.ReadState(file, "model.", strict: true);

        // Optimizer buffers: read into fresh arrays too.
        var buffers = new List<(Memory<float> Target, float[] Loaded)>();
        long steps = 0;
        float lr = 0;
        if (optimizer is not null)
        {
            if (!meta.TryGetValue("optimizer", out var kind) || kind != optimizer.GetType().Name)
                throw new WeightsFileException(path, null, $"holds the state of optimizer '{kind ?? "none"}', but a {optimizer.GetType().Name} was given.");
            steps = Number<long>(meta, "optimizer.steps", path);
            lr = Number<float>(meta, "optimizer.lr", path);
            var byKey = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            foreach (var t in file.Tensors) byKey[t.Key] = t;
            foreach (var (name, target) in optimizer.Buffers)
            {
                var loaded = new float[target.Length];
                foreach (var e in state.Spec.Entries)
                {
                    if (!e.IsParameter) continue;
                    string key = $"optimizer.{name}.{e.Key}";
                    if (!byKey.TryGetValue(key, out var t))
                        throw new WeightsFileException(path, key, "is missing: the checkpoint does not hold this optimizer's buffers");
                    if (t.DType != DType.F32 || t.Count != e.Count)
                        throw new WeightsFileException(path, key, $"is {DTypes.TorchName(t.DType)} {t.ShapeText}, expected float32 [{string.Join(", ", e.Shape)}]");
                    file.ReadFloat32(t, loaded.AsSpan((int)e.Offset, (int)e.Count));
                }
                buffers.Add((target, loaded));
            }
        }
        int schedulerEpoch = scheduler is null ? 0 : Number<int>(meta, "scheduler.epoch", path);
        int epoch = Number<int>(meta, "epoch", path);
        long step = Number<long>(meta, "step", path);

        // Everything read: commit.
        state.Commit(values, counters);
        if (optimizer is not null)
        {
            foreach (var (target, loaded) in buffers) loaded.CopyTo(target);
            optimizer.LoadScalars(meta);
            optimizer.Restore(steps, lr);
        }
        if (scheduler is not null)
        {
            scheduler.Restore(schedulerEpoch);
            if (optimizer is not null) optimizer.Restore(steps, lr); // the saved rate wins over the recomputed one
        }

        var extra = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in meta)
            if (k.StartsWith("extra.", StringComparison.Ordinal)) extra[k["extra.".Length..]] = v;
        return new CheckpointInfo(epoch, step, extra);
    }

    private static T Number<T>(IReadOnlyDictionary<string, string> meta, string key, string path) where T : INumber<T>
    {
        if (!meta.TryGetValue(key, out var text)) throw new WeightsFileException(path, null, $"checkpoint metadata '{key}' is missing");
        if (!T.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || (value is int or long && value < T.Zero))
            throw new WeightsFileException(path, null, $"checkpoint metadata '{key}' is '{text}', not a valid {typeof(T).Name}");
        return value;
    }
}
