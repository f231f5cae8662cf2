#!/usr/bin/env bash
# Coverage-guided fuzzing of one target with AFL++ and SharpFuzz.
#   fuzz/run.sh pth|safetensors|image [EXECUTIONS=100000] [OUT=fuzz/findings/TARGET]
# Needs afl-fuzz (Debian: apt-get install afl++) and sharpfuzz (dotnet tool install -g SharpFuzz.CommandLine --version 2.3.0).
# Seeds are the real files from ../shared (reference weights, the photos, some digits); inputs found to crash are
# copied to fuzz/regressions/TARGET, which the test suite replays (FuzzRegressionTests).
set -euo pipefail
target=${1:?target: pth, safetensors or image}
executions=${2:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${3:-$root/fuzz/findings/$target}
shared=${UNROLLED_SHARED:-$root/../shared}
build=$root/fuzz/bin/$target

rm -rf "$build"   # a fresh copy: instrumenting twice is refused
dotnet publish "$root/fuzz/Unrolled.Fuzz" -c Release -o "$build" >/dev/null
export PATH="$PATH:$HOME/.dotnet/tools"
sharpfuzz "$build/Unrolled.Runtime.dll"       # coverage instrumentation, in place
# The image target is mostly ImageSharp's decoders: instrument them too, so that AFL sees their paths.
if [ "$target" = image ]; then sharpfuzz "$build/SixLabors.ImageSharp.dll"; fi

seeds=$(mktemp -d)
case $target in
  pth) cp "$shared/reference/tiny18.pth" "$seeds/" ;;
  safetensors) cp "$shared/reference/tiny18.safetensors" "$seeds/" ;;
  image) cp "$shared/images/chelsea.png" "$shared/images/coffee.png" "$seeds/"
         for d in 0 3 7; do cp "$(ls "$shared/datasets/digits/train/$d"/*.png | head -1)" "$seeds/digit$d.png"; done ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
for f in "$root/fuzz/regressions/$target"/*; do [ -f "$f" ] && cp "$f" "$seeds/"; done

rm -rf "$out"
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
afl-fuzz -i "$seeds" -o "$out" -t 10000 -m none -E "$executions" -- dotnet "$build/Unrolled.Fuzz.dll" "$target" || true
rm -rf "$seeds"

stats=$out/default/fuzzer_stats
grep -E "^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|run_time) " "$stats"
mkdir -p "$root/fuzz/regressions/$target"
for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
  [ -f "$f" ] && cp "$f" "$root/fuzz/regressions/$target/$(basename "$f" | tr ':,' '__')"
done
exit 0
