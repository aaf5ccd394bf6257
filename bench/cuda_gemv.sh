#!/usr/bin/env bash
# Quantized GEMV benchmark (issue 5): MatMulNBits W4/W8 g128 at batch 1 on Llama layer shapes, as
# achieved bandwidth against a device-to-device copy measured in the same run and as time against
# cuBLAS fp16 GEMV; every kernel's output is checked first. Prints a markdown table.
# Needs an NVIDIA GPU (sm_90 code plus PTX) and cuBLAS 13.
# Usage: bench/cuda_gemv.sh [--sweep] [--sweep-stream] [--prefill] [--floor] [--rows M]
#                          [--pattern] [--profile-one]
#   --sweep: also time the GEMV kernel (kGemv) over tiles per block x K slices, every weight and
#   activation type; --sweep-stream: the stream kernel (kStream) over blocks per SM x steps in
#   flight, and over staging mode x blocks per SM;
#   --prefill: W4 products of 16-2048 rows (fp16, then float32 with SGEMM), kMma vs the executor's
#   dequantise + cuBLAS path vs dense cuBLAS; --floor: per shape, the least time one launch takes
#   to read a W4 layer's bytes (no arithmetic), against the 75%-of-copy target; --rows M: batch M
#   instead of 1; --pattern: also time the weight loads alone;
#   --profile-one: only 5 plain launches of the default 8192 x 8192 W4 call (run under
#   ncu -k regex:NBits).
#   QC_CUDA_GEMV_BENCH=PATH   run a prebuilt cuda_gemv_bench (e.g. one carried to the GPU machine);
#   otherwise it is built: with CMake into build-cuda/ where the project's dependencies are
#   installed, else with nvcc alone (it needs only runtime/cuda and formats/status.h).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${QC_CUDA_GEMV_BENCH:-}"
if [ -z "$bin" ]; then
  nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  if cmake -S "$root" -B "$root/build-cuda" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null 2>&1; then
    cmake --build "$root/build-cuda" --target cuda_gemv_bench >/dev/null
    bin="$root/build-cuda/cuda_gemv_bench"
  else
    mkdir -p "$root/build-cuda-bench"
    "$nvcc" -O3 -std=c++20 -diag-suppress=2810 -gencode arch=compute_90,code=sm_90 \
      -gencode arch=compute_90,code=compute_90 -I"$root" "$root/bench/cuda_gemv.cu" \
      "$root/runtime/cuda/device.cu" "$root/runtime/cuda/allocator.cu" "$root/runtime/cuda/matmul_nbits.cu" \
      "$root/runtime/cuda/matmul_nbits_stream.cu" \
      "$root/runtime/cuda/nbits_dequantize.cu" "$root/runtime/cuda/kernel_attributes.cu" \
      -lcublas -o "$root/build-cuda-bench/cuda_gemv_bench"
    bin="$root/build-cuda-bench/cuda_gemv_bench"
  fi
fi
# The card's state as found (clocks are left alone; see docs/BENCHMARKS.md).
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader || true
"$bin" "$@"
