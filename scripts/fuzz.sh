#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/*.cpp) with clang-14, AddressSanitizer
# and UBSan, and runs each for a share of a bounded time on seeds that the
# targets generate themselves (valid files from the real writers plus broken
# variants). Exits non-zero when any target crashes, leaks or trips a sanitizer;
# the input that did it is kept under the build directory's artifacts/.
#
#   scripts/fuzz.sh [SECONDS]     total fuzzing time over all targets (default 60)
#
# LSGPT_FUZZ_BUILD_DIR overrides the build directory (default: build-fuzz/).
set -euo pipefail

total_seconds="${1:-60}"
if ! [[ "$total_seconds" =~ ^[0-9]+$ ]] || (( total_seconds < 1 )); then
  echo "usage: scripts/fuzz.sh [SECONDS]  (a positive whole number, default 60)" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LSGPT_FUZZ_BUILD_DIR:-$root/build-fuzz}"

# clang's libFuzzer runtime lives in libclang-rt-14-dev; install only what is missing.
missing=()
for pkg in clang-14 libclang-rt-14-dev libomp-14-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if (( ${#missing[@]} )); then
  echo "fuzz.sh: installing ${missing[*]}"
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The library itself is instrumented (fuzzer-no-link) so coverage guides the
# search through the parsers, not just through the entry points.
sanitize="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang-14 CXX=clang++-14 cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLSGPT_FUZZ=ON -DLSGPT_CUDA=OFF \
  -DLSGPT_BUILD_TESTS=OFF -DLSGPT_BUILD_BENCH=OFF -DLSGPT_NATIVE=OFF \
  "-DCMAKE_C_FLAGS=$sanitize" "-DCMAKE_CXX_FLAGS=$sanitize" >/dev/null

targets=()
for src in "$root"/tests/fuzz/*.cpp; do targets+=("$(basename "$src" .cpp)"); done
if (( ${#targets[@]} == 0 )); then
  echo "fuzz.sh: no fuzz targets in tests/fuzz/" >&2
  exit 1
fi
ninja -C "$build" "${targets[@]}"

per_target=$(( total_seconds / ${#targets[@]} ))
(( per_target >= 1 )) || per_target=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=()
for target in "${targets[@]}"; do
  seeds="$build/seeds/$target"
  corpus="$build/corpus/$target"
  artifacts="$build/artifacts"
  rm -rf "$seeds" "$corpus"
  mkdir -p "$seeds" "$corpus" "$artifacts"
  LSGPT_FUZZ_WRITE_SEEDS="$seeds" "$build/$target" >/dev/null
  echo "fuzz.sh: $target for ${per_target}s on $(ls "$seeds" | wc -l) seeds"
  if ! "$build/$target" "$corpus" "$seeds" -max_total_time="$per_target" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$artifacts/$target-" 2>"$build/$target.log"; then
    tail -n 60 "$build/$target.log" >&2
    failed+=("$target")
  else
    grep -E "^stat::number_of_executed_units|^Done" "$build/$target.log" || true
  fi
done

if (( ${#failed[@]} )); then
  echo "fuzz.sh: FAILED: ${failed[*]} (inputs in $build/artifacts/, logs in $build/*.log)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${per_target}s each without a crash"
