#!/usr/bin/env bash
# Where one training step's GPU time goes, kernel by kernel, on a GPU box with
# Nsight Compute (ncu): times the step without the profiler (bench_train), then
# records every kernel's duration over two steps with ncu and sums them by
# kernel (bench/kernel_profile.py). Clocks and caches are left as they are.
#
# Usage: bench/profile_step.sh BUILD_DIR OUT_DIR [CONFIG:B:T ...]
#   default cases: GPT-2 small LS and MHSA, B = 16, T = 1024.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR [CONFIG:B:T ...]" >&2
  exit 2
fi
build=$1 out=$2
shift 2
cases=("$@")
[[ ${#cases[@]} -gt 0 ]] || cases=(configs/gpt2-small.json:16:1024 configs/gpt2-small-mhsa.json:16:1024)
[[ -x "$build/bench_train" ]] || { echo "error: $build/bench_train not found" >&2; exit 1; }
command -v ncu > /dev/null || { echo "error: ncu (Nsight Compute) is not on PATH" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
for c in "${cases[@]}"; do
  name=$(basename "${c%%:*}" .json)
  "$build/bench_train" --device cuda --steps 10 --warmup 2 --case "$c" --json "$out/$name.wall.json"
  step_ms=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[0]['step_ms'])" "$out/$name.wall.json")
  ncu --csv --print-units base --metrics gpu__time_duration.sum --clock-control none --cache-control none \
      "$build/bench_train" --device cuda --steps 1 --warmup 1 --case "$c" > "$out/$name.ncu.csv"
  echo "== $c"
  python3 "$here/kernel_profile.py" "$out/$name.ncu.csv" --steps 2 --step-ms "$step_ms" | tee "$out/$name.profile.md"
done
