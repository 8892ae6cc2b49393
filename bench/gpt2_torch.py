#!/usr/bin/env python3
"""GPT-2 small (124M) training throughput in PyTorch, the baseline for lsgpt.

The same model lsgpt trains: 12 layers, 12 heads, width 768, context 1024,
vocabulary 50257 padded to 50304, tied input/output embedding, pre-LayerNorm,
GELU (tanh) MLP. Attention through FlexAttention (compiled, as it is meant to
be used) with either the causal mask (MHSA) or the LS mask (heads [0, n_local)
local with window w, the rest global causal). B = 16, T = 1024, bf16 autocast,
fused AdamW, global-norm clipping at 1.0, random tokens.

Modes: "eager" runs the model eagerly (only the attention kernel is
compiled); "compile" wraps the whole model in torch.compile.

Prints one JSON object per (attention, mode): tokens/s (median over timed
steps) and peak GPU memory.

Usage: bench/gpt2_torch.py [--attn mhsa ls] [--mode eager compile] [--steps 30]
       [--local 11] [--window 100]
"""
import argparse
import datetime
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

flex = torch.compile(flex_attention, dynamic=False)


class Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def forward(self, x, block_mask):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = flex(q, k, v, block_mask=block_mask)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer=12, n_head=12, d=768, seq_len=1024, vocab=50304):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets, block_mask, vocab=50257):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x, block_mask)
        logits = self.ln_f(x) @ self.wte.weight.t()
        logits = logits[..., :vocab]  # padded vocabulary entries are never predicted
        return F.cross_entropy(logits.float().view(-1, vocab), targets.view(-1))


def run(attn, mode, args):
    torch.manual_seed(0)
    B, T, H = args.batch, args.seq_len, 12
    n_local = args.local if attn == "ls" else 0
    window = args.window

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((h >= n_local) | (q_idx - kv_idx < window))

    block_mask = create_block_mask(mask_mod, B=None, H=H, Q_LEN=T, KV_LEN=T, device="cuda")
    model = GPT(seq_len=T).cuda()
    step_model = torch.compile(model) if mode == "compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    g = torch.Generator(device="cuda").manual_seed(1)
    idx = torch.randint(0, 50257, (B, T + 1), device="cuda", generator=g)
    x, y = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x, y, block_mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {
        "model": "gpt2-small", "attention": attn, "n_local": n_local,
        "window": window if n_local else None, "mode": mode, "B": B, "T": T,
        "tokens_per_s": round(B * T / median), "step_ms": round(median * 1e3, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": round(loss.item(), 4), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attn", nargs="+", default=["mhsa", "ls"], choices=["mhsa", "ls"])
    ap.add_argument("--mode", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--local", type=int, default=11, help="local heads of 12 (LS)")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    for attn in args.attn:
        for mode in args.mode:
            print(json.dumps(run(attn, mode, args)), flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
