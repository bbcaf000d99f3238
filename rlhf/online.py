"""RLOO and GRPO through TRL, beside our PPO: same prompts, same reward model, same registry and lineage.

    python -m rlhf.train_rloo --project P --model sft-v1 --reward_model rm-v1 [--max_steps 100]
    python -m rlhf.train_grpo --project P --model sft-v1 --reward_model rm-v1 --num_generations 4

TRL's ``RLOOTrainer`` / ``GRPOTrainer`` sample ``num_generations`` completions per prompt and use the group
as the baseline (leave-one-out mean for RLOO, group mean and std for GRPO): no value model. The reward function
is our registered reward model, scoring each (prompt, completion) rendered as reward training rendered it,
with its normalisation offset (``rlhf.reward.score``). After training the policy is evaluated on the held-out
prompts exactly as PPO is (``rlhf.evaluate.evaluate_policy``: RM score, win rate, KL, length), so the three
algorithms compare on one table. Output: ``$INSTRUCTLOOP_HOME/train_<algo>/<name>/`` and a ``policy`` model
version (parent: ``--model``; config: algorithm, reward model; label_snapshot: the prompt ids). Every TRL
``RLOOConfig`` / ``GRPOConfig`` flag works too (``--beta`` is the KL coefficient; 0 skips the reference).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from db.services.errors import InputError

log = logging.getLogger("rlhf.online")
ALGOS = ("rloo", "grpo")


@dataclass
class OnlineFields:
    reward_model: str | None = field(default=None, metadata={
        "help": "Reward model (registered `reward` version, directory or hub id) used as TRL's reward function. "
                "Required."})
    eval_max_new_tokens: int | None = field(default=None, metadata={
        "help": "Response length of the held-out evaluation against --model (as rlhf.evaluate policy; default: "
                "--max_completion_length, the length it trained with)."})


_CONFIGS: dict[str, type] = {}


def config_class(algo: str) -> type:
    from rlhf.config import _job_config

    if algo not in _CONFIGS:
        if algo == "rloo":
            from trl import RLOOConfig as base
        else:
            from trl import GRPOConfig as base
        cls = _job_config(base, (OnlineFields,), f"rlhf.train_{algo} configuration")
        cls.__name__ = cls.__qualname__ = f"{algo.upper()}JobConfig"
        import rlhf.config

        setattr(rlhf.config, cls.__name__, cls)  # where pickle (the Trainer's training_args.bin) looks it up
        _CONFIGS[algo] = cls
    return _CONFIGS[algo]


class RewardModelFunc:
    """TRL reward function: our reward model's score of each (prompt, completion)."""

    def __init__(self, model: Any, tok: Any, chat: bool, name: str) -> None:
        self.model, self.tok, self.chat = model, tok, chat
        self.__name__ = name  # TRL logs rewards/<name>

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        from rlhf import reward
        from rlhf.formatting import completion_text, format_sft_row

        rows = [format_sft_row({"prompt": p, "completion": completion_text(c)}, self.chat)
                for p, c in zip(prompts, completions)]
        return reward.score(self.model, self.tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])


def run(cfg: Any, algo: str) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import set_seed

    from rlhf import data, reward, runs
    from rlhf.evaluate import evaluate_policy
    from rlhf.formatting import as_messages, plain_prompt, use_chat_for_training
    from rlhf.modeling import (
        device,
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        pad_problem,
        resolve_model,
        stop_token_ids,
    )
    from rlhf.train_ppo import RewardScorer, _vocab_key, render_prompts

    job = f"train_{algo}"
    eval_len = cfg.eval_max_new_tokens or cfg.max_completion_length or 64
    if cfg.project is None and cfg.dataset is None:
        raise InputError("give --project NAME (database) or --dataset FILE.jsonl of prompts", field="project")
    if not cfg.reward_model:
        raise InputError("--reward_model is required", field="reward_model")
    lookup = bool(cfg.register or cfg.project)
    policy_ref = resolve_model(cfg.model, cfg.database_url, lookup=lookup)
    rm_ref = resolve_model(cfg.reward_model, cfg.database_url, lookup=lookup)
    rows = data.load_rows(data.PROMPT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset)
    train_rows, held_rows = data.split_by_prompt(rows.rows, cfg.eval_fraction)
    if cfg.max_rows:
        train_rows = train_rows[:cfg.max_rows]
    tok = load_tokenizer(policy_ref.path)
    rm_tok = load_tokenizer(rm_ref.path)
    for who, t in (("model", tok), ("reward_model", rm_tok)):
        if pad_problem(t):
            raise InputError(f"--{who}: {pad_problem(t)} (a separate pad token is needed)", field=who)
    chat = use_chat_for_training(tok, cfg.chat_format)
    name, run_dir = runs.setup_run(cfg, job)

    set_seed(cfg.seed)
    rm = load_reward_model(rm_ref.path, cfg.attn_implementation).to(device()).eval().requires_grad_(False)
    rm.config.pad_token_id = rm_tok.pad_token_id
    recorded = reward.info(rm).get("chat_template")
    rm_chat = bool(recorded) if recorded is not None else use_chat_for_training(rm_tok, "auto")
    policy = load_causal_lm(policy_ref.path, cfg.attn_implementation)
    cfg.finalize_for_model(policy)
    ds = Dataset.from_list([{"prompt": as_messages(r["prompt"]) if chat else plain_prompt(r["prompt"])}
                            for r in train_rows])
    from trl import GRPOTrainer, RLOOTrainer

    trainer_cls = RLOOTrainer if algo == "rloo" else GRPOTrainer
    trainer = trainer_cls(model=policy, reward_funcs=RewardModelFunc(rm, rm_tok, rm_chat, rm_ref.version_name or "rm"),
                          args=cfg, train_dataset=ds, processing_class=tok,
                          callbacks=[runs.metrics_callback(run_dir, cfg.stop_at_step)])
    resume = runs.last_checkpoint(run_dir) if cfg.resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    stopped = runs.stopped_early(cfg, trainer, name, run_dir, log)
    if stopped is not None:
        return stopped
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "train_prompts": len(train_rows), "held_out_prompts": len(held_rows)}
    trainer.save_model(str(run_dir))
    version_id = None
    if trainer.is_world_process_zero():
        tok.save_pretrained(str(run_dir))
        if held_rows:
            reference = load_causal_lm(policy_ref.path, cfg.attn_implementation).to(device())
            n_pos = getattr(reference.config, "n_positions", None) or \
                getattr(reference.config, "max_position_embeddings", None) or 10 ** 9
            ids, _ = render_prompts(tok, held_rows, chat, max(1, n_pos - eval_len))
            scorer = RewardScorer(rm, rm_tok, tok, {tuple(i): r["prompt"] for i, r in zip(ids, held_rows)}, rm_chat,
                                  _vocab_key(rm_tok) == _vocab_key(tok))
            tok.padding_side = "left"
            ev = evaluate_policy(trainer.model, reference, scorer, tok, ids, held_rows,
                                 max_new_tokens=eval_len, stop_ids=stop_token_ids(reference, tok),
                                 seed=cfg.seed)
            metrics.update({f"eval/{k}": v for k, v in ev.items()})
        runs.append_metrics(run_dir, {"final": True, **metrics})
        runs.write_config(run_dir, cfg, {"job": job, "name": name, "model": policy_ref.path,
                                         "reward_model": rm_ref.path, "source": rows.source})
        if cfg.register:
            from db.session import session_scope
            from rlhf.modeling import ensure_registered

            with session_scope(cfg.database_url) as s:
                rmv = ensure_registered(s, rm_ref)
                rm_info = {"id": rmv.id, "name": rmv.name, "kind": rmv.kind}
            config = {"job": job, "algo": algo, "chat_template": chat, "run_dir": str(run_dir.resolve()),
                      "reward_model": rm_info, "beta": cfg.beta, "num_generations": cfg.num_generations,
                      **runs.training_config(cfg)}
            snapshot = {**rows.source, "ids": {"prompts": [r["prompt_id"] for r in train_rows]},
                        "held_out_prompt_ids": [r["prompt_id"] for r in held_rows]}
            version_id = runs.register(cfg.database_url, name, "policy", run_dir, policy_ref, config, metrics,
                                       snapshot)
    log.info("%s done: %s", algo.upper(), metrics)
    return {"name": name, "run_dir": str(run_dir), "metrics": metrics, "version_id": version_id, "trainer": trainer}


def main(algo: str, argv: list[str] | None = None, doc: str = "") -> dict[str, Any]:
    from rlhf import runs

    if algo not in ALGOS:
        raise ValueError(algo)
    return runs.cli(lambda cfg: run(cfg, algo), config_class(algo), f"python -m rlhf.train_{algo}", doc or __doc__,
                    argv)
