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
# Phases (run in the order given; default: proxy decisive long report):
#   proxy     the wide learning-rate sweep on a 6-layer model of GPT-2 small's
#             width (12 heads x 64), one seed: where does MHSA degrade?
#   decisive  GPT-2 small's shape (12 layers), DECISIVE_LRS x DECISIVE_SETTINGS
#             x SEEDS: the runs the conclusions rest on.
#   long      GPT-2 small at context LONG_CONTEXT with LONG_BATCH sequences a
#             step (the same tokens a step), LONG_SETTINGS x LONG_LRS, seed 1.
#   noclip    GPT-2 small at context 4096 without global gradient clipping
#             (--clip 0; AdaGC keeps its own), NOCLIP_SETTINGS x NOCLIP_LRS,
#             seed 1: whether MHSA spikes or diverges once clipping no longer
#             holds it (with clipping at 1.0 no run did, up to 1.2e-2).
#   report    per shape: `lsgpt report` page and summary tables (Markdown and
#             JSON), SVG charts of seed 1 per learning rate, and
#             OUT_DIR/stability-pg-books.md assembling them. Needs gnuplot.
#
# Runs are independent jobs taken from a queue by one worker per GPU; a run
# whose directory has an exit_code file is done and is skipped, so the study
# can be continued in later calls (STOP_AFTER=SECONDS: take no new job after
# that long, for a machine lent by the hour). A run that stops on non-finite
# values (lsgpt exits non-zero) is a result, not an error: its exit code is
# kept beside its metrics. Run directories are named
# SHAPE[-ctxN]-SETTING-lrLR-sSEED (ctxN when the context is not 4096).
#
# Usage: scripts/stability-study.sh OUT_DIR [PHASE...]
# Environment (defaults in brackets):
#   LSGPT [build-gpu/lsgpt]  DEVICE [cuda]  GPUS [nvidia-smi's count, 1 on cpu]
#   DATA_DIR [OUT_DIR/pg-books, made by `lsgpt prepare --dataset pg-books`]
#   CONTEXT [4096]  BATCH [4]  TARGET_LOSS [5.0]
#   PROXY_LRS [6e-4 1.5e-3 3e-3 6e-3 1.2e-2]  PROXY_STEPS [600]
#   PROXY_SETTINGS [mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm ls-zloss ls-adagc]
#   DECISIVE_LRS [1.5e-3 1.2e-2]  DECISIVE_STEPS [600]  SEEDS [1 2]
#   DECISIVE_SETTINGS [mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm]
#   LONG_CONTEXT [8192]  LONG_BATCH [2]  LONG_LRS [1.5e-3 6e-3]
#   LONG_SETTINGS [mhsa ls mhsa-qknorm ls-qknorm]
#   NOCLIP_LRS [3e-3 1.2e-2 2.4e-2]
#   NOCLIP_SETTINGS [mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm]
#   STOP_AFTER [none]  SMOKE [0; 1: a tiny model for checking the script on a CPU]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [proxy|decisive|long|noclip|report ...]" >&2
  exit 2
fi
out=$(realpath -m "$1")
shift
phases=("$@")
((${#phases[@]})) || phases=(proxy decisive long report)
lsgpt=$(realpath -m "${LSGPT:-build-gpu/lsgpt}")
device=${DEVICE:-cuda}
context=${CONTEXT:-4096} batch=${BATCH:-4}
smoke=${SMOKE:-0}
started=$(date +%s)
mkdir -p "$out/runs" "$out/logs"
data=$(realpath -m "${DATA_DIR:-$out/pg-books}")
cd "$(dirname "$0")/.."  # configs/ and data/ are named relative to the repository

die() { echo "stability-study: error: $*" >&2; exit 1; }
[[ -x $lsgpt ]] || die "no lsgpt binary at '$lsgpt' (set LSGPT)"

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

shape_flags() {  # proxy|gpt2 context
  if ((smoke)); then
    echo -n "--n-layer 2 --n-head 4 --d-model 64 --seq-len $(($2 / 32))"
    return
  fi
  case $1 in
    proxy) echo -n "--config configs/gpt2-small.json --n-layer 6 --seq-len $2" ;;
    gpt2) echo -n "--config configs/gpt2-small.json --seq-len $2" ;;
  esac
}

# One line per run: NAME<TAB>flags. Names sort by shape, setting, lr, seed.
queue_phase() {  # phase -> job lines on stdout
  local shape steps lrs settings seeds ctx=$context bs=$batch extra=""
  case $1 in
    proxy)
      shape=proxy steps=${PROXY_STEPS:-600}
      lrs=${PROXY_LRS:-6e-4 1.5e-3 3e-3 6e-3 1.2e-2}
      settings=${PROXY_SETTINGS:-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm ls-zloss ls-adagc}
      seeds=1 ;;
    decisive)
      shape=gpt2 steps=${DECISIVE_STEPS:-600}
      lrs=${DECISIVE_LRS:-1.5e-3 1.2e-2}
      settings=${DECISIVE_SETTINGS:-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm}
      seeds=${SEEDS:-1 2} ;;
    long)
      shape=gpt2 steps=${DECISIVE_STEPS:-600} ctx=${LONG_CONTEXT:-8192} bs=${LONG_BATCH:-2}
      lrs=${LONG_LRS:-1.5e-3 6e-3}
      settings=${LONG_SETTINGS:-mhsa ls mhsa-qknorm ls-qknorm}
      seeds=1 ;;
    noclip)
      shape=gpt2 steps=${DECISIVE_STEPS:-600} extra="--clip 0"
      lrs=${NOCLIP_LRS:-3e-3 1.2e-2 2.4e-2}
      settings=${NOCLIP_SETTINGS:-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm}
      seeds=1 ;;
  esac
  ((smoke)) && steps=${SMOKE_STEPS:-30}
  local prefix=$shape
  ((ctx != 4096)) && prefix=$shape-ctx$ctx
  [[ $1 == noclip ]] && prefix=$shape-noclip
  local warmup=$((steps / 10)) s lr seed
  for seed in $seeds; do
    for s in $settings; do
      for lr in $lrs; do
        printf '%s-%s-lr%s-s%s\t%s %s --batch-size %d --steps %d --warmup %d --lr %s --seed %s %s\n' \
          "$prefix" "$s" "$lr" "$seed" "$(shape_flags $shape "$ctx")" "$(setting_flags "$s")" \
          "$bs" "$steps" "$warmup" "$lr" "$seed" "$extra"
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
  local eval_every=50 eval_batches=8
  ((smoke)) && eval_every=5 eval_batches=2
  local t0=$SECONDS code=0 final_eval=0
  ((smoke)) && final_eval=2
  # shellcheck disable=SC2068  # the flags are words on purpose
  CUDA_VISIBLE_DEVICES=$gpu "$lsgpt" train $@ --device "$device" --data-dir "$data" \
    --sampler documents --eval-every "$eval_every" --eval-batches "$eval_batches" \
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
  if [[ -z ${GPUS:-} ]]; then
    if [[ $device == cuda ]]; then GPUS=$(nvidia-smi -L 2>/dev/null | wc -l); else GPUS=1; fi
  fi
  ((GPUS >= 1)) || die "no GPU found (nvidia-smi -L lists none); DEVICE=cpu runs on the CPU"
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

runs_of() {  # glob under runs/ -> run directories, sorted
  find "$out/runs" -maxdepth 1 -type d -name "$1" | sort
}

summarise() {  # name glob: summary tables and a report page over the runs
  local dirs=()
  mapfile -t dirs < <(runs_of "$2")
  ((${#dirs[@]})) || return 0
  "$lsgpt" report "${dirs[@]}" -o "$out/report-$1.html" --log-y \
    --summary "$out/summary-$1.md" --summary-json "$out/summary-$1.json" \
    --target-loss "${TARGET_LOSS:-5.0}" >> "$out/logs/report.log" 2>&1 ||
    die "lsgpt report failed: see $out/logs/report.log"
}

charts() {  # name glob: SVG charts (loss, max logit per layer, ...) of these runs
  local dirs=()
  mapfile -t dirs < <(runs_of "$2")
  ((${#dirs[@]})) || return 0
  mkdir -p "$out/charts-$1"
  "$lsgpt" report "${dirs[@]}" -o "$out/charts-$1/report.html" --log-y \
    --svg-dir "$out/charts-$1" >> "$out/logs/report.log" 2>&1 ||
    die "lsgpt report failed: see $out/logs/report.log"
  local i=0 d legend=""
  for d in "${dirs[@]}"; do legend+="${legend:+, }run $((++i)) = ${d##*/}"; done
  echo "$legend" > "$out/charts-$1/legend.txt"
  echo "$1" >> "$out/charts.list"
}

report_phase() {
  summarise proxy 'proxy-*'
  summarise gpt2 'gpt2-[lm]*'  # settings start with ls or mhsa; not ctx..., noclip...
  summarise gpt2-ctx8192 'gpt2-ctx8192-*'
  summarise gpt2-noclip 'gpt2-noclip-*'
  rm -f "$out/charts.list"
  local lr
  for lr in ${DECISIVE_LRS:-1.5e-3 1.2e-2}; do charts "gpt2-lr$lr" "gpt2-[lm]*-lr$lr-s1"; done
  for lr in ${LONG_LRS:-1.5e-3 6e-3}; do charts "gpt2-ctx8192-lr$lr" "gpt2-ctx8192-*-lr$lr-s1"; done
  for lr in ${NOCLIP_LRS:-3e-3 1.2e-2 2.4e-2}; do charts "gpt2-noclip-lr$lr" "gpt2-noclip-*-lr$lr-s1"; done
  {
    echo "# Stability study on pg-books: generated tables"
    echo
    echo "Tables and charts written by \`scripts/stability-study.sh OUT report\` on" \
      "$(date -u +%Y-%m-%d) (lsgpt $(git rev-parse --short HEAD 2>/dev/null || echo '?')) from the" \
      "run directories in OUT/runs."
    local name
    for name in proxy gpt2 gpt2-ctx8192 gpt2-noclip; do
      [[ -f $out/summary-$name.md ]] || continue
      echo
      echo "## Runs: $name"
      echo
      sed '1{/^# Stability summary$/d}; s/^#/##/' "$out/summary-$name.md"
    done
    if [[ -f $out/charts.list ]]; then
      echo
      echo "## Charts (seed 1)"
      while read -r name; do
        echo
        echo "### $name"
        echo
        echo "Legend: $(cat "$out/charts-$name/legend.txt")."
        echo
        local svg
        for svg in loss val_loss max_logit grad_norm; do
          [[ -f $out/charts-$name/$svg.svg ]] && echo "![$name $svg](charts-$name/$svg.svg)"
        done
      done < "$out/charts.list"
    fi
  } > "$out/stability-pg-books.md"
  echo "stability-study: wrote $out/stability-pg-books.md"
}

for phase in "${phases[@]}"; do
  case $phase in
    proxy | decisive | long | noclip)
      if [[ ! -f $data/train.bin ]]; then
        [[ -z ${DATA_DIR:-} ]] || die "no train.bin in DATA_DIR '$data'"
        "$lsgpt" prepare --dataset pg-books --out-dir "$data" > "$out/logs/prepare.log" 2>&1 ||
          die "prepare failed: see $out/logs/prepare.log"
      fi
      run_phase "$phase" ;;
    report) report_phase ;;
    *) die "unknown phase '$phase' (proxy, decisive, long, noclip, report)" ;;
  esac
done
