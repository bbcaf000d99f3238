"""Supervised fine-tuning on demonstrations (InstructGPT step 1) with TRL's SFTTrainer.

    python -m rlhf.train_sft --model base-v1 --project P [--name sft-v1] [--max_steps 200] [--config job.yaml]
    python -m rlhf.train_sft --model runs/pretrain/demo/hf --dataset sft.jsonl --no_register
    python -m rlhf.train_sft --name sft-v1 --resume ...          # continue after a kill

Data: the project's accepted demonstrations (``--statuses accepted,submitted`` to include unreviewed ones) or a
JSONL of ``{prompt, completion}`` / ``{messages}`` rows (what ``python -m db export sft`` writes). Loss on the
completion only (prompt tokens are -100). Prompts are rendered with the tokenizer's chat template when it has
one (``--chat_format``), else as ``prompt + "\\n"``; ``rlhf.generate`` renders them the same way.

Output: ``$INSTRUCTLOOP_HOME/train_sft/<name>/`` (model + tokenizer, checkpoints, metrics.jsonl,
job_config.yaml) and an ``sft`` model version whose parent is the base model and whose label_snapshot lists
the demonstration ids. Every TRL ``SFTConfig`` / ``TrainingArguments`` flag works too.
"""
from __future__ import annotations

import logging
from typing import Any

from db.services.errors import InputError

log = logging.getLogger("rlhf.train_sft")
JOB = "train_sft"


def _limit_length(cfg: Any, tokenizer: Any, model: Any) -> None:
    n_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n_pos and (cfg.max_length is None or cfg.max_length > n_pos):
        cfg.max_length = int(n_pos)


def run(cfg: Any) -> dict[str, Any]:
    from transformers import set_seed
    from trl import SFTTrainer

    from rlhf import data, runs
    from rlhf.formatting import use_chat_for_training
    from rlhf.modeling import add_pad_token, load_causal_lm, load_tokenizer, pad_problem, resolve_model

    # ---- everything that can be wrong is checked before the model is loaded
    if cfg.project is None and cfg.dataset is None:
        raise InputError("give --project NAME (database) or --dataset FILE.jsonl", field="project")
    base = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
    statuses = tuple(s.strip() for s in cfg.statuses.split(",") if s.strip())
    filters = {"statuses": statuses} if cfg.project else {}
    rows = data.load_rows(data.SFT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset,
                          **filters)
    eval_rows = data.sft_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
    name, run_dir = runs.setup_run(cfg, JOB)
    tokenizer = load_tokenizer(base.path)
    chat = use_chat_for_training(tokenizer, cfg.chat_format)
    train_ds, eval_ds = data.build_datasets(rows.rows, data.SFT_KIND, chat, cfg.eval_fraction, cfg.max_rows,
                                            eval_rows)
    log.info("SFT %s: %d train / %d eval rows (%s), chat template: %s", name, len(train_ds),
             len(eval_ds) if eval_ds else 0, rows.source.get("project") or rows.source.get("dataset"), chat)

    # new weights (a reward head, added pad rows) come from --seed, not from whatever ran before in this process
    set_seed(cfg.seed)
    model = load_causal_lm(base.path, cfg.attn_implementation)
    problem = pad_problem(tokenizer)
    if problem:
        log.warning("%s: adding a separate '<|pad|>' token (pad must differ from EOS)", problem)
        add_pad_token(tokenizer, model)
    cfg.finalize_for_model(model)
    _limit_length(cfg, tokenizer, model)
    if cfg.completion_only_loss is None:
        cfg.completion_only_loss = True

    trainer = SFTTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=[runs.metrics_callback(run_dir, cfg.stop_at_step)])
    resume = runs.last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    stopped = runs.stopped_early(cfg, trainer, name, run_dir, log)
    if stopped is not None:
        return stopped
    metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                               "train_rows": len(train_ds), "eval_rows": len(eval_ds) if eval_ds else 0}
    if eval_ds is not None:
        ev = trainer.evaluate()
        metrics.update({k: v for k, v in ev.items() if k in ("eval_loss", "eval_mean_token_accuracy",
                                                            "eval_entropy")})
    version_id = None
    trainer.save_model(str(run_dir))  # every rank: FSDP / DeepSpeed gather the weights collectively
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(run_dir))
        runs.append_metrics(run_dir, {"final": True, **metrics})
        extra = {"job": JOB, "name": name, "base": base.path, "base_version": base.version_name,
                 "chat_template": chat, "source": rows.source}
        runs.write_config(run_dir, cfg, extra)
        if cfg.register:
            config = {"job": JOB, "base": base.path, "chat_template": chat, "run_dir": str(run_dir.resolve()),
                      **runs.training_config(cfg)}
            version_id = runs.register(cfg.database_url, name, "sft", run_dir, base, config, metrics,
                                       rows.snapshot())
    log.info("SFT done: %s", metrics)
    return {"name": name, "run_dir": str(run_dir), "metrics": metrics, "version_id": version_id,
            "trainer": trainer}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import sft_config_class

    return runs.cli(run, sft_config_class(), "python -m rlhf.train_sft", __doc__, argv)


if __name__ == "__main__":
    main()
