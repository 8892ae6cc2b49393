#!/usr/bin/env python3
"""Checks lsgpt's CUDA attention against a float64 PyTorch reference.

bench/attention_dump writes, for MHSA, LS and span settings at T in
{1, 7, 100, 1000, 4096} and head dims 64 and 128, the inputs (qkv, dout) and
every output of lsgpt's forward and backward. This script recomputes them in
float64 on the GPU from an explicit T x T mask and explicit P, written from
the definitions (docs/SPAN.md, lsgpt's reconstruction of arXiv:2512.13033)
and independent of lsgpt's code, and prints the normwise relative error
||lsgpt - ref|| / ||ref|| of each tensor.

Tolerances: bf16 tensors (out, kbar, dq, dk, dv) 1e-2; f32 tensors (lse,
max_logit) 1e-5. Exit status 1 if any case exceeds them. Tensors that vanish
in exact arithmetic (dq and dk at T = 1, where P = 1) are measured against an
RMS floor of 1e-3 instead of their own zero norm.

Usage: tools/attention_reference.py DUMP_DIR   (after: attention_dump DUMP_DIR)
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

BF16_TOL = 1e-2
F32_TOL = 1e-5
SPAN_EPS = 1e-12


def project(g, u, alpha_par, alpha_perp):
    """g' = alpha_par g_par + alpha_perp g_perp along u, row by row."""
    gu = (g * u).sum(-1, keepdim=True)
    uu = (u * u).sum(-1, keepdim=True)
    gg = (g * g).sum(-1, keepdim=True)
    present = uu > SPAN_EPS * (1 + gg)
    g_par = torch.where(present, gu / torch.where(present, uu, torch.ones_like(uu)) * u,
                        torch.zeros_like(g))
    rebuilt = alpha_par * g_par + alpha_perp * (g - g_par)
    return torch.where(present, rebuilt, g)


def reference(case, qkv, dout):
    B, T, H, D = case["B"], case["T"], case["n_head"], case["head_dim"]
    C = H * D
    tau = 1.0 / math.sqrt(D)
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, H, D).transpose(1, 2) for i in range(3))
    do = dout.reshape(B, T, H, D).transpose(1, 2)
    i = torch.arange(T, device=qkv.device).view(T, 1)
    j = torch.arange(T, device=qkv.device).view(1, T)
    causal = j <= i
    band = causal & (j > i - case["window"])
    local = (torch.arange(H, device=qkv.device) < case["n_local"]).view(H, 1, 1)
    visible = torch.where(local, band, causal)  # [H, T, T]
    s = tau * q @ k.transpose(-1, -2)
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.unsqueeze(-1))
    o = p @ v
    max_logit = s.masked_fill(~visible, -math.inf).amax(dim=(0, 2, 3))
    kbar = p @ k
    dv = p.transpose(-1, -2) @ do
    dp = do @ v.transpose(-1, -2)
    delta = (p * dp).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = tau * ds @ k
    dk = tau * ds.transpose(-1, -2) @ q
    span = case["span"]
    if span["q"]["enabled"]:
        u = kbar if span["q"]["basis"] == "cross" else q
        dq = project(dq, u, span["q"]["alpha_par"], span["q"]["alpha_perp"])
    if span["k"]["enabled"]:
        if span["k"]["basis"] == "cross":
            colsum = p.sum(-2).unsqueeze(-1)  # [B, H, T, 1]
            qsum = p.transpose(-1, -2) @ q
            u = torch.where(colsum > 0, qsum / torch.where(colsum > 0, colsum, 1.0), 0.0)
        else:
            u = k
        dk = project(dk, u, span["k"]["alpha_par"], span["k"]["alpha_perp"])
    if span["v"]["enabled"]:
        dv = project(dv, v, span["v"]["alpha_par"], span["v"]["alpha_perp"])

    def merge(x):
        return x.transpose(1, 2).reshape(B, T, C)

    return {
        "out": merge(o),
        "lse": lse,
        "max_logit": max_logit,
        "kbar": merge(kbar),
        "dq": merge(dq),
        "dk": merge(dk),
        "dv": merge(dv),
    }


def rel_err(a, b, floor=0.0):
    """||a - b|| / max(||b||, floor * sqrt(numel))."""
    num = torch.linalg.vector_norm(a - b).item()
    den = torch.linalg.vector_norm(b).item()
    if not math.isfinite(num):
        return math.inf
    return num / max(den, floor * math.sqrt(b.numel()), 1e-300)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    root = Path(sys.argv[1])
    cases = json.loads((root / "manifest.json").read_text())
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"reference device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}")
    header = f"{'case':28s} " + " ".join(f"{n:>9s}" for n in
                                         ["out", "lse", "maxlogit", "kbar", "dq", "dk", "dv"])
    print(header)
    failures = 0
    worst = {}
    for case in cases:
        def load(name):
            return torch.from_numpy(np.load(root / f"{case['name']}_{name}.npy")).to(dev, torch.float64)

        qkv, dout = load("qkv"), load("dout")
        ref = reference(case, qkv, dout)
        C = case["n_head"] * case["head_dim"]
        dqkv = load("dqkv")
        got = {"out": load("out"), "lse": load("lse"), "max_logit": load("max_logit"),
               "dq": dqkv[..., :C], "dk": dqkv[..., C:2 * C], "dv": dqkv[..., 2 * C:]}
        if case["kbar"]:
            got["kbar"] = load("kbar")
        cells = []
        for name in ["out", "lse", "max_logit", "kbar", "dq", "dk", "dv"]:
            if name not in got:
                cells.append(f"{'-':>9s}")
                continue
            f32 = name in ("lse", "max_logit")
            err = rel_err(got[name], ref[name], 0.0 if f32 else 1e-3)
            tol = F32_TOL if f32 else BF16_TOL
            worst[name] = max(worst.get(name, 0.0), err)
            bad = not err <= tol
            failures += bad
            cells.append(f"{err:9.2e}" + ("!" if bad else ""))
        print(f"{case['name']:28s} " + " ".join(cells))
        del ref, got, qkv, dout, dqkv
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    print("worst: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    print(f"tolerances: bf16 tensors {BF16_TOL}, f32 tensors {F32_TOL}; "
          f"{len(cases)} cases, {failures} over tolerance")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
