#!/usr/bin/env bash
# Peak memory and time of converting a model larger than it should take in memory (issue 6): a
# generated Llama of TinyLlama-1.1B's dimensions (hidden 2048, intermediate 5632, 22 layers, 32
# heads, 4 KV heads, vocab 32000: 1.10 B parameters, 4.4 GB of float32 external data), quantized
# with absmax, gptq, smoothquant, outlier-split and awq, each under /usr/bin/time -v; ONNX Runtime
# then loads each artifact and runs 8 tokens through it. Prints a markdown table
# (docs/BENCHMARKS.md) and exits 1 when a run fails or exceeds its memory budget (absmax 1.5 GB,
# the calibrated passes 3 GB).
#
# Usage: bench/memory.sh [DIR]     (default /tmp/qconvert-big; the model is generated there once)
# Environment: QCONVERT (default build/qconvert, built if missing), LAYERS (22; fewer for a quick
# look), ROWS (a regex over row names, default all), QC_ORT_NODE_MODULES.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-/tmp/qconvert-big}"
layers="${LAYERS:-22}"
rows_filter="${ROWS:-.}"
q="${QCONVERT:-$root/build/qconvert}"
if [ -z "${QCONVERT:-}" ] && [ ! -x "$q" ]; then "$root/scripts/build.sh" >/dev/null; fi
export QC_ORT_NODE_MODULES="${QC_ORT_NODE_MODULES:-$root/third_party/ort-node/node_modules}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
[ -x /usr/bin/time ] || { echo "bench/memory.sh needs /usr/bin/time (Debian package 'time')" >&2; exit 1; }
mkdir -p "$dir"
model="$dir/tinyllama-l$layers.onnx"
tok="$dir/tokenizer.json"
calib="$dir/calib.txt"

# Runs a command under /usr/bin/time -v; sets rss_mb, wall_s, cpu_s; the command's output goes to
# $log. Returns the command's exit status.
measure() {
  local log="$1"
  shift
  local rc=0
  /usr/bin/time -v -o "$log.time" "$@" >"$log" 2>&1 || rc=$?
  rss_mb=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$log.time")
  wall_s=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; ++i) s = s * 60 + p[i]; printf "%.0f", s }' "$log.time")
  cpu_s=$(awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.0f", s }' "$log.time")
  return $rc
}

echo "qconvert $("$q" --version 2>/dev/null | sed 's/^qconvert //' || true); $(nproc) cores ($(lscpu | sed -n 's/^Model name: *//p')), $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1048576 }' /proc/meminfo); load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
rows=()
if [ ! -f "$model" ] || [ ! -f "$model.data" ]; then
  if measure "$dir/generate.log" "$q" generate --arch llama --style dynamo --vocab 32000 --hidden 2048 --intermediate 5632 \
      --layers "$layers" --heads 32 --kv-heads 4 --max-positions 2048 --seed 0 --external-data -o "$model" \
      --tokenizer-out "$tok"; then
    rows+=("| generate (dynamo export pattern, external data) | - | $rss_mb | $wall_s | $cpu_s | $(( $(stat -c %s "$model.data") / 1000000 )) MB | - |")
  else
    cat "$dir/generate.log" >&2
    exit 1
  fi
fi
[ -f "$tok" ] || "$q" generate --arch llama --vocab 256 --hidden 8 --layers 1 --heads 2 -o "$dir/tok-only.onnx" --tokenizer-out "$tok" >/dev/null
[ -f "$calib" ] || cat "$root/README.md" "$root"/docs/*.md >"$calib"  # byte-level ids: any text will do
params=$("$q" inspect "$model" | sed -n 's/.*parameters: \([0-9]*\).*/\1/p')

# 8 token ids as an int64 [1, 8] .npy for ONNX Runtime.
ids="$dir/ids8.npy"
have_ort=0
if command -v node >/dev/null && [ -d "$QC_ORT_NODE_MODULES/onnxruntime-node" ]; then
  have_ort=1
  node -e '
    const fs = require("fs");
    let header = "{\x27descr\x27: \x27<i8\x27, \x27fortran_order\x27: False, \x27shape\x27: (1, 8), }";
    while ((10 + header.length + 1) % 64) header += " ";
    header += "\n";
    const head = Buffer.alloc(10);
    Buffer.from([0x93]).copy(head, 0); head.write("NUMPY", 1, "latin1"); head[6] = 1; head[7] = 0;
    head.writeUInt16LE(header.length, 8);
    const data = Buffer.alloc(64);
    [72, 101, 108, 108, 111, 44, 32, 119].forEach((v, i) => data.writeBigInt64LE(BigInt(v), 8 * i));
    fs.writeFileSync(process.argv[1], Buffer.concat([head, Buffer.from(header, "latin1"), data]));
  ' "$ids"
fi

# name | options | budget (MiB)
cases=(
  "absmax|--pass absmax --bits 4|1536"
  "gptq|--pass gptq --bits 4 --nsamples 8 --seqlen 128 --calib $calib --tokenizer $tok|3072"
  "smoothquant|--pass smoothquant --nsamples 8 --seqlen 128 --calib $calib --tokenizer $tok|3072"
  "outlier-split|--pass outlier-split --nsamples 8 --seqlen 128 --calib $calib --tokenizer $tok|3072"
  "awq|--pass awq --bits 4 --nsamples 8 --seqlen 128 --calib $calib --tokenizer $tok|3072"
)
for c in "${cases[@]}"; do
  IFS='|' read -r name opts budget <<<"$c"
  [[ "$name" =~ $rows_filter ]] || continue
  out="$dir/out-$name.onnx"
  rm -f "$out" "$out.data"
  # shellcheck disable=SC2086
  if measure "$dir/$name.log" "$q" "$model" $opts -o "$out"; then
    size=$(( ($(stat -c %s "$out") + $(stat -c %s "$out.data" 2>/dev/null || echo 0)) / 1000000 ))
    verdict="ok"
    [ "$rss_mb" -le "$budget" ] || { verdict="OVER $budget MiB"; status=1; }
    ort="not run (onnxruntime-node not found)"
    if [ "$have_ort" = 1 ]; then
      rm -rf "$dir/ort-$name" && mkdir -p "$dir/ort-$name"
      if /usr/bin/time -v -o "$dir/ort-$name.time" node "$root/tools/ort_run.js" "$out" "$dir/ort-$name" "input_ids=$ids" \
          >"$dir/ort-$name.log" 2>&1 && [ -f "$dir/ort-$name/logits.npy" ]; then
        ort="loads, runs 8 tokens ($(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$dir/ort-$name.time"))"
      else
        ort="FAILED: $(tail -1 "$dir/ort-$name.log")"
        status=1
      fi
    fi
    rows+=("| $name: \`qconvert MODEL.onnx $opts\` | $verdict | $rss_mb | $wall_s | $cpu_s | $size MB | $ort |")
  else
    rows+=("| $name | FAILED: $(tail -1 "$dir/$name.log") | $rss_mb | $wall_s | $cpu_s | - | - |")
    status=1
  fi
done

echo "model: $model ($params parameters, $(( $(stat -c %s "$model.data") / 1000000 )) MB of float32 external data)"
echo
echo "| run | within budget | peak RSS (MiB) | wall (s) | CPU (s) | artifact | ONNX Runtime (peak RSS, MiB) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
exit $status
