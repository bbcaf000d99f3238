"""Shared by the pretrain tests: a native GPT whose every weight is non-trivial."""
from __future__ import annotations

import torch

from pretrain.model import GPT, GPTConfig


def randomized(cfg: GPTConfig, seed: int = 0) -> GPT:
    """Non-trivial weights everywhere (biases, LayerNorms) so any mapping or masking mistake shows."""
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m
