using System;
using System.Collections.Generic;
using System.Collections.Immutable;

namespace Unrolled.Generator.Model;

/// <summary>
/// torchvision's ResNet table (resnet.py: <c>_resnet(BasicBlock, [2, 2, 2, 2])</c>, ...) and the one function that
/// expands it into a flat list of layers, state entries and a memory plan. ResNet v1.5: a bottleneck's stride
/// sits on its 3x3 conv; the first block of a stage gets a downsample (1x1 conv + BN) when the stride or width changes.
/// </summary>
internal static class ResNetTable
{
    /// <summary>depth -> (bottleneck?, blocks per stage).</summary>
    public static readonly ImmutableDictionary<int, (bool Bottleneck, int[] Blocks)> Depths =
        new Dictionary<int, (bool, int[])>
        {
            [18] = (false, new[] { 2, 2, 2, 2 }),
            [34] = (false, new[] { 3, 4, 6, 3 }),
            [50] = (true, new[] { 3, 4, 6, 3 }),
            [101] = (true, new[] { 3, 4, 23, 3 }),
            [152] = (true, new[] { 3, 8, 36, 3 }),
        }.ToImmutableDictionary();

    public static NetworkDescription Expand(ResNetOptions o)
    {
        var (bottleneck, blocks) = Depths[o.Depth];
        var b = new Builder(new Shape(3, o.ImageHeight, o.ImageWidth));
        int width = o.BaseWidth;
        int expansion = bottleneck ? 4 : 1;

        // Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool.
        int x = b.ConvBn("conv1", "bn1", 0, width, 7, 2, 3);
        x = b.Relu("relu", x);
        x = b.MaxPool("maxpool", x, 3, 2, 1);

        int inplanes = width;
        for (int stage = 0; stage < 4; stage++)
        {
            int planes = width << stage;
            for (int block = 0; block < blocks[stage]; block++)
            {
                string p = $"layer{stage + 1}.{block}.";
                int stride = stage > 0 && block == 0 ? 2 : 1;
                int identity = x;
                // The downsample runs first, so that its output is ready when the block's last conv adds it in
                // its epilogue; its state entries still come last in the block, where torchvision registers them.
                bool downsample = block == 0 && (stride != 1 || inplanes != planes * expansion);
                if (downsample)
                    identity = b.ConvBn(p + "downsample.0", p + "downsample.1", x, planes * expansion, 1, stride, 0, register: false);

                int y;
                if (bottleneck)
                {
                    y = b.Relu(p + "relu1", b.ConvBn(p + "conv1", p + "bn1", x, planes, 1, 1, 0));
                    y = b.Relu(p + "relu2", b.ConvBn(p + "conv2", p + "bn2", y, planes, 3, stride, 1));
                    y = b.ConvBn(p + "conv3", p + "bn3", y, planes * expansion, 1, 1, 0, zeroInit: o.ZeroInitResidual);
                }
                else
                {
                    y = b.Relu(p + "relu1", b.ConvBn(p + "conv1", p + "bn1", x, planes, 3, stride, 1));
                    y = b.ConvBn(p + "conv2", p + "bn2", y, planes, 3, 1, 1, zeroInit: o.ZeroInitResidual);
                }
                if (downsample) b.RegisterConvBn(p + "downsample.0", p + "downsample.1", planes * expansion, inplanes, 1, zeroInit: false);
                x = b.Relu(p + (bottleneck ? "relu3" : "relu2"), b.Add(p + "add", y, identity));
                inplanes = planes * expansion;
            }
        }

        x = b.AvgPool("avgpool", x);
        b.Linear("fc", x, o.NumClasses);
        return b.Build(o, bottleneck ? "Bottleneck" : "BasicBlock", blocks);
    }

    /// <summary>Output size of a window: floor((size + 2 pad - kernel) / stride) + 1, as PyTorch computes it; 0 when nothing fits.</summary>
    public static int OutputSize(int size, int kernel, int stride, int pad) =>
        size + 2 * pad < kernel ? 0 : (size + 2 * pad - kernel) / stride + 1;

    private sealed class Builder
    {
        private readonly List<Layer> _layers = new();
        private readonly List<Shape> _tensors = new();
        private readonly List<StateEntryInfo> _entries = new();
        private readonly Dictionary<string, ConvInfo> _convs = new();
        private long _values;
        private int _counters;

        public Builder(Shape input) => _tensors.Add(input);

        private int NewTensor(Shape s)
        {
            _tensors.Add(s);
            return _tensors.Count - 1;
        }

        private void AddLayer(LayerKind kind, string name, int[] inputs, int output, int kernel = 0, int stride = 0, int pad = 0,
            long parameters = 0, long macs = 0) =>
            _layers.Add(new Layer(_layers.Count, kind, name, new EquatableArray<int>(inputs), output,
                _tensors[inputs[0]], _tensors[output], kernel, stride, pad, parameters, macs));

        private long Entry(string key, int[] shape, bool parameter, InitRule init, int fan)
        {
            long offset;
            if (init == InitRule.Counter)
            {
                offset = _counters++;
            }
            else
            {
                offset = _values;
                long n = 1;
                foreach (int d in shape) n *= d;
                _values += n;
            }
            _entries.Add(new StateEntryInfo(key, new EquatableArray<int>(shape), offset, parameter, init, fan));
            return offset;
        }

        /// <summary>A conv (no bias) and its BatchNorm; with <paramref name="register"/> false the state is registered later.</summary>
        public int ConvBn(string conv, string bn, int input, int cout, int kernel, int stride, int pad,
            bool zeroInit = false, bool register = true)
        {
            var s = _tensors[input];
            var outShape = new Shape(cout, OutputSize(s.H, kernel, stride, pad), OutputSize(s.W, kernel, stride, pad));
            int y = NewTensor(outShape);
            long weights = (long)cout * s.C * kernel * kernel;
            AddLayer(LayerKind.Conv, conv, new[] { input }, y, kernel, stride, pad, weights, weights * outShape.H * outShape.W);
            int z = NewTensor(outShape);
            AddLayer(LayerKind.BatchNorm, bn, new[] { y }, z, parameters: 2L * cout);
            if (register) RegisterConvBn(conv, bn, cout, s.C, kernel, zeroInit);
            return z;
        }

        /// <summary>The state entries of a conv and its BN, in torchvision's state_dict order.</summary>
        public void RegisterConvBn(string conv, string bn, int cout, int cin, int kernel, bool zeroInit)
        {
            long w = Entry(conv + ".weight", new[] { cout, cin, kernel, kernel }, true, InitRule.KaimingNormalFanOut, cout * kernel * kernel);
            long g = Entry(bn + ".weight", new[] { cout }, true, zeroInit ? InitRule.Zeros : InitRule.Ones, 0);
            Entry(bn + ".bias", new[] { cout }, true, InitRule.Zeros, 0);
            Entry(bn + ".running_mean", new[] { cout }, false, InitRule.Zeros, 0);
            Entry(bn + ".running_var", new[] { cout }, false, InitRule.Ones, 0);
            long counter = Entry(bn + ".num_batches_tracked", Array.Empty<int>(), false, InitRule.Counter, 0);
            _convs[conv] = new ConvInfo(-1, conv, w, g, (int)counter, cout, cin, kernel);
        }

        public int Relu(string name, int input)
        {
            int y = NewTensor(_tensors[input]);
            AddLayer(LayerKind.Relu, name, new[] { input }, y);
            return y;
        }

        public int Add(string name, int main, int identity)
        {
            int y = NewTensor(_tensors[main]);
            AddLayer(LayerKind.Add, name, new[] { main, identity }, y);
            return y;
        }

        public int MaxPool(string name, int input, int kernel, int stride, int pad)
        {
            var s = _tensors[input];
            int y = NewTensor(new Shape(s.C, OutputSize(s.H, kernel, stride, pad), OutputSize(s.W, kernel, stride, pad)));
            AddLayer(LayerKind.MaxPool, name, new[] { input }, y, kernel, stride, pad);
            return y;
        }

        public int AvgPool(string name, int input)
        {
            int y = NewTensor(new Shape(_tensors[input].C, 1, 1));
            AddLayer(LayerKind.AvgPool, name, new[] { input }, y);
            return y;
        }

        public int Linear(string name, int input, int outputs)
        {
            int inputs = _tensors[input].C;
            int y = NewTensor(new Shape(outputs, 1, 1));
            AddLayer(LayerKind.Linear, name, new[] { input }, y, parameters: (long)inputs * outputs + outputs, macs: (long)inputs * outputs);
            Entry(name + ".weight", new[] { outputs, inputs }, true, InitRule.UniformFanIn, inputs);
            Entry(name + ".bias", new[] { outputs }, true, InitRule.UniformFanIn, inputs);
            return y;
        }

        public NetworkDescription Build(ResNetOptions o, string blockType, int[] blocks)
        {
            // Conv indices follow execution order, which is how the generated code refers to them.
            var convs = new List<ConvInfo>();
            long parameters = 0, macs = 0;
            foreach (var l in _layers)
            {
                parameters += l.ParamCount;
                macs += l.Macs;
                if (l.Kind == LayerKind.Conv) convs.Add(_convs[l.Name] with { Index = convs.Count });
            }
            var layers = new EquatableArray<Layer>(_layers);
            var steps = Step.Build(_layers);
            return new NetworkDescription(o, blockType, new EquatableArray<int>(blocks), layers,
                new EquatableArray<StateEntryInfo>(_entries), new EquatableArray<ConvInfo>(convs),
                _values, _counters, parameters, macs, new EquatableArray<Shape>(_tensors),
                MemoryPlan.Create(layers, _tensors), steps, TrainingPlan.Create(steps, _tensors));
        }
    }
}
