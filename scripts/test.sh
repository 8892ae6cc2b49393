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
(cd build && ctest --output-on-failure -j "$(nproc)" --timeout 900)
