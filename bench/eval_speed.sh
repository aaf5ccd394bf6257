#!/usr/bin/env bash
# Perplexity throughput and peak memory: qconvert eval vs ONNX Runtime's CPU EP, side by side,
# same windows, same thread count. Prints a markdown table.
# Usage: bench/eval_speed.sh [MODEL_DIR=../shared/models/docs-llama-12m] [WINDOWS=48] [THREADS=nproc]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model_dir="${1:-$root/../shared/models/docs-llama-12m}"
windows="${2:-48}"
threads="${3:-$(nproc)}"
"$root/scripts/build.sh" >/dev/null
export QC_ORT_NODE_MODULES="$root/third_party/ort-node/node_modules"
ids="$model_dir/docs-val.ids.npy"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Runs a command under /usr/bin/time, leaving its stdout in $tmp/out and peak RSS (KB) in $tmp/rss.
measure() {
  /usr/bin/time -f "%M" -o "$tmp/rss" "$@" >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err" >&2; exit 1; }
}
field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p" "$tmp/out"; }

echo "model: $model_dir, $windows windows of 512, $threads threads, $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p'))"
echo
echo "| runtime | ppl | seconds | tokens/s | peak RSS (MB) |"
echo "| --- | --- | --- | --- | --- |"
OMP_NUM_THREADS="$threads" measure "$root/build/qconvert" eval "$model_dir/model.onnx" --data "$ids" --max-windows "$windows" --json --no-progress
q_tps="$(field tokens_per_second)"
printf "| qconvert | %.4f | %.2f | %.0f | %.0f |\n" "$(field ppl)" "$(field seconds)" "$q_tps" "$(($(cat "$tmp/rss") / 1024))"
if [ -d "$QC_ORT_NODE_MODULES/onnxruntime-node" ]; then
  measure node "$root/tools/ort_eval.js" "$model_dir/model.onnx" "$ids" 512 "$windows" "$threads"
  o_tps="$(field tokens_per_second)"
  printf "| onnxruntime-node %s (CPU EP) | %.4f | %.2f | %.0f | %.0f |\n" \
    "$(sed -n 's/.*"version": "\(.*\)".*/\1/p' "$QC_ORT_NODE_MODULES/onnxruntime-node/package.json")" \
    "$(field ppl)" "$(field seconds)" "$o_tps" "$(($(cat "$tmp/rss") / 1024))"
  echo
  awk -v q="$q_tps" -v o="$o_tps" 'BEGIN { printf "qconvert / ONNX Runtime throughput: %.2fx\n", q / o }'
else
  echo "(onnxruntime-node not installed: run scripts/setup.sh)"
fi
