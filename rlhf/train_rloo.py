"""RLOO on our reward model with TRL's RLOOTrainer (see rlhf/online.py for what it reads, writes and registers).

    python -m rlhf.train_rloo --project P --model sft-v1 --reward_model rm-v1 [--num_generations 4] [--max_steps 100]
"""
from __future__ import annotations

from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import online

    return online.main("rloo", argv, (__doc__ or "") + "\n" + (online.__doc__ or ""))


if __name__ == "__main__":
    main()
