"""Pairwise reward model (InstructGPT step 2) with TRL's RewardTrainer.

    python -m rlhf.train_reward --model sft-v1 --project P [--name rm-v1] [--max_steps 300] [--config job.yaml]
    python -m rlhf.train_reward --model DIR --dataset prefs.jsonl      # TRL rows, or Anthropic HH rows
    python -m rlhf.train_reward --name rm-v1 --resume ...
    python -m rlhf.train_reward --from_ratings --model sft-v1 --project P   # good/bad ratings, pointwise BCE

Data: the project's preference labels and rankings (``db.services.export.iter_preference_rows``: rankings are
expanded into all pairs of a prompt, label strength becomes TRL's ``margin``, ties and both-bad are left out,
``--aggregate`` decides how several annotators of one task combine), or a JSONL file (TRL explicit/implicit
prompt, or HH). Loss ``-logsigmoid(r_c - r_r - margin)``; ``--center_rewards_coefficient`` is TRL's.

One ranking is one training row (InstructGPT): its K responses are scored in K forward passes and its C(K,2)
pair losses averaged (rlhf/reward_trainer.py); a batch counts rankings. Long inputs keep the whole response and
the latest prompt tokens (rlhf/truncation.py, the rule evaluation and PPO scoring use too); ``--max_length``
defaults to the model's context. A pair is left out only when a response alone does not fit: the counts
(``train_pairs_truncated``, ``train_pairs_too_long``, ``eval_*``) are in the log, the metrics and the version.

After training: held-out pairwise accuracy (ties count as wrong), mean margin, and calibration (ECE of
sigmoid(r_c - r_r)); then the reward is shifted so the SFT demonstrations score mean 0 (see rlhf/reward.py for
how the shift survives save/load). Output: ``$INSTRUCTLOOP_HOME/train_reward/<name>/`` and a ``reward`` model
version (parent = the starting model; label_snapshot = the label ids). The tokenizer must have a pad token
distinct from EOS (``--add_pad_token`` adds one).
"""
from __future__ import annotations

from typing import Any

from db.services.errors import InputError
from rlhf import runs

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


class RewardJob(runs.HFTrainerJob):
    JOB, KIND = JOB, "reward"

    def prepare(self) -> None:
        from rlhf import data
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, pad_problem, resolve_model

        cfg = self.cfg
        self.init = resolve_model(cfg.model, cfg.database_url, lookup=bool(cfg.register or cfg.project))
        filters = {"aggregate": cfg.aggregate} if cfg.project else {}
        self.rows = data.load_rows(data.PREF_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset,
                                   **filters)
        eval_rows = data.preference_rows_from_file(cfg.eval_dataset).rows if cfg.eval_dataset else None
        self.tokenizer = load_tokenizer(self.init.path)
        self.problem = pad_problem(self.tokenizer)
        if self.problem and not cfg.add_pad_token:
            raise InputError(f"{self.problem}. A reward model reads its score at the last non-pad token, so padding "
                             "must use a separate token: add one to the tokenizer (add_special_tokens({'pad_token': "
                             "'<|pad|>'}) and resize the embeddings) or pass --add_pad_token", field="model")
        self.chat = use_chat_for_training(self.tokenizer, cfg.chat_format)
        if not cfg.use_margin:
            self.rows.rows = [{**r, "margin": 0.0} for r in self.rows.rows]
        train_ds, eval_ds = data.build_datasets(self.rows.rows, data.PREF_KIND, self.chat, cfg.eval_fraction,
                                                cfg.max_rows, eval_rows)
        self.train_pairs = train_ds.to_list()
        self.eval_pairs = eval_ds.to_list() if eval_ds is not None else []
        self.grouped = cfg.group_rankings and any(r.get("group") is not None for r in self.train_pairs)
        self.train_rankings = data.ranking_rows(self.train_pairs, self.grouped)
        self.eval_rankings = data.ranking_rows(self.eval_pairs, self.grouped)
        self.norm_rows, self.norm_source = _normalization_rows(cfg, self.rows.rows) if cfg.normalize else ([], "")

    def _tokenize(self, rankings: list[dict[str, Any]], what: str) -> Any:
        """Token-id rows for the trainer (None when none is left), the truncation counts in self.counts."""
        from datasets import Dataset

        from rlhf.reward_trainer import COLUMNS, tokenize_rankings

        tok = tokenize_rankings(self.tokenizer, rankings, self.cfg.max_length)
        self.counts.update({f"{what}_pairs_truncated": tok.pairs_truncated,
                            f"{what}_pairs_too_long": tok.pairs_too_long})
        if tok.pairs_truncated:
            self.log.info("%d %s pairs are longer than --max_length %s: their prompts were cut from the left (the "
                          "responses kept whole)", tok.pairs_truncated, what, self.cfg.max_length)
        if tok.pairs_too_long:
            self.log.warning("%d %s pairs were left out: a response alone is longer than --max_length %s",
                             tok.pairs_too_long, what, self.cfg.max_length)
        if not tok.rows:
            return None
        return Dataset.from_dict({c: [r[c] for r in tok.rows] for c in COLUMNS})

    def build(self) -> None:
        from transformers import set_seed

        from rlhf.modeling import add_pad_token, load_reward_model
        from rlhf.reward_trainer import RankingCollator, RankingRewardTrainer
        from rlhf.truncation import resolve_max_length

        cfg, tok = self.cfg, self.tokenizer
        self.log.info("reward %s: %d train / %d eval pairs in %d / %d rankings (%s), chat template: %s", self.name,
                      len(self.train_pairs), len(self.eval_pairs), len(self.train_rankings),
                      len(self.eval_rankings), self.rows.source.get("project") or self.rows.source.get("dataset"),
                      self.chat)
        # new weights (a reward head, added pad rows) come from --seed, not from whatever ran before in this process
        set_seed(cfg.seed)
        model = load_reward_model(self.init.path, cfg.attn_implementation)
        if self.problem:
            self.log.warning("%s: adding a separate '<|pad|>' token (--add_pad_token)", self.problem)
            add_pad_token(tok, model)
        model.config.pad_token_id = tok.pad_token_id
        cfg.finalize_for_model(model)
        cfg.finalize_learning_rate(model)
        cfg.max_length = resolve_max_length(cfg.max_length, model)
        tok.truncation_side = "left"  # any tokenizer-side truncation cuts the prompt, never the response
        self.counts: dict[str, int] = {}
        self.train_ds = self._tokenize(self.train_rankings, "train")
        if self.train_ds is None:
            raise InputError(f"no training pair fits in --max_length {cfg.max_length}: every one has a response "
                             "longer than that on its own", field="max_length")
        self.eval_ds = self._tokenize(self.eval_rankings, "eval") if self.eval_rankings else None
        if self.grouped:
            self.log.info("rankings: %d rows for %d training pairs, each response scored once per row "
                          "(--no_group_rankings to train pairs independently)", len(self.train_ds),
                          sum(len(p) for p in self.train_ds["pairs"]))
        self.trainer = RankingRewardTrainer(
            model=model, args=cfg, train_dataset=self.train_ds, eval_dataset=self.eval_ds, processing_class=tok,
            data_collator=RankingCollator(pad_token_id=tok.pad_token_id, pad_to_multiple_of=cfg.pad_to_multiple_of),
            callbacks=self.callbacks())

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        from rlhf import reward

        result = self.train_hf(resume)
        if result is None:
            return None
        cfg, trainer, tok = self.cfg, self.trainer, self.tokenizer
        metrics: dict[str, Any] = {
            "train_loss": result.training_loss, "global_step": result.global_step,
            "train_pairs": len(self.train_pairs), "eval_pairs": len(self.eval_pairs),
            "train_rankings": len(self.train_ds), "train_groups": len(self.train_ds), "max_length": cfg.max_length,
            **self.counts}
        reward.set_info(trainer.model, chat_template=self.chat, max_length=cfg.max_length)
        # Save first: nothing after training (metrics, normalization) may lose the trained model. Every rank takes
        # part in saving (FSDP/DeepSpeed); the normalized model is saved over this copy in save().
        self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            tok.save_pretrained(str(self.run_dir))
        if self.eval_pairs:
            if self.eval_ds is not None:
                metrics["eval_loss"] = trainer.evaluate().get("eval_loss")
            # the pairs the trainer evaluated on, truncated the same way (pairs that cannot fit are left out)
            held = reward.evaluate_pairs(trainer.model, tok, self.eval_pairs, max_length=cfg.max_length)
            metrics.update({f"eval_{k}": v for k, v in held.items() if k != "pairs"})
            metrics["eval_pairs_scored"] = held.get("pairs", 0)
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        """Normalize (InstructGPT: SFT demonstrations score mean 0), then save over the unnormalized copy. Every
        rank normalizes its identical copy the same way, then all take part in saving (FSDP/DeepSpeed)."""
        from rlhf import reward

        model = self.trainer.model
        if self.cfg.normalize and self.norm_rows:
            norm = reward.normalize_on_rows(model, self.tokenizer, self.norm_rows, self.chat, self.norm_source)
            if norm["normalize_truncated"]:
                self.log.warning("%d normalization demonstrations are longer than the model's context and were scored "
                                 "left-truncated (the end kept)", norm["normalize_truncated"])
            metrics.update(norm)
            self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))
        self._metrics = metrics

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        cfg, m = self.cfg, self._metrics
        config = {"init": self.init.path, "chat_template": self.chat, "use_margin": cfg.use_margin,
                  "aggregate": cfg.aggregate, "group_rankings": self.grouped, "max_length": cfg.max_length,
                  "truncation": "left (prompt cut, response whole)",
                  **{k: m[k] for k in ("train_pairs_truncated", "train_pairs_too_long", "eval_pairs_truncated",
                                       "eval_pairs_too_long") if k in m},
                  "center_rewards_coefficient": cfg.center_rewards_coefficient,
                  **{k: m[k] for k in ("reward_shift", "reward_shift_method") if k in m}}
        extra = {"init": self.init.path, "init_version": self.init.version_name, "chat_template": self.chat,
                 "source": self.rows.source}
        return self.init, config, self.rows.snapshot(), extra


def run(cfg: Any) -> dict[str, Any]:
    if cfg.from_ratings:  # good/bad ratings of single responses: the pointwise model
        from rlhf.pointwise_reward import run as run_pointwise

        return run_pointwise(cfg)
    return RewardJob(cfg).run()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import reward_config_class

    return runs.cli(run, reward_config_class(), "python -m rlhf.train_reward", __doc__, argv)


if __name__ == "__main__":
    main()
