#!/usr/bin/env bash
# Load benchmark of `lsgpt serve` on one GPU, over loopback: a GPT-2 small
# shaped model (random weights, 32768 positions) as LS (11 of 12 heads local,
# w = 100) and as MHSA; contexts 4096 and 32768 with prompts that fill them
# but for the new tokens; 1 to 256 concurrent streams (bench/bench_serve.cpp).
# Per (mode, context, concurrency): output tokens/s, time to first token and
# inter-token latency (median, p99); per (mode, context): the slots the server
# fixed at start (with 90% of free GPU memory), i.e. the most concurrent
# sequences of that context it holds. Builds nothing.
#
# Writes OUT_DIR/serve.jsonl (one line per level), OUT_DIR/slots.jsonl,
# OUT_DIR/serve.md (tables), the server logs; prints serve.md.
#
# Usage: bench/serve_load.sh BUILD_DIR OUT_DIR
#   BUILD_DIR: a build with lsgpt and bench_serve (CUDA for DEVICE=cuda).
# Environment: DEVICE (cuda), CONTEXTS ("4096 32768"), MODES ("ls mhsa"),
#   CONCURRENCY ("1 4 16 64 256"), MAX_TOKENS (128), REQUESTS (1 per stream),
#   N_LAYER/N_HEAD/D_MODEL (12/12/768; tiny values try it on the CPU),
#   MAX_BATCH (0: from free memory), EXTRA (more lsgpt serve flags).
# CPU smoke run: DEVICE=cpu N_LAYER=1 N_HEAD=2 D_MODEL=32 CONTEXTS=256 \
#   CONCURRENCY="1 4" MAX_TOKENS=8 MAX_BATCH=4 bench/serve_load.sh build-cpu out/serve-cpu
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$1 out=$2
for exe in lsgpt bench_serve; do
  if [[ ! -x "$build/$exe" ]]; then
    echo "error: $build/$exe not found; build first (scripts/build.sh)" >&2
    exit 1
  fi
done
device=${DEVICE:-cuda} contexts=${CONTEXTS:-4096 32768} modes=${MODES:-ls mhsa}
concurrency=${CONCURRENCY:-1 4 16 64 256} max_tokens=${MAX_TOKENS:-128} requests=${REQUESTS:-1}
n_layer=${N_LAYER:-12} n_head=${N_HEAD:-12} d_model=${D_MODEL:-768} max_batch=${MAX_BATCH:-0}
max_context=0
for c in $contexts; do ((c > max_context)) && max_context=$c; done
mkdir -p "$out"
rm -f "$out/serve.jsonl" "$out/slots.jsonl" "$out/serve.md"
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
echo "== device: ${gpu:-$device}, $(date -u +%F)"
start=$SECONDS
server_pid=
cleanup() { [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

for mode in $modes; do
  n_local=$((n_head - 1)); [[ $mode == mhsa ]] && n_local=0
  ckpt="$out/model-$mode.ckpt"
  "$build/bench_serve" --write-checkpoint "$ckpt" --n-layer "$n_layer" --n-head "$n_head" \
    --d-model "$d_model" --seq-len "$max_context" --n-local "$n_local" --window 100
  for context in $contexts; do
    label="$mode-$context"
    log="$out/server-$label.log"
    # shellcheck disable=SC2086
    "$build/lsgpt" serve --checkpoint "$ckpt" --device "$device" --port 0 --context "$context" \
      --max-batch "$max_batch" --max-queue 1024 --max-body-bytes 16000000 \
      --shutdown-timeout 30 ${EXTRA:-} >"$log" 2>&1 &
    server_pid=$!
    port=
    for _ in $(seq 1 1200); do  # up to 10 min for loading and graph-free start-up
      port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
      [[ -n "$port" ]] && break
      kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; echo "error: lsgpt serve died" >&2; exit 1; }
      sleep 0.5
    done
    [[ -n "$port" ]] || { cat "$log" >&2; echo "error: lsgpt serve did not start" >&2; exit 1; }
    cat "$log"
    slots=$(sed -n 's/.*: slots \([0-9]*\) of.*/\1/p' "$log")
    fits=$(sed -n 's/.*fits \([0-9]*\) sequences (MHSA: \([0-9]*\)).*/\1 \2/p' "$log")
    echo "{\"label\":\"$label\",\"mode\":\"$mode\",\"context\":$context,\"slots\":${slots:-null},\"fits\":${fits%% *},\"fits_if_mhsa\":${fits##* }}" \
      | sed 's/:,/:null,/g; s/:}/:null}/g' >>"$out/slots.jsonl"
    prompt=$((context - max_tokens))
    # shellcheck disable=SC2086
    "$build/bench_serve" --port "$port" --concurrency "${concurrency// /,}" \
      --prompt-tokens "$prompt" --max-tokens "$max_tokens" --requests "$requests" \
      --json "$out/serve.jsonl" --label "$label" || echo "warning: failed requests in $label" >&2
    curl -s "http://127.0.0.1:$port/metrics" >"$out/metrics-$label.txt" 2>/dev/null || true
    kill -TERM "$server_pid"
    status=0
    wait "$server_pid" || status=$?
    server_pid=
    [[ $status -eq 0 ]] || echo "warning: lsgpt serve exited with $status after SIGTERM ($log)" >&2
  done
  rm -f "$ckpt"
done

python3 - "$out" "${gpu:-$device}" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = [json.loads(l) for l in (out / "serve.jsonl").read_text().splitlines() if l.strip()]
slots = [json.loads(l) for l in (out / "slots.jsonl").read_text().splitlines() if l.strip()]
md = [f"## lsgpt serve under load, {sys.argv[2]}", "",
      "| model | context | streams | requests | failed | output tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
      "|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    mode, ctx = r["label"].rsplit("-", 1)
    md.append(f"| {mode} | {ctx} | {r['concurrency']} | {r['requests']} | {r['failed']} | "
              f"{r['output_tokens_per_s']} | {r['ttft_ms_p50']} | {r['ttft_ms_p99']} | "
              f"{r['itl_ms_p50']} | {r['itl_ms_p99']} |")
md += ["", "| model | context | slots (sequences held at once) | fits (90% of free memory) | same shape as MHSA |",
       "|---|---|---|---|---|"]
for s in slots:
    md.append(f"| {s['mode']} | {s['context']} | {s['slots']} | {s['fits']} | {s['fits_if_mhsa']} |")
(out / "serve.md").write_text("\n".join(md) + "\n")
PY
echo
cat "$out/serve.md"
echo "== total $((SECONDS - start)) s; tables in $out/serve.md"
