#!/usr/bin/env bash
# lsgpt data-parallel training speed on 1, 2, 4, 8... GPUs (mpirun, NCCL,
# ZeRO-1), with PyTorch DDP + torch.compile (bench/ddp_torch.py, torchrun) at
# the same GPU counts in the same run, on random tokens. Each model is an
# lsgpt config pair: configs/STEM.json (LS) and configs/STEM-mhsa.json (MHSA);
# B = 16 sequences per GPU, T = 1024. Each lsgpt run is a real `lsgpt train`;
# its steady-state tokens/s is the median of the per-step figures in
# metrics.jsonl after the first WARMUP steps. Writes one JSON line per run to
# OUT_DIR/multi_gpu.jsonl, then prints the table (bench/multi_gpu_table.py):
# tokens/s, scaling efficiency against 1 GPU, and the lsgpt / PyTorch ratio,
# and bench/scaling_model.py's prediction beside it.
#
# Usage: bench/multi_gpu.sh BUILD_DIR OUT_DIR [STEPS] [WARMUP]
#   BUILD_DIR: a build with the CUDA backend (-DLSGPT_CUDA=ON) holding lsgpt.
#   Needs mpirun (OpenMPI), the GPUs and python3; PyTorch (with torchrun) for
#   the peer. Run as root it passes --allow-run-as-root; NVLink multicast is
#   left off (NCCL_NVLS_ENABLE=0).
# Environment (all optional):
#   GPUS     GPU counts, e.g. "1 2 4 8" (default: 1, 2 and every power of two
#            up to the GPUs nvidia-smi lists)
#   MODELS   config stems (default "gpt2-small gpt2-medium"; "gpt2-small"
#            alone is the 2-GPU run of docs/DISTRIBUTED.md)
#   TORCH    1: run the PyTorch peer (an error if torch is missing), 0: not;
#            default: 1 where python3 imports torch, else 0 with a note
#   DEVICE   cuda (default) or cpu: the ranks as CPU processes (mpirun
#            --oversubscribe, one thread each), for testing this script
#   CONFIG_DIR  where the configs are (default: the repository's configs/)
#   BATCH, SEQ_LEN, TOKENS  sequences per GPU (16), their length (1024), and
#            the random training tokens written (4,000,000)
set -euo pipefail
die() { echo "error: $*" >&2; exit 1; }
if [[ $# -lt 2 || $# -gt 4 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR [STEPS] [WARMUP]" >&2
  exit 2
fi
build=$1 out=$2 steps=${3:-40} warmup=${4:-10}
here=$(cd "$(dirname "$0")/.." && pwd)
device=${DEVICE:-cuda} config_dir=${CONFIG_DIR:-$here/configs}
batch=${BATCH:-16} seq_len=${SEQ_LEN:-1024} tokens=${TOKENS:-4000000}
read -r -a models <<< "${MODELS:-gpt2-small gpt2-medium}"
read -r -a counts <<< "${GPUS:-}"

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }
for v in STEPS:"$steps" WARMUP:"$warmup" BATCH:"$batch" SEQ_LEN:"$seq_len" TOKENS:"$tokens"; do
  is_count "${v#*:}" || [[ ${v%%:*} == WARMUP && ${v#*:} == 0 ]] ||
    die "${v%%:*} must be a positive integer, got '${v#*:}'"
done
((warmup < steps)) || die "WARMUP ($warmup) must be below STEPS ($steps): no step would be timed"
[[ $device == cuda || $device == cpu ]] || die "DEVICE must be cuda or cpu, got '$device'"
# A count or model given twice would run twice and give the table two rows for one key.
seen=" "
for n in "${counts[@]}"; do
  is_count "$n" || die "GPUS: '$n' is not a positive integer"
  [[ $seen != *" $n "* ]] || die "GPUS: $n given twice"
  seen+="$n "
done
seen=" "
for m in "${models[@]}"; do
  [[ $seen != *" $m "* ]] || die "MODELS: $m given twice"
  seen+="$m "
  for f in "$config_dir/$m.json" "$config_dir/$m-mhsa.json"; do
    [[ -f $f ]] || die "MODELS: $f not found (each model needs STEM.json and STEM-mhsa.json)"
  done
done
torch=${TORCH:-auto}
[[ $torch == 0 || $torch == 1 || $torch == auto ]] || die "TORCH must be 0 or 1, got '$torch'"
[[ $device == cpu && $torch == 1 ]] && die "TORCH=1 needs DEVICE=cuda (the peer runs on GPUs)"
lsgpt="$build/lsgpt"
if [[ ! -x "$lsgpt" ]]; then
  [[ $device == cpu ]] && die "$lsgpt not found; build lsgpt first"
  die "$lsgpt not found; build with -DLSGPT_CUDA=ON first"
fi
# The default models are GPU-sized: on CPU ranks they would train for hours.
[[ $device == cpu && -z ${MODELS:-} ]] &&
  die "DEVICE=cpu needs MODELS (small configs, e.g. in CONFIG_DIR): the default models train for hours on a CPU"
command -v mpirun >/dev/null || die "mpirun not found (apt install openmpi-bin)"
command -v python3 >/dev/null || die "python3 not found"

# GPU counts: checked against the GPUs present; by default 1, 2, 4, ...
if [[ $device == cuda ]]; then
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: DEVICE=cuda needs NVIDIA GPUs"
  gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
  ((gpus >= 2)) || die "this benchmark needs at least 2 GPUs; nvidia-smi lists $gpus"
  if ((${#counts[@]} == 0)); then
    for ((n = 1; n <= gpus; n *= 2)); do counts+=("$n"); done
  fi
  for n in "${counts[@]}"; do
    ((n <= gpus)) || die "GPUS: $n GPUs asked for, nvidia-smi lists $gpus"
  done
  name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
else
  ((${#counts[@]} > 0)) || counts=(1 2)
  gpus=${counts[-1]} name="CPU ($(getconf _NPROCESSORS_ONLN) cores)"
  torch=0
fi
if [[ $torch == auto ]]; then
  if python3 -c "import torch" 2>/dev/null && command -v torchrun >/dev/null; then
    torch=1
  else
    torch=0
    echo "note: PyTorch (python3 -c 'import torch', torchrun) not found: lsgpt only" >&2
  fi
elif [[ $torch == 1 ]]; then
  python3 -c "import torch" 2>/dev/null || die "TORCH=1 but python3 cannot import torch"
  command -v torchrun >/dev/null || die "TORCH=1 but torchrun is not on PATH"
fi

mkdir -p "$out/data"
export NCCL_NVLS_ENABLE=0
# One host needs no ssh; OpenMPI refuses to start where none is installed
# unless its remote-launch agent is named (any program that exists will do).
command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm_rsh_agent=false
mpi_flags=(--bind-to none -x NCCL_NVLS_ENABLE)
[[ $(id -u) -eq 0 ]] && mpi_flags+=(--allow-run-as-root)
# On the CPU the ranks share the cores: one thread each, more ranks than cores allowed.
[[ $device == cpu ]] && mpi_flags+=(--oversubscribe -x OMP_NUM_THREADS=1)

# Random GPT-2 tokens in lsgpt's token-file format (64-byte header, uint16).
python3 - "$out/data" "$tokens" <<'PY'
import os, random, struct, sys
def write(path, n, vocab=50257, seed=0):
    rng = random.Random(seed)
    header = b"LSGPTTOK" + struct.pack("<IIQ", 1, vocab, n)
    with open(path, "wb") as f:
        f.write(header.ljust(64, b"\0"))
        f.write(struct.pack(f"<{n}H", *(rng.randrange(vocab) for _ in range(n))))
write(os.path.join(sys.argv[1], "train.bin"), int(sys.argv[2]), seed=1)
write(os.path.join(sys.argv[1], "valid.bin"), 40_000, seed=2)
PY

results="$out/multi_gpu.jsonl"
: > "$results"
echo "== device: $name x $gpus, $(date -u +%F); GPU counts: ${counts[*]}; models: ${models[*]}; PyTorch peer: $torch"

# One lsgpt run: model stem, attention (ls|mhsa), GPU count.
run_lsgpt() {
  local model=$1 attn=$2 n=$3 config="$config_dir/$1.json"
  [[ $attn == mhsa ]] && config="$config_dir/$1-mhsa.json"
  local run="$out/run-$model-$attn-$n" launch=()
  rm -rf "$run"
  ((n > 1)) && launch=(mpirun "${mpi_flags[@]}" -np "$n")
  "${launch[@]}" "$lsgpt" train --device "$device" --config "$config" \
    --train "$out/data/train.bin" --valid "$out/data/valid.bin" --out-dir "$run" \
    --batch-size "$batch" --train-seq-len "$seq_len" --grad-accum 1 --steps "$steps" --warmup 2 \
    --eval-every 0 --final-eval-batches 1 --checkpoint-every 0 --log-every 10 \
    > "$run.log" 2>&1 || { echo "error: lsgpt train ($model, $attn, $n GPUs) failed:" >&2; tail -20 "$run.log" >&2; exit 1; }
  python3 - "$run/metrics.jsonl" "$model" "$attn" "$n" "$warmup" "$batch" "$seq_len" >> "$results" <<'PY'
import json, statistics, sys
path, model, attn = sys.argv[1:4]
n, warmup, batch, seq_len = map(int, sys.argv[4:8])
steps = [json.loads(l) for l in open(path) if l.strip()]
tps = [r["tokens_per_s"] for r in steps if r.get("type") == "train"][warmup:]
if not tps:
    sys.exit(f"no steps after the first {warmup} in {path}")
print(json.dumps({"impl": "lsgpt", "model": model, "attn": attn, "gpus": n,
                  "batch_per_gpu": batch, "seq_len": seq_len, "steps_timed": len(tps),
                  "tokens_per_s": round(statistics.median(tps)),
                  "tokens_per_s_per_gpu": round(statistics.median(tps) / n)}))
PY
  tail -1 "$results"
}

# The PyTorch peer: both attentions in one torchrun, rows appended by rank 0.
run_torch() {
  local model=$1 n=$2 log="$out/torch-$1-$2.log"
  torchrun --standalone --nproc_per_node "$n" "$here/bench/ddp_torch.py" \
    --config "$config_dir/$model.json" --attn ls mhsa --batch "$batch" --seq-len "$seq_len" \
    --steps "$((steps - warmup))" --warmup "$warmup" --json "$results" \
    > "$log" 2>&1 || { echo "error: PyTorch DDP ($model, $n GPUs) failed:" >&2; tail -20 "$log" >&2; exit 1; }
  grep '^{' "$log" || true
}

for model in "${models[@]}"; do
  for n in "${counts[@]}"; do
    run_lsgpt "$model" ls "$n"
    run_lsgpt "$model" mhsa "$n"
    if ((torch)); then run_torch "$model" "$n"; fi
  done
done
python3 "$here/bench/multi_gpu_table.py" "$results"
# Beside the measurement, what bench/scaling_model.py expects from the 1- and
# 2-GPU steps (docs/DISTRIBUTED.md, "Past two GPUs").
if [[ $device == cuda && -z ${CONFIG_DIR:-} && " ${counts[*]} " == *" 1 "* &&
      " ${counts[*]} " == *" 2 "* ]]; then
  echo
  echo "== the scaling model, calibrated on this run's 1- and 2-GPU steps"
  python3 "$here/bench/scaling_model.py" --measured "$results" --models "${models[@]}" --gpus "${counts[@]}"
fi
