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


def _with_group_ids(ds: Any) -> Any:
    """The `group` names as small ints (`group_id`), which the grouped collator and sampler read."""
    from rlhf.reward_trainer import GROUP_COLUMN, assign_group_ids

    return ds.add_column(GROUP_COLUMN, assign_group_ids(ds["group"])).remove_columns("group")


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
        if not cfg.use_margin:
            train_ds = train_ds.remove_columns("margin")
            eval_ds = eval_ds.remove_columns("margin") if eval_ds is not None else None
        self.grouped = cfg.group_rankings and any(g is not None for g in train_ds["group"])
        self.train_ds, self.eval_ds = (
            _with_group_ids(d) if self.grouped and d is not None else
            (d.remove_columns("group") if d is not None else None) for d in (train_ds, eval_ds))
        self.norm_rows, self.norm_source = _normalization_rows(cfg, self.rows.rows) if cfg.normalize else ([], "")

    def build(self) -> None:
        from transformers import set_seed
        from trl import RewardTrainer

        from rlhf.modeling import add_pad_token, load_reward_model

        cfg, tok = self.cfg, self.tokenizer
        self.log.info("reward %s: %d train / %d eval pairs (%s), chat template: %s", self.name, len(self.train_ds),
                      len(self.eval_ds) if self.eval_ds else 0,
                      self.rows.source.get("project") or self.rows.source.get("dataset"), self.chat)
        # new weights (a reward head, added pad rows) come from --seed, not from whatever ran before in this process
        set_seed(cfg.seed)
        model = load_reward_model(self.init.path, cfg.attn_implementation)
        if self.problem:
            self.log.warning("%s: adding a separate '<|pad|>' token (--add_pad_token)", self.problem)
            add_pad_token(tok, model)
        model.config.pad_token_id = tok.pad_token_id
        cfg.finalize_for_model(model)
        n_pos = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        if n_pos and (cfg.max_length is None or cfg.max_length > n_pos):
            cfg.max_length = int(n_pos)
        extra: dict[str, Any] = {}
        trainer_cls = RewardTrainer
        if self.grouped:
            from rlhf.reward_trainer import GroupedPreferenceCollator, GroupedRewardTrainer

            trainer_cls = GroupedRewardTrainer
            extra["data_collator"] = GroupedPreferenceCollator(pad_token_id=tok.pad_token_id,
                                                               pad_to_multiple_of=cfg.pad_to_multiple_of)
            self.log.info("rankings: %d groups for %d training pairs, one batch element each (--no_group_rankings "
                          "to train pairs independently)", len(set(self.train_ds["group_id"])), len(self.train_ds))
        self.trainer = trainer_cls(model=model, args=cfg, train_dataset=self.train_ds, eval_dataset=self.eval_ds,
                                   processing_class=tok, callbacks=self.callbacks(), **extra)
        if len(self.trainer.train_dataset) < len(self.train_ds):
            self.log.warning("%d training pairs are longer than --max_length %s and were left out",
                             len(self.train_ds) - len(self.trainer.train_dataset), cfg.max_length)

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        from rlhf import reward

        result = self.train_hf(resume)
        if result is None:
            return None
        cfg, trainer, tok, eval_ds = self.cfg, self.trainer, self.tokenizer, self.eval_ds
        metrics: dict[str, Any] = {
            "train_loss": result.training_loss, "global_step": result.global_step,
            "train_pairs": len(self.train_ds), "eval_pairs": len(eval_ds) if eval_ds else 0,
            "train_groups": len(set(self.train_ds["group_id"])) if self.grouped else len(self.train_ds),
            "train_pairs_too_long": len(self.train_ds) - len(trainer.train_dataset)}
        reward.set_info(trainer.model, chat_template=self.chat)
        # Save first: nothing after training (metrics, normalization) may lose the trained model. Every rank takes
        # part in saving (FSDP/DeepSpeed); the normalized model is saved over this copy in save().
        self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            tok.save_pretrained(str(self.run_dir))
        if eval_ds is not None:
            if trainer.eval_dataset is not None and len(trainer.eval_dataset):
                metrics["eval_loss"] = trainer.evaluate().get("eval_loss")
            # the held-out metrics use the rows the trainer evaluated on: pairs longer than max_length are left out
            held_rows = [r for r in eval_ds if reward.fits(tok, r["prompt"], r["chosen"], cfg.max_length)
                         and reward.fits(tok, r["prompt"], r["rejected"], cfg.max_length)]
            metrics["eval_pairs_too_long"] = len(eval_ds) - len(held_rows)
            if metrics["eval_pairs_too_long"]:
                self.log.warning("%d held-out pairs are longer than --max_length %s and were left out of the metrics",
                                 metrics["eval_pairs_too_long"], cfg.max_length)
            held = reward.evaluate_pairs(trainer.model, tok, held_rows, max_length=cfg.max_length)
            metrics.update({f"eval_{k}": v for k, v in held.items()})
        return metrics

    def save(self, metrics: dict[str, Any]) -> None:
        """Normalize (InstructGPT: SFT demonstrations score mean 0), then save over the unnormalized copy. Every
        rank normalizes its identical copy the same way, then all take part in saving (FSDP/DeepSpeed)."""
        from rlhf import reward
        from rlhf.formatting import format_sft_row

        model = self.trainer.model
        if self.cfg.normalize and self.norm_rows:
            formatted = [format_sft_row(r, self.chat) for r in self.norm_rows]
            norm = reward.normalize(model, self.tokenizer, [r["prompt"] for r in formatted],
                                    [r["completion"] for r in formatted])
            if norm["normalize_truncated"]:
                self.log.warning("%d normalization demonstrations are longer than the model's context and were scored "
                                 "left-truncated (the end kept)", norm["normalize_truncated"])
            norm["normalized_with"] = self.norm_source
            reward.set_info(model, normalized_with=self.norm_source)
            metrics.update(norm)
            self.trainer.save_model(str(self.run_dir))
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))
        self._metrics = metrics

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        cfg, m = self.cfg, self._metrics
        config = {"init": self.init.path, "chat_template": self.chat, "use_margin": cfg.use_margin,
                  "aggregate": cfg.aggregate, "group_rankings": self.grouped,
                  "center_rewards_coefficient": cfg.center_rewards_coefficient,
                  **{k: m[k] for k in ("reward_shift", "reward_shift_method") if k in m}}
        extra = {"init": self.init.path, "init_version": self.init.version_name, "chat_template": self.chat,
                 "source": self.rows.source}
        return self.init, config, self.rows.snapshot(), extra


def run(cfg: Any) -> dict[str, Any]:
    return RewardJob(cfg).run()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import reward_config_class

    return runs.cli(run, reward_config_class(), "python -m rlhf.train_reward", __doc__, argv)


if __name__ == "__main__":
    main()
