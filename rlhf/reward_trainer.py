"""TRL's RewardTrainer with InstructGPT's treatment of rankings: one ranking is one training row.

A ranking of K responses gives C(K,2) pairs. Trained as independent rows, each response takes part in K-1
separate updates and the reward model overfits within an epoch (InstructGPT, §3.5); fed as pairs, each response
is also scored once per pair it is in (K=9: 72 forward passes instead of 9). Here a row is a whole ranking (a
plain comparison is a ranking of two):

- :func:`tokenize_rankings` turns ``{prompt, responses, pairs, margins}`` rows into token ids, each response
  left-truncated by :mod:`rlhf.truncation` (the response whole, the prompt cut from the left); a response that
  does not fit on its own is left out with its pairs, and counted;
- :class:`RankingCollator` pads the K responses of every row of a batch into one tensor, so each response is
  scored once, and lists the pairs (winner index, loser index, margin, row);
- :meth:`RankingRewardTrainer.compute_loss` averages the C(K,2) pair losses within each row, then over rows:
  ``loss = mean_rows [ mean_{(c,r) in row} -log sigmoid(r_c - r_r - margin) ]``.

``per_device_train_batch_size`` counts rankings, as InstructGPT's batch counts prompts. The trainer, its
sampler, checkpointing and resumption are TRL's / transformers' own: only the rows, the collator and the loss
differ.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.data.data_collator import DataCollatorMixin
from trl import RewardTrainer
from trl.trainer.utils import pad

from rlhf.truncation import fit

IDS, PAIRS, MARGINS = "response_ids", "pairs", "margins"
COLUMNS = (IDS, PAIRS, MARGINS)


@dataclass
class TokenizedRankings:
    rows: list[dict[str, Any]]
    responses_truncated: int = 0  # responses scored with the start of their prompt cut
    pairs_truncated: int = 0  # pairs with a side whose prompt was cut
    pairs_too_long: int = 0  # pairs left out: a side's response alone is longer than max_length
    rows_too_long: int = 0  # rankings with no pair left


def tokenize_rankings(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int | None) -> TokenizedRankings:
    """Ranking rows → ``{response_ids, pairs, margins}`` with the truncation rule of rlhf.truncation."""
    out = TokenizedRankings([])
    for row in rows:
        fitted = [fit(tokenizer, row["prompt"], r, max_length) for r in row["responses"]]
        keep = [k for k, f in enumerate(fitted) if f.fits]
        pairs = [(c, r, m) for (c, r), m in zip(row["pairs"], row["margins"])]
        ok = [(c, r, m) for c, r, m in pairs if fitted[c].fits and fitted[r].fits]
        out.pairs_too_long += len(pairs) - len(ok)
        out.pairs_truncated += sum(bool(fitted[c].cut or fitted[r].cut) for c, r, _ in ok)
        if not ok:
            out.rows_too_long += 1
            continue
        used = sorted({k for c, r, _ in ok for k in (c, r)} & set(keep))
        new = {k: i for i, k in enumerate(used)}
        out.responses_truncated += sum(bool(fitted[k].cut) for k in used)
        out.rows.append({IDS: [fitted[k].ids for k in used], PAIRS: [[new[c], new[r]] for c, r, _ in ok],
                         MARGINS: [float(m) for _, _, m in ok]})
    return out


@dataclass
class RankingCollator(DataCollatorMixin):
    """Rows of K responses → one right-padded batch of all responses, plus the pairs to compare.

    Output: ``input_ids`` / ``attention_mask`` (sum of K over the rows, T); ``pair_index`` (P, 2) winner and loser
    positions in that batch; ``pair_margin`` (P,); ``pair_row`` (P,) the row each pair belongs to."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        seqs, index, margin, row = [], [], [], []
        for i, ex in enumerate(examples):
            base = len(seqs)
            seqs.extend(torch.tensor(x, dtype=torch.long) for x in ex[IDS])
            index.extend([base + c, base + r] for c, r in ex[PAIRS])
            margin.extend(float(m) for m in ex[MARGINS])
            row.extend([i] * len(ex[PAIRS]))
        return {
            "input_ids": pad(seqs, padding_value=self.pad_token_id, padding_side="right",
                             pad_to_multiple_of=self.pad_to_multiple_of),
            "attention_mask": pad([torch.ones_like(s) for s in seqs], padding_value=0, padding_side="right",
                                  pad_to_multiple_of=self.pad_to_multiple_of),
            "pair_index": torch.tensor(index, dtype=torch.long).reshape(-1, 2),
            "pair_margin": torch.tensor(margin, dtype=torch.float),
            "pair_row": torch.tensor(row, dtype=torch.long)}


def ranking_loss(rewards: torch.Tensor, pair_index: torch.Tensor, pair_row: torch.Tensor,
                 pair_margin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over rows of the mean pair loss within each row, the per-pair losses)."""
    diff = rewards[pair_index[:, 0]] - rewards[pair_index[:, 1]]
    if pair_margin is not None:
        diff = diff - pair_margin.to(diff.dtype)
    per_pair = -nn.functional.logsigmoid(diff)
    _, inverse, counts = torch.unique(pair_row, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].to(per_pair.dtype)
    return (weights * per_pair).sum() / counts.numel(), per_pair


class SamplerEpochCallback(TrainerCallback):
    """Give the shuffling sampler its epoch at every epoch's start. A run resumed in epoch >= 1 otherwise
    replays epoch 0's order: accelerate's sampler counts epochs by itself, and neither the DataLoader's
    ``set_epoch`` nor the Trainer reach it through the batch samplers that resuming (skip_first_batches) and
    several processes (BatchSamplerShard) wrap around it."""

    def on_epoch_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kw: Any) -> None:
        epoch = math.floor(state.epoch + 1e-9) if state.epoch else 0
        node, seen = train_dataloader, 0
        while node is not None and seen < 6:
            seen += 1
            inner = getattr(node, "batch_sampler", None) or getattr(node, "sampler", None)
            if node is not train_dataloader and hasattr(node, "set_epoch") and inner is None:
                node.set_epoch(epoch)
            node = inner


class RankingRewardTrainer(RewardTrainer):
    """RewardTrainer on pre-tokenized ranking rows (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpochCallback())

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        # The rows are tokenized and truncated by tokenize_rankings: TRL's pair tokenizer and its drop-if-too-long
        # filter must not run on them.
        if all(c in (dataset.column_names or []) for c in COLUMNS):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(COLUMNS)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits.squeeze(-1)
        index = inputs["pair_index"]
        loss, _ = ranking_loss(rewards, index, inputs["pair_row"], inputs["pair_margin"])
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards ** 2)

        acc = self.accelerator
        if mode == "train":
            tokens = acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            # batches differ in size between ranks: pad before gathering (a collective needs equal shapes)
            r = rewards.detach().float().reshape(-1)
            everyone = acc.gather(acc.pad_across_processes(r, dim=0, pad_index=float("nan")))
            everyone = everyone[~torch.isnan(everyone)]
            self._metrics[mode]["min_reward"].append(everyone.min().item())
            self._metrics[mode]["mean_reward"].append(everyone.mean().item())
            self._metrics[mode]["max_reward"].append(everyone.max().item())
            diff = (r[index[:, 0]] - r[index[:, 1]])
            self._metrics[mode]["accuracy"].append(acc.gather_for_metrics((diff > 0).float().mean()).mean().item())
            self._metrics[mode]["margin"].append(acc.gather_for_metrics(diff.mean()).mean().item())
        return (loss, {"rewards": rewards}) if return_outputs else loss
