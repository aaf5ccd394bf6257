#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (what CI runs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
"$root/scripts/build.sh"
export QC_ORT_NODE_MODULES="$root/third_party/ort-node/node_modules"
# Tests run side by side (one per core), each with an OpenMP team: spinning idle threads would
# starve the other test's team (one pass test took 160 s instead of 1 s).
export OMP_WAIT_POLICY=passive
cd "$root/build"
ctest --output-on-failure --parallel "$(nproc)" --label-exclude gpu
# Fuzz smoke run: the checked-in corpus and every regression input, then a few seconds of fuzzing
# per parser (ASan+UBSan); a crash, leak or hang fails the suite. Long runs: docs/FUZZING.md.
"$root/scripts/fuzz.sh" --smoke
