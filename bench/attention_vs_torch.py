#!/usr/bin/env python3
"""lsgpt's CUDA attention against PyTorch, side by side, in one run.

Runs bench_cuda_attention (lsgpt; CUDA events, median of many calls) over the
standard grid -- width 2048, 16384 tokens per batch (B = 16384 / T), head_dim
64 and 128 (n_head = 2048 / head_dim), T in {1024, 4096, 16384} -- and times
the same shapes in PyTorch (bf16, triton.testing.do_bench, median):

  MHSA                      vs  SDPA, flash backend and cuDNN backend (is_causal)
  LS: 11 of 12 heads local  vs  FlexAttention, compiled, with the same block mask
      at w = 100; half local
      at w = 256

Prints forward and forward+backward times and the ratio torch / lsgpt (above
1: lsgpt is faster). --json PATH also writes every number.

--labels mhsa,ls_half_w256 times only those settings on the PyTorch side;
--lengths 16384 and --head-dims 128 likewise only those T and head dims
(FlexAttention's compile at T 16k takes minutes).
--backward-variants default,ws_one_pass runs the lsgpt side once per Hopper
backward (LSGPT_ATTENTION_SM90_BACKWARD; "default", the only one unless
given, leaves it to the shape rules with the deterministic default, and
ignores LSGPT_ATTENTION_SM90_BACKWARD and LSGPT_ATTENTION_DETERMINISTIC
in the caller's environment), one row each: e.g. the default against the
opt-in one-pass kernel, whose dQ is summed by atomics as cuDNN's and
FlashAttention's.

Usage: bench/attention_vs_torch.py --bench BUILD/bench_cuda_attention [--json out.json]
       [--labels L1,L2] [--lengths T1,T2] [--head-dims D1,D2] [--backward-variants V1,V2]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench

# Every (shape, mask) pair compiles its own kernel: lift dynamo's recompile cap.
for name in ("recompile_limit", "accumulated_recompile_limit", "cache_size_limit",
             "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, name):
        setattr(torch._dynamo.config, name, 10_000)
flex_compiled = torch.compile(flex_attention, dynamic=False)


def lsgpt_results(bench, backward="default"):
    # "default": the shape rules with the deterministic default, whatever
    # the caller's environment says.
    env = {k: v for k, v in os.environ.items()
           if k not in ("LSGPT_ATTENTION_SM90_BACKWARD", "LSGPT_ATTENTION_DETERMINISTIC")}
    if backward != "default":
        env["LSGPT_ATTENTION_SM90_BACKWARD"] = backward
    out = subprocess.run([bench], check=True, capture_output=True, text=True, env=env).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {(r["label"], r["T"], r["head_dim"]): r for r in rows}


def time_fwd_bwd(fn, q, k, v):
    """Median ms of fn(q, k, v) and of fn plus its backward."""
    dout = torch.randn_like(q)

    def fwd():  # with autograd on, so forward and backward share one compiled graph
        fn(q, k, v)

    def fwd_bwd():
        o = fn(q, k, v)
        torch.autograd.grad(o, (q, k, v), dout)

    return (do_bench(fwd, warmup=25, rep=200, return_mode="median"),
            do_bench(fwd_bwd, warmup=25, rep=200, return_mode="median"))


def make_qkv(B, H, T, D):
    g = torch.Generator(device="cuda").manual_seed(T * 131 + D)
    return [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
            .mul_(0.5).requires_grad_() for _ in range(3)]


def sdpa(backend):
    def fn(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn


def flex_for(n_local, window, H, T):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((h >= n_local) | (q_idx - kv_idx < window))

    try:  # _compile builds the block mask without materialising H x T x T booleans
        block_mask = create_block_mask(mask_mod, B=None, H=H, Q_LEN=T, KV_LEN=T, device="cuda",
                                       _compile=True)
    except TypeError:
        block_mask = create_block_mask(mask_mod, B=None, H=H, Q_LEN=T, KV_LEN=T, device="cuda")

    def fn(q, k, v):
        return flex_compiled(q, k, v, block_mask=block_mask)
    return fn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", required=True, help="path of the bench_cuda_attention binary")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--labels", help="comma-separated settings to time (default: all)")
    ap.add_argument("--lengths", help="comma-separated T values to compare with PyTorch "
                    "(default: all of the grid's)")
    ap.add_argument("--head-dims", help="comma-separated head dims to compare with PyTorch "
                    "(default: 64 and 128)")
    ap.add_argument("--backward-variants", default="default",
                    help="comma-separated LSGPT_ATTENTION_SM90_BACKWARD values for lsgpt's side")
    args = ap.parse_args()
    labels = set(args.labels.split(",")) if args.labels else None
    lengths = {int(t) for t in args.lengths.split(",")} if args.lengths else None
    head_dims = {int(d) for d in args.head_dims.split(",")} if args.head_dims else None
    variants = args.backward_variants.split(",")

    device = torch.cuda.get_device_name()
    date = datetime.date.today().isoformat()
    print(f"device: {device}; date: {date}; torch {torch.__version__}", flush=True)
    runs = {v: lsgpt_results(args.bench, v) for v in variants}
    ours = runs[variants[0]]
    print(f"lsgpt: {len(ours)} configurations timed, backward {', '.join(variants)}", flush=True)

    results = []
    header = (f"{'setting':16s} {'D':>4s} {'T':>6s} {'B':>3s} {'H':>3s} | {'lsgpt fwd':>9s} "
              f"{'torch fwd':>9s} {'ratio':>6s} | {'lsgpt f+b':>9s} {'torch f+b':>9s} "
              f"{'ratio':>6s} | torch kernel")
    print(header)
    for (label, T, D), r in sorted(ours.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        if (label == "custom" or (labels and label not in labels) or
                (lengths and T not in lengths) or (head_dims and D not in head_dims)):
            continue
        B, H = r["B"], r["heads"]
        q, k, v = make_qkv(B, H, T, D)
        if "span" in label:  # the span decomposition has no PyTorch counterpart
            candidates = []
        elif label == "mhsa":
            candidates = [("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION)),
                          ("sdpa-cudnn", sdpa(SDPBackend.CUDNN_ATTENTION))]
        else:
            candidates = [("flex-compiled", flex_for(r["local"], r["window"], H, T))]
        tagged = variants != ["default"]
        if not candidates:
            for variant in variants:
                r = runs[variant][(label, T, D)]
                tag = f"lsgpt backward {variant}" if tagged else ""
                print(f"{label:16s} {D:4d} {T:6d} {B:3d} {H:3d} | {r['fwd_ms']:9.3f} {'':>9s} "
                      f"{'':>6s} | {r['fwd_bwd_ms']:9.3f} {'':>9s} {'':>6s} | {tag}", flush=True)
                results.append({"lsgpt": r, "lsgpt_backward": variant})
            continue
        for name, fn in candidates:
            try:
                t_fwd, t_fb = time_fwd_bwd(fn, q, k, v)
            except Exception as e:  # a backend not available on this build/GPU
                print(f"{label:16s} {D:4d} {T:6d} {B:3d} {H:3d} | {name}: unavailable ({e})",
                      flush=True)
                continue
            for variant in variants:
                r = runs[variant][(label, T, D)]
                tag = f"{name}; lsgpt backward {variant}" if tagged else name
                print(f"{label:16s} {D:4d} {T:6d} {B:3d} {H:3d} | {r['fwd_ms']:9.3f} {t_fwd:9.3f} "
                      f"{t_fwd / r['fwd_ms']:6.2f} | {r['fwd_bwd_ms']:9.3f} {t_fb:9.3f} "
                      f"{t_fb / r['fwd_bwd_ms']:6.2f} | {tag}", flush=True)
                results.append({"lsgpt": r, "lsgpt_backward": variant,
                                "torch": {"kernel": name, "fwd_ms": t_fwd, "fwd_bwd_ms": t_fb}})
        del q, k, v
        torch.cuda.empty_cache()
    print("ratio = torch time / lsgpt time (above 1: lsgpt faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "date": date, "torch": torch.__version__,
                       "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
