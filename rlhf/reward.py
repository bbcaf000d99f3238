"""Reward-model scoring, pairwise metrics, and InstructGPT's bias normalization.

Normalization: after training, the reward is shifted by a constant so the SFT demonstrations score mean 0.
``GPT2ForSequenceClassification.score`` (and most decoder heads) is a Linear *without* bias, and a bias added
to it would be dropped by ``AutoModelForSequenceClassification.from_pretrained``. So the shift is folded into a
parameter that already exists and that the head reads linearly:

1. the head's own bias, when it has one (e.g. BERT-style classifiers);
2. else the bias ``β`` of the final LayerNorm that feeds the head (GPT-2 / GPT-Neo ``transformer.ln_f``):
   ``r = w·(γ⊙n + β)``, so ``β ← β − s·w/‖w‖²`` lowers every reward by exactly ``s`` — the LayerNorm output
   is used by nothing but the head in a sequence-classification model;
3. else (RMSNorm models, no bias anywhere) the shift is stored as ``config.instructloop["reward_offset"]``
   and subtracted by :func:`score` (documented fallback: raw ``model(...)`` logits then carry the offset).

The shift is verified by re-scoring the demonstrations, and recorded in ``config.instructloop`` either way.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rlhf.formatting import encode, format_sft_row

CONFIG_KEY = "instructloop"


def info(model: Any) -> dict[str, Any]:
    return dict(getattr(model.config, CONFIG_KEY, None) or {})


def set_info(model: Any, **kw: Any) -> None:
    setattr(model.config, CONFIG_KEY, {**info(model), **kw})


def trained_with_chat(model: Any, tokenizer: Any) -> bool:
    """Whether the reward model was trained on chat-template renderings: as rlhf.train_reward recorded it,
    else (a foreign model) when its tokenizer has a template."""
    from rlhf.formatting import use_chat_for_training

    recorded = info(model).get("chat_template")
    return bool(recorded) if recorded is not None else use_chat_for_training(tokenizer, "auto")


def max_positions(model: Any) -> int | None:
    """The longest sequence the model can read (None when its config sets no limit)."""
    from rlhf.truncation import context_length

    return context_length(model)


def scoring_length(model: Any) -> int | None:
    """The sequence length a reward model scores at: what rlhf.train_reward trained it at (recorded in its
    config), else its context. Evaluation and PPO scoring truncate to it, so they see what training saw."""
    recorded = info(model).get("max_length")
    n = max_positions(model)
    return min(int(recorded), n) if recorded and n else (int(recorded) if recorded else n)


def fits(tokenizer: Any, prompt: Any, completion: Any, max_length: int | None) -> bool:
    """Whether (prompt, completion) tokenizes to at most max_length tokens without truncation."""
    return max_length is None or len(encode(tokenizer, prompt, completion)) <= max_length


def _scores(model: Any, rows: Sequence[list[int]], batch_size: int, pad: int) -> list[float]:
    dev = next(model.parameters()).device
    offset = float(info(model).get("reward_offset", 0.0))
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        ids = rows[i:i + batch_size]
        n = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), n), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for j, x in enumerate(ids):
            input_ids[j, :len(x)] = torch.tensor(x)
            mask[j, :len(x)] = 1
        logits = model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), use_cache=False).logits
        out.extend((logits[:, 0].float() - offset).tolist())
    return out


@torch.no_grad()
def score(model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any], batch_size: int = 16,
          max_length: int | None = None, stats: dict[str, int] | None = None) -> list[float]:
    """Reward of each (prompt, completion), tokenized exactly as reward training does (rlhf.truncation).

    A sequence longer than ``max_length`` (default: the model's max positions) keeps its completion whole and
    the end of its prompt (``stats["truncated"]`` counts every sequence cut); one whose completion alone is
    longer is scored on its last ``max_length`` tokens (also counted in ``stats["too_long"]``), where training
    leaves such a pair out."""
    from rlhf.truncation import fit

    was_training = model.training
    model.eval()
    limit = max_length or scoring_length(model)
    fitted = [fit(tokenizer, p, c, limit) for p, c in zip(prompts, completions)]
    out = _scores(model, [f.ids for f in fitted], batch_size, tokenizer.pad_token_id) if fitted else []
    model.train(was_training)
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + sum(bool(f.cut) for f in fitted)
        too_long = sum(not f.fits for f in fitted)
        if too_long:
            stats["too_long"] = stats.get("too_long", 0) + too_long
    return out


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """(transformer body, scalar head) of a sequence-classification model, for per-token scores."""
    head = _head(model)
    body = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
    if head is None or body is None or head.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no scalar head (score/classifier) over a base model")
    return body, head


def token_scores(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The head's output at every position (N, T), minus the stored offset; padding on either side is fine
    (positions come from the mask). The value model of PPO reads these; the reward is the last one."""
    from rlhf.sampling import position_ids

    body, head = backbone_and_head(model)
    hidden = body(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)[0]
    return head(hidden).squeeze(-1).float() - float(info(model).get("reward_offset", 0.0))


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a 0/1 mask (left and right padding allowed)."""
    return mask.shape[1] - 1 - torch.argmax(mask.flip(1).long(), dim=1)


@torch.no_grad()
def score_ids(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reward of token sequences (N,) read at the last unmasked token, with the same normalisation offset as
    :func:`score` applies (so a config-offset reward model gives the same numbers either way)."""
    dev = next(model.parameters()).device
    ids, mask = ids.to(dev), mask.to(dev)
    scores = token_scores(model, ids, mask)
    return scores.gather(1, last_index(mask).unsqueeze(1)).squeeze(1)


def calibration_error(p: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error of predicted probabilities ``p`` against whether each call was right: the
    confidence max(p, 1-p) in ``bins`` equal bins over [0.5, 1], each bin's |accuracy - mean confidence|
    weighted by its share of the rows."""
    n = len(p)
    conf = [max(q, 1 - q) for q in p]
    ece = 0.0
    for b in range(bins):
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        idx = [i for i, c in enumerate(conf) if lo <= c < hi or (b == bins - 1 and c == hi)]
        if idx:
            ece += len(idx) / n * abs(sum(correct[i] for i in idx) / len(idx) - sum(conf[i] for i in idx) / len(idx))
    return ece


def normalize_on_rows(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], chat: bool,
                      source: str) -> dict[str, Any]:
    """``normalize`` on (prompt, completion) rows formatted as SFT rows (``chat``: with the chat template);
    records ``source`` as ``normalized_with`` in the result and the model's config.instructloop."""
    formatted = [format_sft_row(r, chat) for r in rows]
    norm = normalize(model, tokenizer, [r["prompt"] for r in formatted], [r["completion"] for r in formatted])
    norm["normalized_with"] = source
    set_info(model, normalized_with=source)
    return norm


def pairwise_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float], bins: int = 10) -> dict[str, float]:
    """Accuracy (strictly r_c > r_r: ties count as wrong), mean margin, and ECE of sigmoid(r_c - r_r).

    ECE is the usual top-label calibration error over `bins` confidence bins: for each pair the predicted
    winner has confidence max(p, 1-p) with p = sigmoid(r_c - r_r), and is correct when r_c > r_r."""
    n = len(r_chosen)
    if n == 0:
        return {}
    d = [c - r for c, r in zip(r_chosen, r_rejected)]
    correct = [x > 0 for x in d]
    p = [1.0 / (1.0 + math.exp(-max(min(x, 60.0), -60.0))) for x in d]
    ece = calibration_error(p, correct, bins)
    return {"accuracy": sum(correct) / n, "margin": sum(d) / n, "ece": ece, "pairs": n,
            "mean_reward_chosen": sum(r_chosen) / n, "mean_reward_rejected": sum(r_rejected) / n}


def evaluate_pairs(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], batch_size: int = 16,
                   max_length: int | None = None) -> dict[str, float]:
    """Pairwise metrics of formatted preference rows {prompt, chosen, rejected}, truncated as in training.

    ``accuracy_low`` / ``accuracy_high``: its 95% bootstrap interval (pairs of one OpenAssistant tree or one
    ranking resampled together). ``truncated_pairs``: pairs with a side longer than ``max_length`` (default: the
    model's context), scored with their prompt cut from the left; ``pairs_too_long``: pairs left out because a response alone does not
    fit (reward training leaves them out too)."""
    from rlhf.truncation import fit

    limit = max_length or scoring_length(model)
    was_training = model.training
    model.eval()
    fc = [fit(tokenizer, r["prompt"], r["chosen"], limit) for r in rows]
    fr = [fit(tokenizer, r["prompt"], r["rejected"], limit) for r in rows]
    keep = [i for i in range(len(rows)) if fc[i].fits and fr[i].fits]
    with torch.no_grad():
        rc = _scores(model, [fc[i].ids for i in keep], batch_size, tokenizer.pad_token_id) if keep else []
        rr = _scores(model, [fr[i].ids for i in keep], batch_size, tokenizer.pad_token_id) if keep else []
    model.train(was_training)
    metrics: dict[str, Any] = pairwise_metrics(rc, rr)
    if keep:  # 95% bootstrap interval, resampling what the pairs share: a tree, else a ranking, else nothing
        clusters = [rows[i].get("split_key") or rows[i].get("group") or f"pair-{i}" for i in keep]
        metrics["accuracy_low"], metrics["accuracy_high"] = bootstrap_interval(
            [c > r for c, r in zip(rc, rr)], clusters)
    metrics["truncated_pairs"] = sum(bool(fc[i].cut or fr[i].cut) for i in keep)
    metrics["pairs_too_long"] = len(rows) - len(keep)
    metrics.setdefault("pairs", 0)
    return metrics


def pair_outcomes(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int | None = None,
                  batch_size: int = 16) -> tuple[list[bool], list[dict[str, Any]]]:
    """Per formatted pair, truncated as :func:`evaluate_pairs` does: whether r_chosen > r_rejected (ties wrong),
    and the pairs scored (those whose responses fit; the rest are left out)."""
    from rlhf.truncation import fit

    limit = max_length or scoring_length(model)
    keep = [r for r in rows if fit(tokenizer, r["prompt"], r["chosen"], limit).fits
            and fit(tokenizer, r["prompt"], r["rejected"], limit).fits]
    prompts = [r["prompt"] for r in keep]
    rc = score(model, tokenizer, prompts, [r["chosen"] for r in keep], batch_size, limit)
    rr = score(model, tokenizer, prompts, [r["rejected"] for r in keep], batch_size, limit)
    return [c > r for c, r in zip(rc, rr)], keep


def bootstrap_interval(correct: Sequence[bool], clusters: Sequence[Any] | None = None, n: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy. With ``clusters`` (e.g. the conversation tree of each
    pair), whole clusters are resampled: pairs that share responses are not independent draws."""
    import random

    keys = list(clusters) if clusters is not None else list(range(len(correct)))
    by: dict[Any, list[bool]] = {}
    for c, k in zip(correct, keys):
        by.setdefault(k, []).append(bool(c))
    groups = list(by.values())
    if not groups:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    accs = []
    for _ in range(n):
        pick = [groups[rng.randrange(len(groups))] for _ in groups]
        accs.append(sum(sum(g) for g in pick) / sum(len(g) for g in pick))
    accs.sort()
    tail = (1 - level) / 2
    return accs[int(tail * n)], accs[min(n - 1, int((1 - tail) * n))]


def _head(model: Any) -> Any:
    for name in ("score", "classifier", "v_head"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear):
            return head
    return None


def _final_norm(model: Any) -> Any:
    base = getattr(model, model.base_model_prefix, None) if getattr(model, "base_model_prefix", None) else None
    for owner in (base, model):
        for name in ("ln_f", "norm", "final_layer_norm", "final_layernorm"):
            m = getattr(owner, name, None) if owner is not None else None
            if m is not None and getattr(m, "bias", None) is not None:
                return m
    return None


@torch.no_grad()
def shift_rewards(model: Any, shift: float) -> str:
    """Lower every reward by `shift` in a way that survives save/load. Returns how it was done."""
    head = _head(model)
    if head is not None and head.bias is not None and head.out_features == 1:
        head.bias -= shift
        return "head_bias"
    norm = _final_norm(model)
    if head is not None and head.out_features == 1 and norm is not None and \
            norm.bias.shape[-1] == head.weight.shape[-1]:
        w = head.weight[0].float()
        norm.bias -= (shift * w / (w @ w)).to(norm.bias.dtype)
        return "final_norm_bias"
    set_info(model, reward_offset=float(info(model).get("reward_offset", 0.0)) + shift)
    return "config_offset"


def normalize(model: Any, tokenizer: Any, prompts: Sequence[Any], completions: Sequence[Any],
              batch_size: int = 16) -> dict[str, Any]:
    """Shift so the given (prompt, demonstration) pairs score mean 0; verify; record in config.instructloop.

    Demonstrations longer than the model's context are scored left-truncated (``normalize_truncated``)."""
    stats: dict[str, int] = {}
    before = score(model, tokenizer, prompts, completions, batch_size, stats=stats)
    mean = sum(before) / len(before)
    method = shift_rewards(model, mean)
    after = score(model, tokenizer, prompts, completions, batch_size)
    mean_after = sum(after) / len(after)
    spread = max(1.0, max(abs(x) for x in before))
    if abs(mean_after) > 1e-3 * spread and method != "config_offset":  # fold did not act linearly: fall back
        shift_rewards(model, -mean)  # undo
        set_info(model, reward_offset=float(info(model).get("reward_offset", 0.0)) + mean)
        method = "config_offset"
        mean_after = sum(score(model, tokenizer, prompts, completions, batch_size)) / len(after)
    set_info(model, reward_shift=mean, reward_shift_method=method, normalized_on=len(before))
    return {"reward_shift": mean, "reward_shift_method": method, "demo_mean_reward_after": mean_after,
            "normalized_on": len(before), "normalize_truncated": stats.get("truncated", 0)}
