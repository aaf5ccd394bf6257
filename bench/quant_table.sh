#!/usr/bin/env bash
# Quantization quality table (issue 4's protocol): every pass setting on docs-llama-12m and
# docs-gpt2-10m, with conversion time, artifact size against the float32 file, our perplexity and
# ONNX Runtime's on the same artifact. Calibration: docs-calib.txt, 128 x 512 tokens, seed 0;
# perplexity: the first 48 windows of 512 of each model's docs-val.txt.
# Usage: bench/quant_table.sh [MODEL ...]   (default: docs-llama-12m docs-gpt2-10m)
# Environment: NSAMPLES (128), WINDOWS (48), ROWS (a regex over row names, default all).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$root/../shared"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(docs-llama-12m docs-gpt2-10m)
nsamples="${NSAMPLES:-128}"
windows="${WINDOWS:-48}"
rows_filter="${ROWS:-.}"
"$root/scripts/build.sh" >/dev/null
q="$root/build/qconvert"
export QC_ORT_NODE_MODULES="${QC_ORT_NODE_MODULES:-$root/third_party/ort-node/node_modules}"
have_ort=0
[ -d "$QC_ORT_NODE_MODULES/onnxruntime-node" ] && command -v node >/dev/null && have_ort=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# name | pass options | target on docs-llama-12m ("" for none)
rows=(
  "absmax w4 g128|--pass absmax --bits 4 --group-size 128|15.40"
  "zeropoint w4 g128|--pass zeropoint --bits 4 --group-size 128|15.52"
  "gptq w4 g128 act-order|--pass gptq --bits 4 --group-size 128 --act-order|14.95"
  "awq w4 g128|--pass awq --bits 4 --group-size 128|15.20"
  "gptq w3 g128|--pass gptq --bits 3 --group-size 128|16.10"
  "gptq w3 g128, head at 3 bits too|--pass gptq --bits 3 --group-size 128 --head-bits 3|"
  "smoothquant W8A8|--pass smoothquant|14.78"
  "outlier-split int8|--pass outlier-split|14.71"
)

mb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e6 }'; }
json_field() { sed -n "s/.*\"$1\": *\([0-9.e+-]*\).*/\1/p" "$2" | head -1; }
# Our perplexity of MODEL (the 48-window protocol).
ppl_ours() {
  "$q" eval "$1" --data "$2" --tokenizer "$3" --seqlen 512 --max-windows "$windows" --json --no-progress >"$tmp/eval.json"
  json_field ppl "$tmp/eval.json" | awk '{ printf "%.4f", $1 }'
}
ppl_ort() {
  [ "$have_ort" = 1 ] || { echo "-"; return; }
  node "$root/tools/ort_eval.js" "$1" "$2" 512 "$windows" "$(nproc)" >"$tmp/ort.json"
  json_field ppl "$tmp/ort.json" | awk '{ printf "%.4f", $1 }'
}

echo "qconvert $("$q" --version 2>/dev/null || true); $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p'))"
echo "calibration: docs-calib.txt, $nsamples x 512 tokens, seed 0; perplexity: first $windows windows of 512 of docs-val.txt"
for name in "${models[@]}"; do
  dir="$shared/models/$name"
  [ -f "$dir/model.onnx" ] || { echo "skipping $name: $dir/model.onnx not found"; continue; }
  tok="$dir/tokenizer.json"
  val_ids="$dir/docs-val.ids.npy"
  float_bytes=$(stat -c %s "$dir/model.onnx")
  float_ppl=$(ppl_ours "$dir/model.onnx" "$dir/docs-val.txt" "$tok")
  echo
  echo "### $name (float32 $(mb "$float_bytes") MB, perplexity $float_ppl)"
  echo
  echo "| pass, setting | ppl (qconvert) | ppl (ONNX Runtime) | target | vs float | convert s | size MB | size vs fp32 |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  printf "| float32 | %s | %s | | | | %s | 100%% |\n" "$float_ppl" "$(ppl_ort "$dir/model.onnx" "$val_ids")" "$(mb "$float_bytes")"
  for row in "${rows[@]}"; do
    IFS='|' read -r label opts target <<<"$row"
    [[ "$label" =~ $rows_filter ]] || continue
    [ "$name" = docs-llama-12m ] || target=""
    out="$tmp/q.onnx"
    rm -f "$out" "$out.data"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086
    if ! "$q" "$dir/model.onnx" $opts --calib "$shared/data/docs-calib/docs-calib.txt" --tokenizer "$tok" \
        --nsamples "$nsamples" --seqlen 512 --seed 0 -o "$out" --no-progress >"$tmp/convert.log" 2>&1; then
      printf "| %s | failed: %s | | %s | | | | |\n" "$label" "$(tail -1 "$tmp/convert.log")" "$target"
      continue
    fi
    seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    bytes=$(stat -c %s "$out")
    [ -f "$out.data" ] && bytes=$((bytes + $(stat -c %s "$out.data")))
    ppl=$(ppl_ours "$out" "$dir/docs-val.txt" "$tok")
    printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n" "$label" "$ppl" "$(ppl_ort "$out" "$val_ids")" \
      "${target:+<= $target}" "$(awk -v a="$ppl" -v b="$float_ppl" 'BEGIN { printf "%+.2f%%", 100 * (a / b - 1) }')" \
      "$seconds" "$(mb "$bytes")" "$(awk -v a="$bytes" -v b="$float_bytes" 'BEGIN { printf "%.1f%%", 100 * a / b }')"
  done
done
