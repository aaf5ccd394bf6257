#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (what CI runs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
export QC_ORT_NODE_MODULES="$root/third_party/ort-node/node_modules"
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" --label-exclude gpu
# Fuzz smoke run: the checked-in corpus and every regression input, then a few seconds of fuzzing
# per parser (ASan+UBSan); a crash, leak or hang fails the suite. Long runs: docs/FUZZING.md.
"$root/scripts/fuzz.sh" --smoke
