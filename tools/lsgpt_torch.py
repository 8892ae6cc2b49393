#!/usr/bin/env python3
"""A small, readable PyTorch reference of an lsgpt model, for testing only.

It loads an `lsgpt export` directory (model.safetensors + config.json, Hugging
Face GPT-2 names and layouts) and computes logits and the loss of token ids,
with every attention mask written out explicitly:

  * heads [0, n_local) of a layer are local: query i sees keys i-w+1 .. i,
  * the other heads are global causal: query i sees keys 0 .. i,

where n_local comes from config.json's "lsgpt_n_local" (one entry per layer)
and w from "lsgpt_window". With n_local = 0 everywhere this is GPT-2 itself,
so the same export must give the same logits in transformers' GPT2LMHeadModel.
The span/violation setting ("lsgpt_span") changes only gradients, never the
forward pass, so it is not used here.

Usage as a program:
  python3 tools/lsgpt_torch.py EXPORT_DIR --tokens 464,3290,318,257
prints a JSON line with the loss of predicting each token from the ones before.
"""

import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file


class LsgptConfig:
    def __init__(self, cfg: dict):
        self.n_layer = cfg["n_layer"]
        self.n_head = cfg["n_head"]
        self.n_embd = cfg["n_embd"]
        self.n_positions = cfg["n_positions"]
        self.vocab_size = cfg["vocab_size"]
        n_local = cfg.get("lsgpt_n_local", 0)
        if isinstance(n_local, int):
            n_local = [n_local] * self.n_layer
        if len(n_local) != self.n_layer:
            raise ValueError(f"lsgpt_n_local has {len(n_local)} entries for {self.n_layer} layers")
        self.n_local = list(n_local)
        self.window = cfg.get("lsgpt_window", 1)
        # QK-norm (docs/STABILISERS.md): per-head RMSNorm of q and k, eps 1e-6.
        self.qk_norm = bool(cfg.get("lsgpt_qk_norm", False))


def attention_masks(T: int, n_head: int, n_local: int, window: int) -> torch.Tensor:
    """[n_head, T, T] booleans, True where query i (row) may attend to key j (column)."""
    i = torch.arange(T).view(T, 1)
    j = torch.arange(T).view(1, T)
    causal = j <= i
    local = causal & (j >= i - window + 1)
    return torch.stack([local if h < n_local else causal for h in range(n_head)])


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * weight + bias


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight


class LsgptModel:
    def __init__(self, config: LsgptConfig, weights: dict, dtype=torch.float64):
        self.config = config
        # Hub files may name tensors without the "transformer." prefix.
        self.w = {}
        for name, tensor in weights.items():
            if name.startswith("transformer."):
                name = name[len("transformer."):]
            self.w[name] = tensor.to(dtype)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (int64) -> logits [B, T, vocab_size]."""
        c, w = self.config, self.w
        B, T = tokens.shape
        if T > c.n_positions:
            raise ValueError(f"{T} tokens exceed the context of {c.n_positions}")
        C, H = c.n_embd, c.n_head
        D = C // H
        x = w["wte.weight"][tokens] + w["wpe.weight"][:T]
        for layer in range(c.n_layer):
            p = f"h.{layer}."
            h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
            # Conv1D stores [in, out]: y = x @ W + b.
            qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = qkv.split(C, dim=-1)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
            if c.qk_norm:
                q = rms_norm(q, w[p + "attn.q_norm.weight"])
                k = rms_norm(k, w[p + "attn.k_norm.weight"])
            scores = q @ k.transpose(-1, -2) / math.sqrt(D)
            mask = attention_masks(T, H, c.n_local[layer], c.window).to(scores.device)
            scores = scores.masked_fill(~mask, float("-inf"))
            y = torch.softmax(scores, dim=-1) @ v
            y = y.transpose(1, 2).reshape(B, T, C)
            x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            h = gelu_tanh(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
        return x @ w["wte.weight"].T  # tied output embedding

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting targets [B, T] from inputs [B, T]."""
        logits = self.logits(inputs)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def load_export(export_dir: str, dtype=torch.float64) -> LsgptModel:
    with open(os.path.join(export_dir, "config.json")) as f:
        config = LsgptConfig(json.load(f))
    weights = load_file(os.path.join(export_dir, "model.safetensors"))
    return LsgptModel(config, weights, dtype)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids (at least 2)")
    args = parser.parse_args()
    ids = [int(t) for t in args.tokens.split(",")]
    if len(ids) < 2:
        parser.error("--tokens needs at least 2 ids")
    model = load_export(args.export_dir)
    tokens = torch.tensor([ids], dtype=torch.long)
    loss = model.loss(tokens[:, :-1], tokens[:, 1:]).item()
    print(json.dumps({"loss": loss, "tokens": len(ids) - 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
