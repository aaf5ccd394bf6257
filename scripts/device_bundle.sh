#!/usr/bin/env bash
# Packs built binaries for a GPU machine that has CUDA but none of our Debian libraries: each
# binary gzipped, the shared libraries `ldd` resolves outside glibc/libstdc++/CUDA gzipped under
# lib/, and a setup.sh that unpacks them and sets LD_LIBRARY_PATH. The bundle is a folder of the
# checkout that git ignores (.device/NAME), to be carried along with the tree.
#
# Usage: scripts/device_bundle.sh NAME [BINARY ...]      (default binaries: build/qconvert
#        build/runtime_cuda_test, and build/cuda_gemv_bench when built)
# On the GPU machine:  source .device/NAME/setup.sh && .device/NAME/qconvert eval ... --device cuda
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="${1:?usage: scripts/device_bundle.sh NAME [BINARY ...]}"
shift
bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
  bins=("$root/build/qconvert" "$root/build/runtime_cuda_test")
  [ -x "$root/build/cuda_gemv_bench" ] && bins+=("$root/build/cuda_gemv_bench")
fi
out="$root/.device/$name"
case "$(git -C "$root" check-ignore -q "$out" && echo ignored)" in
  ignored) ;;
  *) echo "device_bundle: $out is not ignored by git" >&2; exit 1 ;;
esac
# Replace what an earlier bundle left (binaries, libraries, unpacked copies); keep other files a
# session put there (run scripts, models).
rm -rf "$out/lib"
for bin in "${bins[@]}"; do rm -f "$out/$(basename "$bin")" "$out/$(basename "$bin").gz"; done
mkdir -p "$out/lib"
for bin in "${bins[@]}"; do
  # Symbols stripped: the bundle travels within the run tool's 64 MiB per call.
  strip -o "$out/.stripped" "$bin"
  gzip -c "$out/.stripped" >"$out/$(basename "$bin").gz"
  rm -f "$out/.stripped"
  # Libraries the machine lacks: everything but the C/C++ runtime and CUDA's own.
  libs="$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' |
    grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|ld-linux[^/]*|libcuda|libcudart|libcublas[^/]*)\.so' || true)"
  for lib in $libs; do
    [ -f "$out/lib/$(basename "$lib").gz" ] || gzip -c "$lib" >"$out/lib/$(basename "$lib").gz"
  done
done
cat >"$out/setup.sh" <<'EOF'
# Unpacks this bundle's binaries and libraries (once) and puts them on the paths; source it.
bundle="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for f in "$bundle"/*.gz "$bundle"/lib/*.gz; do
  [ -f "${f%.gz}" ] || gunzip -k "$f"
done
for f in "$bundle"/*; do case "$f" in *.gz | *.sh | */lib) ;; *) chmod +x "$f" ;; esac; done
export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PATH="$bundle:$PATH"
export QCONVERT="$bundle/qconvert"
EOF
du -sh "$out"
ls "$out" "$out/lib"
