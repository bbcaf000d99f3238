"""Resolve a model reference (version name/id, local path, hub id) and load it the same way everywhere."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.services.errors import InputError, NotFound

log = logging.getLogger(__name__)


@dataclass
class ModelRef:
    ref: str  # what the user typed
    path: str  # local directory or hub id to load
    version_id: int | None = None
    version_name: str | None = None
    kind: str | None = None  # base | sft | reward | policy | external


def resolve_model(ref: str, url: str | None = None, lookup: bool = True, field: str = "model") -> ModelRef:
    """A registered version (name, id or path) → its path; else a local directory or a hub id (unregistered).

    ``lookup=False`` leaves the database alone when `ref` is an existing directory (``--no_register`` runs
    on a file need no database at all)."""
    if not ref:
        raise InputError(f"--{field} is required (a model version name, a local directory or a hub id)",
                         field=field)
    local = Path(ref).expanduser()
    # An existing directory is looked up by its absolute path only: the same relative name typed in another
    # folder (or a version that happens to share the name) must not stand in for these weights.
    candidates = [str(local.resolve())] if local.exists() else [ref]
    if not lookup and local.exists():
        return ModelRef(ref, str(local.resolve()))
    try:
        from db.services import registry
        from db.session import session_scope

        with session_scope(url) as s:
            for c in candidates:
                try:
                    mv = registry.resolve(s, c)
                except NotFound:
                    continue
                return ModelRef(ref, mv.path, mv.id, mv.name, mv.kind)
    except NotFound:
        pass
    except Exception as e:  # noqa: BLE001 — no database (e.g. --dataset with --no_register): a path still works
        log.info("model registry not available (%s); treating %r as a path", e.__class__.__name__, ref)
    if local.exists():
        return ModelRef(ref, str(local.resolve()))
    if ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") > 1:
        raise InputError(f"no model version and no directory named {ref!r}", field=field)
    return ModelRef(ref, ref)  # a hub id: loading it is the user's call (needs network or a local cache)


def require_reward_model(m: ModelRef, field: str = "reward_model") -> None:
    """Refuse a model that is not a trained scorer (a causal LM would get a fresh, random reward head)."""
    if m.kind in ("base", "sft", "policy"):
        raise InputError(f"--{field} {m.ref!r} is a {m.kind} model version, not a reward model: train one with "
                         "python -m rlhf.train_reward (its head would otherwise be random)", field=field)
    try:
        from transformers import AutoConfig

        archs = getattr(AutoConfig.from_pretrained(m.path), "architectures", None) or []
    except Exception:  # noqa: BLE001 — a hub id or an unreadable config: the load reports it
        return
    if archs and not any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs):
        raise InputError(f"--{field} {m.ref!r} is a {', '.join(archs)} checkpoint, not a reward model "
                         "(a sequence-classification head): train one with python -m rlhf.train_reward", field=field)


def ensure_registered(session: Any, m: ModelRef) -> Any:
    """The model's version row, registering an unregistered path/hub id as kind 'external'."""
    from db.services import registry

    if m.version_id is not None:
        return registry.resolve(session, m.version_id)
    local = Path(m.path).exists()
    for c in (m.path,) if local else (m.path, m.ref):  # a directory only ever by its own path
        try:
            mv = registry.resolve(session, c)
        except NotFound:
            continue
        if not local or mv.path == m.path:
            return mv
    name = m.ref if len(m.ref) <= 200 else "external-" + m.ref[-180:]
    try:
        taken = registry.resolve(session, name)
    except NotFound:
        taken = None
    if taken is not None and taken.path != m.path:  # the name is another model's: name it by its path
        name = m.path if len(m.path) <= 200 else "external-" + m.path[-180:]
    mv = registry.get_or_register(session, name, "external", m.path, config={"registered_by": "rlhf"})
    m.version_id, m.version_name, m.kind = mv.id, mv.name, mv.kind
    return mv


def attn_implementation(path: str, requested: str = "auto") -> str:
    """GPT-Neo needs eager attention (its fast paths ignore the local window); sdpa elsewhere."""
    if requested != "auto":
        return requested
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path)
        return "eager" if getattr(cfg, "model_type", "") == "gpt_neo" else "sdpa"
    except Exception:  # noqa: BLE001 — let the real load report the problem
        return "sdpa"


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")


def load_tokenizer(path: str, padding_side: str | None = None) -> Any:
    from transformers import AutoTokenizer

    # transformers 5 builds an empty one-token tokenizer from a folder without tokenizer files
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise InputError(f"{path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})", field="model")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise InputError(f"cannot load a tokenizer from {path!r}: {e}", field="model") from e
    if padding_side:
        tok.padding_side = padding_side
    return tok


def pad_problem(tokenizer: Any) -> str | None:
    """Why this tokenizer cannot pad safely (None when it can)."""
    if tokenizer.pad_token is None:
        return "the tokenizer has no pad token"
    if tokenizer.eos_token is not None and tokenizer.pad_token_id == tokenizer.eos_token_id:
        return f"the tokenizer's pad token is its EOS token ({tokenizer.eos_token!r})"
    return None


def add_pad_token(tokenizer: Any, model: Any | None = None, token: str = "<|pad|>") -> None:
    tokenizer.add_special_tokens({"pad_token": token})
    if model is not None:
        emb = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > emb:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(path: str, attn: str = "auto", dtype: Any = None) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation(path, attn),
                                                    dtype=dtype)
    except OSError as e:
        raise InputError(f"cannot load a causal LM from {path!r}: {e}", field="model") from e


def load_reward_model(path: str, attn: str = "auto", dtype: Any = None) -> Any:
    """AutoModelForSequenceClassification with one output (a new head when `path` is a causal LM)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized" is expected when starting from an LM
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, attn_implementation=attn_implementation(path, attn), dtype=dtype)
    except OSError as e:
        raise InputError(f"cannot load a model from {path!r}: {e}", field="model") from e
    finally:
        hf_logging.set_verbosity(verbosity)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


INFERENCE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a response: the generation config's (chat models list their end-of-turn tokens
    there) plus the tokenizer's EOS."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([] if ids is None else [ids])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def inference_dtype(name: str = "auto") -> Any:
    """Weights dtype for generation / scoring: auto = bfloat16 on a CUDA GPU that supports it, else float32.

    An explicit dtype is honoured on CPU too (bfloat16 runs there, slowly), so the GPU path is testable."""
    import torch

    if name not in INFERENCE_DTYPES:
        raise InputError(f"unknown dtype {name!r}; expected one of {', '.join(INFERENCE_DTYPES)}", field="dtype")
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)
