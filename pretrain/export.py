"""Export a pretrain checkpoint to a Hugging Face model directory (no custom code needed to load it).

    python -m pretrain.export --ckpt runs/pretrain/tiny-dense --out runs/hf/tiny-dense
    python -m pretrain.export --ckpt runs/pretrain/tiny-sparse/ckpt.pt --out runs/hf/tiny-sparse --register base-v1

dense  -> ``GPT2LMHeadModel`` (HF GPT-2 uses Conv1D: weights are stored transposed w.r.t. nn.Linear).
sparse -> ``GPTNeoForCausalLM`` with ``attention_types`` global/local and ``window_size``. GPT-Neo does not
scale attention scores by 1/sqrt(head_dim), so the query weights are multiplied by it here. GPT-Neo's
local mask is ``i - window_size < j <= i``, identical to ``pretrain.model``. Load it with
``attn_implementation="eager"`` (the default for GPT-Neo; its flash-attention-2 path ignores the window).
``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)`` both work.
fixed  -> refused: no stock HF architecture has block + summary attention, and a dense or banded stand-in would
load fine and silently compute something else. Sample and evaluate its run folder natively instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from pretrain.model import GPT, GPTConfig


def resolve_ckpt(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "ckpt.pt"
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def load_native(path: str | Path, device: str = "cpu") -> tuple[GPT, dict]:
    """Load a native model from ``ckpt.pt`` or its run folder; returns (model in eval mode, checkpoint dict)."""
    ck = torch.load(resolve_ckpt(path), map_location=device, weights_only=False)
    model = GPT(GPTConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck


def _ln(sd: dict, prefix: str, ln: torch.nn.LayerNorm) -> None:
    sd[prefix + ".weight"] = ln.weight.detach().clone()
    sd[prefix + ".bias"] = (ln.bias.detach().clone() if ln.bias is not None
                            else torch.zeros_like(ln.weight))


def _bias(lin: torch.nn.Linear) -> torch.Tensor:
    return lin.bias.detach().clone() if lin.bias is not None else torch.zeros(lin.out_features)


def check_exportable(cfg: GPTConfig) -> None:
    """Raise ValueError for a pattern with no stock HF architecture (before anything is written)."""
    if cfg.attention not in ("dense", "sparse"):
        raise ValueError(f"attention={cfg.attention!r} has no Hugging Face architecture; only dense (-> GPT2LMHeadModel) "
                         "and sparse (-> GPTNeoForCausalLM) checkpoints export. Use the run folder natively: "
                         "python -m pretrain.sample / pretrain.evaluate --model RUN_DIR")


def to_hf(model: GPT, special: dict | None = None):
    """Build the equivalent transformers model (float32) from a native one."""
    cfg = model.config
    check_exportable(cfg)
    special = special or {}
    ids = {k: special.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    act = {"none": "gelu", "tanh": "gelu_new"}[cfg.gelu_approximate]
    sd: dict[str, torch.Tensor] = {"transformer.wte.weight": model.wte.weight.detach().clone(),
                                   "transformer.wpe.weight": model.wpe.weight.detach().clone()}
    _ln(sd, "transformer.ln_f", model.ln_f)
    if cfg.attention == "dense":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function=act,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            layer_norm_epsilon=cfg.layer_norm_epsilon, tie_word_embeddings=True, **ids)
        for i, blk in enumerate(model.h):
            p = f"transformer.h.{i}."
            _ln(sd, p + "ln_1", blk.ln_1)
            _ln(sd, p + "ln_2", blk.ln_2)
            # Conv1D stores (in, out): transpose every nn.Linear weight.
            for name, lin in (("attn.c_attn", blk.attn.c_attn), ("attn.c_proj", blk.attn.c_proj),
                              ("mlp.c_fc", blk.mlp.c_fc), ("mlp.c_proj", blk.mlp.c_proj)):
                sd[p + name + ".weight"] = lin.weight.detach().t().contiguous()
                sd[p + name + ".bias"] = _bias(lin)
        hf = GPT2LMHeadModel(hf_cfg)
    else:
        from transformers import GPTNeoConfig, GPTNeoForCausalLM

        if cfg.qkv_bias:
            raise ValueError("GPT-Neo has no q/k/v bias: train sparse models with qkv_bias=False (the default)")
        types = ["local" if cfg.is_local(i) else "global" for i in range(cfg.n_layer)]
        hf_cfg = GPTNeoConfig(vocab_size=cfg.vocab_size, max_position_embeddings=cfg.block_size,
                              hidden_size=cfg.n_embd, num_layers=cfg.n_layer, num_heads=cfg.n_head,
                              attention_types=[[types, 1]], window_size=cfg.window,
                              intermediate_size=4 * cfg.n_embd, activation_function=act,
                              resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
                              layer_norm_epsilon=cfg.layer_norm_epsilon, tie_word_embeddings=True, **ids)
        hd = cfg.n_embd // cfg.n_head
        for i, blk in enumerate(model.h):
            p = f"transformer.h.{i}."
            _ln(sd, p + "ln_1", blk.ln_1)
            _ln(sd, p + "ln_2", blk.ln_2)
            q, k, v = blk.attn.c_attn.weight.detach().split(cfg.n_embd, dim=0)
            a = p + "attn.attention."
            sd[a + "q_proj.weight"] = q * (1.0 / math.sqrt(hd))  # GPT-Neo omits the 1/sqrt(d) score scale
            sd[a + "k_proj.weight"] = k.clone()
            sd[a + "v_proj.weight"] = v.clone()
            sd[a + "out_proj.weight"] = blk.attn.c_proj.weight.detach().clone()
            sd[a + "out_proj.bias"] = _bias(blk.attn.c_proj)
            for name, lin in (("mlp.c_fc", blk.mlp.c_fc), ("mlp.c_proj", blk.mlp.c_proj)):
                sd[p + name + ".weight"] = lin.weight.detach().clone()
                sd[p + name + ".bias"] = _bias(lin)
        hf = GPTNeoForCausalLM(hf_cfg)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte
    if missing or unexpected:
        raise RuntimeError(f"export mapping mismatch: missing={missing} unexpected={unexpected}")
    hf.tie_weights()
    return hf.eval()


def export(ckpt: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write model + tokenizer to ``out_dir``; returns it."""
    from pretrain.tokenizer import load_tokenizer

    model, ck = load_native(ckpt)
    check_exportable(model.config)
    cp = resolve_ckpt(ckpt)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else cp.parent / "tokenizer"
    if not tok_dir.is_dir():
        raise FileNotFoundError(f"tokenizer not found at {tok_dir} (pass --tokenizer)")
    tok = load_tokenizer(tok_dir)
    hf = to_hf(model, {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                       "pad_token_id": tok.pad_token_id})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.generation_config.pad_token_id = tok.pad_token_id
    hf.generation_config.eos_token_id = tok.eos_token_id
    hf.generation_config.bos_token_id = tok.bos_token_id
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    info = {"source_checkpoint": str(cp.resolve()), "step": ck.get("step"), "model_config": ck["model_config"],
            "best_val_loss": ck.get("best_val_loss"), "architecture": type(hf).__name__}
    (out / "pretrain_info.json").write_text(json.dumps(info, indent=2, default=str))
    return out


def register(name: str, out_dir: Path, info: dict) -> None:
    """Record the exported model as a ``base`` model version through the ``db`` package."""
    try:
        from db.services import registry
        from db.services.errors import ServiceError
        from db.session import session_scope
    except ImportError as e:
        raise RuntimeError(f"--register needs the db package (and a configured DATABASE_URL): {e}") from e
    metrics = {"best_val_loss": info.get("best_val_loss"), "step": info.get("step")}
    try:
        with session_scope() as session:
            registry.register_model_version(session, name=name, kind="base", path=str(Path(out_dir).resolve()),
                                            config=info["model_config"], metrics=metrics)
    except ServiceError as e:  # e.g. the name is taken or the database was never migrated
        raise RuntimeError(f"exported to {out_dir}, but not registered: {e}") from e


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="ckpt.pt written by pretrain.train, or its run folder")
    ap.add_argument("--out", required=True, help="output directory for the HF model and tokenizer")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: <run folder>/tokenizer)")
    ap.add_argument("--register", metavar="NAME", default=None,
                    help="also register the export as a 'base' model version NAME in the database "
                         "(needs the db package and DATABASE_URL)")
    args = ap.parse_args(argv)
    try:
        out = export(args.ckpt, args.out, args.tokenizer)
        if args.register:
            register(args.register, out, json.loads((out / "pretrain_info.json").read_text()))
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print(f"exported to {out}" + (f" and registered as {args.register!r}" if args.register else ""))


if __name__ == "__main__":
    main()
