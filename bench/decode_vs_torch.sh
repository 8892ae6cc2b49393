#!/usr/bin/env bash
# GPT-2 small inference (random weights, 32768 positions, greedy) on one GPU:
# lsgpt's engine (BUILD/bench_decode) and a plain-PyTorch peer with a static
# KV cache and CUDA graphs (bench/decode_torch.py), one after the other in
# one run, on the same GPU: batch {1, 8, 64} x context {1k, 4k, 16k, 32k} x
# {MHSA, LS 11/12 local w = 100}. Decode ms/token and tokens/s, prefill ms
# and tokens/s (one sequence), KV-cache MiB and peak memory.
#
# Writes OUT_DIR/lsgpt.jsonl, OUT_DIR/torch.jsonl and OUT_DIR/decode.md (the
# merged tables, bench/decode_summary.py), and prints decode.md.
#
# Usage: bench/decode_vs_torch.sh BUILD_DIR OUT_DIR
#   BUILD_DIR: a build configured with -DLSGPT_CUDA=ON (holds bench_decode).
#   Needs python3 with PyTorch (CUDA) and FlexAttention (torch >= 2.5).
# Environment: STEPS (timed steps, 64), WARMUP (8), BATCHES ("1 8 64"),
#   CONTEXTS ("1024 4096 16384 32768"), MODES ("ls mhsa"), TORCH_ARGS (extra
#   arguments for decode_torch.py, e.g. "--no-check").
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$1 out=$2
if [[ ! -x "$build/bench_decode" ]]; then
  echo "error: $build/bench_decode not found; build with -DLSGPT_CUDA=ON first" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
steps=${STEPS:-64} warmup=${WARMUP:-8}
batches=${BATCHES:-1 8 64} contexts=${CONTEXTS:-1024 4096 16384 32768} modes=${MODES:-ls mhsa}
mkdir -p "$out"
rm -f "$out/lsgpt.jsonl" "$out/torch.jsonl" "$out/decode.md"  # no stale lines from an earlier run
device=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
today=$(date -u +%F)
echo "== device: ${device:-unknown}, $today"
start=$SECONDS

echo "== lsgpt (bench_decode)"
"$build/bench_decode" --device cuda --modes "${modes// /,}" --batch "${batches// /,}" \
  --context "${contexts// /,}" --steps "$steps" --warmup "$warmup" --json "$out/lsgpt.jsonl" \
  2>&1 | tee "$out/lsgpt.log" || echo "warning: bench_decode failed (see $out/lsgpt.log)" >&2
echo "== lsgpt took $((SECONDS - start)) s"

echo "== PyTorch (bench/decode_torch.py)"
t1=$SECONDS
# shellcheck disable=SC2086
PYTHONUNBUFFERED=1 python3 "$here/decode_torch.py" --modes $modes --batch $batches \
  --context $contexts --steps "$steps" --warmup "$warmup" --json "$out/torch.jsonl" \
  ${TORCH_ARGS:-} 2>&1 | tee "$out/torch.log" || echo "warning: decode_torch.py failed (see $out/torch.log)" >&2
echo "== PyTorch took $((SECONDS - t1)) s"

python3 "$here/decode_summary.py" "$out/lsgpt.jsonl" "$out/torch.jsonl" \
  --title "GPT-2 small decoding, ${device:-unknown GPU}, $today" -o "$out/decode.md"
echo
cat "$out/decode.md"
echo "== total $((SECONDS - start)) s; tables in $out/decode.md"
