#!/usr/bin/env bash
# The main job: build, prepare the bundled WikiText-2, train the default small
# LS model on the CPU for about 5 minutes, report validation perplexity, save a
# checkpoint and print a sample. Everything lands in runs/default/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh -DLSGPT_BUILD_BENCH=OFF
lsgpt=build/lsgpt

data=runs/data/wikitext2
if [[ ! -f $data/train.bin || ! -f $data/valid.bin || ! -f $data/test.bin ]]; then
  $lsgpt prepare --dataset wikitext2 --out-dir "$data"
fi

$lsgpt train --config configs/default.json --data-dir "$data" --out-dir runs/default --overwrite \
  --steps "${LSGPT_STEPS:-1200}" --max-time "${LSGPT_MAX_TIME:-300}" \
  --batch-size 8 --lr 2e-3 --warmup 50 --eval-every 200 --checkpoint-every 200

echo
echo "== validation and test perplexity of runs/default/checkpoint.ckpt"
$lsgpt eval --checkpoint runs/default/checkpoint.ckpt --data "$data/valid.bin"
$lsgpt eval --checkpoint runs/default/checkpoint.ckpt --data "$data/test.bin"

echo
echo "== sample"
$lsgpt generate --checkpoint runs/default/checkpoint.ckpt --prompt " The history of the" \
  --tokens 80 --temperature 0.8 --top-k 40 --seed 1
