#!/usr/bin/env python3
"""Interop test: lsgpt against transformers' GPT2LMHeadModel and tools/lsgpt_torch.py.

  python3 tools/test_interop.py --lsgpt build/lsgpt --work /tmp/interop

Needs torch, transformers, safetensors and numpy. Steps:
 (a) a random GPT-2 (2 layers, 4 heads, d_model 64, 64 positions, GPT-2's
     vocabulary) saved by transformers' save_pretrained, imported with
     `lsgpt import` as MHSA and as several LS configurations (so nothing here
     depends on lsgpt's trainer);
 (b) lsgpt's logits and loss on the first 64-token window of a WikiText-2
     excerpt tokenized by `lsgpt prepare`, from
     `lsgpt eval --batch-size 1 --max-batches 1 --logits-out FILE.npy`;
 (c) each checkpoint exported with `lsgpt export` and run by
     tools/lsgpt_torch.py in float64 (MHSA and LS) and, for MHSA, by
     transformers' GPT2LMHeadModel in float32 and float64;
 (d) export -> import -> export is byte-identical, and exporting an imported
     transformers model gives back its tensors bit for bit;
 (e) a GPT-2 with a 1,000-token vocabulary (eos_token_id 999) imports with
     its own vocabulary and end-of-text token, evaluates like transformers on
     a token file of that vocabulary, and generates token ids.
Prints a table; exits 1 on any mismatch (2 when a dependency is missing).
"""

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

try:
    import numpy as np
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # the GoogleTest wrapper probes for these first
    print(f"test_interop: missing dependency: {e}", file=sys.stderr)
    sys.exit(2)

sys.path.insert(0, HERE)
import lsgpt_torch  # noqa: E402

# fp32 lsgpt (CPU) against float64 references. Logits of these random models
# reach about 30; 2e-5 relative to the largest |logit| is ten times the fp32
# rounding seen through two blocks (about 2e-6 on an H100 host, 2026-11), far
# below what a wrong mask, layout or head order does (O(1) changes: the "LS
# logits differ from MHSA" rows show how much).
LOGITS_RTOL = 2e-5
LOSS_ATOL = 1e-5
REFERENCE_ATOL = 1e-9  # lsgpt_torch against transformers, both float64

N_LAYER, N_HEAD, N_EMBD, N_POSITIONS, VOCAB = 2, 4, 64, 64, 50257

# name, extra `lsgpt import` flags
CASES = [
    ("mhsa", []),
    ("ls_3of4_w8", ["--n-local", "3", "--window", "8"]),
    ("ls_mixed_w5", ["--n-local", "4,1", "--window", "5"]),
    ("ls_all_w1", ["--n-local", "4", "--window", "1"]),
]


class Report:
    def __init__(self):
        self.rows = []
        self.failed = False

    def check(self, case, what, value, limit, ok=None):
        ok = (value <= limit) if ok is None else ok
        self.failed |= not ok
        self.rows.append((case, what, value, limit, ok))

    def print(self):
        print(f"{'case':<13} {'check':<46} {'value':>11} {'limit':>11}  result")
        for case, what, value, limit, ok in self.rows:
            v = f"{value:.3e}" if isinstance(value, float) else str(value)
            lim = f"{limit:.1e}" if isinstance(limit, float) else str(limit)
            print(f"{case:<13} {what:<46} {v:>11} {lim:>11}  {'ok' if ok else 'MISMATCH'}")


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"test_interop: command failed ({r.returncode}): {' '.join(cmd)}\n"
                         f"{r.stdout}{r.stderr}")
    return r.stdout


def make_random_gpt2(out_dir, vocab=VOCAB, eot=50256):
    """A transformers GPT-2 with weights spread widely enough that attention
    is sharp (so masks matter), saved the way Hugging Face saves models."""
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=N_POSITIONS, n_embd=N_EMBD, n_layer=N_LAYER,
        n_head=N_HEAD, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot)
    model = transformers.GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "c_attn.weight" in name:
                p.copy_(0.25 * torch.randn(p.shape, generator=gen))
            elif name.endswith("wte.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out_dir)  # safetensors by default
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_token_file(path):
    """lsgpt token file: 64-byte header (magic LSGPTTOK, uint32 version,
    uint32 vocab size, uint64 count), then uint16 tokens."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"LSGPTTOK":
        raise SystemExit(f"test_interop: {path} is not an lsgpt token file")
    _, vocab, count = struct.unpack_from("<IIQ", data, 8)
    tokens = np.frombuffer(data, dtype="<u2", offset=64, count=count)
    return tokens.astype(np.int64), vocab


def write_token_file(path, vocab, tokens):
    header = b"LSGPTTOK" + struct.pack("<IIQ", 1, vocab, len(tokens))
    with open(path, "wb") as f:
        f.write(header.ljust(64, b"\0"))
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def small_vocab_case(report, lsgpt, work):
    """(e): vocab_size 1000, eos_token_id 999: nothing may assume GPT-2's."""
    case, V = "vocab1000", 1000
    hf_dir = os.path.join(work, "hf_vocab1000")
    make_random_gpt2(hf_dir, vocab=V, eot=V - 1)
    ckpt = os.path.join(work, case + ".ckpt")
    run([lsgpt, "import", "--in", hf_dir, "--out", ckpt])
    info = json.loads(run([lsgpt, "info", "--checkpoint", ckpt, "--json"]))["model"]
    report.check(case, "imported vocab_size, eot_token", str((info["vocab_size"], info["eot_token"])),
                 str((V, V - 1)), ok=(info["vocab_size"], info["eot_token"]) == (V, V - 1))
    T = N_POSITIONS
    tokens = (np.arange(4 * T) * 37 + 11) % V
    tokens_path = os.path.join(work, case + ".bin")
    write_token_file(tokens_path, V, tokens)
    got, got_loss = lsgpt_eval(lsgpt, ckpt, tokens_path, os.path.join(work, case + ".npy"))
    hf32 = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = hf32(torch.as_tensor(tokens[:T]).view(1, T)).logits[0].double().numpy()
    compare(report, case, "transformers f32", got, got_loss, ref, cross_entropy(ref, tokens[1:T + 1]))
    out = run([lsgpt, "generate", "--checkpoint", ckpt, "--ids", "-n", "8", "--temperature", "0"])
    ids = [int(x) for x in out.split()]
    ok = len(ids) == 8 and all(0 <= i < V for i in ids)
    report.check(case, "generate --ids: 8 ids in the vocabulary", " ".join(map(str, ids)), "8 ids < 1000",
                 ok=ok)


def qk_norm_case(report, lsgpt, work, tokens_path, inputs_t, targets):
    """A QK-norm model (docs/STABILISERS.md), trained a few steps so its gains
    are no longer 1, against the PyTorch reference's RMSNorm of q and k."""
    case = "ls_qknorm"
    run_dir = os.path.join(work, case)
    run([lsgpt, "train", "--train", tokens_path, "--valid", tokens_path, "--out-dir", run_dir,
         "--n-layer", str(N_LAYER), "--n-head", str(N_HEAD), "--d-model", str(N_EMBD),
         "--seq-len", str(N_POSITIONS), "--n-local", "3", "--window", "8", "--qk-norm",
         "--steps", "5", "--warmup", "1", "--lr", "1e-2", "--batch-size", "2",
         "--eval-every", "0", "--final-eval-batches", "1", "--quiet"])
    ckpt = os.path.join(run_dir, "checkpoint.ckpt")
    got, got_loss = lsgpt_eval(lsgpt, ckpt, tokens_path, os.path.join(work, case + ".npy"))
    export = os.path.join(work, case + "_export")
    run([lsgpt, "export", "--checkpoint", ckpt, "--out", export])
    ref = lsgpt_torch.load_export(export, torch.float64)
    report.check(case, "export says lsgpt_qk_norm", str(ref.config.qk_norm), "True",
                 ok=ref.config.qk_norm)
    with torch.no_grad():
        ref_logits = ref.logits(inputs_t)[0].numpy()
    compare(report, case, "lsgpt_torch f64", got, got_loss, ref_logits,
            cross_entropy(ref_logits, targets))


def lsgpt_eval(lsgpt, ckpt, tokens_path, npy):
    out = run([lsgpt, "eval", "--checkpoint", ckpt, "--data", tokens_path, "--batch-size", "1",
               "--max-batches", "1", "--logits-out", npy])
    line = [l for l in out.splitlines() if l.strip().startswith("{") and '"loss"' in l][-1]
    return np.load(npy).astype(np.float64), json.loads(line)["loss"]


def cross_entropy(logits, targets):
    t = torch.as_tensor(logits, dtype=torch.float64)
    return torch.nn.functional.cross_entropy(t, torch.as_tensor(targets)).item()


def compare(report, case, name, got_logits, got_loss, ref_logits, ref_loss):
    scale = max(1.0, float(np.abs(ref_logits).max()))
    report.check(case, f"logits vs {name} (max|d|/max|ref|)",
                 float(np.abs(got_logits - ref_logits).max()) / scale, LOGITS_RTOL)
    report.check(case, f"loss vs {name} |d|", abs(got_loss - ref_loss), LOSS_ATOL)


def files_identical(a, b):
    for name in ("model.safetensors", "config.json"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lsgpt", required=True, help="path of the lsgpt binary")
    ap.add_argument("--work", required=True, help="scratch directory (emptied first)")
    args = ap.parse_args()
    lsgpt = os.path.abspath(args.lsgpt)
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    report = Report()

    hf_dir = os.path.join(work, "hf_random")
    hf_state = make_random_gpt2(hf_dir)

    # Tokens: a WikiText-2 excerpt through lsgpt's own tokenizer.
    with open(os.path.join(REPO, "data", "wikitext-2", "wiki.valid.tokens"), encoding="utf-8") as f:
        text = f.read(4000)
    text_path = os.path.join(work, "excerpt.txt")
    with open(text_path, "w", encoding="utf-8") as f:
        f.write(text)
    tokens_path = os.path.join(work, "excerpt.bin")
    run([lsgpt, "prepare", text_path, "-o", tokens_path, "--tokenizer-dir",
         os.path.join(REPO, "data", "gpt2")])
    tokens, vocab = read_token_file(tokens_path)
    T = N_POSITIONS
    if vocab != VOCAB or len(tokens) < T + 1:
        raise SystemExit(f"test_interop: token file has vocab {vocab} and {len(tokens)} tokens")
    inputs, targets = tokens[:T], tokens[1:T + 1]
    inputs_t = torch.as_tensor(inputs).view(1, T)

    hf64 = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation="eager").double().eval()
    with torch.no_grad():
        hf64_logits = hf64(inputs_t).logits[0].numpy()

    logits_of = {}
    for case, flags in CASES:
        ckpt = os.path.join(work, case + ".ckpt")
        run([lsgpt, "import", "--in", hf_dir, "--out", ckpt] + flags)
        got, got_loss = lsgpt_eval(lsgpt, ckpt, tokens_path, os.path.join(work, case + ".npy"))
        logits_of[case] = got
        report.check(case, "lsgpt logits shape", str(got.shape), str((T, VOCAB)),
                     ok=got.shape == (T, VOCAB))
        report.check(case, "lsgpt loss vs CE of its own logits |d|",
                     abs(got_loss - cross_entropy(got, targets)), LOSS_ATOL)

        export = os.path.join(work, case + "_export")
        run([lsgpt, "export", "--checkpoint", ckpt, "--out", export])
        ref = lsgpt_torch.load_export(export, torch.float64)
        with torch.no_grad():
            ref_logits = ref.logits(inputs_t)[0].numpy()
        compare(report, case, "lsgpt_torch f64", got, got_loss, ref_logits,
                cross_entropy(ref_logits, targets))

        if case == "mhsa":
            report.check(case, "lsgpt_torch f64 vs transformers f64 max|d|",
                         float(np.abs(ref_logits - hf64_logits).max()), REFERENCE_ATOL)
            hf32 = transformers.GPT2LMHeadModel.from_pretrained(export).eval()
            with torch.no_grad():
                hf32_logits = hf32(inputs_t).logits[0].double().numpy()
            compare(report, case, "transformers f32", got, got_loss, hf32_logits,
                    cross_entropy(hf32_logits, targets))
            exported = load_file(os.path.join(export, "model.safetensors"))
            same = all(torch.equal(exported[k], hf_state[k]) for k in exported) and \
                all(k in exported for k in hf_state if k != "lm_head.weight" and not k.endswith(("attn.bias", "attn.masked_bias")))
            report.check(case, "export == transformers' tensors (bitwise)", str(same), "True", ok=same)
        else:
            diff = float(np.abs(got - logits_of["mhsa"]).max())
            report.check(case, "LS logits differ from MHSA (max|d| >= 1e-2)", diff, 1e-2,
                         ok=diff >= 1e-2)

        again_ckpt = os.path.join(work, case + "_again.ckpt")
        again = os.path.join(work, case + "_export_again")
        run([lsgpt, "import", "--in", export, "--out", again_ckpt])
        run([lsgpt, "export", "--checkpoint", again_ckpt, "--out", again])
        same = files_identical(export, again)
        report.check(case, "export->import->export byte-identical", str(same), "True", ok=same)

    qk_norm_case(report, lsgpt, work, tokens_path, inputs_t, targets)
    small_vocab_case(report, lsgpt, work)

    report.print()
    if report.failed:
        print("test_interop: MISMATCH (see the table above)")
        return 1
    print(f"test_interop: all {len(report.rows)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
