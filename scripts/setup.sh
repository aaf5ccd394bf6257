#!/usr/bin/env bash
# Installs everything qconvert needs on a fresh Debian 12 machine. Idempotent: re-running is cheap.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libonnx-dev libprotobuf-dev protobuf-compiler   # ONNX protobuf classes
  libeigen3-dev libomp-dev                        # GEMM and threading
  libcli11-dev nlohmann-json3-dev libpcre2-dev    # CLI, JSON, GPT-2 pre-tokenizer regex
  libgtest-dev googletest                         # tests
  libonnx-testdata                                # ONNX backend node tests (conformance)
  clang libclang-rt-dev                           # libFuzzer, ASan, UBSan (scripts/fuzz.sh)
)
# Node.js runs ONNX Runtime (npm onnxruntime-node), the independent reference. A machine may
# already have it from another source (whose nodejs package bundles npm), so check the commands.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ONNX Runtime's CPU build from the npm registry: the independent reference for tests and
# benchmarks. --ignore-scripts skips its post-install download of GPU binaries (not needed).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ort_dir="$root/third_party/ort-node"
if [ ! -f "$ort_dir/node_modules/onnxruntime-node/package.json" ] && command -v npm >/dev/null; then
  mkdir -p "$ort_dir"
  if ! (cd "$ort_dir" && npm install --silent --no-audit --no-fund --ignore-scripts onnxruntime-node@1.30.0 >/dev/null 2>&1); then
    echo "setup: warning: could not install onnxruntime-node; ORT comparisons will be skipped" >&2
  fi
fi
