"""KTO on good/bad ratings of single responses (unpaired feedback) with TRL's KTOTrainer.

    python -m rlhf.train_kto --model sft-v1 --project P [--name kto-v1] [--max_steps 200] [--config job.yaml]
    python -m rlhf.train_kto --model DIR --dataset ratings.jsonl --no_register    # {prompt, completion, label}
    python -m rlhf.train_kto --name kto-v1 --resume ...                          # continue after a kill

Kahneman-Tversky Optimization aligns a policy from a thumbs up or down on one response, no pair needed: good
completions are pushed above, bad ones below, the reference model's likelihood (implied reward relative to a KL
estimate). Data: the project's rate tasks (``db.services.export.iter_rating_rows``; ``--aggregate`` combines
several annotators of one task) or a JSONL in TRL's unpaired preference format (what ``python -m db export
ratings`` writes). Prompts are rendered with the tokenizer's chat template when it has one (``--chat_format``),
else as ``prompt + "\\n"``, as rlhf.generate renders them. The reference model is the starting model.

Long rows follow the rule of every job (rlhf/truncation.py): the completion whole, the prompt cut from the left
to ``--max_length`` (default 1024, never more than the model's context; TRL's own collator would cut the
completion's end, and drop a row whose prompt alone is that long); a row whose completion alone is longer is left
out and counted.

``--balance`` (default on) weighs good and bad ratings alike when both weights are left at 1 (the KTO paper's
advice: desirable_weight x n_good / (undesirable_weight x n_bad) in [1, 4/3]). KTO estimates its KL term from
the other completions of a batch, so ``--per_device_train_batch_size`` must be at least 2.

Output: ``$INSTRUCTLOOP_HOME/train_kto/<name>/`` (model + tokenizer, checkpoints, metrics.jsonl,
job_config.yaml) and a ``policy`` model version whose parent is the starting model and whose label_snapshot
lists the rating ids. Every TRL ``KTOConfig`` / ``TrainingArguments`` flag works too (``--beta``,
``--loss_type``, ...).
"""
from __future__ import annotations

from typing import Any

from db.services.errors import InputError
from rlhf import runs

JOB = "train_kto"
AGGREGATES = ("majority", "all", "unanimous")


def left_truncating_collator(base: Any, max_length: int, bos_id: int | None) -> Any:
    """TRL's unpaired-preference collator, after cutting each prompt from the left so that it fits beside its
    completion and its KL completion (the same prompt serves both) in ``max_length`` tokens."""
    from rlhf.truncation import truncate_prompt

    def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = []
        for ex in examples:
            longest = max(len(ex["completion_ids"]), len(ex.get("KL_completion_ids") or []))
            budget = max(max_length - longest, 0)
            if len(ex["prompt_ids"]) > budget:
                ex = {**ex, "prompt_ids": truncate_prompt(list(ex["prompt_ids"]), budget, bos_id).ids}
            out.append(ex)
        return base(out)  # still cuts at max_length: only a KL completion longer than it reaches that

    return collate


class KTOJob(runs.HFTrainerJob):
    JOB, KIND = JOB, "policy"

    def prepare(self) -> None:
        from rlhf import ratings
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, resolve_model

        cfg = self.cfg
        if cfg.aggregate not in AGGREGATES:
            raise InputError(f"--aggregate must be one of {', '.join(AGGREGATES)}, not {cfg.aggregate!r}",
                             field="aggregate")
        if cfg.per_device_train_batch_size < 2 and cfg.loss_type != "apo_zero_unpaired":
            raise InputError("KTO estimates its KL term from the other completions of a batch: "
                             f"--per_device_train_batch_size must be at least 2, not {cfg.per_device_train_batch_size}",
                             field="per_device_train_batch_size")
        self.base = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
        self.rows = ratings.load_rating_rows(cfg.database_url, cfg.project, cfg.dataset, cfg.aggregate)
        eval_rows = ratings.rating_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
        self.tokenizer = load_tokenizer(self.base.path)
        self.chat = use_chat_for_training(self.tokenizer, cfg.chat_format)
        self.train_ds, self.eval_ds = ratings.build_rating_datasets(self.rows.rows, self.chat, cfg.eval_fraction,
                                                                    cfg.max_rows, eval_rows)
        self.counts = ratings.label_counts(self.train_ds)
        if not self.counts["good"] and not self.counts["bad"]:
            raise InputError("no training ratings", field="project" if cfg.project else "dataset")
        if cfg.balance and cfg.desirable_weight == 1.0 and cfg.undesirable_weight == 1.0 \
                and self.counts["good"] and self.counts["bad"]:
            cfg.desirable_weight = self.counts["bad"] / self.counts["good"]

    def build(self) -> None:
        from datasets import Dataset
        from transformers import set_seed
        from trl import KTOTrainer
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        from rlhf.modeling import add_pad_token, load_causal_lm, pad_problem
        from rlhf.truncation import fit, resolve_max_length

        cfg = self.cfg
        self.log.info("KTO %s: %d train rows (%d good, %d bad; desirable_weight %.3g, undesirable_weight %.3g) / "
                      "%d eval (%s), chat template: %s", self.name, len(self.train_ds), self.counts["good"],
                      self.counts["bad"], cfg.desirable_weight, cfg.undesirable_weight,
                      len(self.eval_ds) if self.eval_ds else 0,
                      self.rows.source.get("project") or self.rows.source.get("dataset"), self.chat)
        set_seed(cfg.seed)  # new weights (added pad rows) come from --seed
        model = load_causal_lm(self.base.path, cfg.attn_implementation)
        ref = load_causal_lm(self.base.path, cfg.attn_implementation)
        problem = pad_problem(self.tokenizer)
        if problem:
            self.log.warning("%s: adding a separate '<|pad|>' token (pad must differ from EOS)", problem)
            add_pad_token(self.tokenizer, model)
            ref.resize_token_embeddings(len(self.tokenizer))
            ref.config.pad_token_id = self.tokenizer.pad_token_id
        cfg.finalize_for_model(model)
        self.max_length = resolve_max_length(cfg.max_length, model)
        tok = self.tokenizer
        self.too_long, self.truncated = {}, {}
        kept = {}
        for what, ds in (("train", self.train_ds), ("eval", self.eval_ds)):
            rows = ds.to_list() if ds is not None else []
            fitted = [fit(tok, r["prompt"], r["completion"], self.max_length) for r in rows]
            kept[what] = [r for r, f in zip(rows, fitted) if f.fits]
            self.too_long[what] = len(rows) - len(kept[what])
            self.truncated[what] = sum(bool(f.cut) for f in fitted if f.fits)
            if self.too_long[what]:
                self.log.warning("%d %s rows were left out: a completion alone is longer than --max_length %s",
                                 self.too_long[what], what, self.max_length)
        if not kept["train"]:
            raise InputError(f"no training row fits in --max_length {self.max_length}: every completion alone is "
                             "longer", field="max_length")
        self.train_ds = Dataset.from_list(kept["train"])
        self.eval_ds = Dataset.from_list(kept["eval"]) if kept["eval"] else None
        # TRL would drop rows whose prompt alone reaches max_length and cut the rest from the right: our collator
        # cuts prompts from the left instead, so TRL itself gets no limit.
        cfg.max_length = None
        collator = left_truncating_collator(
            DataCollatorForUnpairedPreference(pad_token_id=tok.pad_token_id, max_length=self.max_length,
                                              pad_to_multiple_of=cfg.pad_to_multiple_of),
            self.max_length, tok.bos_token_id)
        self.trainer = KTOTrainer(model=model, ref_model=ref, args=cfg, data_collator=collator,
                                  train_dataset=self.train_ds, eval_dataset=self.eval_ds, processing_class=tok,
                                  callbacks=self.callbacks())
        cfg.max_length = self.max_length  # recorded with the run

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        result = self.train_hf(resume)
        if result is None:
            return None
        metrics: dict[str, Any] = {"train_loss": result.training_loss, "global_step": result.global_step,
                                   "train_rows": len(self.train_ds), "train_good": self.counts["good"],
                                   "train_bad": self.counts["bad"], "desirable_weight": self.cfg.desirable_weight,
                                   "undesirable_weight": self.cfg.undesirable_weight,
                                   "eval_rows": len(self.eval_ds) if self.eval_ds else 0, "max_length": self.max_length,
                                   **{f"{w}_rows_truncated": n for w, n in self.truncated.items()},
                                   **{f"{w}_rows_too_long": n for w, n in self.too_long.items()}}
        if self.eval_ds is not None:
            ev = self.trainer.evaluate()
            metrics.update({k: v for k, v in ev.items() if isinstance(v, (int, float)) and k.startswith("eval_")
                            and not k.endswith(("_runtime", "_per_second"))})
        return metrics

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        config = {"base": self.base.path, "reference": self.base.path, "algorithm": "kto",
                  "chat_template": self.chat, "beta": cfg.beta, "loss_type": cfg.loss_type,
                  "desirable_weight": cfg.desirable_weight, "undesirable_weight": cfg.undesirable_weight,
                  "aggregate": cfg.aggregate, "max_length": self.max_length}
        extra = {"base": self.base.path, "base_version": self.base.version_name, "chat_template": self.chat,
                 "source": self.rows.source}
        return self.base, config, self.rows.snapshot(), extra


def run(cfg: Any) -> dict[str, Any]:
    return KTOJob(cfg).run()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf.config import kto_config_class

    return runs.cli(run, kto_config_class(), "python -m rlhf.train_kto", __doc__, argv)


if __name__ == "__main__":
    main()
