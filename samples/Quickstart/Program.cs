using System;
using System.Globalization;
using System.IO;
using Unrolled.Quickstart;

// dotnet run -c Release --project samples/Quickstart [-- --data DIR --epochs 5 --batch-size 32 --lr 0.01 --out DIR --resume]
try
{
    var options = Options.Parse(args);
    if (options is null) return 0;
    Trainer.Run(options, Console.Out);
    return 0;
}
catch (Exception e) when (e is ArgumentException or InvalidDataException or DirectoryNotFoundException or Unrolled.Vision.ImageFileException or Unrolled.WeightsFileException or Unrolled.NonFiniteException)
{
    Console.Error.WriteLine("error: " + e.Message);
    return 2;
}
