"""TRL's RewardTrainer with InstructGPT's treatment of rankings: all pairs of one prompt in one batch element.

A ranking of K responses gives C(K,2) pairs. Trained as independent rows, each response takes part in K-1
separate updates and the reward model overfits within an epoch (InstructGPT, §3.5). Here every pair carries a
``group_id`` (one per ranked prompt; a plain comparison is a group of one):

- :class:`GroupBatchSampler` puts whole groups in a batch (``per_device_train_batch_size`` counts groups,
  as InstructGPT's batch counts prompts), shuffled per epoch and sharded per rank;
- :meth:`GroupedRewardTrainer.compute_loss` averages the pair losses within each group, then over groups,
  so a ranking weighs as one example however many pairs it has:
  ``loss = mean_g [ mean_{(c,r) in g} -log sigmoid(r_c - r_r - margin) ]``.

The K responses are still scored once per pair they appear in (TRL's collator feeds pairs); sharing one forward
pass per response is a further speed-up this module does not attempt.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from db.services.errors import InputError

GROUP_COLUMN = "group_id"


def assign_group_ids(groups: Sequence[str | None]) -> list[int]:
    """Stable small ints for group names; rows without a group (plain comparisons) each get their own."""
    ids: dict[str, int] = {}
    out = []
    for g in groups:
        key = g if g is not None else f"\0row-{len(out)}"
        out.append(ids.setdefault(key, len(ids)))
    return out


class GroupBatchSampler(Sampler[list[int]]):
    """Batches of whole groups: ``groups_per_batch`` groups each, order shuffled per epoch (seeded).

    Under several processes each rank takes every ``world``-th batch; the batch list is first padded by
    repeating its start so that every rank runs the same number of steps (as accelerate's even_batches)."""

    def __init__(self, group_ids: Sequence[int], groups_per_batch: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1) -> None:
        if groups_per_batch < 1:
            raise ValueError("groups_per_batch must be >= 1")
        members: dict[int, list[int]] = {}
        for i, g in enumerate(group_ids):
            members.setdefault(int(g), []).append(i)
        self.groups = list(members.values())
        self.per_batch, self.seed, self.shuffle = groups_per_batch, seed, shuffle
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_batches(self) -> int:
        n = math.ceil(len(self.groups) / self.per_batch)
        return math.ceil(n / self.world) * self.world

    def __len__(self) -> int:
        return self._n_batches() // self.world

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.groups)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        batches = [[i for g in order[s:s + self.per_batch] for i in self.groups[g]]
                   for s in range(0, len(order), self.per_batch)]
        n = len(batches)
        for i in range(self._n_batches() - n):  # equal step counts on every rank: repeat from the start
            batches.append(batches[i % n])
        yield from batches[self.rank::self.world]


class GroupedPreferenceCollator(DataCollatorForPreference):
    """TRL's pair collator, plus the ``group_id`` of each pair."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        out[GROUP_COLUMN] = torch.tensor([int(e[GROUP_COLUMN]) for e in examples], dtype=torch.long)
        return out


def grouped_pair_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, group_ids: torch.Tensor,
                      margin: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over groups of the mean pair loss within each group."""
    diff = rewards_chosen - rewards_rejected - (margin if margin is not None else 0.0)
    per_pair = -nn.functional.logsigmoid(diff)
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].to(per_pair.dtype)
    return (weights * per_pair).sum() / counts.numel()


class GroupedRewardTrainer(RewardTrainer):
    """RewardTrainer whose datasets carry ``group_id``: group batches for training, group-averaged loss."""

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if GROUP_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, GROUP_COLUMN]

    def get_train_dataloader(self) -> DataLoader:
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        sampler = GroupBatchSampler(dataset[GROUP_COLUMN], self._train_batch_size, seed=self.args.seed,
                                    rank=self.args.process_index, world=self.args.world_size)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory)
        dl_config = self.accelerator.dataloader_config
        if self.args.world_size > 1 and (dl_config.split_batches or dl_config.dispatch_batches):
            raise InputError("grouped rankings need each process to read its own batches: turn off accelerate's "
                             "split_batches / dispatch_batches, or pass --no_group_rankings",
                             field="group_rankings")
        loader = self.accelerator.prepare(loader)
        # The sampler is already rank-aware: accelerate's BatchSamplerShard must pass its batches through, and
        # hand set_epoch on (transformers looks for it one level down, also after skip_first_batches on resume).
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
            shard.set_epoch = sampler.set_epoch
        return loader

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        # Our own pass rather than TRL's: group batches differ in size between ranks, and TRL gathers the raw
        # rewards (a collective that needs equal shapes), so they are padded before gathering here.
        mode = "train" if self.model.training else "eval"
        group_ids = inputs.pop(GROUP_COLUMN)
        margin = inputs.pop("margin", None)
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = grouped_pair_loss(rewards_chosen, rewards_rejected, group_ids, margin)
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

        acc = self.accelerator
        if mode == "train":
            tokens = acc.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            rewards = outputs.logits.detach().float().reshape(-1)
            padded = acc.pad_across_processes(rewards, dim=0, pad_index=float("nan"))
            everyone = acc.gather(padded)
            everyone = everyone[~torch.isnan(everyone)]
            self._metrics[mode]["min_reward"].append(everyone.min().item())
            self._metrics[mode]["mean_reward"].append(everyone.mean().item())
            self._metrics[mode]["max_reward"].append(everyone.max().item())
            diff = (rewards_chosen - rewards_rejected).detach().float()
            self._metrics[mode]["accuracy"].append(acc.gather_for_metrics((diff > 0).float().mean()).mean().item())
            self._metrics[mode]["margin"].append(acc.gather_for_metrics(diff.mean()).mean().item())
        return (loss, outputs) if return_outputs else loss
