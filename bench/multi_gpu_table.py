#!/usr/bin/env python3
"""The table of bench/multi_gpu.sh: tokens/s per GPU count, scaling, and lsgpt / PyTorch.

Reads multi_gpu.jsonl (lsgpt rows: impl "lsgpt", model, attn, gpus,
tokens_per_s; PyTorch rows from bench/ddp_torch.py: model, attention, gpus,
tokens_per_s) and prints one Markdown table per model, then the issue's
targets: >= 90% scaling efficiency at 8 GPUs for GPT-2 small and lsgpt >= 1.2x
PyTorch DDP at every GPU count.

Scaling efficiency at N GPUs = tokens/s at N / (N * tokens/s at 1 GPU).

Usage: bench/multi_gpu_table.py OUT_DIR/multi_gpu.jsonl
"""
import json
import signal
import sys

import benchmark_rows

ATTN_NAMES = {"ls": "LS", "mhsa": "MHSA"}


def load(path):
    """{(impl, model, attn, gpus): tokens/s}; impl is "lsgpt" or "torch"."""
    speeds, first = {}, {}
    for number, line in benchmark_rows.lines(path):
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError("not a JSON object")
            impl = "lsgpt" if r.get("impl") == "lsgpt" else "torch"
            attn = r["attn"] if impl == "lsgpt" else r["attention"]
            n, tps = r["gpus"], r["tokens_per_s"]
            benchmark_rows.check_count("gpus", n)
            benchmark_rows.check_speed(tps)
        except (ValueError, KeyError) as e:
            sys.exit(f"error: {path}:{number}: not a benchmark row ({e!r}): {line.strip()}")
        key = (impl, r["model"], attn, n)
        if key in first:
            sys.exit(f"error: {path}:{number}: a second {impl} row for {r['model']} {attn} "
                     f"on {gpus(n)} (the first is line {first[key]}): keep one of them")
        first[key] = number
        speeds[key] = float(tps)
    if not speeds:
        sys.exit(f"error: {path} holds no benchmark rows")
    return speeds


def cell(value, fmt):
    return "-" if value is None else fmt.format(value)


def efficiency(speeds, impl, model, attn, n):
    """(tokens/s at n GPUs) / (n * tokens/s at 1 GPU), or None without both."""
    one, many = speeds.get((impl, model, attn, 1)), speeds.get((impl, model, attn, n))
    return None if one is None or many is None else many / (n * one)


def scaling(speeds, impl, model, attn, n):
    """"1.925x (96.3%)": the speed-up over 1 GPU and the efficiency."""
    e = efficiency(speeds, impl, model, attn, n)
    return "-" if e is None else f"{e * n:.3f}x ({e:.1%})"


def gpus(n):
    return f"{n} GPU" + ("s" if n > 1 else "")


def table(speeds, model):
    lines = [f"### {model}", "",
             "| attention | GPUs | lsgpt tok/s | lsgpt scaling (efficiency) | PyTorch DDP tok/s "
             "| PyTorch scaling (efficiency) | lsgpt / PyTorch |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(a, n) for (_, m, a, n) in speeds if m == model},
                  key=lambda k: (list(ATTN_NAMES).index(k[0]) if k[0] in ATTN_NAMES else 9, k[1]))
    for attn, n in keys:
        ours, peer = speeds.get(("lsgpt", model, attn, n)), speeds.get(("torch", model, attn, n))
        ratio = ours / peer if ours and peer else None
        lines.append(
            f"| {ATTN_NAMES.get(attn, attn)} | {n} | {cell(ours, '{:,.0f}')} "
            f"| {scaling(speeds, 'lsgpt', model, attn, n)} "
            f"| {cell(peer, '{:,.0f}')} "
            f"| {scaling(speeds, 'torch', model, attn, n)} "
            f"| {cell(ratio, '{:.2f}x')} |")
    return lines


def targets(speeds):
    """The issue's targets, one line each: met, missed, or not measured."""
    lines = []
    for attn in ATTN_NAMES:
        e = efficiency(speeds, "lsgpt", "gpt2-small", attn, 8)
        verdict = "not measured" if e is None else ("met" if e >= 0.9 else "missed")
        lines.append(f"gpt2-small {ATTN_NAMES[attn]}: efficiency at 8 GPUs "
                     f"{cell(e, '{:.1%}')} (target >= 90%): {verdict}")
    for (impl, model, attn, n), ours in sorted(speeds.items()):
        peer = speeds.get(("torch", model, attn, n))
        if impl == "lsgpt" and peer:
            verdict = "met" if ours / peer >= 1.2 else "missed"
            lines.append(f"{model} {ATTN_NAMES.get(attn, attn)} {gpus(n)}: lsgpt / PyTorch "
                         f"{ours / peer:.2f}x (target >= 1.2x): {verdict}")
    return lines


def main():
    # A reader that stops early (| head) ends the script quietly, as any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(sys.argv) != 2:
        sys.exit("usage: multi_gpu_table.py MULTI_GPU_JSONL")
    speeds = load(sys.argv[1])
    models = sorted({m for (_, m, _, _) in speeds})
    out = []
    for model in models:
        out += table(speeds, model) + [""]
    out += targets(speeds)
    print("\n".join(out))


if __name__ == "__main__":
    main()
