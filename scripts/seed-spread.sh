#!/usr/bin/env bash
# Trains the default config on WikiText-2 for a fixed number of steps with
# several seeds on one device and prints each run's final validation loss
# (whole validation split) with the mean and standard deviation, so a CPU and
# a GPU run of the same config can be compared within the seed spread.
#
# Usage: scripts/seed-spread.sh DEVICE OUT_DIR [SEED...]     (default seeds 1 2 3)
#   LSGPT (default build/lsgpt), DATA (default runs/data/wikitext2) and
#   STEPS (default 400) override the binary, the token files and the length.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 cpu|cuda OUT_DIR [SEED...]" >&2
  exit 2
fi
device=$1 out=$2
shift 2
seeds=("$@")
[[ ${#seeds[@]} -gt 0 ]] || seeds=(1 2 3)
lsgpt=${LSGPT:-build/lsgpt} data=${DATA:-runs/data/wikitext2} steps=${STEPS:-400}

if [[ ! -f $data/train.bin ]]; then
  "$lsgpt" prepare --dataset wikitext2 --out-dir "$data"
fi
for seed in "${seeds[@]}"; do
  "$lsgpt" train --config configs/default.json --data-dir "$data" --out-dir "$out/seed$seed" --overwrite \
    --device "$device" --seed "$seed" --steps "$steps" --batch-size 8 --lr 2e-3 --warmup 50 \
    --eval-every 100 --checkpoint-every 0 --log-every 100
done

python3 - "$device" "$steps" "$out" "${seeds[@]}" <<'PY'
import json, statistics, sys
device, steps, out, seeds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
losses = []
for seed in seeds:
    final = [r for r in map(json.loads, open(f"{out}/seed{seed}/metrics.jsonl"))
             if r.get("type") == "eval" and r.get("final")]
    losses.append(final[-1]["val_loss"])
mean = statistics.mean(losses)
std = statistics.stdev(losses) if len(losses) > 1 else 0.0
print(f"| {device} | {steps} | {', '.join(seeds)} | {', '.join(f'{l:.4f}' for l in losses)} "
      f"| {mean:.4f} ± {std:.4f} |")
json.dump({"device": device, "steps": int(steps), "seeds": seeds, "val_loss": losses,
           "mean": mean, "std": std}, open(f"{out}/summary.json", "w"), indent=1)
PY
