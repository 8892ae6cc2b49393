#!/usr/bin/env bash
# Builds lsgpt with its tests and runs them all (CPU). GPU tests skip with a
# message when no CUDA GPU is present; the safetensors fuzzer runs for a
# bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --fuzz --tests
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLSGPT_BUILD_TESTS=ON >/dev/null
cmake --build build -j "$(nproc)"
bash scripts/fuzz.sh "${LSGPT_FUZZ_SECONDS:-60}"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  (cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900)
else
  # No GPU: the CUDA tests (every name with "Cuda" or "cuda") only check
  # that they skip, which they do in one process rather than ctest's one
  # each (about 340 processes: 13 s on 2 cores, 1.5 minutes when each still
  # loaded cuBLASLt at its start).
  (cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900 -E '[Cc]uda')
  echo "CUDA tests (no GPU here: each must skip with its message), in one process:"
  (cd build && LSGPT_CACHE_DIR="$PWD/test-cache" timeout 900 ./lsgpt_tests \
    --gtest_filter='*Cuda*:*cuda*' --gtest_brief=1)
fi
