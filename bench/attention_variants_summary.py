#!/usr/bin/env python3
"""Turns the JSON lines of `bench_cuda_attention forward_kernels=1` or
`backward_kernels=1` into one Markdown table: per configuration the sm_80
kernel's time and each Hopper variant's (ms and TFLOP/s), the fastest
variant marked, the speedup of the fastest over `base`, and the default's
time (LSGPT_ATTENTION_SM90_* unset: the kernel attention_sm90_choice.h picks
by shape) as a share of the fastest's: 1.00 when the choice is right.
Lines without per-variant fields (not a Hopper GPU) show only sm_80 and the
default.

Usage: bench/attention_variants_summary.py RESULTS.jsonl [-o OUT.md]
"""
import argparse
import json
import re
import signal
import sys


def load(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
    return rows


def variants_of(row, prefix):
    """The variant names of one row, in the order the benchmark printed them."""
    pattern = re.compile(rf"^{prefix}_(.+)_ms$")
    names = []
    for key in row:
        m = pattern.match(key)
        if m and m.group(1) not in ("sm80", "default"):
            names.append(m.group(1))
    return names


def table(rows):
    if not rows:
        return "no results\n"
    prefix = "fwd" if "fwd_sm80_ms" in rows[0] else "bwd"
    names = []
    for row in rows:
        for name in variants_of(row, prefix):
            if name not in names:
                names.append(name)
    head = ["config", "D", "T", "sm80 ms"] + [f"{n} ms (TFLOP/s)" for n in names]
    head += ["fastest", "fastest / base", "default ms", "fastest / default"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        sm80 = row[prefix + "_sm80_ms"]
        cells = [row["label"], str(row["head_dim"]), str(row["T"]), f"{sm80:.3f}"]
        times = {n: row.get(f"{prefix}_{n}_ms") for n in names}
        present = {n: t for n, t in times.items() if t is not None}
        best = min(present, key=present.get) if present else None
        for n in names:
            t = times[n]
            if t is None:
                cells.append("-")
                continue
            text = f"{t:.3f} ({row[f'{prefix}_{n}_tflops']:.0f})"
            cells.append(f"**{text}**" if n == best else text)
        cells.append(best or "-")
        base = present.get("base")
        cells.append(f"{base / present[best]:.2f}x" if best and base else "-")
        default = row.get(prefix + "_default_ms")
        cells.append(f"{default:.3f}" if default is not None else "-")
        cells.append(f"{present[best] / default:.2f}" if best and default else "-")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    # A reader that stops early (| head) ends the script quietly, as any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    text = table(load(args.results))
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
