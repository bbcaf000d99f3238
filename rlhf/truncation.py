"""One rule for inputs longer than a model's context, shared by SFT, reward training and evaluation, generation
and PPO scoring: keep the whole response, cut the prompt from the left (``truncation_side="left"``), as
InstructGPT and most RLHF stacks do. The latest prompt turns are what the response answers, and a reward model
reads its score at the last token, so the end of the sequence is what must survive.

A leading BOS (Llama-style tokenizers) stays at the front, as the model always saw one there. A row whose
response alone does not fit cannot be scored or trained on as written: ``Fitted.fits`` is False, the trainers
leave it out and count it, and scorers that must return a number read the last ``max_length`` tokens.

Token ids are those TRL's trainers produce (``encode_prompt_completion``): the chat template of prompt +
completion, or ``prompt + completion + EOS`` as text; the prompt part is the common prefix with the prompt
rendered alone (with the generation prompt for chat), TRL's own ``common_prefix_length`` rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.formatting import encode, is_chat


@dataclass(frozen=True)
class Fitted:
    """A sequence after left truncation."""

    ids: list[int]
    prompt_len: int  # the response starts here (prompt tokens kept, BOS included)
    cut: int  # prompt tokens dropped from the left
    fits: bool = True  # False: the response alone is longer than max_length (ids then hold its last tokens)


def truncate_left(ids: list[int], prompt_len: int, max_length: int | None, bos_id: int | None = None) -> Fitted:
    """Keep ``ids[prompt_len:]`` whole and as many of the last prompt tokens as fit in ``max_length``."""
    ids = list(ids)
    if max_length is None or len(ids) <= max_length:
        return Fitted(ids, prompt_len, 0)
    response = len(ids) - prompt_len
    if response > max_length:
        return Fitted(ids[-max_length:], 0, prompt_len, fits=False)
    head = ids[:1] if bos_id is not None and prompt_len > 1 and ids[0] == bos_id and response < max_length else []
    room = max_length - response - len(head)
    kept = head + ids[prompt_len - room:prompt_len] if room > 0 else head
    return Fitted(kept + ids[prompt_len:], len(kept), prompt_len - len(kept))


def truncate_prompt(ids: list[int], budget: int | None, bos_id: int | None = None) -> Fitted:
    """A prompt alone (generation, PPO rollouts): its last ``budget`` tokens, a leading BOS kept."""
    return truncate_left(ids, len(ids), budget, bos_id)


def _prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    if is_chat(prompt):
        out = tokenizer.apply_chat_template(list(prompt), tokenize=True, return_dict=True,
                                            add_generation_prompt=True)
        return list(out["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


def encode_prompt_completion(tokenizer: Any, prompt: Any, completion: Any) -> tuple[list[int], int]:
    """(token ids of prompt + completion as TRL tokenizes them, where the completion starts)."""
    full = encode(tokenizer, prompt, completion)
    p = _prompt_ids(tokenizer, prompt)
    n = 0
    for a, b in zip(p, full):
        if a != b:
            break
        n += 1
    return full, n


def fit(tokenizer: Any, prompt: Any, completion: Any, max_length: int | None) -> Fitted:
    """Tokenize (prompt, completion) as training does and left-truncate it to ``max_length``."""
    ids, prompt_len = encode_prompt_completion(tokenizer, prompt, completion)
    return truncate_left(ids, prompt_len, max_length, getattr(tokenizer, "bos_token_id", None))


def context_length(model: Any) -> int | None:
    """The longest sequence the model can read (None when its config sets no limit)."""
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings"):
        n = getattr(cfg, key, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def resolve_max_length(requested: int | None, model: Any) -> int | None:
    """``--max_length``: default the model's context, and never more than it."""
    n = context_length(model)
    if n is None:
        return requested
    return n if requested is None or requested > n else int(requested)
