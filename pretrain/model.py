"""One small GPT (GPT-2 layout) with optional sparse layers alternating with dense ones, as in GPT-3.

Pre-LN blocks, learned positions, tied input/output embeddings, GELU. The exported GPT2LMHeadModel /
GPTNeoForCausalLM reproduce the logits exactly (``activation_function`` "gelu" or "gelu_new" to match).

Two sparse patterns (every layer causal as well):
- ``sparse``: locally banded with GPT-Neo's window semantics: query i sees keys j with ``i - window < j <= i``
  (``window`` keys including itself), see ``GPTNeoSelfAttention.__init__`` in transformers.
- ``fixed``: the Sparse Transformer's fixed pattern (Child et al. 2019, 4.3), both of its sets merged in one
  layer: query i sees its own block of ``fixed_block`` positions and the last ``fixed_summary`` positions
  ("summary" cells) of every earlier block. A summary position gathers its block; later tokens read it
  instead of the words before it, so two stacked layers connect any two positions. No HF export.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("dense", "sparse", "fixed")


@dataclass
class GPTConfig:
    vocab_size: int = 512
    block_size: int = 128  # maximum context length (learned position table size)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # bias in LayerNorm, MLP and attention output projection (GPT-2 has them)
    # q/k/v bias; None means "False for sparse, else True" because GPT-Neo has none (exact export).
    qkv_bias: bool | None = None
    attention: str = "dense"  # "dense" | "sparse" (banded) | "fixed" (blocks + summary positions)
    window: int = 64  # keys seen by a banded layer, including the query itself
    fixed_block: int = 32  # positions per block of a fixed layer (the paper's stride l)
    fixed_summary: int = 4  # last positions of each block that later blocks may read (the paper's c)
    # Which layers use the sparse pattern; None = odd layers (GPT-Neo's [["global", "local"], n/2]).
    local_layers: list[int] | None = None
    layer_norm_epsilon: float = 1e-5
    # "none": exact erf GELU (HF "gelu"), ~3x cheaper than the tanh form on CPU;
    # "tanh": GPT-2's original approximation (HF "gelu_new").
    gelu_approximate: str = "none"
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. tokenizer path); ignored by the model

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.qkv_bias is None:
            self.qkv_bias = self.attention != "sparse"
        if self.gelu_approximate not in ("none", "tanh"):
            raise ValueError("gelu_approximate must be 'none' or 'tanh'")
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if not 1 <= self.fixed_summary <= self.fixed_block:
            raise ValueError(f"need 1 <= fixed_summary <= fixed_block, got {self.fixed_summary}, {self.fixed_block}")

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` uses the sparse pattern (banded or fixed) rather than dense causal attention."""
        if self.attention == "dense":
            return False
        if self.local_layers is not None:
            return layer in self.local_layers
        return layer % 2 == 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def banded_causal_mask(t: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (t, t) mask, True = may attend: ``i - window < j <= i``."""
    i = torch.arange(t, device=device).unsqueeze(1)
    j = torch.arange(t, device=device).unsqueeze(0)
    return (j <= i) & (j > i - window)


def fixed_causal_mask(t: int, block: int, summary: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (t, t) mask, True = may attend: ``j <= i`` and (same block, or j among the last ``summary``
    positions of its block)."""
    i = torch.arange(t, device=device).unsqueeze(1)
    j = torch.arange(t, device=device).unsqueeze(0)
    return (j <= i) & ((j // block == i // block) | (j % block >= block - summary))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, local: bool):
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        # One fused q|k|v projection (rows 0:C are q, C:2C k, 2C:3C v); export splits it for GPT-Neo.
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.qkv_bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.local = local
        self.attention, self.window = cfg.attention, cfg.window
        self.fixed_block, self.fixed_summary = cfg.fixed_block, cfg.fixed_summary
        # up to this length the sparse pattern equals the causal mask (band or first block covers it all)
        self.span = cfg.fixed_block if cfg.attention == "fixed" else cfg.window
        self.dropout = cfg.dropout
        # Only instantiate dropout when used: identity modules still cost a dispatch per call.
        self.resid_drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def _mask(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, str(device))
        m = self._mask_cache.get(key)
        if m is None:
            m = self._mask_cache[key] = (
                fixed_causal_mask(t, self.fixed_block, self.fixed_summary, device) if self.attention == "fixed"
                else banded_causal_mask(t, self.window, device))
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        h = self.n_head
        q, k, v = self.c_attn(x).view(b, t, 3, h, c // h).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        if self.local and t > self.span:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(t, x.device), dropout_p=p)
        else:  # a pattern that covers the whole sequence is just the causal mask: take the fast path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.approximate = cfg.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, local: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, local)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.h = nn.ModuleList([Block(cfg, cfg.is_local(i)) for i in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream does not grow.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (logits for every position, mean cross-entropy or None); targets of -1 are ignored."""
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence length {t} > block_size {self.config.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        logits = self.lm_head(x)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (6N + attention, PaLM appendix B), counting the most keys a query may see:
        t on dense layers (nanoGPT / PaLM convention, masked keys included), the band on banded ones, its block
        plus the earlier blocks' summaries on fixed ones."""
        cfg = self.config
        t = seq_len or cfg.block_size
        n = self.num_params()
        attn = 0.0
        for i in range(cfg.n_layer):
            if not cfg.is_local(i):
                keys = t
            elif cfg.attention == "sparse":
                keys = min(t, cfg.window)
            else:  # the last query of the last block: its block + every earlier block's summaries
                keys = min(t, cfg.fixed_block + cfg.fixed_summary * (math.ceil(t / cfg.fixed_block) - 1))
            attn += 12 * cfg.n_embd * keys
        return 6 * n + attn

    def configure_optimizer(self, weight_decay: float, lr: float, betas: tuple[float, float],
                            device_type: str) -> torch.optim.AdamW:
        """AdamW with decay on >=2-D tensors only (matmuls, embeddings), none on biases and LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # The fused kernel exists for CUDA and CPU (one pass per tensor instead of ~10 foreach ops); on CPU
        # it measured ~3% faster per training step of the nanoGPT shape. Others fall back to foreach.
        kw = {"fused": True} if device_type in ("cuda", "cpu") else {}
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **kw)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Autoregressive sampling (greedy when temperature == 0), no KV cache: models here are small.

        Returns prompt + continuation; ``top_k`` of None or 0 means no top-k filter.
        """
        for _ in range(max_new_tokens):
            ctx = idx[:, -self.config.block_size:]
            logits, _ = self(ctx)
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            if eos_token_id is not None and bool((nxt == eos_token_id).all()):
                break
        return idx
