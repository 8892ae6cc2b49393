#!/usr/bin/env python3
"""Summarises a same-run A/B of two lsgpt builds (bench/ab_revisions.sh):
for each benchmark command, every number its output reports, as the mean
over the rounds on each side, the change of the new side against the base,
and each side's spread (max - min over the rounds, relative to the mean's
size), which says how far apart two runs of one binary fall in this run.

Input: JSON lines {"command": N, "text": "...", "side": "base" | "new",
"round": R, "output": "..."}. The results of one output are its lines that
are JSON objects with numbers (bench_cuda_attention prints one a
configuration, named by its "label" and shape fields), else the rows of
its last Markdown table, named by their cells that are not numbers
(bench_train prints one a case: config, device, batch x T), with each
number named by the header. Fields that are not finite
numbers, or are equal in every run of the command, are left out; a field
that only one side reports is listed as such.

Usage: bench/ab_summary.py AB.jsonl [-o SUMMARY.md]
"""
import argparse
import json
import math
import signal
import sys

import benchmark_rows

SIDES = ("base", "new")
SHAPE_FIELDS = ("B", "T", "heads", "head_dim", "local", "window")


def finite_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def json_results(lines):
    """(name, numbers) for each JSON-object line with finite numbers."""
    results = []
    for line in lines:
        if not line.lstrip().startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        values = {k: float(v) for k, v in row.items() if finite_number(v)}
        if not values:
            continue
        name = [str(row["label"])] if isinstance(row.get("label"), str) else []
        name += [f"{k}={row[k]}" for k in SHAPE_FIELDS if k in row]
        results.append((" ".join(name) or f"result {len(results) + 1}", values))
    return results


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def is_separator(line):
    s = line.strip()
    return s.startswith("|") and set(s) <= set("|-: ") and "-" in s


def table_results(lines):
    """(the row's words, numbers by header) for each row of the last Markdown table."""
    for i in range(len(lines) - 1, 0, -1):
        if not (is_separator(lines[i]) and lines[i - 1].strip().startswith("|")):
            continue
        header, results = cells(lines[i - 1]), []
        for line in lines[i + 1:]:
            if not line.strip().startswith("|"):
                break  # the table ends at its first line that is not a row
            row, values, words = cells(line), {}, []
            for name, cell in zip(header, row):
                try:
                    v = float(cell.replace(",", ""))
                except ValueError:
                    if cell not in ("", "-"):
                        words.append(cell)
                    continue
                if math.isfinite(v):
                    values[name] = v
            if values:
                results.append((" ".join(words) or f"row {len(results) + 1}", values))
        return results
    return []


def numbers(output):
    """One run's numbers, keyed by field (prefixed by the result's name when it
    printed several results), or {} if it reported none."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    results = json_results(lines) or table_results(lines)
    if len(results) == 1:
        return dict(results[0][1])
    found, seen = {}, {}
    for name, values in results:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        found.update({f"{name}: {k}": v for k, v in values.items()})
    return found


def load(path):
    runs = {}  # command number -> {"text": str, "base": [dict], "new": [dict]}
    for n, line in benchmark_rows.lines(path):
        try:
            run = json.loads(line)
            command, side, output = int(run["command"]), run["side"], run["output"]
            if not isinstance(output, str):
                raise TypeError("its output is not text")
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
    """(max - min) / |mean| as a percentage, or "-" when the mean is 0."""
    m = mean(values)
    return f"{100 * (max(values) - min(values)) / abs(m):.1f}%" if m else "-"


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
        missing = [s for s in SIDES if not per_side[s]]
        if missing:
            only = "new" if missing == ["base"] else "base"
            out.append(f"| {field} | {only} only | | | | |")
            continue
        every = per_side["base"] + per_side["new"]
        if all(v == every[0] for v in every):
            continue
        base, new = mean(per_side["base"]), mean(per_side["new"])
        change = f"{100 * (new / base - 1):+.1f}%" if base else "-"
        out.append(f"| {field} | {fmt(base)} | {fmt(new)} | {change} | "
                   f"{spread(per_side['base'])} | {spread(per_side['new'])} |")
    if len(out) == 2:
        return "every number was the same in every run\n"
    return "\n".join(out) + "\n"


def runs_phrase(n):
    return f"{n} run" + ("" if n == 1 else "s")


def summary(runs):
    parts = []
    for command in sorted(runs):
        entry = runs[command]
        n_base, n_new = len(entry["base"]), len(entry["new"])
        counts = (f"{runs_phrase(n_base)} a side" if n_base == n_new
                  else f"base {runs_phrase(n_base)}, new {runs_phrase(n_new)}")
        text = entry["text"].replace("`", "'")
        parts.append(f"### {command}: `{text}` ({counts})\n\n{table(entry)}")
    return "\n".join(parts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="the JSON lines bench/ab_revisions.sh wrote")
    ap.add_argument("-o", "--output", help="also write the summary here")
    args = ap.parse_args()
    text = summary(load(args.results))
    print(text, end="")
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
