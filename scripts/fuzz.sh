#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan+UBSan) in build-fuzz/ and runs each in turn.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   fuzz each target SECONDS (default 60), one at a time
#   scripts/fuzz.sh --smoke                 CI: replay corpus + regression inputs, then 15 s each
#   scripts/fuzz.sh --build                 only build
#
# QC_FUZZ_BUILD_DIR overrides the build directory, QC_FUZZ_SMOKE_SECONDS the smoke run's seconds.
#
# Targets: onnx_reader_fuzzer tokenizer_fuzzer npy_fuzzer report_fuzzer. New inputs the fuzzer finds
# go to build-fuzz/corpus/TARGET (not the repository); crashes, leaks and hangs are written to
# build-fuzz/artifacts/TARGET/ and make the script exit 1. docs/FUZZING.md has the workflow.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QC_FUZZ_BUILD_DIR:-$root/build-fuzz}"
all_targets=(onnx_reader_fuzzer tokenizer_fuzzer npy_fuzzer report_fuzzer)

seconds=60
mode=fuzz
case "${1:-}" in
  --smoke) mode=smoke; seconds="${QC_FUZZ_SMOKE_SECONDS:-15}"; shift ;;
  --build) mode=build; shift ;;
  ''|*[!0-9]*) ;;
  *) seconds="$1"; shift ;;
esac
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

# -O1 with assertions on (no NDEBUG): nlohmann-json's and our own checks stay active.
cmake -S "$root" -B "$build" -G Ninja -DQC_FUZZ=ON -DQC_BUILD_TESTS=OFF \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null
cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]}"
[ "$mode" = build ] && exit 0

# Largest input per format: a little above the biggest seed, so mutations stay fast.
max_len() {
  case "$1" in
    onnx_reader_fuzzer) echo 65536 ;;
    tokenizer_fuzzer) echo 16384 ;;
    npy_fuzzer) echo 4096 ;;
    report_fuzzer) echo 16384 ;;
  esac
}
dict() {
  case "$1" in
    onnx_reader_fuzzer) echo "$root/fuzz/dicts/onnx.dict" ;;
    tokenizer_fuzzer) echo "$root/fuzz/dicts/tokenizer.dict" ;;
    npy_fuzzer) echo "$root/fuzz/dicts/npy.dict" ;;
    report_fuzzer) echo "$root/fuzz/dicts/report.dict" ;;
  esac
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=()
for t in "${targets[@]}"; do
  seeds="$root/fuzz/corpus/${t%_fuzzer}"
  regressions="$root/tests/data/fuzz/${t%_fuzzer}"
  work="$build/corpus/$t"
  artifacts="$build/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  dirs=("$work" "$seeds")
  [ -d "$regressions" ] && dirs+=("$regressions")
  flags=(-rss_limit_mb=2048 -timeout=10 -max_len="$(max_len "$t")" -dict="$(dict "$t")"
         -artifact_prefix="$artifacts/" -print_final_stats=1)
  if [ "$mode" = smoke ]; then
    # Smoke runs start from the checked-in inputs only, with a fixed seed, so CI runs alike; they
    # keep their new inputs apart so a long run's corpus survives.
    work="$build/smoke-corpus/$t"
    rm -rf "$work" && mkdir -p "$work"
    dirs[0]="$work"
    flags+=(-seed=1)
  fi
  echo "fuzz: $t for ${seconds}s (${dirs[*]#$root/})"
  log="$build/$t.log"
  if nice -n 19 "$build/fuzz/$t" "${flags[@]}" -max_total_time="$seconds" "${dirs[@]}" >"$log" 2>&1; then
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ *DONE)' "$log" | tr '\n' ' ' | sed 's/^/  /'
    echo
  else
    echo "fuzz: $t FAILED; log $log, inputs in $artifacts/:" >&2
    grep -E 'ERROR|SUMMARY|Test unit written|==[0-9]+==' "$log" | head -20 >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: findings in ${failed[*]} (reproduce: ${build#$root/}/fuzz/TARGET ARTIFACT)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} target(s) clean"
