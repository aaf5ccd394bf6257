#!/usr/bin/env bash
# Regenerates the seed corpus of fuzz/corpus/ from real files: small models written by
# `qconvert generate` in each exporter pattern, quantized artifacts and their --report files,
# real models from ../shared with their weights stripped (shrink_onnx), trimmed real
# tokenizer.json files (fuzz/trim_tokenizers.py), and real and hand-written .npy files.
# Needs build/qconvert (scripts/build.sh) and build-fuzz/fuzz/shrink_onnx (scripts/fuzz.sh --build).
# Every generator is seeded, so re-running rewrites the same files but for the reports' timings.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${QC_SHARED_DIR:-$root/../shared}"
q="$root/build/qconvert"
shrink="$root/build-fuzz/fuzz/shrink_onnx"
[ -x "$q" ] || { echo "make_corpus: build qconvert first (scripts/build.sh)" >&2; exit 1; }
[ -x "$shrink" ] || cmake --build "$root/build-fuzz" --target shrink_onnx
out="$root/fuzz/corpus"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"/{onnx_reader,tokenizer,npy,report}

# --- ONNX: one tiny decoder per architecture and exporter style, kept under the 64 KiB max_len.
small=(--vocab 32 --hidden 16 --layers 1 --heads 2 --intermediate 32 --max-positions 16)
for arch in llama gpt2 phi opt gpt_neox gemma qwen2 gpt_neo; do
  "$q" generate --arch "$arch" "${small[@]}" -o "$out/onnx_reader/gen_${arch}_dynamo.onnx" >/dev/null
done
"$q" generate --arch llama --style torchscript "${small[@]}" -o "$out/onnx_reader/gen_llama_torchscript.onnx" >/dev/null
"$q" generate --arch llama --style ort_fused "${small[@]}" -o "$out/onnx_reader/gen_llama_ort_fused.onnx" >/dev/null
"$q" generate --arch gpt2 --style torchscript --mask-and-positions "${small[@]}" -o "$out/onnx_reader/gen_gpt2_torchscript_mask.onnx" >/dev/null
# External data: the fuzz target's model directory holds a 64 KiB model.onnx.data, so the
# offsets of this seed (all under 16 KiB) stay in range.
"$q" generate --arch llama "${small[@]}" --kv-heads 1 --external-data -o "$tmp/model.onnx" >/dev/null
cp "$tmp/model.onnx" "$out/onnx_reader/gen_llama_external_data.onnx"

# Quantized artifacts (MatMulNBits, MatMulInteger) and the reports that describe them.
"$q" generate --arch llama --vocab 256 --hidden 16 --layers 1 --heads 2 --kv-heads 1 --intermediate 32 \
  --max-positions 64 --mask-and-positions --tokenizer-out "$tmp/tok.json" -o "$tmp/calib.onnx" >/dev/null
if [ -f "$shared/models/docs-llama-12m/docs-val.txt" ]; then
  head -c 3000 "$shared/models/docs-llama-12m/docs-val.txt" >"$tmp/calib.txt"
else
  yes "The quick brown fox jumps over the lazy dog." | head -c 3000 >"$tmp/calib.txt"
fi
calib=(--calib calib.txt --tokenizer tok.json --nsamples 2 --seqlen 32 --no-progress)  # relative: run in $tmp
cp "$out/onnx_reader/gen_llama_dynamo.onnx" "$tmp/llama.onnx"
(cd "$tmp"
 "$q" llama.onnx --pass absmax --bits 4 --group-size 16 --report r_absmax.json -o absmax.onnx --no-progress
 "$q" llama.onnx --pass zeropoint --bits 3 --group-size -1 --report r_zeropoint.json -o zeropoint.onnx --no-progress
 "$q" calib.onnx --pass gptq --bits 4 --group-size 16 --act-order "${calib[@]}" --eval calib.txt --eval-windows 2 \
   --report r_gptq_eval.json -o gptq.onnx
 "$q" calib.onnx --pass awq,gptq --bits 2 --group-size 16 "${calib[@]}" --report r_awq_gptq.json -o awq_gptq.onnx
 "$q" calib.onnx --pass smoothquant "${calib[@]}" --report r_smoothquant.json -o smoothquant.onnx
 "$q" calib.onnx --pass outlier-split "${calib[@]}" --report r_outlier_split.json -o outlier_split.onnx
) >/dev/null
for f in absmax zeropoint gptq smoothquant outlier_split; do cp "$tmp/$f.onnx" "$out/onnx_reader/quant_$f.onnx"; done
for f in "$tmp"/r_*.json; do cp "$f" "$out/report/$(basename "$f")"; done

# Real exports with the weights stripped: Optimum KV-cache decoders (the merged one has If
# subgraphs) and the stories260k Llama with external data.
for m in llama/model.onnx llama/model_merged.onnx gpt2/model_merged.onnx; do
  "$shrink" "$root/tests/data/kv/$m" "$out/onnx_reader/real_kv_$(dirname "$m")_$(basename "$m" .onnx).onnx" >/dev/null
done
if [ -f "$shared/models/stories260k/stories260k.onnx" ]; then
  "$shrink" "$shared/models/stories260k/stories260k.onnx" "$out/onnx_reader/real_stories260k.onnx" >/dev/null
fi

# --- tokenizer.json: trimmed real files and variants in other published styles.
if [ -f "$shared/models/docs-gpt2-10m/tokenizer.json" ]; then
  (cd "$out/tokenizer" && python3 "$root/fuzz/trim_tokenizers.py" "$shared/models")
fi
cp "$tmp/tok.json" "$out/tokenizer/generated_bytelevel.json"

# --- .npy: real id files, then one small file per dtype and header version.
cp "$root/tests/data/kv/llama/input_ids.npy" "$out/npy/real_kv_input_ids.npy"
cp "$root/tests/data/kv/llama/decode_logits.npy" "$out/npy/real_kv_decode_logits.npy"
[ -f "$shared/models/docs-gpt2-10m/sample_input_ids.npy" ] &&
  cp "$shared/models/docs-gpt2-10m/sample_input_ids.npy" "$out/npy/real_sample_input_ids.npy"
(cd "$out/npy" && python3 "$root/fuzz/write_npy_seeds.py")
chmod 644 "$out"/*/*
du -sh "$out"/*
