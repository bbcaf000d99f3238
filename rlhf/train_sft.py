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

from typing import Any

from rlhf import runs

JOB = "train_sft"


def _limit_length(cfg: Any, model: Any) -> None:
    """--max_length defaults to (and may not exceed) the model's context."""
    n_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n_pos and (cfg.max_length is None or cfg.max_length > n_pos):
        cfg.max_length = int(n_pos)


class SFTJob(runs.HFTrainerJob):
    JOB, KIND = JOB, "sft"

    def prepare(self) -> None:
        from rlhf import data
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, resolve_model

        cfg = self.cfg
        self.base = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
        statuses = tuple(s.strip() for s in cfg.statuses.split(",") if s.strip())
        filters = {"statuses": statuses} if cfg.project else {}
        self.rows = data.load_rows(data.SFT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset,
                                   **filters)
        eval_rows = data.sft_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
        self.tokenizer = load_tokenizer(self.base.path)
        self.chat = use_chat_for_training(self.tokenizer, cfg.chat_format)
        self.train_ds, self.eval_ds = data.build_datasets(self.rows.rows, data.SFT_KIND, self.chat,
                                                          cfg.eval_fraction, cfg.max_rows, eval_rows)

    def build(self) -> None:
        from transformers import set_seed
        from trl import SFTTrainer

        from rlhf.modeling import add_pad_token, load_causal_lm, pad_problem

        cfg = self.cfg
        self.log.info("SFT %s: %d train / %d eval rows (%s), chat template: %s", self.name, len(self.train_ds),
                      len(self.eval_ds) if self.eval_ds else 0,
                      self.rows.source.get("project") or self.rows.source.get("dataset"), self.chat)
        # new weights (added pad rows) come from --seed, not from whatever ran before in this process
        set_seed(cfg.seed)
        model = load_causal_lm(self.base.path, cfg.attn_implementation)
        problem = pad_problem(self.tokenizer)
        if problem:
            self.log.warning("%s: adding a separate '<|pad|>' token (pad must differ from EOS)", problem)
            add_pad_token(self.tokenizer, model)
        cfg.finalize_for_model(model)
        _limit_length(cfg, model)
        if cfg.completion_only_loss is None:
            cfg.completion_only_loss = True
        self.trainer = SFTTrainer(model=model, args=cfg, train_dataset=self.train_ds, eval_dataset=self.eval_ds,
                                  processing_class=self.tokenizer, callbacks=self.callbacks())

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        result = self.train_hf(resume)
        if result is None:
            return None
        metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                                   "train_rows": len(self.train_ds),
                                   "eval_rows": len(self.eval_ds) if self.eval_ds else 0}
        if self.eval_ds is not None:
            ev = self.trainer.evaluate()
            metrics.update({k: v for k, v in ev.items() if k in ("eval_loss", "eval_mean_token_accuracy",
                                                                "eval_entropy")})
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        self.trainer.save_model(str(self.run_dir))  # every rank: FSDP / DeepSpeed gather the weights collectively
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        config = {"base": self.base.path, "chat_template": self.chat}
        extra = {"base": self.base.path, "base_version": self.base.version_name, "chat_template": self.chat,
                 "source": self.rows.source}
        return self.base, config, self.rows.snapshot(), extra


def run(cfg: Any) -> dict[str, Any]:
    return SFTJob(cfg).run()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import sft_config_class

    return runs.cli(run, sft_config_class(), "python -m rlhf.train_sft", __doc__, argv)


if __name__ == "__main__":
    main()
