"""Pairwise reward model (InstructGPT step 2) with TRL's RewardTrainer.

    python -m rlhf.train_reward --model sft-v1 --project P [--name rm-v1] [--max_steps 300] [--config job.yaml]
    python -m rlhf.train_reward --model DIR --dataset prefs.jsonl      # TRL rows, or Anthropic HH rows
    python -m rlhf.train_reward --name rm-v1 --resume ...

Data: the project's preference labels and rankings (``db.services.export.iter_preference_rows``: rankings are
expanded into all pairs of a prompt, label strength becomes TRL's ``margin``, ties and both-bad are left out,
``--aggregate`` decides how several annotators of one task combine), or a JSONL file (TRL explicit/implicit
prompt, or HH). Loss ``-logsigmoid(r_c - r_r - margin)``; ``--center_rewards_coefficient`` is TRL's.

After training: held-out pairwise accuracy (ties count as wrong), mean margin, and calibration (ECE of
sigmoid(r_c - r_r)); then the reward is shifted so the SFT demonstrations score mean 0 (see rlhf/reward.py for
how the shift survives save/load). Output: ``$INSTRUCTLOOP_HOME/train_reward/<name>/`` and a ``reward`` model
version (parent = the starting model; label_snapshot = the label ids). The tokenizer must have a pad token
distinct from EOS (``--add_pad_token`` adds one).
"""
from __future__ import annotations

import logging
from typing import Any

from db.services.errors import InputError

log = logging.getLogger("rlhf.train_reward")
JOB = "train_reward"


def _normalization_rows(cfg: Any, train_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """(prompt, completion) rows whose mean reward is set to 0: demonstrations when there are any."""
    from rlhf import data

    if cfg.normalize_dataset:
        return data.sft_rows_from_file(cfg.normalize_dataset).rows, cfg.normalize_dataset
    if cfg.project:
        for statuses in (("accepted",), ("accepted", "submitted")):
            try:
                return data.sft_rows_from_db(cfg.database_url, cfg.project, statuses).rows, \
                    f"project {cfg.project} demonstrations ({'/'.join(statuses)})"
            except InputError:
                continue
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train_rows], "chosen responses"


def _with_group_ids(ds: Any) -> Any:
    """The `group` names as small ints (`group_id`), which the grouped collator and sampler read."""
    from rlhf.reward_trainer import GROUP_COLUMN, assign_group_ids

    return ds.add_column(GROUP_COLUMN, assign_group_ids(ds["group"])).remove_columns("group")


def run(cfg: Any) -> dict[str, Any]:
    from transformers import set_seed
    from trl import RewardTrainer

    from rlhf import data, reward, runs
    from rlhf.formatting import format_sft_row, use_chat_for_training
    from rlhf.modeling import add_pad_token, load_reward_model, load_tokenizer, pad_problem, resolve_model

    # ---- everything that can be wrong is checked before the model is loaded
    if cfg.project is None and cfg.dataset is None:
        raise InputError("give --project NAME (database) or --dataset FILE.jsonl", field="project")
    init = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
    filters = {"aggregate": cfg.aggregate} if cfg.project else {}
    rows = data.load_rows(data.PREF_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset,
                          **filters)
    eval_rows = data.preference_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
    tokenizer = load_tokenizer(init.path)
    problem = pad_problem(tokenizer)
    if problem and not cfg.add_pad_token:
        raise InputError(f"{problem}. A reward model reads its score at the last non-pad token, so padding "
                         "must use a separate token: add one to the tokenizer (add_special_tokens({'pad_token': "
                         "'<|pad|>'}) and resize the embeddings) or pass --add_pad_token", field="model")
    name, run_dir = runs.setup_run(cfg, JOB)
    chat = use_chat_for_training(tokenizer, cfg.chat_format)
    if not cfg.use_margin:
        rows.rows = [{**r, "margin": 0.0} for r in rows.rows]
    train_ds, eval_ds = data.build_datasets(rows.rows, data.PREF_KIND, chat, cfg.eval_fraction, cfg.max_rows,
                                            eval_rows)
    if not cfg.use_margin:
        train_ds = train_ds.remove_columns("margin")
        eval_ds = eval_ds.remove_columns("margin") if eval_ds is not None else None
    grouped = cfg.group_rankings and any(g is not None for g in train_ds["group"])
    train_ds, eval_ds = (_with_group_ids(d) if grouped and d is not None else
                         (d.remove_columns("group") if d is not None else None) for d in (train_ds, eval_ds))
    norm_rows, norm_source = _normalization_rows(cfg, rows.rows) if cfg.normalize else ([], "")
    log.info("reward %s: %d train / %d eval pairs (%s), chat template: %s", name, len(train_ds),
             len(eval_ds) if eval_ds else 0, rows.source.get("project") or rows.source.get("dataset"), chat)

    # new weights (a reward head, added pad rows) come from --seed, not from whatever ran before in this process
    set_seed(cfg.seed)
    model = load_reward_model(init.path, cfg.attn_implementation)
    if problem:
        log.warning("%s: adding a separate '<|pad|>' token (--add_pad_token)", problem)
        add_pad_token(tokenizer, model)
    model.config.pad_token_id = tokenizer.pad_token_id
    cfg.finalize_for_model(model)
    n_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n_pos and (cfg.max_length is None or cfg.max_length > n_pos):
        cfg.max_length = int(n_pos)

    extra: dict[str, Any] = {}
    trainer_cls = RewardTrainer
    if grouped:
        from rlhf.reward_trainer import GroupedPreferenceCollator, GroupedRewardTrainer

        trainer_cls = GroupedRewardTrainer
        extra["data_collator"] = GroupedPreferenceCollator(pad_token_id=tokenizer.pad_token_id,
                                                           pad_to_multiple_of=cfg.pad_to_multiple_of)
        log.info("rankings: %d groups for %d training pairs, one batch element each (--no_group_rankings to "
                 "train pairs independently)", len(set(train_ds["group_id"])), len(train_ds))
    trainer = trainer_cls(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                          processing_class=tokenizer, callbacks=[runs.metrics_callback(run_dir, cfg.stop_at_step)],
                          **extra)
    if len(trainer.train_dataset) < len(train_ds):
        log.warning("%d training pairs are longer than --max_length %s and were left out",
                    len(train_ds) - len(trainer.train_dataset), cfg.max_length)
    resume = runs.last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    stopped = runs.stopped_early(cfg, trainer, name, run_dir, log)
    if stopped is not None:
        return stopped
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "train_pairs": len(train_ds), "eval_pairs": len(eval_ds) if eval_ds else 0,
                               "train_groups": len(set(train_ds["group_id"])) if grouped else len(train_ds),
                               "train_pairs_too_long": len(train_ds) - len(trainer.train_dataset)}
    model = trainer.model
    reward.set_info(model, chat_template=chat)
    # Save first: nothing after training (metrics, normalization) may lose the trained model. Every rank takes
    # part in saving (FSDP/DeepSpeed); the normalized model is saved over this copy below.
    trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(run_dir))
    if eval_ds is not None:
        if trainer.eval_dataset is not None and len(trainer.eval_dataset):
            metrics["eval_loss"] = trainer.evaluate().get("eval_loss")
        # the held-out metrics use the rows the trainer evaluated on: pairs longer than max_length are left out
        held_rows = [r for r in eval_ds if reward.fits(tokenizer, r["prompt"], r["chosen"], cfg.max_length)
                     and reward.fits(tokenizer, r["prompt"], r["rejected"], cfg.max_length)]
        metrics["eval_pairs_too_long"] = len(eval_ds) - len(held_rows)
        if metrics["eval_pairs_too_long"]:
            log.warning("%d held-out pairs are longer than --max_length %s and were left out of the metrics",
                        metrics["eval_pairs_too_long"], cfg.max_length)
        held = reward.evaluate_pairs(model, tokenizer, held_rows, max_length=cfg.max_length)
        metrics.update({f"eval_{k}": v for k, v in held.items()})
    version_id = None
    # Every rank normalizes its (identical) copy the same way, then all take part in saving (FSDP/DeepSpeed).
    if cfg.normalize and norm_rows:
        formatted = [format_sft_row(r, chat) for r in norm_rows]
        norm = reward.normalize(model, tokenizer, [r["prompt"] for r in formatted],
                                [r["completion"] for r in formatted])
        if norm["normalize_truncated"]:
            log.warning("%d normalization demonstrations are longer than the model's context and were scored "
                        "left-truncated (the end kept)", norm["normalize_truncated"])
        norm["normalized_with"] = norm_source
        reward.set_info(model, normalized_with=norm_source)
        metrics.update(norm)
        trainer.save_model(str(run_dir))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(run_dir))
        runs.append_metrics(run_dir, {"final": True, **metrics})
        extra = {"job": JOB, "name": name, "init": init.path, "init_version": init.version_name,
                 "chat_template": chat, "source": rows.source}
        runs.write_config(run_dir, cfg, extra)
        if cfg.register:
            config = {"job": JOB, "init": init.path, "chat_template": chat, "run_dir": str(run_dir.resolve()),
                      "use_margin": cfg.use_margin, "aggregate": cfg.aggregate, "group_rankings": grouped,
                      "center_rewards_coefficient": cfg.center_rewards_coefficient,
                      **runs.training_config(cfg),
                      **{k: metrics[k] for k in ("reward_shift", "reward_shift_method") if k in metrics}}
            version_id = runs.register(cfg.database_url, name, "reward", run_dir, init, config, metrics,
                                       rows.snapshot())
    log.info("reward model done: %s", metrics)
    return {"name": name, "run_dir": str(run_dir), "metrics": metrics, "version_id": version_id,
            "trainer": trainer}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import reward_config_class

    return runs.cli(run, reward_config_class(), "python -m rlhf.train_reward", __doc__, argv)


if __name__ == "__main__":
    main()
