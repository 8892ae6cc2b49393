#!/usr/bin/env python3
"""Compare lsgpt's GPT-2 tokenizer with a reference implementation, file by file.

The ids of `lsgpt tokenize` (run as a subprocess) are compared with either
  --reference hf      Hugging Face's GPT2TokenizerFast, built offline from the
                      repository's data/gpt2/encoder.json and vocab.bpe
                      (needs the `transformers` package), or
  --reference openai  OpenAI's original algorithm from gpt-2's encoder.py
                      (needs only the `regex` package), with "<|endoftext|>"
                      split off first as Hugging Face does.
Prints one verdict line and exits 1 on any mismatch, showing the first
differing position. Files must be UTF-8 (both references take text, not bytes).

  python3 tools/compare_tokenizer.py --lsgpt build/lsgpt data/wikitext-2/*.tokens
  python3 tools/compare_tokenizer.py --reference openai --checksum FILE
    (--checksum also prints each file's reference token count and the FNV-1a
     hash of its ids, the constants pinned in tests/tokenizer/)
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT_TEXT = "<|endoftext|>"


def byte_symbols():
    """GPT-2's bytes_to_unicode(): byte -> the character that stands for it."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def hf_reference(tokenizer_dir):
    vocab = os.path.join(tokenizer_dir, "encoder.json")
    merges = os.path.join(tokenizer_dir, "vocab.bpe")
    try:
        from transformers import GPT2TokenizerFast
    except ImportError:
        # The same Rust tokenizer, assembled by hand, where only `tokenizers`
        # is installed.
        try:
            from tokenizers import Tokenizer, models, pre_tokenizers
        except ImportError:
            sys.exit("compare_tokenizer: --reference hf needs the transformers (or tokenizers) "
                     "package; install it or use --reference openai")
        tok = Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.add_special_tokens([EOT_TEXT])
        print("compare_tokenizer: transformers not found; using tokenizers' BPE directly",
              file=sys.stderr)
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    tok = GPT2TokenizerFast(vocab_file=vocab, merges_file=merges)
    tok.model_max_length = 1 << 62  # silence the long-sequence warning
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def openai_reference(tokenizer_dir):
    import regex

    with open(os.path.join(tokenizer_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(os.path.join(tokenizer_dir, "vocab.bpe"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line]
    ranks = {pair: i for i, pair in enumerate(merges)}
    byte_chars = byte_symbols()
    pattern = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    cache = {}

    def bpe(token):
        if token in cache:
            return cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    merged.extend(word[i:])
                    break
                merged.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        cache[token] = [encoder[s] for s in word]
        return cache[token]

    def encode(text):
        ids = []
        for k, part in enumerate(text.split(EOT_TEXT)):
            if k:
                ids.append(encoder[EOT_TEXT])
            for piece in pattern.findall(part):
                ids.extend(bpe("".join(byte_chars[b] for b in piece.encode("utf-8"))))
        return ids

    return encode


def id_decoder(tokenizer_dir):
    """ids -> repr of their text, for showing where two encodings differ."""
    with open(os.path.join(tokenizer_dir, "encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    char_byte = {c: b for b, c in byte_symbols().items()}
    token_bytes = {i: bytes(char_byte[c] for c in s) for s, i in encoder.items()}
    return lambda ids: repr(b"".join(token_bytes.get(i, b"?") for i in ids))


def fnv1a(ids):
    h = 0xCBF29CE484222325
    for i in ids:
        h = ((h ^ i) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def lsgpt_ids(binary, tokenizer_dir, data):
    run = subprocess.run([binary, "tokenize", "--tokenizer-dir", tokenizer_dir],
                         input=data, capture_output=True, check=False)
    if run.returncode != 0:
        sys.exit(f"compare_tokenizer: `{binary} tokenize` failed: "
                 f"{run.stderr.decode(errors='replace').strip()}")
    return [int(x) for x in run.stdout.split()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="UTF-8 text files to compare on")
    parser.add_argument("--lsgpt", default=os.path.join(REPO, "build", "lsgpt"),
                        help="the lsgpt binary (default: build/lsgpt)")
    parser.add_argument("--tokenizer-dir", default=os.path.join(REPO, "data", "gpt2"))
    parser.add_argument("--reference", choices=["hf", "openai"], default="hf")
    parser.add_argument("--checksum", action="store_true",
                        help="print the reference's token count and FNV-1a hash per file")
    args = parser.parse_args()

    reference = (hf_reference if args.reference == "hf" else openai_reference)(args.tokenizer_dir)
    total = 0
    for path in args.files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            sys.exit(f"compare_tokenizer: {path} is not UTF-8 ({e}); references take text only")
        expected = reference(text)
        ours = lsgpt_ids(args.lsgpt, args.tokenizer_dir, data)
        if args.checksum:
            print(f"{path}: {len(expected)} tokens, fnv1a 0x{fnv1a(expected):016x}")
        if ours != expected:
            pos = next((i for i, (a, b) in enumerate(zip(ours, expected)) if a != b),
                       min(len(ours), len(expected)))
            lo = max(0, pos - 3)
            show = id_decoder(args.tokenizer_dir)
            print(f"MISMATCH ({args.reference}): {path} differs at token {pos} "
                  f"(lsgpt has {len(ours)} tokens, reference {len(expected)}): "
                  f"lsgpt {ours[lo:pos + 4]} {show(ours[lo:pos + 4])} vs reference "
                  f"{expected[lo:pos + 4]} {show(expected[lo:pos + 4])}")
            return 1
        total += len(ours)
    print(f"MATCH ({args.reference}): {len(args.files)} file(s), {total} tokens identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
