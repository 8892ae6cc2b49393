#!/usr/bin/env python3
"""Summarises a same-run A/B of two lsgpt builds (bench/ab_revisions.sh):
for each benchmark command, every number its output reports, as the mean
over the rounds on each side, the change of the new side against the base,
and each side's spread (max - min over the rounds, relative to its mean),
which says how far apart two runs of one binary fall in this run.

Input: JSON lines {"command": N, "text": "...", "side": "base" | "new",
"round": R, "output": "..."}. From each output the numbers come from the
last line that is a JSON object (bench_cuda_attention), else from the last
row of the last Markdown table, named by its header (bench_train). Fields
that are not numbers, or equal in every run of the command, are left out.

Usage: bench/ab_summary.py AB.jsonl [-o SUMMARY.md]
"""
import argparse
import json
import math
import signal
import sys

SIDES = ("base", "new")


def numbers_of_json(line):
    row = json.loads(line)
    if not isinstance(row, dict):
        return None
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def is_separator(line):
    s = line.strip()
    return s.startswith("|") and set(s) <= set("|-: ") and "-" in s


def numbers_of_table(lines):
    """The last Markdown table's last row, keyed by the header above its separator."""
    for i in range(len(lines) - 1, 0, -1):
        if is_separator(lines[i]) and lines[i - 1].strip().startswith("|"):
            rows = [ln for ln in lines[i + 1:] if ln.strip().startswith("|")]
            if not rows:
                return None
            values = {}
            for name, cell in zip(cells(lines[i - 1]), cells(rows[-1])):
                try:
                    values[name] = float(cell.replace(",", ""))
                except ValueError:
                    pass
            return values
    return None


def numbers(output):
    """The numbers one benchmark run reported, or None if it reported none."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.lstrip().startswith("{"):
            try:
                found = numbers_of_json(line)
            except json.JSONDecodeError:
                continue
            if found is not None:
                return found
    return numbers_of_table(lines)


def load(path):
    runs = {}  # command number -> {"text": str, "base": [dict], "new": [dict]}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                run = json.loads(line)
                command, side, output = int(run["command"]), run["side"], run["output"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                sys.exit(f"error: {path}:{n}: not an A/B run record ({e})")
            if side not in SIDES:
                sys.exit(f"error: {path}:{n}: side {side!r} is neither base nor new")
            found = numbers(output)
            if not found:
                sys.exit(f"error: {path}:{n}: command {command} printed no JSON object and "
                         f"no Markdown table row with numbers; its output ends:\n"
                         + "\n".join(output.splitlines()[-5:]))
            entry = runs.setdefault(command, {"text": run.get("text", ""), "base": [], "new": []})
            entry[side].append(found)
    if not runs:
        sys.exit(f"error: {path}: no runs")
    for command, entry in runs.items():
        for side in SIDES:
            if not entry[side]:
                sys.exit(f"error: {path}: command {command} has no {side} run")
    return runs


def mean(values):
    return sum(values) / len(values)


def spread(values):
    m = mean(values)
    return (max(values) - min(values)) / abs(m) if m else 0.0


def fmt(x):
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:,.0f}"


def table(entry):
    fields = []
    for side in SIDES:
        for run in entry[side]:
            fields += [k for k in run if k not in fields]
    head = ["field", "base", "new", "new / base - 1", "base spread", "new spread"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for field in fields:
        per_side = {s: [r[field] for r in entry[s] if field in r] for s in SIDES}
        if any(not v for v in per_side.values()):
            continue
        every = per_side["base"] + per_side["new"]
        if all(v == every[0] for v in every):
            continue
        base, new = mean(per_side["base"]), mean(per_side["new"])
        change = f"{100 * (new / base - 1):+.1f}%" if base and math.isfinite(new / base) else "-"
        out.append(f"| {field} | {fmt(base)} | {fmt(new)} | {change} | "
                   f"{100 * spread(per_side['base']):.1f}% | {100 * spread(per_side['new']):.1f}% |")
    return "\n".join(out) + "\n"


def summary(runs):
    parts = []
    for command in sorted(runs):
        entry = runs[command]
        rounds = min(len(entry["base"]), len(entry["new"]))
        parts.append(f"### {command}: `{entry['text']}` ({rounds} rounds)\n\n{table(entry)}")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="the JSON lines bench/ab_revisions.sh wrote")
    ap.add_argument("-o", "--output", help="also write the summary here")
    args = ap.parse_args()
    try:
        text = summary(load(args.results))
    except OSError as e:
        sys.exit(f"error: {e}")
    print(text, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
