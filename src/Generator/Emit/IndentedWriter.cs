using System.Text;

namespace Unrolled.Generator.Emit;

/// <summary>A small text writer that indents with four spaces and always ends lines with '\n' (deterministic output).</summary>
internal sealed class IndentedWriter
{
    private readonly StringBuilder _text = new();
    private int _depth;

    public IndentedWriter Line(string line = "")
    {
        if (line.Length > 0) _text.Append(' ', 4 * _depth).Append(line);
        _text.Append('\n');
        return this;
    }

    public IndentedWriter Open(string header)
    {
        Line(header);
        Line("{");
        _depth++;
        return this;
    }

    public IndentedWriter Close(string suffix = "")
    {
        _depth--;
        return Line("}" + suffix);
    }

    public override string ToString() => _text.ToString();
}
