#!/usr/bin/env python3
"""GPT-2 data-parallel training in PyTorch (DDP), the multi-GPU peer of lsgpt.

The model of bench/gpt2_torch.py (by default GPT-2 small: 12 layers, 12
heads, width 768, T = 1024; --config takes the shape, n_local and window of
an lsgpt config such as configs/gpt2-medium.json; FlexAttention with the
causal or LS mask), wrapped as nanoGPT does: compiled
with torch.compile, then DistributedDataParallel (NCCL, default 25 MB buckets,
gradients reduced during the backward pass), bf16 autocast, fused AdamW,
global-norm clipping at 1.0, random tokens, B sequences per GPU.

Launch with torchrun; rank 0 prints one JSON line per attention kind with the
aggregate tokens/s over all GPUs (median step time over timed steps):

    torchrun --standalone --nproc_per_node 2 bench/ddp_torch.py --attn mhsa ls
    torchrun --standalone --nproc_per_node 8 bench/ddp_torch.py \
        --config configs/gpt2-medium.json --attn mhsa ls
"""
import argparse
import datetime
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2_torch import GPT


def run(attn, args, rank, world):
    torch.manual_seed(0)
    B, T, H = args.batch, args.seq_len, args.heads
    n_local = args.local if attn == "ls" else 0
    window = args.window

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((h >= n_local) | (q_idx - kv_idx < window))

    block_mask = create_block_mask(mask_mod, B=None, H=H, Q_LEN=T, KV_LEN=T, device="cuda")
    model = GPT(n_layer=args.layers, n_head=H, d=args.width, seq_len=T).cuda()
    model = DDP(torch.compile(model), device_ids=[torch.cuda.current_device()])
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    g = torch.Generator(device="cuda").manual_seed(1 + rank)  # each rank its own data
    idx = torch.randint(0, 50257, (B, T + 1), device="cuda", generator=g)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y, block_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # The slowest rank sets the pace: take each step's maximum over ranks.
    t = torch.tensor(times, device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    times = sorted(t.tolist())
    median = times[len(times) // 2]
    return {
        "model": args.name, "peer": "torch-ddp-compile", "attention": attn,
        "n_local": n_local, "window": window if n_local else None, "gpus": world,
        "B_per_gpu": B, "T": T, "tokens_per_s": round(B * T * world / median),
        "step_ms": round(median * 1e3, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": round(loss.item(), 4), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
    }


def apply_config(args, ap):
    """The shape of an lsgpt config file (model/config.h's keys and defaults)."""
    try:
        with open(args.config) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        ap.error(f"--config {args.config}: {e}")
    args.layers = cfg.get("n_layer", 12)
    args.heads = cfg.get("n_head", 12)
    args.width = cfg.get("d_model", 768)
    args.window = cfg.get("window", 100)
    local = cfg.get("n_local", args.heads - 1)
    if not isinstance(local, int):
        ap.error(f"--config {args.config}: n_local must be one number for this peer")
    args.local = local
    args.name = os.path.splitext(os.path.basename(args.config))[0].removesuffix("-mhsa")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attn", nargs="+", default=["mhsa", "ls"], choices=["mhsa", "ls"])
    ap.add_argument("--batch", type=int, default=16, help="sequences per GPU")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--config", help="an lsgpt config JSON: its n_layer, n_head, d_model, "
                    "n_local (LS; one number) and window replace the options below")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--local", type=int, default=11, help="local heads per layer (LS)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", help="append the results to this file (rank 0)")
    args = ap.parse_args()
    args.name = "gpt2-small"
    if args.config:
        apply_config(args, ap)
    if not 0 <= args.local < args.heads or args.width % args.heads:
        ap.error(f"{args.heads} heads with {args.local} local and width {args.width}: "
                 "need 0 <= local < heads and heads dividing the width")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.backends.cuda.matmul.allow_tf32 = True
    for attn in args.attn:
        result = run(attn, args, rank, world)
        if rank == 0:
            print(json.dumps(result), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(result) + "\n")
        torch.cuda.empty_cache()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
