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
        while len(batches) < self._n_batches():  # equal step counts on every rank
            batches.append(batches[len(batches) % max(1, len(batches))])
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
        loader = self.accelerator.prepare(loader)
        # The sampler is already rank-aware: accelerate's BatchSamplerShard must pass its batches through.
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        group_ids = inputs.pop(GROUP_COLUMN)
        margin = inputs.get("margin")
        # TRL's own pass: forward, token counts and reward metrics; only its (ungrouped) loss is replaced
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        grouped = grouped_pair_loss(rewards_chosen, rewards_rejected, group_ids, margin)
        if self.args.center_rewards_coefficient is not None:
            grouped = grouped + self.args.center_rewards_coefficient * torch.mean(
                (rewards_chosen + rewards_rejected) ** 2)
        return (grouped, outputs) if return_outputs else grouped
