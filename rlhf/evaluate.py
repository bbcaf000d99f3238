"""Evaluate trained models on files.

    python -m rlhf.evaluate reward --model DIR|VERSION --dataset prefs.jsonl [--out metrics.json]

``reward``: score every pair of a preference file (TRL explicit/implicit prompt or Anthropic HH) with any
sequence-classification reward model; prints pairwise accuracy (ties count as wrong), mean margin, ECE of
sigmoid(r_c - r_r) and mean rewards as JSON. A pair longer than the model's context is scored left-truncated
(the end of the sequence, where the score is read, is kept) and counted in ``truncated_pairs``. Prompts are rendered as the model was trained (recorded in its
config by rlhf.train_reward; otherwise the chat template when the tokenizer has one, see --chat_format).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from db.services.errors import InputError, ServiceError


def evaluate_reward(model_ref: str, dataset: str, *, chat_format: str = "auto", batch_size: int = 16,
                    database_url: str | None = None, attn: str = "auto", dtype: str = "float32") -> dict[str, Any]:
    from rlhf import data, reward
    from rlhf.formatting import format_preference_row, use_chat_for_training
    from rlhf.modeling import (
        device,
        inference_dtype,
        load_reward_model,
        load_tokenizer,
        pad_problem,
        resolve_model,
    )

    m = resolve_model(model_ref, database_url, lookup=database_url is not None or not Path(model_ref).exists())
    rows = data.preference_rows_from_file(dataset)
    tok = load_tokenizer(m.path)
    problem = pad_problem(tok)
    if problem:
        raise InputError(f"{problem}: this reward model cannot score padded batches reliably", field="model")
    torch_dtype = inference_dtype(dtype)
    model = load_reward_model(m.path, attn, dtype=torch_dtype).to(device())
    recorded = reward.info(model).get("chat_template")
    chat = bool(recorded) if recorded is not None and chat_format == "auto" else \
        use_chat_for_training(tok, chat_format)
    formatted = [format_preference_row(r, chat) for r in rows.rows]
    metrics = reward.evaluate_pairs(model, tok, formatted, batch_size)
    return {"model": m.path, "model_version": m.version_name, "dataset": str(Path(dataset).resolve()),
            "chat_template": chat, "dtype": str(torch_dtype).removeprefix("torch."), **metrics}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rlhf.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("reward", help="pairwise metrics of a reward model on a preference file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--model", required=True, help="reward model directory, version name/id, or hub id")
    r.add_argument("--dataset", required=True, help="preference JSONL (TRL or HH)")
    r.add_argument("--chat_format", "--chat-format", default="auto", choices=["auto", "always", "never"],
                   help="render prompts with the tokenizer's chat template: auto (as recorded at training, else "
                        "when the tokenizer has one), always, never (plain 'prompt\\n' + response)")
    r.add_argument("--batch_size", "--batch-size", type=int, default=16, help="sequences per forward pass")
    r.add_argument("--database_url", "--database-url", default=None,
                   help="database URL to resolve a model version name/id (None: $DATABASE_URL)")
    r.add_argument("--attn_implementation", "--attn-implementation", default="auto",
                   help="attention kernel: auto (eager for GPT-Neo, sdpa otherwise), eager, sdpa, "
                        "flash_attention_2")
    r.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype while scoring. float32 by default so metrics compare across devices "
                        "(bf16 rounding turns close pairs into ties, which count as wrong); auto = bfloat16 on "
                        "a CUDA GPU that supports it")
    r.add_argument("--out", default=None, help="also write the metrics JSON here")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        res = evaluate_reward(args.model, args.dataset, chat_format=args.chat_format, batch_size=args.batch_size,
                              database_url=args.database_url, attn=args.attn_implementation, dtype=args.dtype)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
