"""Memory-mapped token shards and deterministic batch sampling.

A data directory holds ``train.bin`` / ``val.bin`` (flat token ids, uint16 when the vocabulary fits, else
uint32), ``meta.json`` (dtype, vocab size, token counts, eos id, tokenizer path) and usually ``tokenizer/``.
Batches are a pure function of (seed, step, micro-step, rank), so a resumed or re-launched run reads exactly
the same tokens without storing a data cursor.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

META = "meta.json"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


class ShardWriter:
    """Append token arrays to ``<dir>/<split>.bin`` with flat memory."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.n = path, dtype, 0
        self.f = path.open("wb")

    def write(self, ids: list[int] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        arr.tofile(self.f)
        self.n += arr.size

    def close(self) -> None:
        self.f.close()


def read_meta(data_dir: str | Path) -> dict:
    p = Path(data_dir) / META
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: run `python -m pretrain.prepare --out {data_dir}` first")
    return json.loads(p.read_text())


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    meta = read_meta(data_dir)
    p = Path(data_dir) / f"{split}.bin"
    if not p.is_file():
        raise FileNotFoundError(f"token shard not found: {p}")
    if p.stat().st_size == 0:  # e.g. --val-fraction 0: numpy cannot map an empty file
        return np.zeros(0, dtype=np.dtype(meta["dtype"]))
    return np.memmap(p, dtype=np.dtype(meta["dtype"]), mode="r")


def batch_rng(seed: int, step: int, micro: int, rank: int, split: str) -> np.random.Generator:
    # SeedSequence mixes the tuple into independent streams: no collisions between steps, ranks or splits.
    return np.random.default_rng([seed, step, micro, rank, zlib.crc32(split.encode())])


def get_batch(data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``block_size + 1`` tokens: inputs and next-token targets."""
    if len(data) < block_size + 1:
        raise ValueError(f"split has {len(data)} tokens, need at least block_size+1={block_size + 1}")
    ix = rng.integers(0, len(data) - block_size, size=batch_size)  # upper bound exclusive: last window included
    buf = np.stack([np.asarray(data[i:i + block_size + 1], dtype=np.int64) for i in ix])
    t = torch.from_numpy(buf)
    x, y = t[:, :-1], t[:, 1:]
    if torch.device(device).type == "cuda":
        return (x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True))
    return x.contiguous(), y.contiguous()
