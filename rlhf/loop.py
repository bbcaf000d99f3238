"""InstructGPT's whole loop on verifiable prompts, through the jobs table and a worker, with a simulated annotator.

    pretrain (tasks in the corpus) -> generate -> labels -> SFT -> reward -> PPO -> generate again -> labels
    -> the reward model judges every version's responses (the leaderboard's RM column)

Every model stage is a job queued with ``db.services.jobs.enqueue`` and run by ``rlhf.worker.Worker`` as its own
process, exactly as from the Jobs page; the labels come from ``rlhf.simulate.SimulatedAnnotator`` through the
labeling services. :func:`run_loop` returns the per-stage table (accuracy of each version's responses, the reward
model's held-out accuracy, PPO's held-out score / accuracy / KL against SFT, the leaderboard with the RM-judged
score beside each version's human one, wall times).
``tests/test_loop_e2e.py`` runs it small and asserts what each stage must move; ``bench/loop.py`` runs it bigger.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from db.services import accounts, content, importers, jobs, leaderboard, projects, registry
from db.session import session_scope

PROJECT = "loop"
ADMIN, ANNOTATOR = "loop-admin", "loop-annotator"


@dataclass
class LoopConfig:
    """Sizes of one run (defaults: the test's, minutes on 2 CPU cores)."""

    prompts: int = 200
    # Counting: the family this size learns (base ~55% right). With reversal mixed in, the base model reversed 0
    # of 120 and the votes between two wrong reversals taught the reward model noise (README, "measured").
    families: tuple[str, ...] = ("count",)
    pretrain_steps: int = 500
    pretrain_preset: str = "micro"
    task_docs: int = 20000
    task_noise: float = 0.3
    vocab_size: int = 512
    samples: int = 4  # responses per prompt of the base model (the reward model's data)
    pairs: int = 6  # compare tasks per prompt among them (4 responses: all 6 pairs)
    max_new_tokens: int = 8
    sft_steps: int = 60
    reward_steps: int = 300  # held-out accuracy on one run's data: 0.905 at 150 steps, 0.923 at 200, 0.940 at 300
    reward_lr: float = 2e-3
    ppo_steps: int = 20
    ppo_batch: int = 8
    ppo_mini_batches: int = 2
    ppo_lr: float = 3e-4
    kl_coef: float = 0.05
    missing_eos_penalty: float = 1.0
    target_kl: float = 6.0
    final_samples: int = 2  # responses per prompt of every version in the last round (the leaderboard's votes)
    final_pairs: int = 12  # compare tasks per prompt across versions (3 versions x 2 samples: all 12)
    noise: float = 0.05
    eval_fraction: float = 0.25
    seed: int = 0
    threads: int = 2
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # per job kind: more flags


class StageFailed(AssertionError):
    pass


def _run_job(url: str, home: Path, kind: str, args: dict[str, Any], name: str | None, threads: int) -> dict[str, Any]:
    """Queue one job, run the worker until it is done, return its detail (raise with its log if it failed)."""
    from rlhf.worker import Worker

    with session_scope(url) as s:
        jid = jobs.enqueue(s, kind, args, name=name).id
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the job processes inherit it
    w = Worker(url, root=home, poll_seconds=0.5, heartbeat_seconds=5.0)
    w.run(until_idle=True)
    with session_scope(url) as s:
        d = jobs.job_detail(s, jid, log_lines=30)
    if d["state"] != "succeeded":
        raise StageFailed(f"{kind} job {jid} {d['state']}: {d['error'][:2000]}\n{d['log_tail']}")
    return d


def version_accuracy(url: str, version: str) -> tuple[float, int]:
    """Share of `version`'s stored responses to the project's prompts that are correct (and how many)."""
    from db.services import export
    from pretrain.tasks import is_correct

    with session_scope(url) as s:
        answers = {r["prompt_id"]: r["answer"] for r in export.iter_prompt_rows(s, project=PROJECT)}
        vid = registry.resolve(s, version).id
        by_prompt = content.responses_for_prompts(s, list(answers), model_version_id=vid)
        hits = [is_correct(answers[pid], r.text) for pid, rs in by_prompt.items() for r in rs]
    return (sum(hits) / len(hits) if hits else float("nan")), len(hits)


def setup(url: str, cfg: LoopConfig) -> None:
    from db.migrate import upgrade
    from pretrain.tasks import project_prompts

    upgrade(url)
    rows = [{"prompt": e.prompt, "answer": e.answer, "task": e.family}
            for e in project_prompts(cfg.prompts, cfg.families)]
    with session_scope(url) as s:
        for name, role in ((ADMIN, "admin"), (ANNOTATOR, "annotator")):
            if not any(u.username == name for u in accounts.list_users(s)):
                accounts.create_user(s, name, f"{name}-pass", role=role)
        projects.ensure_project(s, PROJECT, labels_per_task=1, settings={"min_demonstration_chars": 1})
        importers.import_prompts(s, "".join(json.dumps(r) + "\n" for r in rows).encode(), PROJECT,
                                 filename="loop_prompts.jsonl")


def run_loop(url: str, home: str | Path, cfg: LoopConfig | None = None, log: Any = print) -> dict[str, Any]:
    """The whole loop (see the module docstring); returns {"stages": [...], "leaderboard": [...], ...}."""
    from rlhf.simulate import SimulatedAnnotator, accept_demonstrations

    cfg = cfg or LoopConfig()
    home = Path(home).resolve()
    t_all = time.monotonic()
    stages: list[dict[str, Any]] = []
    times: dict[str, float] = {}

    def job(kind: str, args: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        key = name or f"{kind}-{len(times)}"
        d = _run_job(url, home, kind, {**args, **cfg.extra.get(kind, {})}, name, cfg.threads)
        times[key] = time.monotonic() - t0
        log(f"[loop] {key}: {d['state']} in {times[key]:.0f} s")
        return d

    setup(url, cfg)
    annotator = SimulatedAnnotator(url, ANNOTATOR, PROJECT, noise=cfg.noise, seed=cfg.seed)
    common = {"seed": cfg.seed, "report_to": "none", "disable_tqdm": True, "save_strategy": "no"}
    gen = {"project": PROJECT, "temperature": 1.0, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
           "progress": False}

    # 1. pretrain a base model on a corpus with the tasks (a share answered wrongly) mixed in
    job("pretrain", {"steps": cfg.pretrain_steps, "preset": cfg.pretrain_preset, "vocab_size": cfg.vocab_size,
                     "task_docs": cfg.task_docs, "task_noise": cfg.task_noise, "docs": "none",
                     "families": ",".join(cfg.families), "threads": cfg.threads, "no_progress": True,
                     "seed": cfg.seed}, "base")
    # 2. its responses, compare and demonstrate tasks; 3. labels
    job("generate", {**gen, "models": ["base"], "num_samples": cfg.samples, "tasks": "compare,demonstrate",
                     "pairs_per_prompt": cfg.pairs})
    annotator.label("demonstrate")
    annotator.label("compare")
    accept_demonstrations(url, PROJECT, ADMIN)
    # 4. SFT on the demonstrations; 5. the reward model on the preferences (from the SFT model)
    sft = job("train_sft", {"project": PROJECT, "model": "base", "max_steps": cfg.sft_steps,
                            "learning_rate": 3e-3, **common}, "sft")
    rm = job("train_reward", {"project": PROJECT, "model": "sft", "max_steps": cfg.reward_steps,
                              "learning_rate": cfg.reward_lr, "per_device_train_batch_size": 16,
                              "warmup_steps": 0,  # as measured (train_reward's default became 10% warmup)
                              "eval_fraction": cfg.eval_fraction, **common}, "rm")
    # 6. PPO against the reward model, KL to the SFT model
    ppo = job("train_ppo", {"project": PROJECT, "model": "sft", "reward_model": "rm", "max_steps": cfg.ppo_steps,
                            "per_device_train_batch_size": cfg.ppo_batch, "num_mini_batches": cfg.ppo_mini_batches,
                            "max_new_tokens": cfg.max_new_tokens, "learning_rate": cfg.ppo_lr,
                            "kl_coef": cfg.kl_coef, "missing_eos_penalty": cfg.missing_eos_penalty,
                            "target_kl": cfg.target_kl, "eval_fraction": cfg.eval_fraction, "seed": cfg.seed,
                            "report_to": "none", "save_steps": 0}, "ppo")
    # 7. generate again from every version, compare across versions; 8. labels
    job("generate", {**gen, "models": ["ppo", "sft", "base"], "num_samples": cfg.final_samples, "tasks": "compare",
                     "pairs_per_prompt": cfg.final_pairs})
    annotator.label("compare")
    # 9. the reward model's view of the same responses, beside the human leaderboard
    job("evaluate", {"what": "responses", "reward": "rm", "project": PROJECT}, None)

    with session_scope(url) as s:
        rm_metrics = registry.resolve(s, "rm").metrics or {}
        ppo_metrics = registry.resolve(s, "ppo").metrics or {}
        board = leaderboard.leaderboard(s, PROJECT, seed=cfg.seed)
    for v in ("base", "sft", "ppo"):
        acc, n = version_accuracy(url, v)
        stages.append({"stage": v, "accuracy": acc, "responses": n, "wall_s": times.get(v)})
    table = board.table.to_dict("records")
    out = {
        "stages": stages,
        "reward": {"eval_accuracy": rm_metrics.get("eval_accuracy"), "eval_pairs": rm_metrics.get("eval_pairs"),
                   "train_pairs": rm_metrics.get("train_pairs"), "wall_s": times.get("rm")},
        "ppo": {k.removeprefix("eval/"): ppo_metrics.get(k) for k in
                ("eval/score", "eval/reference_score", "eval/accuracy", "eval/reference_accuracy", "eval/kl",
                 "eval/win_rate", "eval/kl_under_target", "held_out_prompts")} | {"target_kl": cfg.target_kl},
        "leaderboard": [{k: r[k] for k in ("rank", "version", "score", "lower", "upper", "votes", "rm_judged")}
                        for r in table],
        "labels": dict(annotator.counts),
        "job_wall_s": times,
        "wall_s": time.monotonic() - t_all,
        "config": asdict(cfg),
        "sft_job": sft["id"], "rm_job": rm["id"], "ppo_job": ppo["id"],
    }
    return out


def check(res: dict[str, Any]) -> list[str]:
    """What each stage must move; returns the failures, each naming its stage and numbers."""
    fails = []
    acc = {s["stage"]: s["accuracy"] for s in res["stages"]}
    if not acc["sft"] > acc["base"]:
        fails.append(f"SFT: accuracy {acc['sft']:.3f} is not above the base model's {acc['base']:.3f}")
    ra = res["reward"]["eval_accuracy"]
    if ra is None or ra < 0.9:
        fails.append(f"reward model: held-out pairwise accuracy {ra} < 0.9 "
                     f"({res['reward']['eval_pairs']} held-out pairs)")
    p = res["ppo"]
    if not (p["score"] or 0) > (p["reference_score"] or 0):
        fails.append(f"PPO: held-out RM score {p['score']} is not above SFT's {p['reference_score']}")
    if p.get("accuracy") is None or not p["accuracy"] > p["reference_accuracy"]:
        fails.append(f"PPO: held-out task accuracy {p.get('accuracy')} is not above SFT's "
                     f"{p.get('reference_accuracy')}")
    if p["kl"] is None or not p["kl"] < p["target_kl"]:
        fails.append(f"PPO: KL to SFT {p['kl']} is not under the target {p['target_kl']}")
    if not acc["ppo"] > acc["sft"]:
        fails.append(f"PPO: accuracy of its responses {acc['ppo']:.3f} is not above SFT's {acc['sft']:.3f}")
    board = {r["version"]: r for r in res["leaderboard"]}
    if "ppo" not in board or "base" not in board:
        fails.append(f"leaderboard: ppo or base missing ({sorted(board)})")
    elif not board["ppo"]["lower"] > board["base"]["upper"]:
        b, q = board["base"], board["ppo"]
        fails.append(f"leaderboard: PPO {q['score']:.0f} [{q['lower']:.0f}, {q['upper']:.0f}] is not above base "
                     f"{b['score']:.0f} [{b['lower']:.0f}, {b['upper']:.0f}] with non-overlapping intervals")
    unjudged = [v for v, r in board.items() if not isinstance(r.get("rm_judged"), int | float)]
    if unjudged:
        fails.append(f"leaderboard: no RM-judged score beside {', '.join(sorted(unjudged))} (the evaluate "
                     "responses job recorded none)")
    return fails


def _num(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "none"


def format_table(res: dict[str, Any]) -> str:
    lines = [f"{'stage':<10}{'accuracy':>10}{'responses':>11}{'wall s':>9}"]
    for s in res["stages"]:
        lines.append(f"{s['stage']:<10}{s['accuracy']:>10.3f}{s['responses']:>11}"
                     f"{(s['wall_s'] or 0):>9.0f}")
    r, p = res["reward"], res["ppo"]
    lines.append(f"reward model: held-out accuracy {r['eval_accuracy']} on {r['eval_pairs']} pairs "
                 f"({r['train_pairs']} trained), {r['wall_s'] or 0:.0f} s")
    lines.append(f"PPO vs SFT (held-out {p['held_out_prompts']} prompts): RM score {p['score']} vs "
                 f"{p['reference_score']}, accuracy {p['accuracy']} vs {p['reference_accuracy']}, KL {p['kl']} "
                 f"(target {p['target_kl']}), win rate {p['win_rate']}")
    lines.append("leaderboard: " + "; ".join(f"{b['rank']}. {b['version']} {b['score']:.0f} "
                                              f"[{b['lower']:.0f}, {b['upper']:.0f}] ({b['votes']} votes, RM-judged "
                                              f"{_num(b.get('rm_judged'))})"
                                              for b in res["leaderboard"]))
    lines.append(f"labels: {res['labels']}")
    lines.append("jobs: " + ", ".join(f"{k} {v:.0f} s" for k, v in res["job_wall_s"].items())
                 + f"; total {res['wall_s']:.0f} s")
    return "\n".join(lines)
