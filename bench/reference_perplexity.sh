#!/usr/bin/env bash
# Perplexity of the shared models against their reference numbers (PyTorch full-file, ONNX
# Runtime first-48-windows), through the whole pipeline: qconvert tokenizes the text itself.
# Usage: bench/reference_perplexity.sh [quick]   (quick: only the 48-window rows)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$root/../shared"
"$root/scripts/build.sh" >/dev/null
q="$root/build/qconvert"
mode="${1:-full}"

# row NAME MODEL DATA TOKENIZER_OR_- SEQLEN MAX_WINDOWS REFERENCE TOLERANCE_PCT
row() {
  local name="$1" model="$2" data="$3" tok="$4" seqlen="$5" max="$6" ref="$7" tol="$8"
  local args=(eval "$model" --data "$data" --seqlen "$seqlen" --json --no-progress)
  [ "$tok" != "-" ] && args+=(--tokenizer "$tok")
  [ "$max" != "all" ] && args+=(--max-windows "$max")
  local out ppl windows secs
  out="$("$q" "${args[@]}")"
  ppl="$(sed -n 's/.*"ppl":\([0-9.e+-]*\).*/\1/p' <<<"$out")"
  windows="$(sed -n 's/.*"windows":\([0-9]*\).*/\1/p' <<<"$out")"
  secs="$(sed -n 's/.*"seconds":\([0-9.e+-]*\).*/\1/p' <<<"$out")"
  awk -v n="$name" -v w="$windows" -v p="$ppl" -v r="$ref" -v t="$tol" -v s="$secs" 'BEGIN {
    d = (p - r) / r * 100; ok = (d <= t && d >= -t) ? "yes" : "NO";
    printf "| %s | %d | %.4f | %.4f | %+.4f%% | %s (±%s%%) | %.0f |\n", n, w, p, r, d, ok, t, s }'
}

echo "| model / data | windows | qconvert ppl | reference | difference | within | seconds |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
L="$shared/models/docs-llama-12m"; G="$shared/models/docs-gpt2-10m"; S="$shared/models/stories260k"
W="$shared/data/wikitext2-raw/wiki.test.raw"
row "docs-llama-12m docs-val (ORT)" "$L/model.onnx" "$L/docs-val.txt" "$L/tokenizer.json" 512 48 14.6352 0.05
row "docs-gpt2-10m docs-val (ORT)" "$G/model.onnx" "$G/docs-val.txt" "$G/tokenizer.json" 512 48 12.7935 0.05
row "docs-llama-12m wikitext2 (ORT)" "$L/model.onnx" "$W" "$L/tokenizer.json" 512 48 241.9230 0.05
row "docs-gpt2-10m wikitext2 (ORT)" "$G/model.onnx" "$W" "$G/tokenizer.json" 512 48 278.7292 0.05
row "stories260k mask-pos tinystories (PyTorch)" "$S/stories260k.mask-pos.onnx" "$S/tinystories-valid.ids.npy" - 256 48 4.1637 0.1
if [ "$mode" = "full" ]; then
  row "docs-llama-12m docs-val (PyTorch)" "$L/model.onnx" "$L/docs-val.txt" "$L/tokenizer.json" 512 all 9.2055 0.1
  row "docs-gpt2-10m docs-val (PyTorch)" "$G/model.onnx" "$G/docs-val.txt" "$G/tokenizer.json" 512 all 10.6821 0.1
  row "docs-llama-12m wikitext2 (PyTorch)" "$L/model.onnx" "$W" "$L/tokenizer.json" 512 all 189.0510 0.1
  row "docs-gpt2-10m wikitext2 (PyTorch)" "$G/model.onnx" "$W" "$G/tokenizer.json" 512 all 230.7600 0.1
  row "stories260k tinystories (PyTorch)" "$S/stories260k.onnx" "$S/tinystories-valid.ids.npy" - 256 all 5.3780 0.1
fi
