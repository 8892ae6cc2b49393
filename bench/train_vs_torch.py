#!/usr/bin/env python3
"""GPT-2 small training on one GPU: lsgpt against PyTorch, side by side, in one run.

Runs bench_train (lsgpt, --device cuda) on configs/gpt2-small.json (LS: 11 of
12 heads local, w = 100) and configs/gpt2-small-mhsa.json at B = 16, T = 1024,
then the same model in PyTorch (bench/gpt2_torch.py: bf16 autocast, fused
AdamW, FlexAttention with the same block mask) eagerly and under
torch.compile. Both sides time forward + backward + global-norm clipping +
AdamW on random tokens and report the median step.

Prints tokens/s, peak GPU memory and the ratios lsgpt / torch (tokens/s:
above 1 means lsgpt is faster; memory: below 1 means lsgpt needs less).
--json PATH writes every number.

Usage: bench/train_vs_torch.py --bench BUILD/bench_train [--steps 20] [--json out.json]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt2_torch  # noqa: E402

# bench_train reads relative config paths from the source tree.
CASES = [("ls", "configs/gpt2-small.json"), ("mhsa", "configs/gpt2-small-mhsa.json")]


def lsgpt_numbers(bench, batch, seq_len, steps, warmup):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [bench, "--device", "cuda", "--steps", str(steps), "--warmup", str(warmup),
               "--json", f.name]
        for _, config in CASES:
            cmd += ["--case", f"{config}:{batch}:{seq_len}"]
        subprocess.run(cmd, check=True)
        rows = json.load(open(f.name))
    return {attn: row for (attn, _), row in zip(CASES, rows)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="path of the bench_train binary")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()

    ours = lsgpt_numbers(args.bench, args.batch, args.seq_len, args.steps, args.warmup)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch_args = argparse.Namespace(batch=args.batch, seq_len=args.seq_len, local=11, window=100,
                                    warmup=args.warmup, steps=args.steps)
    theirs = {}
    for attn, _ in CASES:
        for mode in ("eager", "compile"):
            theirs[(attn, mode)] = gpt2_torch.run(attn, mode, torch_args)
            torch.cuda.empty_cache()

    device = torch.cuda.get_device_name()
    today = datetime.date.today().isoformat()
    print(f"\nGPT-2 small training, B = {args.batch}, T = {args.seq_len}, bf16, {device}, {today}")
    print("| attention | lsgpt tok/s | torch eager tok/s | torch.compile tok/s | "
          "vs eager | vs compile | lsgpt GiB | eager GiB | compile GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for attn, _ in CASES:
        o, e, c = ours[attn], theirs[(attn, "eager")], theirs[(attn, "compile")]
        label = "LS (11 of 12 local, w = 100)" if attn == "ls" else "MHSA"
        print(f"| {label} | {o['tokens_per_s']:.0f} | {e['tokens_per_s']} | {c['tokens_per_s']} | "
              f"{o['tokens_per_s'] / e['tokens_per_s']:.2f}x | "
              f"{o['tokens_per_s'] / c['tokens_per_s']:.2f}x | {o['peak_memory_gib']:.2f} | "
              f"{e['peak_memory_gib']:.2f} | {c['peak_memory_gib']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "date": today, "torch": torch.__version__,
                       "lsgpt": ours, "torch_runs": list(theirs.values())}, f, indent=1)


if __name__ == "__main__":
    main()
