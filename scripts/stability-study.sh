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
# Phases (run in the order given; default: proxy decisive long noclip report):
#   proxy     the wide learning-rate sweep on a 6-layer model of GPT-2 small's
#             width (12 heads x 64), one seed: where does MHSA degrade?
#   decisive  GPT-2 small's shape (12 layers), DECISIVE_LRS x DECISIVE_SETTINGS
#             x SEEDS: the runs the conclusions rest on.
#   long      GPT-2 small at context LONG_CONTEXT with LONG_BATCH sequences a
#             step (the same tokens a step), LONG_SETTINGS x LONG_LRS, seed 1.
#   noclip    GPT-2 small at context 4096 without global gradient clipping
#             (--clip 0; AdaGC keeps its own), NOCLIP_SETTINGS x NOCLIP_LRS,
#             seed 1: whether MHSA spikes or diverges once clipping no longer
#             holds it (with clipping at 1.0 no run did, up to 1.2e-2; without it,
#             none did either, up to 2.4e-2: docs/results/stability-pg-books.md).
#   report    per shape: `lsgpt report` page and summary tables (Markdown and
#             JSON), SVG charts of seed 1 per learning rate, and
#             OUT_DIR/stability-pg-books.md assembling them. Needs gnuplot.
#
# Runs are independent jobs taken from a queue by one worker per GPU. A run
# whose directory has an exit_code file is finished and is skipped, so the
# study can be continued in later calls (STOP_AFTER=SECONDS: take no new job
# after that long, for a machine lent by the hour); its flags are kept in
# flags.txt, and a finished run asked for again with other flags (another
# STEPS or BATCH) is an error, not a silent reuse. A run that stops on
# non-finite values is a result (a divergence), not an error: exit_code 1
# beside its metrics. Any other failure of lsgpt (bad flag, full disk, out of
# memory) leaves no exit_code, so the run is redone next time, and the phase
# ends with an error naming the failed runs. The report phase reads finished
# runs only. One study at a time per OUT_DIR (a lock; killing the script
# stops its runs). Run directories are named SHAPE[-ctxN|-noclip]-SETTING-lrLR-sSEED
# (ctxN when the context is not 4096); charts are drawn for every learning
# rate found among the finished seed-1 runs.
#
# Usage: scripts/stability-study.sh OUT_DIR [PHASE...]
# Environment (defaults in brackets):
#   LSGPT [REPO/build-gpu/lsgpt]  DEVICE [cuda]  GPUS [nvidia-smi's count, 1 on cpu]
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
# Lists are words separated by spaces, checked for every phase asked for before
# anything trains: known settings, positive learning rates (1.5e-3, 0.0015),
# whole seeds, no word twice; DEVICE is cuda or cpu, SMOKE 0 or 1.
set -euo pipefail
die() { echo "stability-study: error: $*" >&2; exit 1; }
if [[ $# -lt 1 ]]; then
  echo "usage: $0 OUT_DIR [proxy|decisive|long|noclip|report ...]" >&2
  exit 2
fi
repo=$(realpath "$(dirname "$0")/..")
out=$(realpath -m "$1")
shift
phases=("$@")
((${#phases[@]})) || phases=(proxy decisive long noclip report)
for phase in "${phases[@]}"; do
  case $phase in
    proxy | decisive | long | noclip | report) ;;
    *) die "unknown phase '$phase' (proxy, decisive, long, noclip, report)" ;;
  esac
done
lsgpt=$(realpath -m "${LSGPT:-$repo/build-gpu/lsgpt}")
device=${DEVICE:-cuda}
smoke=${SMOKE:-0}
[[ $device == cuda || $device == cpu ]] || die "DEVICE must be cuda or cpu, not '$device'"
[[ $smoke == 0 || $smoke == 1 ]] || die "SMOKE must be 0 or 1, not '$smoke'"
is_count() { [[ $1 =~ ^[0-9]+$ ]]; }
for var in CONTEXT BATCH LONG_CONTEXT LONG_BATCH PROXY_STEPS DECISIVE_STEPS SMOKE_STEPS; do
  [[ -z ${!var:-} ]] || { is_count "${!var}" && ((${!var} > 0)); } ||
    die "$var must be a positive whole number, not '${!var}'"
done
[[ -z ${STOP_AFTER:-} ]] || is_count "$STOP_AFTER" ||
  die "STOP_AFTER must be a whole number of seconds, not '$STOP_AFTER'"
[[ -z ${GPUS:-} ]] || { is_count "$GPUS" && ((GPUS > 0)); } ||
  die "GPUS must be a positive whole number, not '$GPUS'"
context=${CONTEXT:-4096} batch=${BATCH:-4}
[[ -x $lsgpt ]] || die "no lsgpt binary at '$lsgpt' (set LSGPT)"
data=$(realpath -m "${DATA_DIR:-$out/pg-books}")
cd "$repo"  # configs/ and data/ are named relative to the repository
started=$(date +%s)

setting_flags() {  # setting name -> model/training flags
  local local_heads=11 window=100 adagc="--adagc"
  # SMOKE runs are shorter than AdaGC's 100 warm-up steps: end the warm-up early
  # so that its per-tensor clipping runs at all.
  if ((smoke)); then local_heads=3 window=16 adagc="--adagc --adagc-warmup 2"; fi
  case ${1%%-*} in
    mhsa) echo -n "--n-local 0" ;;
    ls) echo -n "--n-local $local_heads --window $window" ;;
  esac
  case $1 in
    *-qknorm) echo -n " --qk-norm" ;;
    *-zloss) echo -n " --z-loss 1e-4" ;;
    *-adagc) echo -n " $adagc" ;;
  esac
}

check_list() {  # variable-name list kind: not empty (spaces alone are empty), no word twice,
  # every word of its kind (setting, lr, seed); run names and lsgpt's flags are made of them
  local words=() w seen=" "
  read -r -a words <<< "$2"
  ((${#words[@]})) || die "$1 is empty"
  for w in "${words[@]}"; do
    case $3 in
      setting) [[ $w =~ ^(mhsa|ls)(-(qknorm|zloss|adagc))?$ ]] ||
        die "unknown setting '$w' in $1 (mhsa or ls, optionally with -qknorm, -zloss or -adagc)" ;;
      lr) [[ $w =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] &&
        awk -v x="$w" 'BEGIN { exit !(x + 0 > 0) }' ||
        die "$1: '$w' is not a positive number (a learning rate such as 1.5e-3)" ;;
      seed) is_count "$w" || die "$1: '$w' is not a whole number" ;;
    esac
    [[ $seen != *" $w "* ]] || die "$1 names '$w' twice"
    seen+="$w "
  done
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
  local shape steps lrs settings seeds=1 ctx=$context bs=$batch extra="" var
  case $1 in
    proxy)
      shape=proxy steps=${PROXY_STEPS:-600} var=PROXY
      lrs=${PROXY_LRS-6e-4 1.5e-3 3e-3 6e-3 1.2e-2}
      settings=${PROXY_SETTINGS-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm ls-zloss ls-adagc} ;;
    decisive)
      shape=gpt2 steps=${DECISIVE_STEPS:-600} var=DECISIVE seeds=${SEEDS-1 2}
      lrs=${DECISIVE_LRS-1.5e-3 1.2e-2}
      settings=${DECISIVE_SETTINGS-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm} ;;
    long)
      shape=gpt2 steps=${DECISIVE_STEPS:-600} var=LONG ctx=${LONG_CONTEXT:-8192} bs=${LONG_BATCH:-2}
      lrs=${LONG_LRS-1.5e-3 6e-3}
      settings=${LONG_SETTINGS-mhsa ls mhsa-qknorm ls-qknorm} ;;
    noclip)
      shape=gpt2 steps=${DECISIVE_STEPS:-600} var=NOCLIP extra="--clip 0"
      lrs=${NOCLIP_LRS-3e-3 1.2e-2 2.4e-2}
      settings=${NOCLIP_SETTINGS-mhsa ls mhsa-qknorm mhsa-zloss mhsa-adagc ls-qknorm} ;;
  esac
  check_list "${var}_SETTINGS" "$settings" setting
  check_list "${var}_LRS" "$lrs" lr
  check_list SEEDS "$seeds" seed
  ((smoke)) && steps=${SMOKE_STEPS:-30}
  local prefix=$shape
  ((ctx != 4096)) && prefix=$shape-ctx$ctx
  [[ $1 == noclip ]] && prefix=$shape-noclip
  local warmup=$((steps / 10)) s lr seed
  for seed in $seeds; do
    for s in $settings; do
      for lr in $lrs; do
        printf '%s-%s-lr%s-s%s\t%s %s --batch-size %d --steps %d --warmup %d --lr %s --seed %s%s\n' \
          "$prefix" "$s" "$lr" "$seed" "$(shape_flags $shape "$ctx")" "$(setting_flags "$s")" \
          "$bs" "$steps" "$warmup" "$lr" "$seed" "${extra:+ $extra}"
      done
    done
  done
}

# 0: trained (or stopped on non-finite values: a result); 1: lsgpt failed.
run_job() {  # gpu name flags
  local gpu=$1 name=$2 flags=$3
  local dir=$out/runs/$name log=$out/logs/$name.log
  if [[ -f $dir/exit_code ]]; then
    [[ $(cat "$dir/flags.txt" 2>/dev/null) == "$flags" ]] && return 0
    echo "[gpu $gpu] $name: finished earlier with other flags (see $dir/flags.txt); not redone"
    return 1
  fi
  rm -rf "$dir"
  local eval_every=50 eval_batches=8 final_eval=0
  ((smoke)) && eval_every=5 eval_batches=2 final_eval=2
  local t0=$SECONDS code=0
  # shellcheck disable=SC2086  # the flags are words on purpose
  CUDA_VISIBLE_DEVICES=$gpu "$lsgpt" train $flags --device "$device" --data-dir "$data" \
    --sampler documents --eval-every "$eval_every" --eval-batches "$eval_batches" \
    --final-eval-batches "$final_eval" --checkpoint-every 0 --log-every 50 --max-nonfinite 3 \
    --out-dir "$dir" > "$log" 2>&1 || code=$?
  rm -f "$dir/checkpoint.ckpt" "$dir"/*.png  # 1.5 GB each at GPT-2 small; the metrics are the result
  local last
  last=$(grep -E '^done:|error' "$log" | tail -1)
  echo "[gpu $gpu] $name: exit $code, $((SECONDS - t0)) s, $last"
  if ((code != 0)) && ! grep -q 'consecutive steps had a non-finite' "$log"; then
    return 1  # not a divergence: no exit_code, so it is redone next time
  fi
  echo "$flags" > "$dir/flags.txt"
  echo "$code" > "$dir/exit_code"
}

worker() {  # gpu jobs_file counter_file failed_file
  local gpu=$1 jobs=$2 counter=$3 failed=$4 i line
  while true; do
    if [[ -n ${STOP_AFTER:-} ]] && (($(date +%s) - started >= STOP_AFTER)); then return 0; fi
    i=$(flock "$counter" bash -c 'n=$(cat "$1"); echo $((n + 1)) > "$1"; echo "$n"' _ "$counter")
    line=$(sed -n "$((i + 1))p" "$jobs")
    [[ -z $line ]] && return 0
    run_job "$gpu" "${line%%$'\t'*}" "${line#*$'\t'}" || echo "${line%%$'\t'*}" >> "$failed"
  done
}

worker_pids=()
stop_workers() {  # on INT/TERM: the runs stop with the script
  local p
  for p in "${worker_pids[@]}"; do pkill -TERM -P "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  exit 130
}

run_phase() {
  local gpus=${GPUS:-}
  if [[ -z $gpus ]]; then
    if [[ $device == cuda ]]; then gpus=$(nvidia-smi -L 2>/dev/null | wc -l); else gpus=1; fi
    ((gpus >= 1)) || die "no GPU found (nvidia-smi -L lists none); DEVICE=cpu runs on the CPU"
  fi
  local jobs=$out/logs/jobs-$1.tsv counter=$out/logs/next-$1 failed=$out/logs/failed-$1
  queue_phase "$1" > "$jobs"
  echo 0 > "$counter"
  rm -f "$failed"
  echo "stability-study: $1: $(wc -l < "$jobs") runs on $gpus device(s)"
  local g p
  worker_pids=()
  for ((g = 0; g < gpus; g++)); do
    worker "$g" "$jobs" "$counter" "$failed" & worker_pids+=($!)
  done
  for p in "${worker_pids[@]}"; do wait "$p"; done
  worker_pids=()
  local left=0 name
  while IFS=$'\t' read -r name _; do [[ -f $out/runs/$name/exit_code ]] || ((++left)); done < "$jobs"
  echo "stability-study: $1: $left run(s) left for a later call"
  [[ ! -s $failed ]] || die "$1: $(wc -l < "$failed") run(s) not done:" \
    "$(tr '\n' ' ' < "$failed")(lsgpt failed: see OUT/logs/NAME.log; or the run finished" \
    "earlier with other flags: see the lines above)"
}

finished_runs() {  # glob under runs/ -> finished run directories, sorted
  local d
  # `if`, not `&&`: a last directory without exit_code must not make the status 1
  # (under pipefail and set -e that ended the report without a word).
  for d in "$out"/runs/$1; do if [[ -f $d/exit_code ]]; then echo "$d"; fi; done | sort
}

# `lsgpt report` over the finished runs matching a glob, with the given
# options; returns 1 (writing nothing) when no run matches.
report_runs() {  # glob report-options...
  local dirs=()
  mapfile -t dirs < <(finished_runs "$1")
  shift
  ((${#dirs[@]})) || return 1
  "$lsgpt" report "${dirs[@]}" --log-y "$@" >> "$out/logs/report.log" 2>&1 ||
    die "lsgpt report failed: see $out/logs/report.log"
}

summarise() {  # name glob: summary tables and a report page over the runs
  report_runs "$2" -o "$out/report-$1.html" --summary "$out/summary-$1.md" \
    --summary-json "$out/summary-$1.json" --target-loss "${TARGET_LOSS:-5.0}" || true
}

charts() {  # name glob: SVG charts (loss, max logit per layer, ...) of these runs
  report_runs "$2" -o "$out/charts-$1/report.html" --svg-dir "$out/charts-$1" || return 0
  local i=0 d legend="" dirs=()
  mapfile -t dirs < <(finished_runs "$2")  # the order `report` numbered them in
  for d in "${dirs[@]}"; do legend+="${legend:+, }run $((++i)) = ${d##*/}"; done
  echo "$legend" > "$out/charts-$1/legend.txt"
  echo "$1" >> "$out/charts.list"
}

seed1_lrs() {  # shape prefix (gpt2, gpt2-ctx8192, ...) -> learning rates of its finished seed-1 runs
  finished_runs "$1-*-s1" | sed -nE "s#.*/$1-(mhsa|ls)(-[a-z]+)?-lr(.*)-s1\$#\\3#p" | sort -gu
}

report_phase() {
  [[ -n $(finished_runs '*') ]] || die "no finished runs in $out/runs: run a training phase first"
  rm -f "$out/charts.list"
  summarise proxy 'proxy-*'
  summarise gpt2 'gpt2-[lm]*'  # settings start with ls or mhsa; not ctx..., noclip...
  local shape lr ctx_shapes
  ctx_shapes=$(finished_runs 'gpt2-ctx*' | sed -nE 's#.*/(gpt2-ctx[0-9]+)-.*#\1#p' | sort -u)
  for shape in $ctx_shapes gpt2-noclip; do summarise "$shape" "$shape-*"; done
  for lr in $(seed1_lrs gpt2); do charts "gpt2-lr$lr" "gpt2-[lm]*-lr$lr-s1"; done
  for shape in $ctx_shapes gpt2-noclip; do
    for lr in $(seed1_lrs "$shape"); do charts "$shape-lr$lr" "$shape-*-lr$lr-s1"; done
  done
  write_markdown
}

write_markdown() {
  {
    echo "# Stability study on pg-books: generated tables"
    echo
    echo "Tables and charts written by \`scripts/stability-study.sh OUT report\` on" \
      "$(date -u +%Y-%m-%d) from the finished runs in OUT/runs (source" \
      "$(git describe --always --dirty 2>/dev/null || echo 'unknown'))."
    local name
    local names
    names=$(find "$out" -maxdepth 1 -name 'summary-*.md' | sed -E 's#.*/summary-(.*)\.md$#\1#' |
      sort | awk '$0 == "proxy" {print 1, $0; next} $0 == "gpt2" {print 2, $0; next} {print 3, $0}' |
      sort -k1,1n -k2,2 | cut -d' ' -f2)
    for name in $names; do
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

mkdir -p "$out/runs" "$out/logs"
exec 9> "$out/logs/lock"
flock -n 9 || die "another stability-study is running in $out (or its runs still are)"
trap stop_workers INT TERM
for phase in "${phases[@]}"; do  # every settings list is checked before any training
  [[ $phase == report ]] || queue_phase "$phase" > /dev/null
done
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
  esac
done
