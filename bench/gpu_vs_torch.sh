#!/usr/bin/env bash
# lsgpt against PyTorch on one GPU, in one run: (a) attention forward and
# forward+backward (bench/attention_vs_torch.py) and (b) GPT-2 small training
# tokens/s and peak memory (bench/train_vs_torch.py). Prints both tables with
# ratios; writes attention.json and training.json into OUT_DIR.
#
# Usage: bench/gpu_vs_torch.sh BUILD_DIR OUT_DIR
#   BUILD_DIR: a build configured with -DLSGPT_CUDA=ON (holds bench_train and
#   bench_cuda_attention). Needs python3 with PyTorch (CUDA), Triton and
#   FlexAttention.
set -euo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$1 out=$2
for exe in bench_train bench_cuda_attention; do
  if [[ ! -x "$build/$exe" ]]; then
    echo "error: $build/$exe not found; build with -DLSGPT_CUDA=ON first" >&2
    exit 1
  fi
done
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
echo "== device: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1), $(date -u +%F)"
echo "== (a) attention, lsgpt vs SDPA flash / cuDNN / compiled FlexAttention"
python3 "$here/attention_vs_torch.py" --bench "$build/bench_cuda_attention" --json "$out/attention.json"
echo "== (b) GPT-2 small training, lsgpt vs PyTorch eager / torch.compile"
python3 "$here/train_vs_torch.py" --bench "$build/bench_train" --json "$out/training.json"
