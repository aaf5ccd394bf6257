#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (what CI runs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
export QC_ORT_NODE_MODULES="$root/third_party/ort-node/node_modules"
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" --label-exclude gpu
