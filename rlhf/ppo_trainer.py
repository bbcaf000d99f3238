"""PPO for language models (InstructGPT step 3): pure torch + accelerate, no database.

Objective (InstructGPT eq. 2): maximise ``E[r(x,y) - beta * log(pi(y|x) / pi_ref(y|x))] + gamma * E_pre[log pi(x)]``.

One update:
1. **rollout**: sample a response per prompt from the policy (left-padded batch, KV cache), stop at EOS;
2. **score**: reward-model score of each (prompt, response) at its last token; log-probs of the policy and the
   frozen reference, and per-token values, in no-grad forward passes;
3. **rewards**: ``-beta * KL_t`` on every response token, plus the score on the last one;
   GAE (gamma, lambda) turns them into advantages and returns;
4. **learn**: ``num_ppo_epochs`` passes over shuffled mini-batches: the clipped policy loss, the clipped value
   loss, and (PPO-ptx) a language-model loss on pretraining windows; then the adaptive KL controller moves beta.

Padding of the prompt (left) and everything after the first stop token (right) is masked out of every loss and
statistic. Dropout is switched off in all four models: with it on, the ratio pi/pi_old is noise.
Metrics use TRL's names (``objective/kl``, ``policy/clipfrac``, ...).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhf.ppo_config import PPOConfig
from rlhf.sampling import SamplingParams, forward_logits, left_pad, sample

log = logging.getLogger("rlhf.ppo")
STATE_FILE = "trainer_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"

# ------------------------------------------------------------------------------------------ the maths


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (the mean is added back when shift_mean is False)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate from the sampled tokens' log-probs (Schulman's k1 / k3)."""
    logr = logprobs - ref_logprobs
    if estimator == "k3":
        return torch.expm1(-logr) + logr  # (r_ref/r - 1) - log(r_ref/r) with r = pi/pi_ref
    return logr


def rewards_with_kl(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                    mask: torch.Tensor, kl_coef: float, estimator: str = "k1"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * KL_t`` on every response token and the score added on the last one.

    Returns (rewards, kl, non_score_reward), all (N, T) and zero where masked."""
    kl = kl_per_token(logprobs, ref_logprobs, estimator) * mask
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    last = (mask.sum(1) - 1).clamp(min=0).long()
    has_tokens = mask.sum(1) > 0
    rows = torch.arange(len(scores), device=scores.device)[has_tokens]
    rewards[rows, last[has_tokens]] += scores[has_tokens].to(rewards.dtype)
    return rewards, kl, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; the value after the last token is 0.

    Masked (post-EOS) positions carry no reward and no value, so they add nothing to the tokens before them.
    Returns (advantages, returns = advantages + values), zero where masked."""
    rewards, values = rewards * mask, values * mask
    n, t_len = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(n, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(t_len)):
        next_v = values[:, t + 1] if t + 1 < t_len else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        last = last * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate ``max(-A r, -A clip(r, 1-e, 1+e))``, masked mean; with approxkl and clipfrac."""
    logratio = new_logprobs - old_logprobs
    ratio = torch.exp(logratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    with torch.no_grad():
        stats = {"approxkl": 0.5 * masked_mean(logratio ** 2, mask),
                 "clipfrac": masked_mean((loss2 > loss1).float(), mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(vpred: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * max((v - R)^2, (clip(v, v_old +- e) - R)^2)``, masked mean; and clipfrac."""
    vclipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    l1, l2 = (vpred - returns) ** 2, (vclipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(l1, l2), mask)
    return loss, masked_mean((l2 > l1).float(), mask).detach()


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


class FixedKLController:
    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.value = float(d["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: beta grows when the KL is above target and shrinks below it (at most 20% of the
    gap per horizon)."""

    def __init__(self, init: float, target: float, horizon: int) -> None:
        super().__init__(init)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


# ------------------------------------------------------------------------------------------ data


@dataclass
class PromptStream:
    """An endless, seeded stream of prompt indices: epoch e is permutation e of the prompts, so update u
    always gets the same prompts (resume needs only u)."""

    n: int
    seed: int

    def take(self, start: int, count: int) -> list[int]:
        out = []
        perms: dict[int, list[int]] = {}
        for pos in range(start, start + count):
            epoch, i = divmod(pos, self.n)
            if epoch not in perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(self.n, generator=g).tolist()
            out.append(perms[epoch][i])
        return out


class PtxData:
    """Random windows of pretraining tokens for PPO-ptx (a numpy array of ids; seeded generator)."""

    def __init__(self, tokens: np.ndarray, block_size: int, seed: int) -> None:
        if len(tokens) < 2:
            raise ValueError("the pretraining data holds fewer than 2 tokens")
        self.tokens, self.block = tokens, min(block_size, len(tokens) - 1)
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        ix = self.rng.integers(0, len(self.tokens) - self.block, size=n)
        return torch.from_numpy(np.stack([np.asarray(self.tokens[i:i + self.block + 1], dtype=np.int64)
                                          for i in ix]))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rng.bit_generator.state = d["rng"]


# ------------------------------------------------------------------------------------------ models


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere (HF GPT-2 configs default to 0.1): PPO's ratios must compare like with like."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    cfg = getattr(model, "config", None)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout", "attention_dropout",
                "hidden_dropout", "dropout", "embed_dropout", "classifier_dropout"):
        if cfg is not None and isinstance(getattr(cfg, key, None), float):
            setattr(cfg, key, 0.0)


class PolicyAndValue(nn.Module):
    """The trained models in one module, so one optimizer and one DDP wrapper hold both.

    ``value_model`` is a sequence-classification model read at every position; with ``value_model=None`` a
    linear value head reads the policy's last hidden state (``--share_value_backbone``)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module | None) -> None:
        super().__init__()
        self.policy, self.value_model = policy, value_model
        self.value_head = None
        if value_model is None:
            d = policy.config.hidden_size if hasattr(policy.config, "hidden_size") else policy.config.n_embd
            self.value_head = nn.Linear(d, 1)
            nn.init.normal_(self.value_head.weight, std=1.0 / math.sqrt(d + 1))
            nn.init.zeros_(self.value_head.bias)

    def forward(self, query_ids: torch.Tensor, query_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits predicting each response token, value of the state before each response token)."""
        shared = self.value_head is not None
        logits, out = forward_logits(self.policy, query_ids, query_mask, response_ids, response_mask, temperature,
                                     output_hidden_states=shared)
        tq = query_ids.shape[1]
        if shared:
            values = self.value_head(out.hidden_states[-1][:, tq - 1:-1]).squeeze(-1).float()
        else:
            from rlhf.reward import token_scores

            ids = torch.cat([query_ids, response_ids], 1)
            mask = torch.cat([query_mask, response_mask], 1)
            values = token_scores(self.value_model, ids, mask)[:, tq - 1:-1]
        return logits, values


ScoreFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Rollout:
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    ended: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    raw_scores: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    non_score: torch.Tensor


# ------------------------------------------------------------------------------------------ trainer


class PPOTrainer:
    """PPO over a list of tokenized prompts.

    ``score_fn(query_ids, query_mask, response_ids, response_mask) -> (N,)`` is the reward: usually the reward
    model's score of the sequence (see ``rlhf.train_ppo``), or any programmatic reward. ``callbacks`` get
    ``on_log(step, metrics)`` with each update's metrics (main process).
    """

    def __init__(self, args: PPOConfig, policy: nn.Module, ref_model: nn.Module, score_fn: ScoreFn,
                 tokenizer: Any, train_prompts: Sequence[Sequence[int]], value_model: nn.Module | None = None,
                 stop_ids: Sequence[int] | None = None, ptx: PtxData | None = None,
                 callbacks: Sequence[Any] = ()) -> None:
        from accelerate import Accelerator
        from transformers import get_scheduler

        if not train_prompts:
            raise ValueError("no training prompts")
        if args.share_value_backbone and value_model is not None:
            raise ValueError("give a value model or --share_value_backbone, not both")
        if args.ptx_coef > 0 and ptx is None:
            raise ValueError("--ptx_coef > 0 needs pretraining data (--ptx_data)")
        self.args, self.tokenizer, self.score_fn, self.ptx = args, tokenizer, score_fn, ptx
        self.prompts = [list(p) for p in train_prompts]
        self.callbacks = list(callbacks)
        mixed = "bf16" if args.bf16 else ("fp16" if getattr(args, "fp16", False) else "no")
        self.accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                                       mixed_precision=mixed, cpu=bool(getattr(args, "use_cpu", False)),
                                       log_with=[r for r in (args.report_to or []) if r != "none"] or None,
                                       project_dir=args.output_dir)
        acc = self.accelerator
        for m in (policy, ref_model, value_model):
            if m is not None:
                disable_dropout(m)
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = list(stop_ids) if stop_ids else [tokenizer.eos_token_id]
        self.ref_model = ref_model.to(acc.device).eval().requires_grad_(False)
        self.model = PolicyAndValue(policy, value_model)
        self.model.eval()  # eval mode throughout: no dropout; gradients still flow
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        self.world = acc.num_processes
        self.global_rollout = args.rollout_batch_size * self.world
        if args.max_steps and args.max_steps > 0:
            self.num_updates = int(args.max_steps)
        else:
            self.num_updates = max(1, math.ceil(args.num_train_epochs * len(self.prompts) / self.global_rollout))
        opt_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=args.get_warmup_steps(opt_steps),
                                       num_training_steps=opt_steps)
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.kl_ctl = (AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon) if args.adaptive_kl
                       else FixedKLController(args.kl_coef))
        self.stream = PromptStream(len(self.prompts), args.seed)
        self.sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                       max_new_tokens=args.max_new_tokens)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- pieces of one update

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def prompts_for(self, update: int) -> list[list[int]]:
        """This process's share of the prompts of `update` (same on every rank for a given update)."""
        ids = self.stream.take(update * self.global_rollout, self.global_rollout)
        b = self.args.rollout_batch_size
        mine = ids[self.accelerator.process_index * b:(self.accelerator.process_index + 1) * b]
        return [self.prompts[i] for i in mine]

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> tuple[Rollout, dict[str, float]]:
        args, dev = self.args, self.accelerator.device
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        q_ids, q_mask = left_pad(prompts, self.pad_id)
        policy = self.unwrapped.policy
        fb = args.local_rollout_forward_batch_size
        parts = [sample(policy, q_ids[i:i + fb], q_mask[i:i + fb], self.sampling, self.stop_ids, self.pad_id,
                        return_logprobs=False) for i in range(0, len(prompts), fb)]
        width = max(p.response_ids.shape[1] for p in parts)

        def cat(name: str, fill: int) -> torch.Tensor:
            return torch.cat([nn.functional.pad(getattr(p, name), (0, width - p.response_ids.shape[1]), value=fill)
                              for p in parts])

        r_ids, r_mask = cat("response_ids", self.pad_id), cat("response_mask", 0)
        q_ids, q_mask = q_ids.to(dev), q_mask.to(dev)
        ended = torch.cat([p.ended_with_eos for p in parts])
        times["rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logprobs, ref_logprobs, values, scores = [], [], [], []
        with self.accelerator.autocast():
            for i in range(0, len(prompts), fb):
                sl = slice(i, i + fb)
                logits, v = self.model(q_ids[sl], q_mask[sl], r_ids[sl], r_mask[sl], args.temperature)
                logprobs.append(_gather_logprobs(logits, r_ids[sl]))
                values.append(v.float())
                ref_logits, _ = forward_logits(self.ref_model, q_ids[sl], q_mask[sl], r_ids[sl], r_mask[sl],
                                               args.temperature)
                ref_logprobs.append(_gather_logprobs(ref_logits, r_ids[sl]))
                scores.append(self.score_fn(q_ids[sl], q_mask[sl], r_ids[sl], r_mask[sl]).float().to(dev))
        mask = r_mask.float()
        logprobs, ref_logprobs = torch.cat(logprobs) * mask, torch.cat(ref_logprobs) * mask
        values, raw = torch.cat(values) * mask, torch.cat(scores)
        scores_ = raw.clone()
        if args.missing_eos_penalty is not None:
            scores_[~ended] -= args.missing_eos_penalty
        if args.reward_clip is not None:
            scores_ = scores_.clamp(-args.reward_clip, args.reward_clip)
        rewards, kl, non_score = rewards_with_kl(scores_, logprobs, ref_logprobs, mask, self.kl_ctl.value,
                                                 args.kl_estimator)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        adv, returns = gae(rewards, values, mask, args.gamma, args.lam)
        if args.whiten_advantages:
            adv = masked_whiten(adv, mask)
        times["score"] = time.perf_counter() - t0
        return Rollout(q_ids, q_mask, r_ids, r_mask, ended, logprobs, ref_logprobs, values, scores_, raw, adv,
                       returns, kl, non_score), times

    def learn(self, ro: Rollout) -> dict[str, float]:
        args, acc = self.args, self.accelerator
        n, mb, micro = len(ro.scores), args.mini_batch_size, args.per_device_train_batch_size
        stats: dict[str, list[float]] = {k: [] for k in ("policy", "value", "ptx", "approxkl", "clipfrac",
                                                         "vf_clipfrac", "ratio", "entropy")}
        g = torch.Generator().manual_seed(args.seed * 7919 + self.step)
        for _epoch in range(args.num_ppo_epochs):
            order = torch.randperm(n, generator=g)
            for start in range(0, n, mb):
                mini = order[start:start + mb]
                for m0 in range(0, len(mini), micro):
                    idx = mini[m0:m0 + micro].to(ro.scores.device)
                    with acc.accumulate(self.model):
                        with acc.autocast():
                            logits, vpred = self.model(ro.query_ids[idx], ro.query_mask[idx],
                                                       ro.response_ids[idx], ro.response_mask[idx],
                                                       args.temperature)
                        mask = ro.response_mask[idx].float()
                        new_lp = _gather_logprobs(logits.float(), ro.response_ids[idx])
                        pg, s = policy_loss(new_lp, ro.logprobs[idx], ro.advantages[idx], mask, args.cliprange)
                        vf, vf_clip = value_loss(vpred.float(), ro.values[idx], ro.returns[idx], mask,
                                                 args.cliprange_value)
                        loss = pg + args.vf_coef * vf
                        if args.ptx_coef > 0:
                            ptx_loss = self._ptx_loss()
                            loss = loss + args.ptx_coef * ptx_loss
                            stats["ptx"].append(ptx_loss.item())
                        acc.backward(loss)
                        if acc.sync_gradients and args.max_grad_norm and args.max_grad_norm > 0:
                            acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                        self.optimizer.step()
                        if acc.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    with torch.no_grad():
                        stats["policy"].append(pg.item())
                        stats["value"].append(vf.item())
                        stats["vf_clipfrac"].append(vf_clip.item())
                        for k in ("approxkl", "clipfrac", "ratio"):
                            stats[k].append(s[k].item())
                        stats["entropy"].append(masked_mean(entropy_from_logits(logits.float()), mask).item())
        return {k: float(np.mean(v)) for k, v in stats.items() if v}

    def _ptx_loss(self) -> torch.Tensor:
        batch = self.ptx.batch(self.args.ptx_batch_size or self.args.per_device_train_batch_size)
        batch = batch.to(self.accelerator.device)
        with self.accelerator.autocast():
            logits = self.unwrapped.policy(input_ids=batch[:, :-1], use_cache=False).logits
        return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def metrics(self, ro: Rollout, learn: dict[str, float], times: dict[str, float]) -> dict[str, float]:
        acc = self.accelerator
        mask = ro.response_mask.float()
        seq_kl = ro.kl.sum(1)
        seq_non_score = ro.non_score.sum(1)
        ent = -(ro.logprobs * mask).sum(1)  # sampled-token estimate of the response entropy
        local = torch.stack([seq_kl.mean(), ro.scores.mean(), seq_non_score.mean(), ent.mean(),
                             mask.sum(1).mean(), ro.ended.float().mean(), ro.raw_scores.mean()])
        g = acc.reduce(local.to(acc.device), reduction="mean").tolist()
        learn_t = torch.tensor([learn.get(k, float("nan")) for k in
                                ("policy", "value", "ptx", "approxkl", "clipfrac", "vf_clipfrac", "ratio",
                                 "entropy")], device=acc.device)
        lr_ = acc.reduce(learn_t, reduction="mean").tolist()
        out = {"objective/kl": g[0], "objective/scores": g[1], "objective/non_score_reward": g[2],
               "objective/rlhf_reward": g[1] + g[2], "objective/entropy": g[3], "objective/kl_coef":
               self.kl_ctl.value, "objective/raw_scores": g[6],
               "loss/policy": lr_[0], "loss/value": lr_[1], "policy/approxkl": lr_[3],
               "policy/clipfrac": lr_[4], "val/clipfrac": lr_[5], "val/ratio": lr_[6], "policy/entropy": lr_[7],
               "val/response_length": g[4], "val/ended_with_eos": g[5],
               "lr": self.scheduler.get_last_lr()[0], "episode": (self.step + 1) * self.global_rollout,
               **{f"time/{k}": v for k, v in times.items()}}
        if self.args.ptx_coef > 0:
            out["loss/ptx"] = lr_[2]
        return out

    # ---------------------------------------------------------------- loop, checkpoints

    def train(self, resume_from: str | Path | None = None, stop_at_step: int | None = None) -> dict[str, float]:
        """Run the PPO updates (from a checkpoint when given). Returns the last update's metrics."""
        from tqdm.auto import tqdm

        args, acc = self.args, self.accelerator
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if acc.is_main_process and acc.log_with:
            acc.init_trackers("ppo", config={k: v for k, v in args.to_dict().items()
                                             if isinstance(v, (int, float, str, bool))})
        bar = tqdm(total=self.num_updates, initial=self.step, desc="PPO", unit="update",
                   disable=not acc.is_main_process or bool(os.environ.get("INSTRUCTLOOP_NO_PROGRESS")))
        last: dict[str, float] = {}
        save_every = int(args.save_steps) if args.save_steps and args.save_steps >= 1 else 0
        while self.step < self.num_updates:
            prompts = self.prompts_for(self.step)
            ro, times = self.rollout(prompts)
            t0 = time.perf_counter()
            learn = self.learn(ro)
            times["learn"] = time.perf_counter() - t0
            last = self.metrics(ro, learn, times)
            self.kl_ctl.update(last["objective/kl"], self.global_rollout)
            self.step += 1
            last["step"] = self.step
            self.history.append(last)
            if acc.is_main_process and (self.step % max(1, int(args.logging_steps)) == 0 or
                                        self.step == self.num_updates):
                for cb in self.callbacks:
                    cb.on_log(self.step, last)
                if acc.log_with:
                    acc.log({k: v for k, v in last.items() if isinstance(v, float) and math.isfinite(v)},
                            step=self.step)
            bar.update(1)
            bar.set_postfix(score=f"{last['objective/scores']:.3f}", kl=f"{last['objective/kl']:.3f}")
            at_end = self.step == self.num_updates
            if save_every and self.step % save_every == 0 and not at_end or self.step == stop_at_step:
                self.save_checkpoint()
            if stop_at_step is not None and self.step >= stop_at_step and not at_end:
                break
        bar.close()
        if acc.log_with:
            acc.end_training()
        return last

    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "kl_ctl": self.kl_ctl.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ptx": self.ptx.state_dict() if self.ptx is not None else None,
                "history": self.history, "num_updates": self.num_updates}

    def save_checkpoint(self) -> Path:
        """``<output_dir>/checkpoint-<step>``: written to a temporary folder, then renamed, so a kill while
        saving never leaves a checkpoint that looks complete."""
        acc = self.accelerator
        out = Path(self.args.output_dir)
        final = out / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = out / f".tmp-{CHECKPOINT_PREFIX}{self.step}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save(self.unwrapped.state_dict(), tmp / "model.pt")
            torch.save(self._state(), tmp / STATE_FILE)
        acc.wait_for_everyone()
        torch.save(_rng_state(), tmp / f"rng_state_{acc.process_index}.pt")
        acc.wait_for_everyone()
        if acc.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._prune(out)
        acc.wait_for_everyone()
        return final

    def _prune(self, out: Path) -> None:
        limit = self.args.save_total_limit
        if not limit:
            return
        cps = sorted(checkpoints(out), key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))
        for p in cps[:-limit]:
            shutil.rmtree(p, ignore_errors=True)

    def load_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        self.unwrapped.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        if self.ptx is not None and state.get("ptx"):
            self.ptx.load_state_dict(state["ptx"])
        self.step, self.history = int(state["step"]), list(state["history"])
        rng = path / f"rng_state_{self.accelerator.process_index}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, weights_only=False))
        log.info("resumed from %s at update %d of %d", path, self.step, self.num_updates)

    def save_model(self, out_dir: str | Path) -> None:
        """The policy as a plain HF checkpoint (+ tokenizer); the value model beside it in ``value/``."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            m = self.unwrapped
            m.policy.save_pretrained(str(out_dir))
            self.tokenizer.save_pretrained(str(out_dir))
            if m.value_model is not None:
                m.value_model.save_pretrained(str(Path(out_dir) / "value"))
            elif m.value_head is not None:
                torch.save(m.value_head.state_dict(), Path(out_dir) / "value_head.pt")
        acc.wait_for_everyone()


def checkpoints(out: Path) -> list[Path]:
    return [p for p in Path(out).glob(f"{CHECKPOINT_PREFIX}*")
            if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit() and (p / STATE_FILE).is_file()]


def last_checkpoint(out: str | Path) -> Path | None:
    cps = checkpoints(Path(out))
    return max(cps, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX))) if cps else None


def _gather_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return torch.gather(torch.log_softmax(logits.float(), -1), 2, ids.unsqueeze(-1)).squeeze(-1)


def _rng_state() -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def metrics_writer(path: Path) -> Any:
    """A callback that appends each update's metrics to ``metrics.jsonl``."""

    class _Writer:
        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            row = {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None)
                   for k, v in metrics.items()}
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, **row}) + "\n")

    return _Writer()
