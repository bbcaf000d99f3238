"""Supervised fine-tuning on demonstrations (InstructGPT step 1) with TRL's SFTTrainer.

    python -m rlhf.train_sft --model base-v1 --project P [--name sft-v1] [--max_steps 200] [--config job.yaml]
    python -m rlhf.train_sft --model runs/pretrain/demo/hf --dataset sft.jsonl --no_register
    python -m rlhf.train_sft --name sft-v1 --resume ...          # continue after a kill

Data: the project's accepted demonstrations (``--statuses accepted,submitted`` to include unreviewed ones) or a
JSONL of ``{prompt, completion}`` / ``{messages}`` rows (what ``python -m db export sft`` writes). Loss on the
completion only (prompt tokens are -100). A row longer than ``--max_length`` (default: the model's context)
keeps its completion whole and the end of its prompt (rlhf/truncation.py, the rule every job uses); one whose
completion alone is longer is left out; both are counted in the log, the metrics and the version. Prompts
are rendered with the tokenizer's chat template when it has one (``--chat_format``), else as
``prompt + "\\n"``; ``rlhf.generate`` renders them the same way.

Output: ``$INSTRUCTLOOP_HOME/train_sft/<name>/`` (model + tokenizer, checkpoints, metrics.jsonl,
job_config.yaml) and an ``sft`` model version whose parent is the base model and whose label_snapshot lists
the demonstration ids. Every TRL ``SFTConfig`` / ``TrainingArguments`` flag works too.
"""
from __future__ import annotations

from typing import Any

from db.services.errors import InputError
from rlhf import runs

JOB = "train_sft"


def tokenize_sft(tokenizer: Any, ds: Any, max_length: int | None) -> tuple[Any, dict[str, int]]:
    """Pre-tokenized rows for TRL (``input_ids`` + ``completion_mask``, beside the text columns), each cut by
    the shared rule (rlhf.truncation: the completion whole, the prompt from the left) so TRL's own keep-start
    truncation never cuts a completion. Rows whose completion alone does not fit are left out and counted."""
    from rlhf.truncation import fit

    keep, ids, masks, counts = [], [], [], {"truncated": 0, "too_long": 0}
    for i, row in enumerate(ds):
        f = fit(tokenizer, row["prompt"], row["completion"], max_length)
        if not f.fits:
            counts["too_long"] += 1
            continue
        counts["truncated"] += bool(f.cut)
        keep.append(i)
        ids.append(f.ids)
        masks.append([0] * f.prompt_len + [1] * (len(f.ids) - f.prompt_len))
    out = ds.select(keep).add_column("input_ids", ids).add_column("completion_mask", masks)
    return out, counts


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
        from rlhf.truncation import resolve_max_length

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
        cfg.max_length = resolve_max_length(cfg.max_length, model)
        self.tokenizer.truncation_side = "left"  # any tokenizer-side truncation cuts the prompt, not the completion
        if cfg.completion_only_loss is None:
            cfg.completion_only_loss = True
        self.counts: dict[str, int] = {}
        for what in ("train", "eval"):
            ds = getattr(self, f"{what}_ds")
            if ds is None:
                continue
            ds, c = tokenize_sft(self.tokenizer, ds, cfg.max_length)
            setattr(self, f"{what}_tok", ds)
            self.counts.update({f"{what}_rows_truncated": c["truncated"], f"{what}_rows_too_long": c["too_long"]})
            if c["truncated"]:
                self.log.info("%d %s rows are longer than --max_length %s: their prompts were cut from the left "
                              "(completions kept whole)", c["truncated"], what, cfg.max_length)
            if c["too_long"]:
                self.log.warning("%d %s rows were left out: the completion alone is longer than --max_length %s",
                                 c["too_long"], what, cfg.max_length)
        if not len(self.train_tok):
            raise InputError(f"no training row fits in --max_length {cfg.max_length}: every completion is longer "
                             "than that on its own", field="max_length")
        eval_tok = getattr(self, "eval_tok", None) if self.eval_ds is not None else None
        self.trainer = SFTTrainer(model=model, args=cfg, train_dataset=self.train_tok,
                                  eval_dataset=eval_tok if eval_tok is not None and len(eval_tok) else None,
                                  processing_class=self.tokenizer, callbacks=self.callbacks())

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        result = self.train_hf(resume)
        if result is None:
            return None
        metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                                   "train_rows": len(self.train_ds),
                                   "eval_rows": len(self.eval_ds) if self.eval_ds else 0,
                                   "max_length": self.cfg.max_length, **self.counts}
        if self.trainer.eval_dataset is not None:
            ev = self.trainer.evaluate()
            metrics.update({k: v for k, v in ev.items() if k in ("eval_loss", "eval_mean_token_accuracy",
                                                                "eval_entropy")})
        return metrics

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        config = {"base": self.base.path, "chat_template": self.chat, "max_length": self.cfg.max_length,
                  "truncation": "left (prompt cut, completion whole)", **self.counts}
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
