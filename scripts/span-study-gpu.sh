#!/usr/bin/env bash
# The span study of docs/results/span-wikitext2.md at the scale that can decide
# it (issue #16): a 6-layer, width-768, 12-head model (GPT-2 small's width)
# at context 512 on WikiText-2, several epochs, whole validation split, the
# settings of `lsgpt study-span`'s default list, on LS (11 local heads of 12,
# w = 100) and MHSA. With two GPUs the LS and MHSA studies run at once, one per
# GPU, and are merged into one report.
#
# Usage: scripts/span-study-gpu.sh BUILD_DIR OUT_DIR
#   EPOCHS (default 3), SEEDS (default 1,2,3,4,5), LR (default 1e-3) override.
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
lsgpt=$1/lsgpt out=$2
epochs=${EPOCHS:-3} seeds=${SEEDS:-1,2,3,4,5} lr=${LR:-1e-3}
mkdir -p "$out"
data=$out/wikitext2
[[ -f $data/train.bin ]] || "$lsgpt" prepare --dataset wikitext2 --out-dir "$data" >/dev/null
common=(--config configs/gpt2-small.json --n-layer 6 --seq-len 512 --window 100 --device cuda
        --data-dir "$data" --epochs "$epochs" --seeds "$seeds" --batch-size 16 --lr "$lr"
        --warmup 100 --eval-every 100 --eval-batches 20 --final-eval-batches 0)
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
study() {  # attention gpu
  CUDA_VISIBLE_DEVICES=$2 "$lsgpt" study-span "${common[@]}" --attention "$1" \
    --report "$out/span-$1.md" --runs-dir "$out/runs-$1" > "$out/study-$1.log" 2>&1
}
if ((gpus >= 2)); then
  study ls 0 & ls_pid=$!
  study mhsa 1 & mhsa_pid=$!
  wait $ls_pid; wait $mhsa_pid
else
  study ls 0
  study mhsa 0
fi
"$lsgpt" study-span --merge "$out/runs-ls/results.json" "$out/runs-mhsa/results.json" \
  --report "$out/span-wikitext2.md" --runs-dir "$out/merge"
cat "$out/span-wikitext2.md"
