#!/usr/bin/env bash
# End-to-end GPU benchmark (issue 5): `qconvert eval --device cuda` tokens/s on a ~1B-parameter
# Llama, side by side with ONNX Runtime's CUDA execution provider on the same ONNX files, in one
# run on the GPU machine. The model is made there: transformers' random initialisation with
# TinyLlama-1.1B's dimensions, exported by torch.onnx.export(dynamo=True) with external data, in
# float32 and in float16 (tools/export_llama.py). Our tool quantizes the float32 export to
# w4 g128 (gptq on the GPU, timed: the conversion benchmark) and W8A8 (smoothquant), and the
# float16 export to w4 g128 (float16 scales and activations, the usual form for GPU serving). PyTorch on the same weights is the framework
# baseline (tools/torch_eval.py); ONNX Runtime's CUDA provider runs the same ONNX files where the
# machine's onnxruntime has it (tools/ort_eval.py). Prints a markdown table.
#
# Usage: bench/cuda_e2e.sh [WORK_DIR]      (default /tmp/qconvert-e2e; files are reused if present)
#   QCONVERT=PATH   the qconvert binary (default: build/qconvert)
#   SEQLEN, WINDOWS evaluation windows (default 1024 x 32); the ids are seeded random tokens
#   (the model is random too: perplexity is only compared between the two runtimes).
#   W4_FROM        which exports the w4 rows quantize, NAME:EXPORT pairs (default
#                  "w4:float32 w4-float16:float16"; e.g. "w4-float16:float16" to skip the float32 one)
# Needs: an NVIDIA GPU, python3 with torch, transformers, onnx and onnxruntime (CUDA provider).
# Takes ~8 minutes on an H200 from scratch. Through a remote runner with a time limit, write the
# output to a file and print it after (`bench/cuda_e2e.sh >LOG 2>&1; cat LOG`): a pipe into `tail`
# prints nothing if the limit kills the run.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/qconvert-e2e}"
qc="${QCONVERT:-$root/build/qconvert}"
seqlen="${SEQLEN:-1024}"
windows="${WINDOWS:-32}"
mkdir -p "$work"
log() { echo "[$(date +%T)] $*" >&2; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c 'import torch, transformers, onnxruntime as o; print("torch", torch.__version__, "transformers", transformers.__version__, "onnxruntime", o.__version__, o.get_available_providers())'
"$qc" --version

# 1. The models: both exports at once (CPU work), then the quantizations. GPTQ w4 g128 runs on the
# GPU (--device cuda, 128 x 2048 calibration tokens: the conversion benchmark, timed with the
# GPU's peak memory) while SmoothQuant W8A8 runs on the CPUs.
for dtype in float32 float16; do
  if [ ! -f "$work/$dtype/model.onnx" ]; then
    log "export $dtype"
    python3 "$root/tools/export_llama.py" "$work/$dtype/model.onnx" --preset tinyllama-1.1b --dtype "$dtype" &
  fi
done
wait
python3 - "$work/ids.npy" "$((seqlen * windows))" "$work/calib.npy" <<'EOF2'
import sys, numpy as np
np.save(sys.argv[1], np.random.default_rng(0).integers(0, 32000, int(sys.argv[2]), dtype=np.int32))
np.save(sys.argv[3], np.random.default_rng(1).integers(0, 32000, 128 * 2048 * 2, dtype=np.int32))
EOF2
if [ ! -f "$work/w8a8/model.onnx" ]; then
  log "quantize W8A8 (CPU, in the background)"
  mkdir -p "$work/w8a8"
  /usr/bin/time -f "w8a8 (smoothquant, cpu): %e s wall, %M KB peak RSS" "$qc" "$work/float32/model.onnx" --pass smoothquant \
    --calib "$work/calib.npy" --nsamples 8 --seqlen 128 -o "$work/w8a8/model.onnx" --no-progress &
fi
gpu_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
for model in ${W4_FROM:-w4:float32 w4-float16:float16}; do
  name="${model%%:*}"
  [ -f "$work/$name/model.onnx" ] && continue
  log "quantize $name: gptq w4 g128 --device cuda, 128 x 2048 calibration tokens"
  mkdir -p "$work/$name"
  base="$(gpu_mib)"
  (while true; do gpu_mib; sleep 0.2; done) >"$work/$name/gpu-mem.log" &
  sampler=$!
  /usr/bin/time -f "$name (gptq, cuda): %e s wall, %M KB peak RSS" "$qc" "$work/${model#*:}/model.onnx" --pass gptq --bits 4 \
    --group-size 128 --device cuda --calib "$work/calib.npy" --nsamples 128 --seqlen 2048 \
    -o "$work/$name/model.onnx" --external-data 2>&1 | grep -E "device memory|wall|rror" >&2 || log "quantize $name failed"
  kill "$sampler"
  echo "$name: GPU memory in use at the start $base MiB, peak $(sort -n "$work/$name/gpu-mem.log" | tail -1) MiB" >&2
done
wait

# 2. Each runtime on each file: qconvert, ONNX Runtime's CUDA provider when this machine's
# onnxruntime has it, and PyTorch on the float models (the same weights, rebuilt from the seed).
failed='{"ppl": "failed", "tokens_per_second": 0}'
json_field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])[sys.argv[1]])' "$1"; }
ort_cuda="$(python3 -c 'import onnxruntime as o; print(int("CUDAExecutionProvider" in o.get_available_providers()))')"
rows=()
# "X@float16": file X computed in float16 by qconvert (--dtype float16; for W8A8 the float32 parts
# around the integer products); the other runtimes have no such switch, so only the float16 export
# compares with them.
for model in float32 float16 float32@float16 w4 w4-float16 w8a8 w8a8@float16; do
  file="$work/${model%@*}/model.onnx"
  dtype_args=()
  [ "${model#*@}" = float16 ] && [ "$model" != float16 ] && dtype_args=(--dtype float16)
  log "eval $model: qconvert"
  ours="$("$qc" eval "$file" --device cuda "${dtype_args[@]}" --data "$work/ids.npy" --seqlen "$seqlen" --max-windows "$windows" --json --no-progress)" ||
    ours="$failed"
  echo "$model qconvert: $ours" >&2
  # The same without CUDA graphs: every window's steps queued one by one (the host's launch cost).
  steps="$("$qc" eval "$file" --device cuda "${dtype_args[@]}" --data "$work/ids.npy" --seqlen "$seqlen" --max-windows "$windows" --json --no-progress --no-cuda-graphs)" ||
    steps="$failed"
  echo "$model qconvert --no-cuda-graphs: $steps" >&2
  theirs="$failed"
  if [ "$ort_cuda" = 1 ] && [ "${#dtype_args[@]}" = 0 ]; then
    log "eval $model: onnxruntime"
    theirs="$(python3 "$root/tools/ort_eval.py" "$file" "$work/ids.npy" "$seqlen" "$windows" --provider cuda)" || theirs="$failed"
    echo "$model onnxruntime: $theirs" >&2
  fi
  torch="$failed"
  if [ "$model" = float32 ] || [ "$model" = float16 ]; then
    log "eval $model: pytorch"
    torch="$(python3 "$root/tools/torch_eval.py" "$work/ids.npy" "$seqlen" "$windows" --dtype "$model")" || torch="$failed"
    echo "$model pytorch: $torch" >&2
  fi
  rows+=("$model|$(json_field ppl <<<"$ours")|$(json_field tokens_per_second <<<"$ours")|$(json_field tokens_per_second <<<"$steps")|$(json_field ppl <<<"$theirs")|$(json_field tokens_per_second <<<"$theirs")|$(json_field ppl <<<"$torch")|$(json_field tokens_per_second <<<"$torch")")
done

echo
echo "model: TinyLlama-1.1B dimensions (hidden 2048, 22 layers, 32 heads, 4 KV heads, vocab 32000), random init, dynamo export"
echo "eval: $windows windows of $seqlen tokens (seeded random ids), one window per run; ONNX Runtime CUDA provider available: $ort_cuda"
echo
echo "eval tok/s: after a first, untimed window in every runtime; qconvert with CUDA graphs (the default) and without"
echo
echo "| model file | qconvert ppl | qconvert tok/s | qconvert tok/s, no graphs | ORT CUDA ppl | ORT CUDA tok/s | PyTorch ppl | PyTorch tok/s | qconvert / ORT | qconvert / PyTorch |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for row in "${rows[@]}"; do
  python3 - "$row" <<'EOF'
import sys
m, p1, t1, t0, p2, t2, p3, t3 = sys.argv[1].split("|")
fmt = lambda p: "-" if p == "failed" else f"{float(p):.4f}"
tps = lambda t: "-" if float(t) == 0 else f"{float(t):.0f}"
ratio = lambda a, b: f"{float(a) / float(b):.2f}x" if float(a) > 0 and float(b) > 0 else "-"
print(f"| {m} | {fmt(p1)} | {tps(t1)} | {tps(t0)} | {fmt(p2)} | {tps(t2)} | {fmt(p3)} | {tps(t3)} | {ratio(t1, t2)} | {ratio(t1, t3)} |")
EOF
done
