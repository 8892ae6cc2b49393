#!/usr/bin/env python3
"""GPT-2 small inference in plain PyTorch: the peer of lsgpt's bench_decode.

The model is GPT-2 small (12 layers, 12 heads, width 768, vocabulary 50257
padded to 50304, tied embeddings, pre-LayerNorm, GELU (tanh) MLP) with 32768
learned positions, random weights (std 0.02), in bf16 on one GPU. Weights do
not match lsgpt's; the shape and the work do.

KV cache, allocated once (static shapes):
  * global heads: [B, n_global, max_ctx, D] per layer, position p at index p;
  * local heads (LS): a ring buffer [B, n_local, w', D] per layer, position p
    in slot p % w (w' = w rounded up to 16; slots >= w are never valid).
Heads [0, n_local) are local (a query sees itself and the w - 1 keys before
it), the others global causal: the same layout as lsgpt.

Decode step (every row at the same position, as the benchmark decodes
equal-length sequences): embeddings, then per layer the new k, v written into
the cache (index_copy_ at the position / ring slot), attention of the new query
over the whole cache through scaled_dot_product_attention with a boolean
mask of the valid entries, MLP; final LayerNorm, classifier, greedy argmax;
the step also advances the position and feeds the token back. The whole step
is captured once in a CUDA graph (torch.cuda.CUDAGraph; the position lives in
a device tensor, so nothing changes between replays) and replayed; each step
copies the new token ids to the host, as lsgpt's engine does.

Prefill: one forward pass over a prompt of one sequence writes its cache row
and picks the first token: SDPA (is_causal) for MHSA; for LS a compiled
FlexAttention with the per-head sliding-window block mask. Layers run eagerly
(--prefill compile wraps the whole prefill in torch.compile instead).

Per (mode, context): prefill of a batch-1 prompt of `context` tokens (median
of --prefill-repeats after one warm-up). Per (mode, batch, context): B rows
are prefilled with prompts of P = context - (warmup + steps) - 1 tokens, then
--warmup steps (the first two eager, to warm kernels up before the capture,
the rest graph replays) and --steps timed replays, so the timed steps sit just
below position `context`. ms_per_token: median step; mean_ms_per_token:
total / steps; tokens_per_s: B * steps / total. kv_cache_mib: the cache
tensors; peak_mib: torch.cuda.max_memory_allocated() during the measurement
(weights included). One JSON line per measurement on stdout (the keys of
bench_decode), and --json FILE gets the same lines.

Correctness (--check, on by default; see check()): with prompts longer than
w (so the ring wraps), the greedy tokens of the prefill, the eager steps and
the graph replays must each be the argmax of a full forward pass without a
cache over the sequence so far (explicit masks, SDPA), in fp32 and in bf16.

Usage: bench/decode_torch.py [--modes ls mhsa] [--batch 1 8 64]
       [--context 1024 4096 16384 32768] [--steps 64] [--warmup 8] [--json FILE]
"""
import argparse
import datetime
import gc
import json
import math
import sys
import time

import torch
import torch._dynamo
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

VOCAB = 50257
VOCAB_PADDED = 50304
MiB = 2**20

# Every prefill length (and dtype) is its own FlexAttention compile: allow
# more than the default recompile limit, past which dynamo runs it eagerly
# (unfused: the full score matrix, hopeless at 32k).
for _name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
              "accumulated_recompile_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(256, getattr(torch._dynamo.config, _name)))

flex = torch.compile(flex_attention, dynamic=False)


def round_up(x, m):
    return (x + m - 1) // m * m


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)

    def mlp(self, x):
        return self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, d, seq_len):
        super().__init__()
        self.n_layer, self.n_head, self.d = n_layer, n_head, d
        self.head_dim = d // n_head
        self.seq_len = seq_len
        self.wte = nn.Embedding(VOCAB_PADDED, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                    p.normal_(0.0, std)
                elif name.endswith("bias"):
                    p.zero_()
            self.wte.weight[VOCAB:].zero_()  # padded rows, never predicted

    def logits(self, x):
        """x [..., C] -> logits [..., VOCAB] (padding dropped)."""
        return (self.ln_f(x) @ self.wte.weight.t())[..., :VOCAB]


class KVCache:
    """Static cache for `batch` sequences of up to `max_ctx` positions."""

    def __init__(self, model, batch, n_local, window, max_ctx, dtype, device):
        L, H, D = model.n_layer, model.n_head, model.head_dim
        self.batch, self.n_local, self.n_global, self.window = batch, n_local, H - n_local, window
        # Sizes rounded up to 16 entries keep the masks' rows aligned for the
        # fused SDPA kernels; the extra entries are masked out.
        self.slots = round_up(window, 16) if n_local else 0
        self.max_ctx = round_up(max_ctx, 16)
        kw = dict(dtype=dtype, device=device)
        self.k_local = torch.zeros(L, batch, n_local, self.slots, D, **kw) if n_local else None
        self.v_local = torch.zeros_like(self.k_local) if n_local else None
        self.k_global = (torch.zeros(L, batch, self.n_global, self.max_ctx, D, **kw)
                         if self.n_global else None)
        self.v_global = torch.zeros_like(self.k_global) if self.n_global else None
        self.ar_ctx = torch.arange(self.max_ctx, device=device)
        self.ar_slots = torch.arange(max(self.slots, 1), device=device)

    def nbytes(self):
        return sum(t.numel() * t.element_size()
                   for t in (self.k_local, self.v_local, self.k_global, self.v_global)
                   if t is not None)


_block_masks = {}


def ls_block_mask(n_head, n_local, window, T, device):
    key = (n_head, n_local, window, T)
    if key not in _block_masks:
        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((h >= n_local) | (q_idx - kv_idx < window))
        try:  # compiled creation: never materialises the [H, T, T] mask
            bm = create_block_mask(mask_mod, B=None, H=n_head, Q_LEN=T, KV_LEN=T, device=device,
                                   _compile=True)
        except TypeError:
            bm = create_block_mask(mask_mod, B=None, H=n_head, Q_LEN=T, KV_LEN=T, device=device)
        _block_masks[key] = bm
    return _block_masks[key]


def prefill_forward(model, idx, block_mask):
    """Forward over idx [b, T]: the greedy next token of each row [b] and
    every layer's k, v [b, H, T, D]. block_mask: None for MHSA (SDPA causal),
    else FlexAttention's LS mask."""
    b, T = idx.shape
    H, D, C = model.n_head, model.head_dim, model.d
    x = model.wte(idx) + model.wpe(torch.arange(T, device=idx.device))
    ks, vs = [], []
    for blk in model.blocks:
        qkv = blk.c_attn(blk.ln_1(x))
        q, k, v = qkv.view(b, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # [b, H, T, D]
        ks.append(k)
        vs.append(v)
        if block_mask is not None:
            y = flex(q, k, v, block_mask=block_mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + blk.c_proj(y.transpose(1, 2).reshape(b, T, C))
        x = x + blk.mlp(x)
    return model.logits(x[:, -1]).argmax(-1), ks, vs


def make_prefill(compiled):
    forward = torch.compile(prefill_forward, dynamic=False) if compiled else prefill_forward

    def prefill(model, cache, idx, row0):
        """Runs prompts idx [b, T] into cache rows row0..row0+b-1 (positions
        0..T-1; local heads: the last w positions in their ring slots) and
        returns each row's greedy next token [b]."""
        b, T = idx.shape
        nl, w = cache.n_local, cache.window
        block_mask = ls_block_mask(model.n_head, nl, w, T, idx.device) if nl else None
        first, ks, vs = forward(model, idx, block_mask)
        rows = slice(row0, row0 + b)
        if nl:
            lo = max(0, T - w)
            slots = torch.arange(lo, T, device=idx.device) % w
        for layer, (k, v) in enumerate(zip(ks, vs)):
            if cache.n_global:
                cache.k_global[layer, rows, :, :T].copy_(k[:, nl:])
                cache.v_global[layer, rows, :, :T].copy_(v[:, nl:])
            if nl:
                cache.k_local[layer, rows].index_copy_(2, slots, k[:, :nl, lo:])
                cache.v_local[layer, rows].index_copy_(2, slots, v[:, :nl, lo:])
        return first

    return prefill


prefill = make_prefill(False)


def decode_step(model, cache, tok, pos):
    """One token per row at the shared position pos (int64 [1], on the device):
    tok [B] -> the next greedy tokens [B]. Neither allocates host memory nor
    syncs, so it can be captured in a CUDA graph."""
    B = tok.shape[0]
    H, D, C = model.n_head, model.head_dim, model.d
    nl, w = cache.n_local, cache.window
    x = model.wte(tok) + model.wpe(pos)  # [B, C]
    if cache.n_global:
        gmask = (cache.ar_ctx <= pos).view(1, 1, 1, -1)
    if nl:
        slot = torch.remainder(pos, w)
        lmask = ((cache.ar_slots < w) & (cache.ar_slots <= pos)).view(1, 1, 1, -1)
    for layer, blk in enumerate(model.blocks):
        qkv = blk.c_attn(blk.ln_1(x))
        q, k, v = qkv.view(B, 3, H, 1, D).unbind(1)  # [B, H, 1, D]
        outs = []
        if nl:
            kl, vl = cache.k_local[layer], cache.v_local[layer]
            kl.index_copy_(2, slot, k[:, :nl])
            vl.index_copy_(2, slot, v[:, :nl])
            outs.append(F.scaled_dot_product_attention(q[:, :nl], kl, vl, attn_mask=lmask))
        if cache.n_global:
            kg, vg = cache.k_global[layer], cache.v_global[layer]
            kg.index_copy_(2, pos, k[:, nl:])
            vg.index_copy_(2, pos, v[:, nl:])
            outs.append(F.scaled_dot_product_attention(q[:, nl:], kg, vg, attn_mask=gmask))
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # [B, H, 1, D]
        x = x + blk.c_proj(y.reshape(B, C))
        x = x + blk.mlp(x)
    return model.logits(x).argmax(-1)


class Decoder:
    """The decode step as a CUDA graph over static tok/pos tensors."""

    def __init__(self, model, cache, first_tokens, pos0, eager_steps):
        self.model, self.cache = model, cache
        self.tok = first_tokens.clone()
        self.pos = torch.full((1,), pos0, dtype=torch.long, device=first_tokens.device)
        self.eager_tokens = []
        # Eager steps on a side stream (as torch.cuda.graphs asks): kernels,
        # cuBLAS and SDPA picked and warmed before the capture.
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(eager_steps):
                self.eager_tokens.append(self._step().clone())
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._step()  # recorded, not run: the state is unchanged

    def _step(self):
        nxt = decode_step(self.model, self.cache, self.tok, self.pos)
        self.tok.copy_(nxt)
        self.pos.add_(1)
        return nxt

    def step(self):
        """One replay; returns the new tokens on the host (waits for them)."""
        self.graph.replay()
        return self.out.cpu()


@torch.no_grad()
def reference_logits(model, idx, n_local, window):
    """Logits [b, VOCAB] of the last position of idx [b, T], no cache,
    explicit per-head masks."""
    b, T = idx.shape
    H, D, C = model.n_head, model.head_dim, model.d
    x = model.wte(idx) + model.wpe(torch.arange(T, device=idx.device))
    i = torch.arange(T, device=idx.device).view(T, 1)
    j = torch.arange(T, device=idx.device).view(1, T)
    causal = j <= i
    local = causal & (i - j < window)
    mask = torch.stack([local] * n_local + [causal] * (H - n_local)).unsqueeze(0)
    for blk in model.blocks:
        q, k, v = blk.c_attn(blk.ln_1(x)).view(b, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + blk.c_proj(y.transpose(1, 2).reshape(b, T, C))
        x = x + blk.mlp(x)
    return model.logits(x[:, -1])


def new_model(args, seq_len, device):
    torch.manual_seed(0)
    with torch.device(device):
        model = GPT(args.n_layer, args.n_head, args.d_model, seq_len)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def check(modes, args, device):
    """Greedy tokens of prefill + eager steps + graph replays against full
    forward passes, teacher-forced: each token must be the reference argmax up
    to near-ties (a gap below tol x the row's logit std; a wrong cache, ring
    slot or mask is off by whole stds). The check model has the benchmark's
    shape with weights 3x GPT-2's init, so that attention is far from uniform
    and the logits depend on which keys are seen; fp32 first (the logic),
    then bf16 (the kernels the benchmark uses)."""
    B, T0, eager, replays = 2, 2 * args.window + 37, 2, 5
    for dtype, tol in ((torch.float32, 0.02), (torch.bfloat16, 0.3)):
        model = new_model(args, T0 + eager + replays + 16, device)
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
        model.to(dtype)
        g = torch.Generator(device=device).manual_seed(11)
        for mode in modes:
            n_local = args.local if mode == "ls" else 0
            prompt = torch.randint(0, VOCAB, (B, T0), device=device, generator=g)
            cache = KVCache(model, B, n_local, args.window, T0 + eager + replays + 1, dtype, device)
            first = torch.stack([prefill(model, cache, prompt[r:r + 1], r)[0] for r in range(B)])
            dec = Decoder(model, cache, first, T0, eager)
            toks = [first] + dec.eager_tokens + [dec.step().to(device).clone() for _ in range(replays)]
            seq = torch.cat([prompt, torch.stack(toks, dim=1)], dim=1)
            worst = 0.0
            for i in range(len(toks)):
                ref = reference_logits(model, seq[:, :T0 + i], n_local, args.window).float()
                chosen = ref.gather(1, seq[:, T0 + i:T0 + i + 1]).squeeze(1)
                gap = ((ref.max(-1).values - chosen) / ref.std(-1)).max().item()
                worst = max(worst, gap)
                if gap > tol:
                    which = "prefill" if i == 0 else ("eager step" if i <= eager else "graph replay")
                    raise SystemExit(f"decode_torch: check FAILED ({mode}, {dtype}): token {i} "
                                     f"({which}) is not the reference argmax (logit gap "
                                     f"{gap:.3g} stds)")
            print(f"# check ({mode}, {dtype}): {len(toks)} greedy tokens x {B} rows (prefill, "
                  f"{eager} eager steps, {replays} graph replays) are the argmax of full forward "
                  f"passes from T = {T0} (worst gap {worst:.2g} logit stds)",
                  file=sys.stderr, flush=True)
            del dec, cache
        del model
        cleanup()


def sync_ms(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3, out


def base_record(args, mode, n_local, kind, batch, context):
    return {"side": "torch", "kind": kind, "mode": mode, "device": DEVICE_NAME,
            "n_layer": args.n_layer, "n_head": args.n_head, "d_model": args.d_model,
            "n_local": n_local, "window": args.window if n_local else None,
            "batch": batch, "context": context, "graphs": True, "status": "ok",
            "torch": torch.__version__, "prefill_impl": args.prefill,
            "date": datetime.date.today().isoformat()}


def cleanup():
    gc.collect()
    torch.cuda.empty_cache()


def fits(nbytes, margin):
    free, _ = torch.cuda.mem_get_info()
    return nbytes + margin <= free, free


def is_oom(e):
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure_prefill(model, args, mode, n_local, context, device, prefill_fn):
    rec = base_record(args, mode, n_local, "prefill", 1, context)
    rec["prompt"] = context
    cache = None
    try:
        cleanup()
        torch.cuda.reset_peak_memory_stats()
        cache = KVCache(model, 1, n_local, args.window, context, torch.bfloat16, device)
        g = torch.Generator(device=device).manual_seed(context)
        times = []
        for r in range(1 + args.prefill_repeats):
            idx = torch.randint(0, VOCAB, (1, context), device=device, generator=g)
            ms, _ = sync_ms(lambda: prefill_fn(model, cache, idx, 0))
            if r > 0:
                times.append(ms)
        times.sort()
        med = times[len(times) // 2]
        rec.update(prefill_ms=round(med, 3), prefill_tokens_per_s=round(context / (med / 1e3)),
                   repeats=len(times), kv_cache_mib=round(cache.nbytes() / MiB, 2),
                   kv_cache_mib_per_sequence=round(cache.nbytes() / MiB, 2),
                   peak_mib=round(torch.cuda.max_memory_allocated() / MiB, 2))
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        rec["status"] = "oom" if is_oom(e) else "error"
        rec["note"] = str(e).splitlines()[0][:300]
    del cache
    cleanup()
    return rec


def measure_decode(model, args, mode, n_local, batch, context, device, prefill_fn):
    rec = base_record(args, mode, n_local, "decode", batch, context)
    n_steps = args.warmup + args.steps
    prompt = context - n_steps - 1
    rec.update(prompt=prompt, steps=args.steps, warmup=args.warmup)
    L, H, D = args.n_layer, args.n_head, args.d_model // args.n_head
    n_global = H - n_local
    est = 2 * L * batch * (n_local * round_up(args.window, 16) * (n_local > 0)
                           + n_global * round_up(context, 16)) * D * 2
    rec["kv_cache_mib"] = round(est / MiB, 2)
    if prompt < 1:
        rec.update(status="skipped", note="context too short for warmup + steps")
        return rec
    cleanup()
    ok, free = fits(est, margin=3 * 2**30 + 64 * context * args.d_model)
    if not ok:
        rec.update(status="oom", note=f"skipped: the cache needs {est / 2**30:.1f} GiB, "
                                      f"{free / 2**30:.1f} GiB free")
        return rec
    cache = dec = None
    try:
        torch.cuda.reset_peak_memory_stats()
        cache = KVCache(model, batch, n_local, args.window, context, torch.bfloat16, device)
        g = torch.Generator(device=device).manual_seed(1000 + context * 7 + batch)
        first = torch.empty(batch, dtype=torch.long, device=device)

        def fill():
            for r in range(batch):
                idx = torch.randint(0, VOCAB, (1, prompt), device=device, generator=g)
                first[r:r + 1] = prefill_fn(model, cache, idx, r)

        fill_ms, _ = sync_ms(fill)
        eager = min(2, args.warmup)
        dec = Decoder(model, cache, first, prompt, eager)
        for _ in range(args.warmup - eager):
            dec.step()
        times = []
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            s0 = time.perf_counter()
            dec.step()  # waits for the new tokens on the host
            times.append((time.perf_counter() - s0) * 1e3)
        total = time.perf_counter() - t0
        times.sort()
        rec.update(ms_per_token=round(times[len(times) // 2], 3),
                   mean_ms_per_token=round(total * 1e3 / args.steps, 3),
                   tokens_per_s=round(batch * args.steps / total),
                   kv_cache_mib=round(cache.nbytes() / MiB, 2), fill_ms=round(fill_ms, 2),
                   peak_mib=round(torch.cuda.max_memory_allocated() / MiB, 2))
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        rec["status"] = "oom" if is_oom(e) else "error"
        rec["note"] = str(e).splitlines()[0][:300]
    del dec, cache
    cleanup()
    return rec


DEVICE_NAME = None


def main():
    global DEVICE_NAME
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["ls", "mhsa"], choices=["ls", "mhsa"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--context", nargs="+", type=int, default=[1024, 4096, 16384, 32768])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=8, help=">= 2: two eager steps, the rest replays")
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--prefill", choices=["eager", "compile"], default="eager",
                    help="eager layers with compiled FlexAttention, or the whole prefill compiled")
    ap.add_argument("--local", type=int, default=11, help="local heads of 12 in mode ls")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=32768, help="learned positions")
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--no-check", dest="check", action="store_false",
                    help="skip the fp32 correctness check")
    ap.add_argument("--json", help="also write the JSON lines here")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 2 or args.prefill_repeats < 1:
        ap.error("need --steps >= 1, --warmup >= 2, --prefill-repeats >= 1")
    if not torch.cuda.is_available():
        sys.exit("decode_torch: needs a CUDA GPU")
    device = torch.device("cuda")
    DEVICE_NAME = torch.cuda.get_device_name()
    if args.check:
        check(args.modes, args, device)
    model = new_model(args, args.seq_len, device).to(torch.bfloat16)
    cleanup()

    prefill_fn = make_prefill(args.prefill == "compile")

    out = open(args.json, "w") if args.json else None

    def emit(rec):
        line = json.dumps(rec)
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    with torch.no_grad():
        for mode in args.modes:
            n_local = args.local if mode == "ls" else 0
            for context in sorted(args.context):
                if context > args.seq_len:
                    rec = base_record(args, mode, n_local, "prefill", 1, context)
                    rec.update(status="skipped", note=f"context above seq_len {args.seq_len}")
                    emit(rec)
                    continue
                emit(measure_prefill(model, args, mode, n_local, context, device, prefill_fn))
                for batch in sorted(args.batch):
                    emit(measure_decode(model, args, mode, n_local, batch, context, device,
                                        prefill_fn))
    if out:
        out.close()


if __name__ == "__main__":
    main()
