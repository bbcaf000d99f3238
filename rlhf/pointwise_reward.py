"""Pointwise reward model: a judge of one response, trained on good/bad ratings with binary cross-entropy.

    python -m rlhf.train_reward --from_ratings --model sft-v1 --project P [--name rm-v1]
    python -m rlhf.train_reward --from_ratings --model DIR --dataset ratings.jsonl   # {prompt, completion, label}

The model is the same ``AutoModelForSequenceClassification`` with one logit as the pairwise reward model, read at
the last token, so PPO / RLOO / GRPO (``RewardScorer``), ``rlhf.evaluate`` and the leaderboard use it unchanged.
Trained with ``BCEWithLogits(logit, label)``, the logit is the log-odds that the response is good: 0 is "as
likely good as bad". A pairwise model only learns differences; this one learns an absolute scale, which is what
the seed's "judge that predicts whether the output is good or bad" is.

Held-out metrics (scored with ``rlhf.reward.score``, PPO's own scoring path): accuracy (logit > 0 is "good"),
BCE loss, ECE of sigmoid(logit), AUC (the chance a good response outscores a bad one: the pairwise accuracy
this model would have on every good x bad pair), and the mean score of good and bad responses. Normalization to
the SFT demonstrations (InstructGPT) is done only when there are demonstrations (the project's, or
``--normalize_dataset``); otherwise the natural zero (p = 0.5) is kept. Long rows follow the rule of every job (rlhf/truncation.py): the response
whole, the prompt cut from the left to ``--max_length`` (default: the model's context), recorded in the model so
PPO and evaluation score at it; a row whose response alone is longer is left out and counted.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from db.services.errors import InputError
from rlhf import reward, runs

JOB = "train_reward"


# ------------------------------------------------------------------------------------- loss and metrics

def pointwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the score as the log-odds of 'good' (labels 1 = good, 0 = bad)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(x, 60.0), -60.0)))


def pointwise_metrics(scores: Sequence[float], labels: Sequence[bool], bins: int = 10) -> dict[str, float]:
    """accuracy (score > 0 means good), bce, ece of sigmoid(score), auc, mean score of good / bad, rows."""
    n = len(scores)
    if n == 0:
        return {"rows": 0}
    p = [_sigmoid(s) for s in scores]
    correct = [(s > 0) == bool(y) for s, y in zip(scores, labels)]
    bce = -sum(math.log(max(q if y else 1 - q, 1e-12)) for q, y in zip(p, labels)) / n
    ece = reward.calibration_error(p, correct, bins)
    good = [s for s, y in zip(scores, labels) if y]
    bad = [s for s, y in zip(scores, labels) if not y]
    out: dict[str, float] = {"accuracy": sum(correct) / n, "bce": bce, "ece": ece, "rows": n,
                             "good_rows": len(good), "bad_rows": len(bad)}
    if good:
        out["mean_score_good"] = sum(good) / len(good)
    if bad:
        out["mean_score_bad"] = sum(bad) / len(bad)
    if good and bad:  # Mann-Whitney: ties count half
        wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
        out["auc"] = wins / (len(good) * len(bad))
    return out


# ------------------------------------------------------------------------------------- data and trainer

def tokenize_rows(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int | None
                  ) -> tuple[dict[str, list[Any]], int, int]:
    """Formatted {prompt, completion, label} rows → columns input_ids / labels, tokenized and left-truncated
    as reward training and scoring do one side of a pair (rlhf.truncation.fit). Returns (columns, rows whose
    prompt was cut, rows left out because the response alone is longer than max_length)."""
    from rlhf.truncation import fit

    ids, labels, cut, too_long = [], [], 0, 0
    for r in rows:
        f = fit(tokenizer, r["prompt"], r["completion"], max_length)
        if not f.fits:
            too_long += 1
            continue
        cut += bool(f.cut)
        ids.append(f.ids)
        labels.append(1.0 if r["label"] else 0.0)
    return {"input_ids": ids, "labels": labels}, cut, too_long


@dataclass
class PointwiseCollator:
    """Right-pads input_ids with the pad token (the classifier finds the last real token by it)."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            ids[i, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[i, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([float(f["labels"]) for f in features])}


def trainer_class() -> type:
    from transformers import Trainer

    class PointwiseRewardTrainer(Trainer):
        """A transformers Trainer whose loss is `pointwise_loss` of the classifier's one logit."""

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            labels = inputs.pop("labels")
            logits = model(**inputs, use_cache=False).logits[:, 0]
            loss = pointwise_loss(logits, labels)
            return (loss, {"logits": logits}) if return_outputs else loss

    return PointwiseRewardTrainer


# ------------------------------------------------------------------------------------- the job

class PointwiseRewardJob(runs.HFTrainerJob):
    """`rlhf.train_reward --from_ratings`: same run folder, registry kind and lineage as the pairwise job."""

    JOB, KIND = JOB, "reward"

    def prepare(self) -> None:
        from rlhf import ratings
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, pad_problem, resolve_model

        cfg = self.cfg
        self.init = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
        self.rows = ratings.load_rating_rows(cfg.database_url, cfg.project, cfg.dataset, cfg.aggregate)
        eval_rows = ratings.rating_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
        self.tokenizer = load_tokenizer(self.init.path)
        self.problem = pad_problem(self.tokenizer)
        if self.problem and not cfg.add_pad_token:
            raise InputError(f"{self.problem}. A reward model reads its score at the last non-pad token, so padding "
                             "must use a separate token: pass --add_pad_token", field="model")
        self.chat = use_chat_for_training(self.tokenizer, cfg.chat_format)
        self.train_ds, self.eval_ds = ratings.build_rating_datasets(self.rows.rows, self.chat, cfg.eval_fraction,
                                                                    cfg.max_rows, eval_rows)
        counts = ratings.label_counts(self.train_ds)
        if not counts["good"] or not counts["bad"]:
            raise InputError(f"the training ratings are all {'good' if counts['good'] else 'bad'} "
                             f"({len(self.train_ds)} rows): a judge of good and bad needs examples of both",
                             field="project" if cfg.project else "dataset")
        self.norm_rows, self.norm_source = self._normalization_rows() if cfg.normalize else ([], "")

    def _normalization_rows(self) -> tuple[list[dict[str, Any]], str]:
        """Demonstrations to set the mean score 0 on, if any (never the rated completions: a pointwise
        score already has a meaningful zero)."""
        from rlhf import data

        cfg = self.cfg
        if cfg.normalize_dataset:
            return data.sft_rows_from_file(cfg.normalize_dataset).rows, cfg.normalize_dataset
        if cfg.project:
            try:
                return data.sft_rows_from_db(cfg.database_url, cfg.project, ("accepted",)).rows, \
                    f"project {cfg.project} demonstrations (accepted)"
            except InputError:
                pass
        return [], ""

    def build(self) -> None:
        from datasets import Dataset
        from transformers import set_seed

        from rlhf.modeling import add_pad_token, load_reward_model
        from rlhf.truncation import resolve_max_length

        cfg, tok = self.cfg, self.tokenizer
        set_seed(cfg.seed)  # the new head's weights come from --seed
        model = load_reward_model(self.init.path, cfg.attn_implementation)
        if self.problem:
            self.log.warning("%s: adding a separate '<|pad|>' token (--add_pad_token)", self.problem)
            add_pad_token(tok, model)
        model.config.pad_token_id = tok.pad_token_id
        cfg.finalize_for_model(model)
        cfg.finalize_learning_rate(model)  # the size-dependent default, as the pairwise reward model's
        cfg.max_length = resolve_max_length(cfg.max_length, model)
        cols, self.truncated, self.too_long = tokenize_rows(tok, self.train_ds.to_list(), cfg.max_length)
        if self.truncated:
            self.log.info("%d training rows are longer than --max_length %s: their prompts were cut from the left",
                          self.truncated, cfg.max_length)
        if self.too_long:
            self.log.warning("%d training rows were left out: a response alone is longer than --max_length %s",
                             self.too_long, cfg.max_length)
        if not cols["input_ids"]:
            raise InputError(f"no training row fits in --max_length {cfg.max_length}: every response alone is "
                             "longer", field="max_length")
        self.tokenized = Dataset.from_dict(cols)
        good = int(sum(cols["labels"]))
        self.log.info("pointwise reward %s: %d train rows (%d good, %d bad) / %d eval (%s), chat template: %s",
                      self.name, len(self.tokenized), good, len(self.tokenized) - good,
                      len(self.eval_ds) if self.eval_ds else 0,
                      self.rows.source.get("project") or self.rows.source.get("dataset"), self.chat)
        cfg.remove_unused_columns = False  # our collator reads exactly these columns
        self.trainer = trainer_class()(model=model, args=cfg, train_dataset=self.tokenized,
                                       data_collator=PointwiseCollator(tok.pad_token_id), processing_class=tok,
                                       callbacks=self.callbacks())

    def evaluate_rows(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        """Pointwise metrics of formatted rows, scored the way PPO scores (rlhf.reward.score)."""
        from rlhf import reward
        from rlhf.truncation import fit

        cfg, tok = self.cfg, self.tokenizer
        kept = [r for r in rows if fit(tok, r["prompt"], r["completion"], cfg.max_length).fits]  # as in training
        stats: dict[str, int] = {}
        scores = reward.score(self.trainer.model, tok, [r["prompt"] for r in kept], [r["completion"] for r in kept],
                              max_length=cfg.max_length, stats=stats)
        out = pointwise_metrics(scores, [r["label"] for r in kept])
        out.update(rows_truncated=stats.get("truncated", 0), rows_too_long=len(rows) - len(kept))
        return out

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        from rlhf import reward

        result = self.train_hf(resume)
        if result is None:
            return None
        good = int(sum(self.tokenized["labels"]))
        metrics: dict[str, Any] = {
            "objective": "pointwise_bce", "train_loss": result.training_loss, "global_step": result.global_step,
            "train_rows": len(self.tokenized), "train_good": good, "train_bad": len(self.tokenized) - good,
            "train_rows_truncated": self.truncated, "train_rows_too_long": self.too_long,
            "eval_rows": len(self.eval_ds) if self.eval_ds else 0, "max_length": self.cfg.max_length}
        # what PPO and evaluation read back (reward.trained_with_chat, reward.scoring_length)
        reward.set_info(self.trainer.model, chat_template=self.chat, objective="pointwise_bce",
                        max_length=self.cfg.max_length)
        # save before anything else can fail; the normalized model (if any) is saved over it in save()
        self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))
        if self.eval_ds is not None:
            held = self.evaluate_rows(self.eval_ds.to_list())
            metrics.update({f"eval_{k}": v for k, v in held.items()})
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        from rlhf import reward

        model = self.trainer.model
        if self.norm_rows:
            metrics.update(reward.normalize_on_rows(model, self.tokenizer, self.norm_rows, self.chat, self.norm_source))
            self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))
        self._metrics = metrics

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        cfg, m = self.cfg, self._metrics
        config = {"init": self.init.path, "chat_template": self.chat, "objective": "pointwise_bce",
                  "aggregate": cfg.aggregate, "max_length": cfg.max_length,
                  **{k: m[k] for k in ("reward_shift", "reward_shift_method") if k in m}}
        extra = {"init": self.init.path, "init_version": self.init.version_name, "chat_template": self.chat,
                 "objective": "pointwise_bce", "source": self.rows.source}
        return self.init, config, self.rows.snapshot(), extra


def run(cfg: Any) -> dict[str, Any]:
    return PointwiseRewardJob(cfg).run()
