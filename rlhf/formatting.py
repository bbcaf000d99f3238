"""How a prompt (text or chat) becomes model input — one place, shared by generation and training.

Two renderings:

- chat: the tokenizer's chat template (prompt turns + generation prompt; TRL renders prompt + completion with
  the same template, so training and sampling see the same bytes);
- plain: ``prompt`` followed by one newline (``PLAIN_SEPARATOR``), then the completion, then EOS (TRL adds it).
  A chat prompt rendered plain is flattened as "Role: content" paragraphs.

``auto`` picks chat when the tokenizer has a template (training), and for generation only when the prompt is a
chat or the model is an instruction-tuned kind (sft / policy): base models get plain prompts, optionally with
few-shot examples in front (GPT-3 style, examples separated by a blank line).
"""
from __future__ import annotations

from typing import Any

from db.services.errors import InputError

PLAIN_SEPARATOR = "\n"
FEW_SHOT_SEPARATOR = "\n\n"
Messages = list[dict[str, str]]


def is_chat(value: Any) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], dict))


def flatten(msgs: Messages) -> str:
    """Chat turns as plain text (same rule as db.services.export.prompt_as_plain)."""
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs)


def plain_prompt(prompt: str | Messages) -> str:
    text = flatten(prompt) if is_chat(prompt) else str(prompt)
    return text if text.endswith(PLAIN_SEPARATOR) else text + PLAIN_SEPARATOR


def completion_text(completion: str | Messages) -> str:
    if is_chat(completion):
        return "\n\n".join(m["content"] for m in completion if m.get("role") == "assistant") or \
            "\n\n".join(m["content"] for m in completion)
    return str(completion)


def as_messages(prompt: str | Messages) -> Messages:
    return list(prompt) if is_chat(prompt) else [{"role": "user", "content": str(prompt)}]


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_for_training(tokenizer: Any, mode: str) -> bool:
    """Training jobs: chat rendering when asked, or (auto) when the tokenizer has a template."""
    if mode == "always" and not has_template(tokenizer):
        raise InputError("--chat_format always, but the tokenizer has no chat template", field="chat_format")
    return mode == "always" or (mode == "auto" and has_template(tokenizer))


def use_chat_for_generation(tokenizer: Any, mode: str, prompt_is_chat: bool, model_kind: str | None) -> bool:
    if mode == "never" or not has_template(tokenizer):
        if mode == "always":
            raise InputError("--chat_format always, but the tokenizer has no chat template", field="chat_format")
        return False
    return mode == "always" or prompt_is_chat or model_kind in ("sft", "policy")


def format_sft_row(row: dict[str, Any], chat: bool) -> dict[str, Any]:
    """{prompt, completion} in the rendering the model trains on (TRL prompt-completion format)."""
    if chat:
        completion = row["completion"] if is_chat(row["completion"]) else \
            [{"role": "assistant", "content": str(row["completion"])}]
        return {"prompt": as_messages(row["prompt"]), "completion": completion}
    return {"prompt": plain_prompt(row["prompt"]), "completion": completion_text(row["completion"])}


def format_preference_row(row: dict[str, Any], chat: bool) -> dict[str, Any]:
    """{prompt, chosen, rejected, margin, group} in TRL's explicit-prompt format, chat or plain."""
    out: dict[str, Any] = {"margin": float(row.get("margin") or 0.0)}
    if chat:
        out["prompt"] = as_messages(row["prompt"])
        for k in ("chosen", "rejected"):
            v = row[k]
            out[k] = v if is_chat(v) else [{"role": "assistant", "content": str(v)}]
    else:
        out["prompt"] = plain_prompt(row["prompt"])
        for k in ("chosen", "rejected"):
            out[k] = completion_text(row[k])
    # rankings' pairs share a `group` (one per ranked task): one training row (rlhf.data.ranking_rows)
    out = {**{k: out[k] for k in ("prompt", "chosen", "rejected", "margin")}, "group": row.get("group")}
    if row.get("split_key") is not None:  # what the held-out split hashes (an OpenAssistant tree)
        out["split_key"] = str(row["split_key"])
    return out


def generation_input(tokenizer: Any, prompt: str | Messages, chat: bool, few_shot: list[tuple[Any, str]] = ()
                     ) -> str:
    """The text fed to `generate` for one prompt (few-shot examples only in plain mode)."""
    if chat:
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    prefix = "".join(plain_prompt(p) + c + FEW_SHOT_SEPARATOR for p, c in few_shot)
    return prefix + plain_prompt(prompt)


def encode(tokenizer: Any, prompt: Any, completion: Any) -> list[int]:
    """Token ids of prompt + completion exactly as TRL's RewardTrainer tokenizes a side of a pair."""
    if is_chat(prompt):
        out = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=True, return_dict=True)
        return list(out["input_ids"])
    text = prompt + completion
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text=text)["input_ids"])
