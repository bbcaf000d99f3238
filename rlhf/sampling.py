"""Token-level batched sampling, shared by ``rlhf.generate`` and PPO rollouts (no database here).

Token ids in (left-padded prompts), token ids out: the response ids (right-padded after the stop token), a
mask that covers the response up to and including its stop token, an ``ended_with_eos`` flag per sequence, and
the per-token log-probabilities of the sampled tokens under the temperature-scaled model distribution.

The :class:`transformers.GenerationConfig` is built explicitly from :class:`SamplingParams`: every setting that
changes which tokens are drawn (temperature, top_p, top_k, min_p, repetition penalty, ...) is set here, so
neither transformers' global defaults (``top_k=50``) nor a checkpoint's ``generation_config.json`` silently
apply, and :meth:`SamplingParams.record` is the complete description stored with each response.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class SamplingParams:
    """How responses are drawn. ``temperature <= 0`` is greedy (or beam search for several greedy answers)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (transformers would otherwise apply 50)
    max_new_tokens: int = 64
    num_return_sequences: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def record(self) -> dict[str, Any]:
        """Every sampling setting, for the stored generation params of a response."""
        return {**asdict(self), "do_sample": not self.greedy,
                "num_beams": self.num_return_sequences if self.greedy and self.num_return_sequences > 1 else 1,
                "min_p": None, "repetition_penalty": 1.0}


def generation_config(params: SamplingParams, stop_ids: Sequence[int], pad_id: int) -> Any:
    """An explicit GenerationConfig: nothing is left for a checkpoint's defaults to fill in."""
    from transformers import GenerationConfig

    k = params.num_return_sequences
    if params.greedy:  # several greedy answers: beam search gives K distinct ones
        how = {"do_sample": False, "num_beams": max(1, k), "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    else:
        how = {"do_sample": True, "num_beams": 1, "temperature": float(params.temperature),
               "top_p": float(params.top_p), "top_k": int(params.top_k)}
    gc = GenerationConfig(
        max_new_tokens=params.max_new_tokens, min_new_tokens=0, num_return_sequences=k, use_cache=True,
        pad_token_id=pad_id, eos_token_id=list(stop_ids), repetition_penalty=1.0, no_repeat_ngram_size=0,
        length_penalty=1.0, encoder_repetition_penalty=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
        **how)
    return gc


@dataclass
class Samples:
    """One batch of sampled responses; row i*K + k is the k-th sample of prompt i."""

    query_ids: torch.Tensor  # (N, Tq) left-padded prompt ids (repeated K times)
    query_mask: torch.Tensor  # (N, Tq)
    response_ids: torch.Tensor  # (N, Tr) pad after the stop token
    response_mask: torch.Tensor  # (N, Tr) 1 on response tokens up to and including the stop token
    ended_with_eos: torch.Tensor  # (N,) bool: the response ended with a stop token (not cut by max_new_tokens)
    logprobs: torch.Tensor | None  # (N, Tr) log p(token) of the sampled tokens (0 where masked)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of token lists, padded on the left to the longest."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, n - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


def response_mask(response_ids: torch.Tensor, stop_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask up to and including the first stop token, ended_with_eos) of right-side response ids."""
    is_stop = torch.isin(response_ids, torch.as_tensor(list(stop_ids), device=response_ids.device))
    # stops strictly before position t: the token at t is still part of the response when none came before
    before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return (before == 0).long(), is_stop.any(dim=1)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding (what `generate` uses), so a forward pass matches the sampler."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(model: Any, query_ids: torch.Tensor, query_mask: torch.Tensor, params: SamplingParams,
           stop_ids: Sequence[int], pad_id: int, return_logprobs: bool = True) -> Samples:
    """Sample ``params.num_return_sequences`` responses per left-padded prompt with the KV cache."""
    dev = next(model.parameters()).device
    query_ids, query_mask = query_ids.to(dev), query_mask.to(dev)
    gc = generation_config(params, stop_ids, pad_id)
    want_logits = return_logprobs and not params.greedy
    gc.return_dict_in_generate, gc.output_logits = True, want_logits
    out = model.generate(input_ids=query_ids, attention_mask=query_mask, generation_config=gc)
    tq = query_ids.shape[1]
    resp = out.sequences[:, tq:]
    k = params.num_return_sequences
    q_ids = query_ids.repeat_interleave(k, dim=0)
    q_mask = query_mask.repeat_interleave(k, dim=0)
    if resp.shape[1] == 0:  # max_new_tokens=0
        empty = torch.zeros((q_ids.shape[0], 0), dtype=torch.long, device=dev)
        return Samples(q_ids, q_mask, empty, empty, torch.zeros(q_ids.shape[0], dtype=torch.bool, device=dev),
                       empty.float() if return_logprobs else None)
    mask, ended = response_mask(resp, stop_ids)
    resp = torch.where(mask.bool(), resp, torch.full_like(resp, pad_id))
    logprobs = None
    if want_logits:
        # raw logits of each step, scaled by the temperature the token was drawn with (top-p/top-k only cut
        # the tail; PPO recomputes these under the same temperature, so the two agree)
        logits = torch.stack(out.logits, dim=1).float() / params.temperature
        logprobs = torch.gather(torch.log_softmax(logits, -1), 2, resp.unsqueeze(-1)).squeeze(-1) * mask
    elif return_logprobs:  # greedy / beams: score the chosen tokens with one forward pass
        logprobs = token_logprobs(model, q_ids, q_mask, resp, mask, 1.0)
    return Samples(q_ids, q_mask, resp, mask, ended, logprobs)


def forward_logits(model: Any, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                   response_mask_: torch.Tensor, temperature: float = 1.0, **kw: Any) -> tuple[torch.Tensor, Any]:
    """Logits predicting each response token (N, Tr, V), temperature-scaled, and the raw model output."""
    ids = torch.cat([query_ids, response_ids], 1)
    mask = torch.cat([query_mask, response_mask_], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False, **kw)
    tq = query_ids.shape[1]
    logits = out.logits[:, tq - 1:-1].float()
    return logits / (temperature if temperature > 0 else 1.0), out


def token_logprobs(model: Any, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                   response_mask_: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(response token | prefix) for every response position (0 where masked)."""
    logits, _ = forward_logits(model, query_ids, query_mask, response_ids, response_mask_, temperature)
    lp = torch.gather(torch.log_softmax(logits, -1), 2, response_ids.unsqueeze(-1)).squeeze(-1)
    return lp * response_mask_
