#!/usr/bin/env bash
# lsgpt against an earlier revision of itself, in one run: builds BASE_REV
# (from `git archive`, so the repository is not touched) and the working tree
# side by side, runs each COMMAND on both builds alternately, ROUNDS times
# (base first in odd rounds, new first in even ones, so a steady drift
# favours neither), and summarises every number the commands print
# (bench/ab_summary.py: the mean on each side, the change, each side's
# spread; every JSON line or table row a command prints is a result of its
# own). Interleaving is what makes a change of a few percent readable:
# on the lent H200s one binary timed in two calls moved by up to 10%, while
# alternating runs in one call agreed within about 2% (docs/BENCHMARKS.md,
# "Attention: exp2 on the special-function unit, two fixed slots for band
# items").
#
# Usage: bench/ab_revisions.sh BASE_REV OUT_DIR ROUNDS COMMAND...
#   COMMAND: a shell command in which {build} stands for the build folder,
#     e.g. '{build}/bench_cuda_attention B=16 T=1024 heads=12 head_dim=64
#     local=11 window=100' or '{build}/bench_train --device cuda --steps 20
#     --warmup 5 --case configs/gpt2-small.json:16:1024'. It runs from the
#     working tree's root, whichever side. Each {build}/NAME whose NAME has
#     no dot is a program to build (so '--json {build}/x.json' is only a
#     path). The numbers are checked after the first round, so a command
#     that prints none stops the run there.
#   CMAKE_ARGS (environment): extra configure flags for both builds, split
#     at spaces, e.g. -DLSGPT_CUDA=ON. The build folders keep CMake's cache:
#     a flag left out later keeps its last value there.
# Writes OUT_DIR/base-src, base-build, new-build (kept: a second A/B
# against the same revision rebuilds only what changed; another revision
# starts base-build afresh), the build logs, ab.jsonl (every run's output)
# and summary.md.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 BASE_REV OUT_DIR ROUNDS COMMAND..." >&2
  exit 2
fi
base_rev=$1 out=$2 rounds=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
here="$root/bench"

if ! [[ $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "error: ROUNDS must be a positive whole number, not '$rounds'" >&2
  exit 2
fi
if ! git -C "$root" rev-parse --verify --quiet "$base_rev^{commit}" >/dev/null; then
  echo "error: '$base_rev' is not a revision of the repository at $root" >&2
  exit 2
fi
targets=()
for command in "$@"; do
  if [[ $command != *"{build}"* ]]; then
    echo "error: the command '$command' does not name {build}, so both sides would run the same program" >&2
    exit 2
  fi
  rest=$command
  while [[ $rest == *"{build}/"* ]]; do
    rest=${rest#*"{build}/"}
    name=${rest%%[!A-Za-z0-9_-]*}
    [[ -n $name && ${rest:${#name}:1} != [./] && " ${targets[*]} " != *" $name "* ]] &&
      targets+=("$name")
  done
done
if [[ ${#targets[@]} -eq 0 ]]; then
  echo "error: no command runs a program as {build}/NAME, so there is nothing to build" >&2
  exit 2
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
read -r -a cmake_args <<<"${CMAKE_ARGS:-}"

# build SIDE SOURCE_DIR: configure and build the targets into OUT_DIR/SIDE-build.
build() {
  local side=$1 src=$2 log="$out/build-$1.log"
  echo "== building $side ($src) into $out/$side-build: ${targets[*]}"
  if ! { cmake -S "$src" -B "$out/$side-build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
           "${cmake_args[@]}" && cmake --build "$out/$side-build" -j "$(nproc)" --target "${targets[@]}"; } \
         >"$log" 2>&1; then
    echo "error: the $side build failed; its log is $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

# git archive stamps every file with the commit's time, so sources of
# another revision can look older than the objects already built: ninja
# would keep them. The base build remembers its revision.
base_hash=$(git -C "$root" rev-parse "$base_rev^{commit}")
if [[ "$(cat "$out/base-build/ab-revision" 2>/dev/null)" != "$base_hash" ]]; then
  rm -rf "$out/base-build"
fi
rm -rf "$out/base-src" && mkdir -p "$out/base-src"
git -C "$root" archive "$base_hash" | tar -x -C "$out/base-src"
build base "$out/base-src"
echo "$base_hash" >"$out/base-build/ab-revision"
build new "$root"

results="$out/ab.jsonl"
: >"$results"
echo "== $rounds rounds of $# commands, base $(git -C "$root" rev-parse --short "$base_rev") against the working tree"
cd "$root"
for ((r = 1; r <= rounds; ++r)); do
  n=0
  sides=(base new)
  ((r % 2 == 0)) && sides=(new base)
  for command in "$@"; do
    n=$((n + 1))
    for side in "${sides[@]}"; do
      line=${command//"{build}"/$(printf %q "$out/$side-build")}
      if output=$(bash -c "$line" 2>&1); then status=0; else status=$?; fi
      if ((status != 0)); then
        echo "error: round $r, $side: '$line' exited with $status (the runs before it are in $results); its output ends:" >&2
        tail -n 20 <<<"$output" >&2
        exit 1
      fi
      python3 -c 'import json, sys; print(json.dumps({"command": int(sys.argv[1]), "text": sys.argv[2], "side": sys.argv[3], "round": int(sys.argv[4]), "output": sys.stdin.read()}))' \
        "$n" "$command" "$side" "$r" <<<"$output" >>"$results"
    done
  done
  echo "round $r of $rounds done"
  if ((r == 1)) && ! python3 "$here/ab_summary.py" "$results" >/dev/null; then
    echo "error: the first round's output above has no numbers to compare; stopped" >&2
    exit 1
  fi
done
python3 "$here/ab_summary.py" "$results" -o "$out/summary.md"
