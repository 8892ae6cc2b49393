#!/usr/bin/env python3
"""Merges the JSON lines of bench_decode (lsgpt) and bench/decode_torch.py
(PyTorch) into Markdown tables: decode per (mode, batch, context) side by
side, prefill per (mode, context), and the LS-versus-MHSA relative latency
(LS ms / MHSA ms) of each side. Measurements that did not run (status "oom",
"skipped", "error") show as such.

Usage: bench/decode_summary.py LSGPT.jsonl TORCH.jsonl [--title TEXT] [-o OUT.md]
Either file may be missing or empty (its columns then show "-").
"""
import argparse
import json
import os
import sys

MODE_LABEL = {"ls": "LS", "mhsa": "MHSA", "config": "config"}


def load(path):
    rows = []
    if not path or not os.path.exists(path):
        return rows
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"decode_summary: {path}:{n}: not JSON, skipped", file=sys.stderr)
                continue
            if isinstance(rec, dict) and "kind" in rec:
                rows.append(rec)
    return rows


def index(rows, kind):
    out = {}
    for r in rows:
        if r.get("kind") != kind:
            continue
        key = (r.get("mode"), r.get("context")) if kind == "prefill" else \
              (r.get("mode"), r.get("batch"), r.get("context"))
        out[key] = r  # a later line for the same key wins
    return out


def ok(rec):
    return rec is not None and rec.get("status", "ok") == "ok"


def cell(rec, key, fmt="{:.3f}"):
    """A number, the status of a measurement that did not run, or "-"."""
    if rec is None:
        return "-"
    if not ok(rec):
        return rec.get("status", "?")
    v = rec.get(key)
    if v is None:
        return "-"
    return fmt.format(v)


def ratio(num, den, key):
    if ok(num) and ok(den) and num.get(key) and den.get(key):
        return f"{num[key] / den[key]:.2f}"
    return "-"


def mode_order(m):
    return {"mhsa": 0, "ls": 1}.get(m, 2)


def summarise(ours_rows, theirs_rows, title=None):
    ours_d, theirs_d = index(ours_rows, "decode"), index(theirs_rows, "decode")
    ours_p, theirs_p = index(ours_rows, "prefill"), index(theirs_rows, "prefill")
    lines = []
    if title:
        lines += [f"## {title}", ""]
    devices = sorted({r.get("device") for r in theirs_rows if r.get("device")})
    versions = sorted({r.get("torch") for r in theirs_rows if r.get("torch")})
    dates = sorted({r.get("date") for r in theirs_rows if r.get("date")})
    if devices or versions:
        lines += [f"PyTorch side: {', '.join(devices) or '?'}, torch {', '.join(versions) or '?'}"
                  f"{', ' + ', '.join(dates) if dates else ''}.", ""]

    # ---- decode ----
    keys = sorted(set(ours_d) | set(theirs_d),
                  key=lambda k: (mode_order(k[0]), k[1] or 0, k[2] or 0))
    lines += ["### Decode (greedy, ms per step of the whole batch)", "",
              "| mode | batch | context | lsgpt ms/token | torch ms/token | ratio (torch/lsgpt) | "
              "lsgpt tok/s | torch tok/s | lsgpt prefill ms | torch prefill ms | "
              "lsgpt KV MiB | torch KV MiB | lsgpt peak MiB | torch peak MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        mode, batch, ctx = k
        o, t = ours_d.get(k), theirs_d.get(k)
        op, tp = ours_p.get((mode, ctx)), theirs_p.get((mode, ctx))
        lines.append(
            f"| {MODE_LABEL.get(mode, mode)} | {batch} | {ctx} | {cell(o, 'ms_per_token')} | "
            f"{cell(t, 'ms_per_token')} | {ratio(t, o, 'ms_per_token')} | "
            f"{cell(o, 'tokens_per_s', '{:,.0f}')} | {cell(t, 'tokens_per_s', '{:,.0f}')} | "
            f"{cell(op, 'prefill_ms', '{:.2f}')} | {cell(tp, 'prefill_ms', '{:.2f}')} | "
            f"{cell_kv(o)} | {cell_kv(t)} | "
            f"{cell(o, 'peak_mib', '{:,.0f}')} | {cell(t, 'peak_mib', '{:,.0f}')} |")
    lines.append("")

    # ---- prefill ----
    pkeys = sorted(set(ours_p) | set(theirs_p), key=lambda k: (mode_order(k[0]), k[1] or 0))
    lines += ["### Prefill (one sequence, batch 1)", "",
              "| mode | context | lsgpt ms | torch ms | ratio (torch/lsgpt) | lsgpt tok/s | "
              "torch tok/s | lsgpt peak MiB | torch peak MiB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for k in pkeys:
        o, t = ours_p.get(k), theirs_p.get(k)
        lines.append(
            f"| {MODE_LABEL.get(k[0], k[0])} | {k[1]} | {cell(o, 'prefill_ms', '{:.2f}')} | "
            f"{cell(t, 'prefill_ms', '{:.2f}')} | {ratio(t, o, 'prefill_ms')} | "
            f"{cell(o, 'prefill_tokens_per_s', '{:,.0f}')} | "
            f"{cell(t, 'prefill_tokens_per_s', '{:,.0f}')} | "
            f"{cell(o, 'peak_mib', '{:,.0f}')} | {cell(t, 'peak_mib', '{:,.0f}')} |")
    lines.append("")

    # ---- LS versus MHSA ----
    lines += ["### LS (11 of 12 heads local, w = 100) versus MHSA: relative latency", "",
              "LS ms / MHSA ms at the same batch and context (below 1: LS is faster).", "",
              "| batch | context | lsgpt LS ms | lsgpt MHSA ms | lsgpt LS/MHSA | "
              "torch LS ms | torch MHSA ms | torch LS/MHSA |",
              "|---|---|---|---|---|---|---|---|"]
    bc = sorted({(k[1], k[2]) for k in keys}, key=lambda x: (x[0] or 0, x[1] or 0))
    for batch, ctx in bc:
        ol, om = ours_d.get(("ls", batch, ctx)), ours_d.get(("mhsa", batch, ctx))
        tl, tm = theirs_d.get(("ls", batch, ctx)), theirs_d.get(("mhsa", batch, ctx))
        lines.append(
            f"| {batch} | {ctx} | {cell(ol, 'ms_per_token')} | {cell(om, 'ms_per_token')} | "
            f"{ratio(ol, om, 'ms_per_token')} | {cell(tl, 'ms_per_token')} | "
            f"{cell(tm, 'ms_per_token')} | {ratio(tl, tm, 'ms_per_token')} |")
    lines.append("")
    ctxs = sorted({k[1] for k in pkeys}, key=lambda x: x or 0)
    if ctxs:
        lines += ["| prefill, context | lsgpt LS ms | lsgpt MHSA ms | lsgpt LS/MHSA | torch LS ms | "
                  "torch MHSA ms | torch LS/MHSA |",
                  "|---|---|---|---|---|---|---|"]
        for ctx in ctxs:
            ol, om = ours_p.get(("ls", ctx)), ours_p.get(("mhsa", ctx))
            tl, tm = theirs_p.get(("ls", ctx)), theirs_p.get(("mhsa", ctx))
            lines.append(
                f"| {ctx} | {cell(ol, 'prefill_ms', '{:.2f}')} | {cell(om, 'prefill_ms', '{:.2f}')} | "
                f"{ratio(ol, om, 'prefill_ms')} | {cell(tl, 'prefill_ms', '{:.2f}')} | "
                f"{cell(tm, 'prefill_ms', '{:.2f}')} | {ratio(tl, tm, 'prefill_ms')} |")
        lines.append("")

    notes = [r for r in ours_rows + theirs_rows if not ok(r) and r.get("note")]
    if notes:
        lines += ["Not measured:", ""]
        for r in notes:
            what = (f"{r.get('side')} {r.get('kind')} {MODE_LABEL.get(r.get('mode'), r.get('mode'))}"
                    f" batch {r.get('batch')} context {r.get('context')}")
            lines.append(f"- {what}: {r.get('status')}: {r.get('note')}")
        lines.append("")
    return "\n".join(lines)


def cell_kv(rec):
    # The cache size is known even for a measurement that ran out of memory.
    if rec is None or rec.get("kv_cache_mib") is None:
        return "-"
    return f"{rec['kv_cache_mib']:,.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("lsgpt", help="bench_decode's JSON lines")
    ap.add_argument("torch", help="decode_torch.py's JSON lines")
    ap.add_argument("--title")
    ap.add_argument("-o", "--output", help="write the Markdown here (default: stdout)")
    args = ap.parse_args()
    text = summarise(load(args.lsgpt), load(args.torch), args.title)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
