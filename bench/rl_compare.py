"""PPO (ours) vs RLOO and GRPO (TRL) on one task, one reward model, one budget of sampled responses.

    python bench/rl_compare.py [--episodes 256] [--seed 0]

The task: a project of programmatic preferences (the response with "please" beats the one without), a tiny
GPT-2 base, SFT on demonstrations, a reward model on the preferences; then each algorithm trains from the SFT
model for the same number of sampled responses (episodes) and is evaluated on the same held-out prompts by
``rlhf.evaluate.evaluate_policy``: mean RM score of policy and SFT, win rate against SFT, KL to SFT, length,
and wall time. Everything runs through the real jobs (database, registry, run folders) in a temp folder.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=256, help="sampled responses per algorithm")
    ap.add_argument("--seed", type=int, default=0, help="seed of every job")
    ap.add_argument("--max_new_tokens", type=int, default=12, help="response length")
    a = ap.parse_args()
    os.environ.setdefault("INSTRUCTLOOP_NO_PROGRESS", "1")
    from db.migrate import create_schema
    from db.services import registry
    from db.session import session_scope
    from rlhf import train_grpo, train_ppo, train_reward, train_rloo, train_sft
    from tests import rlhf_helpers as H

    with tempfile.TemporaryDirectory() as d:
        os.environ["INSTRUCTLOOP_HOME"] = str(Path(d) / "runs")
        url = f"sqlite:///{d}/db.sqlite3"
        create_schema(url)
        tiny = H.build_tiny_lm(Path(d) / "tiny")
        H.make_project(url, "pp")
        H.add_preferences(url, "pp", H.polite_pairs(120, seed=1))
        H.add_demonstrations(url, "pp", [(f"ask {i}", "please " + w) for i, w in enumerate(H.WORDS[:20])])
        with session_scope(url) as s:
            registry.register_model_version(s, "base", "base", str(tiny))
        quiet = ["--database_url", url, "--disable_tqdm", "true", "--save_strategy", "no", "--seed", str(a.seed)]
        train_sft.main(["--model", "base", "--project", "pp", "--name", "sft", "--max_steps", "60",
                        "--learning_rate", "3e-3", *quiet])
        rm = train_reward.main(["--model", "base", "--project", "pp", "--name", "rm", "--max_steps", "40",
                                "--learning_rate", "1e-3", "--per_device_train_batch_size", "16", *quiet])
        rows = []
        common = ["--model", "sft", "--reward_model", "rm", "--project", "pp", "--database_url", url,
                  "--learning_rate", "1e-3", "--seed", str(a.seed)]
        ppo_updates = a.episodes // 16
        trl_steps = a.episodes // 16  # 16 completions per step: 4 prompts x 4 generations
        runs = {
            "PPO (ours)": (train_ppo.main, ["--name", "ppo", "--max_steps", str(ppo_updates),
                                           "--per_device_train_batch_size", "8", "--num_mini_batches", "2",
                                           "--max_new_tokens", str(a.max_new_tokens), "--kl_coef", "0.05",
                                           "--learning_rate", "3e-4", "--missing_eos_penalty", "1.0",
                                           "--save_steps", "0"]),
            "RLOO (TRL)": (train_rloo.main, ["--name", "rloo", "--max_steps", str(trl_steps),
                                            "--per_device_train_batch_size", "16", "--num_generations", "4",
                                            "--max_completion_length", str(a.max_new_tokens), "--beta", "0.05",
                                            "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
                                            "none"]),
            "GRPO (TRL)": (train_grpo.main, ["--name", "grpo", "--max_steps", str(trl_steps),
                                            "--per_device_train_batch_size", "16", "--num_generations", "4",
                                            "--max_completion_length", str(a.max_new_tokens), "--beta", "0.05",
                                            "--save_strategy", "no", "--disable_tqdm", "true", "--report_to",
                                            "none"]),
        }
        for label, (fn, extra) in runs.items():
            t0 = time.perf_counter()
            out = fn(common + extra)
            rows.append((label, out["metrics"], time.perf_counter() - t0))
    print(f"\nreward model held-out accuracy {rm['metrics']['eval_accuracy']:.2f}; {a.episodes} sampled responses per "
          f"algorithm, {a.max_new_tokens} tokens, held-out prompts {rows[0][1]['eval/prompts']}")
    print(f"{'':14}{'RM score':>10}{'SFT score':>10}{'win vs SFT':>11}{'KL':>8}{'length':>8}{'wall s':>8}")
    for label, m, wall in rows:
        print(f"{label:14}{m['eval/score']:10.3f}{m['eval/reference_score']:10.3f}{m['eval/win_rate']:11.2f}"
              f"{m['eval/kl']:8.2f}{m['eval/length']:8.1f}{wall:8.1f}")


if __name__ == "__main__":
    main()
