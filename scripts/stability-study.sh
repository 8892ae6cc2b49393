#!/usr/bin/env bash
# The stability study of issue #19 (docs/results/stability-pg-books.md): does
# LS-attention keep training stable where plain multi-head attention (MHSA)
# spikes or diverges, and does it do better than the usual stabilisers?
#
# Settings: MHSA; LS (11 local heads of 12, w = 100); MHSA + QK-norm;
# MHSA + z-loss (1e-4); MHSA + AdaGC; LS + each stabiliser. All on pg-books
# (whole books, windows inside one book: --sampler documents) at context 4096,
# batch 4, the same number of steps (so the same tokens) for every run of a
# phase, warm-up a tenth of the steps, cosine decay to a tenth, AdamW
# (0.9, 0.95, weight decay 0.1), global clipping at 1.0 except under AdaGC.
#
# Phases (run in the order given; default: proxy decisive report):
#   proxy     the wide learning-rate sweep on a 6-layer model of GPT-2 small's
#             width (12 heads x 64), one seed: finds where MHSA spikes.
#   decisive  GPT-2 small's shape (12 layers), DECISIVE_LRS x DECISIVE_SETTINGS
#             x SEEDS: the runs the conclusions rest on.
#   report    per shape: `lsgpt report` page, summary tables and SVG charts,
#             and OUT_DIR/stability-pg-books.md assembling them. Needs gnuplot.
#
# Runs are independent jobs taken from a queue by one worker per GPU; a run
# whose directory has an exit_code file is done and is skipped, so the study
# can be continued in later calls (STOP_AFTER=SECONDS: take no new job after
# that long, for a machine lent by the hour). A run that stops on non-finite
# values (lsgpt exits non-zero) is a result, not an error: its exit code is
# kept beside its metrics.
#
# Usage: scripts/stability-study.sh OUT_DIR [PHASE...]
# Environment (defaults in brackets):
#   LSGPT [build-gpu/lsgpt]  DEVICE [cuda]  GPUS [nvidia-smi's count, 1 on cpu]
#   DATA_DIR [OUT_DIR/pg-books, made by `lsgpt prepare --dataset pg-books`]
#   PROXY_LRS [6e-4 1.5e-3 3e-3 6e-3 1.2e-2]  PROXY_STEPS [600]
#   PROXY_SETTINGS [mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm ls-zloss ls-adagc]
#   DECISIVE_LRS [1.5e-3 6e-3]  DECISIVE_STEPS [800]  SEEDS [1 2]
#   DECISIVE_SETTINGS [mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm]
#   CONTEXT [4096]  BATCH [4]  TARGET_LOSS [per shape: see report phase]
#   STOP_AFTER [none]  SMOKE [0; 1: a tiny model for checking the script on a CPU]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [proxy|decisive|report ...]" >&2
  exit 2
fi
out=$1
shift
phases=("$@")
((${#phases[@]})) || phases=(proxy decisive report)
lsgpt=${LSGPT:-build-gpu/lsgpt}
device=${DEVICE:-cuda}
context=${CONTEXT:-4096} batch=${BATCH:-4}
smoke=${SMOKE:-0}
started=$(date +%s)
mkdir -p "$out/runs" "$out/logs"
data=${DATA_DIR:-$out/pg-books}

die() { echo "stability-study: error: $*" >&2; exit 1; }
[[ -x $lsgpt ]] || die "no lsgpt binary at '$lsgpt' (set LSGPT)"
if [[ -z ${GPUS:-} ]]; then
  if [[ $device == cuda ]]; then GPUS=$(nvidia-smi -L 2>/dev/null | wc -l); else GPUS=1; fi
fi
((GPUS >= 1)) || die "no GPU found (nvidia-smi -L lists none); DEVICE=cpu runs on the CPU"

setting_flags() {  # setting name -> model/training flags
  local attention=${1%%-*} extra=${1#*-}
  [[ $extra == "$1" ]] && extra=""
  local local_heads=11 window=100
  if ((smoke)); then local_heads=3 window=16; fi
  case $attention in
    mhsa) echo -n "--n-local 0" ;;
    ls) echo -n "--n-local $local_heads --window $window" ;;
    *) die "unknown setting '$1' (mhsa, ls, each with -qknorm, -zloss or -adagc)" ;;
  esac
  case $extra in
    "") ;;
    qknorm) echo -n " --qk-norm" ;;
    zloss) echo -n " --z-loss 1e-4" ;;
    adagc) echo -n " --adagc" ;;
    *) die "unknown stabiliser in '$1' (qknorm, zloss, adagc)" ;;
  esac
}

shape_flags() {  # proxy | gpt2
  if ((smoke)); then
    echo -n "--n-layer 2 --n-head 4 --d-model 64 --seq-len 128"
    return
  fi
  case $1 in
    proxy) echo -n "--config configs/gpt2-small.json --n-layer 6 --seq-len $context" ;;
    gpt2) echo -n "--config configs/gpt2-small.json --seq-len $context" ;;
  esac
}

# One line per run: NAME<TAB>flags. Names sort by shape, setting, lr, seed.
queue_phase() {  # phase -> job lines on stdout
  local shape steps lrs settings seeds
  case $1 in
    proxy)
      shape=proxy steps=${PROXY_STEPS:-600}
      lrs=${PROXY_LRS:-6e-4 1.5e-3 3e-3 6e-3 1.2e-2}
      settings=${PROXY_SETTINGS:-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm ls-zloss ls-adagc}
      seeds=1 ;;
    decisive)
      shape=gpt2 steps=${DECISIVE_STEPS:-800}
      lrs=${DECISIVE_LRS:-1.5e-3 6e-3}
      settings=${DECISIVE_SETTINGS:-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm}
      seeds=${SEEDS:-1 2} ;;
  esac
  ((smoke)) && steps=${SMOKE_STEPS:-30}
  local warmup=$((steps / 10)) s lr seed
  for seed in $seeds; do
    for s in $settings; do
      for lr in $lrs; do
        printf '%s-%s-lr%s-s%s\t%s %s --steps %d --warmup %d --lr %s --seed %s\n' \
          "$shape" "$s" "$lr" "$seed" "$(shape_flags $shape)" "$(setting_flags "$s")" \
          "$steps" "$warmup" "$lr" "$seed"
      done
    done
  done
}

run_job() {  # gpu name flags...
  local gpu=$1 name=$2
  shift 2
  local dir=$out/runs/$name
  [[ -f $dir/exit_code ]] && return 0
  rm -rf "$dir"
  local eval_every=50
  ((smoke)) && eval_every=5
  local t0=$SECONDS code=0 final_eval=0
  ((smoke)) && final_eval=2
  # shellcheck disable=SC2068  # the flags are words on purpose
  CUDA_VISIBLE_DEVICES=$gpu "$lsgpt" train $@ --device "$device" --data-dir "$data" \
    --sampler documents --batch-size "$batch" --eval-every "$eval_every" --eval-batches 8 \
    --final-eval-batches "$final_eval" --checkpoint-every 0 --log-every 50 --max-nonfinite 3 \
    --out-dir "$dir" > "$out/logs/$name.log" 2>&1 || code=$?
  rm -f "$dir/checkpoint.ckpt" "$dir"/*.png  # 1.5 GB each at GPT-2 small; the metrics are the result
  mkdir -p "$dir"
  echo "$code" > "$dir/exit_code"
  echo "[gpu $gpu] $name: exit $code, $((SECONDS - t0)) s, $(grep -E '^done:|error' "$out/logs/$name.log" | tail -1)"
}

worker() {  # gpu jobs_file counter_file
  local gpu=$1 jobs=$2 counter=$3 i line
  while true; do
    if [[ -n ${STOP_AFTER:-} ]] && (($(date +%s) - started >= STOP_AFTER)); then return 0; fi
    i=$(flock "$counter" bash -c 'n=$(cat "$1"); echo $((n + 1)) > "$1"; echo "$n"' _ "$counter")
    line=$(sed -n "$((i + 1))p" "$jobs")
    [[ -z $line ]] && return 0
    run_job "$gpu" "${line%%$'\t'*}" "${line#*$'\t'}"
  done
}

run_phase() {
  local jobs=$out/logs/jobs-$1.tsv counter=$out/logs/next-$1
  queue_phase "$1" > "$jobs"
  echo 0 > "$counter"
  echo "stability-study: $1: $(wc -l < "$jobs") runs on $GPUS device(s)"
  local g pids=()
  for ((g = 0; g < GPUS; g++)); do
    worker "$g" "$jobs" "$counter" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  local left=0 name
  while IFS=$'\t' read -r name _; do [[ -f $out/runs/$name/exit_code ]] || ((++left)); done < "$jobs"
  echo "stability-study: $1: $left run(s) left for a later call"
}

report_shape() {  # shape target_loss
  local shape=$1 target=$2 dirs=()
  mapfile -t dirs < <(find "$out/runs" -maxdepth 1 -name "$shape-*" -type d | sort)
  ((${#dirs[@]})) || return 0
  mkdir -p "$out/$shape-svg"
  "$lsgpt" report "${dirs[@]}" -o "$out/report-$shape.html" --log-y --layer 0 \
    --summary "$out/summary-$shape.md" --summary-json "$out/summary-$shape.json" \
    --target-loss "$target" --svg-dir "$out/$shape-svg"
}

report_phase() {
  report_shape proxy "${TARGET_LOSS_PROXY:-${TARGET_LOSS:-4.6}}"
  report_shape gpt2 "${TARGET_LOSS_GPT2:-${TARGET_LOSS:-4.4}}"
  {
    echo "# Stability study on pg-books (generated by scripts/stability-study.sh)"
    echo
    echo "Device: $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo none);" \
      "generated $(date -u +%Y-%m-%d); lsgpt $(git rev-parse --short HEAD 2>/dev/null || echo '?')."
    for shape in proxy gpt2; do
      [[ -f $out/summary-$shape.md ]] || continue
      echo
      echo "## Shape: $shape"
      echo
      cat "$out/summary-$shape.md"
    done
  } > "$out/stability-pg-books.md"
  echo "stability-study: wrote $out/stability-pg-books.md"
}

for phase in "${phases[@]}"; do
  case $phase in
    proxy | decisive)
      if [[ ! -f $data/train.bin ]]; then
        [[ -z ${DATA_DIR:-} ]] || die "no train.bin in DATA_DIR '$data'"
        "$lsgpt" prepare --dataset pg-books --out-dir "$data" > "$out/logs/prepare.log" 2>&1 ||
          die "prepare failed: see $out/logs/prepare.log"
      fi
      run_phase "$phase" ;;
    report) report_phase ;;
    *) die "unknown phase '$phase' (proxy, decisive, report)" ;;
  esac
done
