#!/usr/bin/env bash
# The GPU check in one call, for a machine with an NVIDIA GPU and PyTorch (no .NET needed there).
# Here first:  dotnet publish samples/GpuCheck -c Release -r linux-x64 -o gpucheck-bin
# There:       bash samples/GpuCheck/run-on-gpu.sh gpucheck-bin/gpucheck path/to/shared/reference
# Unrolled finds cudart, cuBLAS and cuDNN in pip's nvidia wheels of the Python it is given (or LD_LIBRARY_PATH,
# or UNROLLED_CUDA_PATH); the python's site-packages is found through VIRTUAL_ENV/CONDA_PREFIX or the usual prefixes.
set -u
binary=${1:?the published gpucheck executable}
reference=${2:?the folder of the reference files (shared/reference)}
python=${PYTHON:-python3}
site=$("$python" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)
if [ -n "$site" ] && [ -z "${UNROLLED_CUDA_PATH:-}" ]; then
    export UNROLLED_CUDA_PATH=$(ls -d "$site"/nvidia/*/lib 2>/dev/null | paste -sd: -)
    # cuDNN's front library loads its sub-libraries (libcudnn_cnn.so.9, ...) by name through the system loader.
    export LD_LIBRARY_PATH=$UNROLLED_CUDA_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$binary" --reference "$reference"
status=$?
"$python" "$(dirname "$0")/torch_bench.py"
exit $status
