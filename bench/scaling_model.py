#!/usr/bin/env python3
"""Expected data-parallel scaling of lsgpt past two GPUs, from measured numbers.

A model of lsgpt's ZeRO-1 step on N GPUs (src/dist/data_parallel.cpp), each
GPU with the same B x T micro-batch as on one GPU:

    t(N) = t(1) - (1 - 1/N) t_opt + E(N)
    E(N) = (A(N) + R) / beta + (L - 1) max(0, r_layer - t_bwd_layer)

  t(1)   one GPU's step (measured: B T / tokens/s).
  t_opt  the sharded part of the step on one GPU (AdamW and the squared
         gradient norm), which each of N GPUs does for 1/N of the parameters.
  A(N)   bytes each GPU sends in the parameter all-gather after AdamW (NCCL
         ring, bf16, not overlapped): (N - 1)/N * 2 P, P the padded flat
         parameter count.
  R      bytes of the reductions left after the backward pass: each bucket
         is reduced (grouped ncclReduce, bf16, one per owning rank) to the
         owners of its elements; on a ring/chain every GPU sends the bucket
         once, whatever N is. Exposed: the embedding bucket (wte, wpe; its
         gradient is complete only at the very end) and layer 0's bucket
         (issued when layer 0's backward ends, followed only by the embedding
         backward). R = 2 (P_emb + P_layer).
  beta   the bandwidth those bytes move at. Calibrated: from the measured
         2-GPU step, beta_eff = (A(2) + R) / E(2) with E(2) = t(2) - t(1) +
         t_opt / 2. beta_eff lumps every loss of the 2-GPU run into the
         non-overlapped bytes (the pessimistic reading); the optimistic one
         keeps E(2) as a fixed cost and adds only the growth of the
         all-gather at the nominal NCCL bus bandwidth:
             E_opt(N) = E(2) + (A(N) - A(2)) / beta_nominal.
  r_layer = 2 P_layer / beta, t_bwd_layer = f_bwd (t(1) - t_opt) / L: a layer's
         reduction is hidden under the next layer's backward if shorter.

tokens/s(N) = N B T / t(N); scaling efficiency = t(1) / t(N).

Inputs: OUT_DIR/multi_gpu.jsonl of bench/multi_gpu.sh (1- and 2-GPU rows per
model and attention; rows at more GPUs are shown beside the prediction), or,
without --measured, the 2-GPU H200 run of docs/DISTRIBUTED.md (2026-11-30).
A model without a measured 1-GPU step gets t(1) from GPT-2 small's by the
ratio of training FLOPs per token (same FLOP rate), and a model without a
2-GPU step gets GPT-2 small's beta_eff for the same attention.

Usage: bench/scaling_model.py [--measured multi_gpu.jsonl] [--gpus 1 2 4 8]
           [--models gpt2-small gpt2-medium] [--json]
"""
import argparse
import json
import os
import signal
import sys

import benchmark_rows

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "..", "configs")
BF16 = 2  # bytes per element of the reduced gradients and gathered parameters
# docs/DISTRIBUTED.md, two H200s on NVLink, 2026-11-30, B = 16, T = 1024.
DOCUMENTED = {("gpt2-small", "ls", 1): 526116, ("gpt2-small", "ls", 2): 1012800,
              ("gpt2-small", "mhsa", 1): 477249, ("gpt2-small", "mhsa", 2): 915265}
# NCCL's bus bandwidth on NVLink 4 (H100/H200 through NVSwitch) without
# NVLink SHARP: 450 GB/s line rate less ~20% protocol overhead = 370 GB/s, the
# busbw of non-allreduce collectives or NCCL_ALGO=RING (NCCL's maintainer in
# https://github.com/NVIDIA/nccl-tests/issues/212).
NOMINAL_GBS = 370.0
# AdamW (bf16 weight written, f32 master, moments read and written, bf16
# gradient read: 28 bytes a parameter) plus the squared norm (2 bytes): on the
# H100 profile of docs/BENCHMARKS.md 1.82 ms for 124.5M parameters; scaled by
# HBM bandwidth to the H200 (4.8 / 3.35 TB/s): 1.27 ms, 10.2 ps a parameter.
OPT_PS_PER_PARAM = 1.82e-3 / 124.475904e6 * 3.35 / 4.8 * 1e12
BWD_FRACTION = 2.0 / 3.0  # the backward's share of forward + backward


class Shape:
    """Parameter counts and FLOPs of an lsgpt config (model/params.cpp's layout)."""

    def __init__(self, cfg, vocab=50257):
        self.L, self.H, self.C = cfg["n_layer"], cfg["n_head"], cfg["d_model"]
        self.T = cfg.get("seq_len", 1024)
        self.n_local = cfg.get("n_local", self.H - 1)
        self.window = cfg.get("window", 100)
        self.Vp = (vocab + 63) // 64 * 64
        C = self.C
        self.p_emb = self.Vp * C + self.T * C          # wte, wpe: one bucket
        self.p_layer = 12 * C * C + 13 * C             # one layer's bucket
        self.p_total = self.p_emb + self.L * self.p_layer + 2 * C

    def flops_per_token(self, local, T):
        """Forward + backward: 6 (products' weights) + 12 L C (keys per query)."""
        local_keys = sum(min(q + 1, self.window) for q in range(T)) / T
        global_keys = (T + 1) / 2
        keys = (local * local_keys + (self.H - local) * global_keys) / self.H
        return 6 * (self.L * 12 * self.C ** 2 + self.Vp * self.C) + 12 * self.L * self.C * keys


def load_shape(model):
    path = os.path.join(CONFIGS, model + ".json")
    try:
        with open(path) as f:
            return Shape(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"error: model {model}: cannot read {path}: {e!r}")


def load_measured(path):
    """{(model, attn, gpus): tokens/s} and the B, T of the lsgpt rows."""
    speeds, bt, first = {}, None, {}
    for number, line in benchmark_rows.lines(path):
        try:
            r = json.loads(line)
        except ValueError as e:
            sys.exit(f"error: {path}:{number}: {e}")
        if not isinstance(r, dict):
            sys.exit(f"error: {path}:{number}: not a JSON object: {line.strip()}")
        if r.get("impl") != "lsgpt":
            continue  # PyTorch rows
        try:
            key = (r["model"], r["attn"], r["gpus"])
            row_bt = (r["batch_per_gpu"], r["seq_len"])
            tps = r["tokens_per_s"]
            for name, v in zip(("gpus", "batch_per_gpu", "seq_len"), (key[2], *row_bt)):
                benchmark_rows.check_count(name, v)
            benchmark_rows.check_speed(tps)
        except (KeyError, ValueError) as e:
            sys.exit(f"error: {path}:{number}: not an lsgpt row ({e!r})")
        if key in first:
            sys.exit(f"error: {path}:{number}: a second row for {key[0]} {key[1]} on "
                     f"{key[2]} GPU(s) (the first is line {first[key]}): keep one of them")
        if bt is not None and row_bt != bt:
            sys.exit(f"error: {path}:{number}: B = {row_bt[0]}, T = {row_bt[1]}, but the rows "
                     f"before it have B = {bt[0]}, T = {bt[1]}: one run's rows at a time")
        first[key], bt = number, row_bt
        speeds[key] = float(tps)
    if not speeds:
        sys.exit(f"error: {path} holds no lsgpt rows")
    return speeds, bt


def predict(shape, local, t1, t2, beta_fixed, gpus, tokens_per_step, nominal_gbs):
    """Rows of the model for one (model, attention): see the module docstring."""
    t_opt = OPT_PS_PER_PARAM * 1e-12 * shape.p_total
    ag = lambda n: (n - 1) / n * BF16 * shape.p_total
    tail = BF16 * (shape.p_emb + shape.p_layer)
    if t2 is not None:
        e2 = t2 - t1 + t_opt / 2
        if e2 <= 0:
            sys.exit(f"error: the 2-GPU step ({t2 * 1e3:.3f} ms) is faster than one GPU's less "
                     f"half the optimizer: nothing left to calibrate the communication on")
        beta = (ag(2) + tail) / e2
    else:
        beta = beta_fixed
        e2 = (ag(2) + tail) / beta
    t_bwd_layer = BWD_FRACTION * (t1 - t_opt) / shape.L
    r_layer = BF16 * shape.p_layer / beta
    queue = (shape.L - 1) * max(0.0, r_layer - t_bwd_layer)
    rows = []
    for n in gpus:
        if n == 1:
            t, t_lo = t1, t1
            exposed = {"all_gather_ms": 0.0, "tail_reduce_ms": 0.0, "queue_ms": 0.0}
        else:
            exposed = {"all_gather_ms": ag(n) / beta * 1e3, "tail_reduce_ms": tail / beta * 1e3,
                       "queue_ms": queue * 1e3}
            t = t1 - (1 - 1 / n) * t_opt + (ag(n) + tail) / beta + queue
            t_lo = t1 - (1 - 1 / n) * t_opt + e2 + (ag(n) - ag(2)) / (nominal_gbs * 1e9)
        rows.append({"gpus": n, "step_ms": round(t * 1e3, 3),
                     "tokens_per_s": round(n * tokens_per_step / t),
                     "efficiency": round(t1 / t, 6),
                     "efficiency_optimistic": round(t1 / t_lo, 6),
                     "optimizer_saved_ms": round((1 - 1 / n) * t_opt * 1e3, 3),
                     **{k: round(v, 3) for k, v in exposed.items()}})
    return beta, t_opt, rows


def main():
    # A reader that stops early (| head) ends the script quietly, as any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", help="multi_gpu.jsonl of bench/multi_gpu.sh")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--models", nargs="+", default=["gpt2-small", "gpt2-medium"])
    ap.add_argument("--nominal-gbs", type=float, default=NOMINAL_GBS,
                    help="NCCL bus bandwidth for the optimistic bound (GB/s)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args()
    args.gpus = list(dict.fromkeys(args.gpus))  # a count or model given twice: one row
    args.models = list(dict.fromkeys(args.models))
    if any(n < 1 for n in args.gpus):
        ap.error("--gpus: GPU counts must be >= 1")
    if args.nominal_gbs <= 0:
        ap.error("--nominal-gbs must be > 0")
    speeds, (B, T) = (load_measured(args.measured) if args.measured
                      else (DOCUMENTED, (16, 1024)))
    shapes = {m: load_shape(m) for m in set(args.models) | {"gpt2-small"}}
    out = []
    for attn in ("ls", "mhsa"):
        if not any(a == attn for (_, a, _) in speeds):
            print(f"note: no {attn} rows measured: {attn} left out", file=sys.stderr)
            continue
        ref = shapes["gpt2-small"]
        ref_t1 = speeds.get(("gpt2-small", attn, 1))
        ref_s2 = speeds.get(("gpt2-small", attn, 2))
        ref_beta = None  # gpt2-small's beta_eff, whether or not --models lists it
        if ref_t1 is not None and ref_s2 is not None:
            ref_beta = predict(ref, ref.n_local if attn == "ls" else 0, B * T / ref_t1,
                               B * T * 2 / ref_s2, None, [1], B * T, args.nominal_gbs)[0]
        for model in args.models:
            shape = shapes[model]
            local = shape.n_local if attn == "ls" else 0
            s1, s2 = speeds.get((model, attn, 1)), speeds.get((model, attn, 2))
            source = "measured"
            if s1 is None:
                if ref_t1 is None:
                    sys.exit(f"error: no 1-GPU speed of {model} or gpt2-small ({attn})")
                ratio = shape.flops_per_token(local, T) / ref.flops_per_token(
                    ref.n_local if attn == "ls" else 0, T)
                s1 = ref_t1 / ratio
                source = f"t(1) estimated: {ratio:.3f}x gpt2-small's FLOPs per token"
            t1 = B * T / s1
            t2 = B * T * 2 / s2 if s2 is not None else None
            if t2 is None and ref_beta is None:
                sys.exit(f"error: no 2-GPU speed of {model} ({attn}) and none of gpt2-small "
                         f"(with its 1-GPU speed) to calibrate on")
            if t2 is None:
                source += "; beta_eff of gpt2-small"
            beta, t_opt, rows = predict(shape, local, t1, t2, ref_beta, args.gpus, B * T,
                                        args.nominal_gbs)
            for r in rows:
                m = speeds.get((model, attn, r["gpus"]))
                out.append({"model": model, "attn": attn, "params": shape.p_total,
                            "beta_eff_gbs": round(beta / 1e9, 1),
                            "optimizer_ms": round(t_opt * 1e3, 3), "source": source, **r,
                            "measured_tokens_per_s": m})
    if args.json:
        for r in out:
            print(json.dumps(r))
        return
    print(f"B = {B}, T = {T} per GPU; beta_nominal = {args.nominal_gbs:g} GB/s")
    print("| model | attention | GPUs | predicted tok/s | efficiency (optimistic) | all-gather ms "
          "| tail reduce ms | optimizer saved ms | measured tok/s (efficiency) | beta_eff GB/s | t(1) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    one = {(m, a): v for (m, a, n), v in speeds.items() if n == 1}
    for r in out:
        m = r["measured_tokens_per_s"]
        if m is not None:
            m = f"{m:,.0f} ({m / (r['gpus'] * one[(r['model'], r['attn'])]):.1%})" \
                if (r["model"], r["attn"]) in one else f"{m:,.0f}"
        print(f"| {r['model']} | {r['attn'].upper()} | {r['gpus']} | {r['tokens_per_s']:,} "
              f"| {r['efficiency']:.1%} ({r['efficiency_optimistic']:.1%}) "
              f"| {r['all_gather_ms']:.2f} | {r['tail_reduce_ms']:.2f} "
              f"| {r['optimizer_saved_ms']:.2f} | {'-' if m is None else m} "
              f"| {r['beta_eff_gbs']:.0f} | {r['source']} |")


if __name__ == "__main__":
    main()
