#!/usr/bin/env python3
"""Where the GPU time of a training step goes: sums Nsight Compute's per-kernel
durations (a CSV from `ncu --csv --metrics gpu__time_duration.sum`) by kernel,
and prints each kernel's share. With --step-ms (the step's wall time measured
without the profiler) it also prints the time the GPU sat idle between kernels,
which is launch and host overhead.

Usage: kernel_profile.py NCU_CSV [--steps N] [--step-ms MS] [--top K]
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def family(name: str) -> str:
    """A readable name for a kernel: the function and its template arguments,
    without parameters or namespaces; cuBLAS/cuBLASLt kernels by their name."""
    name = re.sub(r"^void\s+", "", name)
    if re.match(r"^(sm\d+_xmma|nvjet|cutlass|ampere_|sm80_|sm90_|gemm|gemv|cublas)", name) or "gemm" in name.lower():
        return "GEMM (cuBLASLt): " + name[:60]
    base = re.sub(r"\(.*$", "", name)         # parameters
    base = re.sub(r"^(lsgpt::)?(cuda::)?(<unnamed>::)?", "", base)
    return base or name


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=1, help="training steps the CSV covers")
    ap.add_argument("--step-ms", type=float, default=None, help="wall time of one step, unprofiled")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()

    totals, counts = defaultdict(float), defaultdict(int)
    with open(a.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]   # ncu prefixes its own log lines with ==PROF==
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        ns = value * {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}.get(unit, 1)
        k = family(row["Kernel Name"])
        totals[k] += ns
        counts[k] += 1
    if not totals:
        print("kernel_profile: no gpu__time_duration.sum rows in " + a.csv, file=sys.stderr)
        return 1
    total_ms = sum(totals.values()) / 1e6 / a.steps
    gemm_ms = sum(v for k, v in totals.items() if k.startswith("GEMM")) / 1e6 / a.steps
    print(f"GPU kernel time per step: {total_ms:.2f} ms over {sum(counts.values()) // a.steps} launches; "
          f"GEMM {gemm_ms:.2f} ms ({100 * gemm_ms / total_ms:.0f}%)")
    if a.step_ms:
        print(f"step wall time {a.step_ms:.2f} ms -> GPU idle {a.step_ms - total_ms:.2f} ms "
              f"({100 * (a.step_ms - total_ms) / a.step_ms:.0f}%)")
    print("| kernel | launches/step | ms/step | share |\n|---|---|---|---|")
    for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[: a.top]:
        ms = v / 1e6 / a.steps
        print(f"| {k} | {counts[k] // a.steps} | {ms:.3f} | {100 * ms / total_ms:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
