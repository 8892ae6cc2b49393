#!/usr/bin/env bash
# lsgpt data-parallel training speed: GPT-2 small (LS 11/12 local heads,
# w = 100, and MHSA), B = 16 sequences per GPU, T = 1024, on 1 GPU and on
# 2 GPUs (mpirun -np 2, NCCL, ZeRO-1), on random tokens. Each run is a real
# `lsgpt train`; the steady-state tokens/s is the median of the per-step
# figures in metrics.jsonl after the first WARMUP steps. Prints and writes
# (OUT_DIR/multi_gpu.jsonl) one JSON line per run, then the 2-GPU speed-ups.
#
# Usage: bench/multi_gpu.sh BUILD_DIR OUT_DIR [STEPS] [WARMUP]
#   BUILD_DIR: a build with the CUDA backend (-DLSGPT_CUDA=ON) holding lsgpt.
#   Needs mpirun (OpenMPI), 2 GPUs and python3. Run as root it passes
#   --allow-run-as-root; NVLink multicast is left off (NCCL_NVLS_ENABLE=0).
set -euo pipefail
if [[ $# -lt 2 || $# -gt 4 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR [STEPS] [WARMUP]" >&2
  exit 2
fi
build=$1 out=$2 steps=${3:-40} warmup=${4:-10}
lsgpt="$build/lsgpt"
if [[ ! -x "$lsgpt" ]]; then
  echo "error: $lsgpt not found; build with -DLSGPT_CUDA=ON first" >&2
  exit 1
fi
command -v mpirun >/dev/null || { echo "error: mpirun not found (apt install openmpi-bin)" >&2; exit 1; }
gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
if ((gpus < 2)); then
  echo "error: this benchmark needs 2 GPUs; nvidia-smi lists $gpus" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/data"
export NCCL_NVLS_ENABLE=0
# One host needs no ssh; OpenMPI refuses to start where none is installed
# unless its remote-launch agent is named (any program that exists will do).
command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm_rsh_agent=false
root_flag=()
[[ $(id -u) -eq 0 ]] && root_flag=(--allow-run-as-root)

# Random GPT-2 tokens in lsgpt's token-file format (64-byte header, uint16).
python3 - "$out/data" <<'PY'
import os, random, struct, sys
def write(path, n, vocab=50257, seed=0):
    rng = random.Random(seed)
    header = b"LSGPTTOK" + struct.pack("<IIQ", 1, vocab, n)
    with open(path, "wb") as f:
        f.write(header.ljust(64, b"\0"))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(vocab) for _ in range(n))))
write(os.path.join(sys.argv[1], "train.bin"), 4_000_000, seed=1)
write(os.path.join(sys.argv[1], "valid.bin"), 40_000, seed=2)
PY

results="$out/multi_gpu.jsonl"
: > "$results"
echo "== device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1) x $gpus, $(date -u +%F)"
for attn in ls mhsa; do
  config="$here/configs/gpt2-small.json"
  [[ $attn == mhsa ]] && config="$here/configs/gpt2-small-mhsa.json"
  for n in 1 2; do
    run="$out/run-$attn-$n"
    rm -rf "$run"
    launch=()
    ((n > 1)) && launch=(mpirun "${root_flag[@]}" -np "$n" -x NCCL_NVLS_ENABLE --bind-to none)
    "${launch[@]}" "$lsgpt" train --device cuda --config "$config" \
      --train "$out/data/train.bin" --valid "$out/data/valid.bin" --out-dir "$run" \
      --batch-size 16 --train-seq-len 1024 --grad-accum 1 --steps "$steps" --warmup 2 \
      --eval-every 0 --final-eval-batches 1 --checkpoint-every 0 --log-every 10 \
      > "$run.log" 2>&1 || { echo "error: lsgpt train ($attn, $n GPUs) failed:" >&2; tail -20 "$run.log" >&2; exit 1; }
    python3 - "$run/metrics.jsonl" "$attn" "$n" "$warmup" >> "$results" <<'PY'
import json, statistics, sys
path, attn, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
steps = [json.loads(l) for l in open(path) if l.strip()]
tps = [r["tokens_per_s"] for r in steps if r.get("type") == "train"][warmup:]
if not tps:
    sys.exit(f"no steps after the first {warmup} in {path}")
print(json.dumps({"impl": "lsgpt", "attn": attn, "gpus": n, "batch_per_gpu": 16,
                  "seq_len": 1024, "steps_timed": len(tps),
                  "tokens_per_s": round(statistics.median(tps)),
                  "tokens_per_s_per_gpu": round(statistics.median(tps) / n)}))
PY
    tail -1 "$results"
  done
done
python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for attn in ("ls", "mhsa"):
    one = next(r for r in rows if r["attn"] == attn and r["gpus"] == 1)
    two = next(r for r in rows if r["attn"] == attn and r["gpus"] == 2)
    s = two["tokens_per_s"] / one["tokens_per_s"]
    print(f"{attn}: 2 GPUs / 1 GPU = {s:.3f}x (target >= 1.9x)")
PY
