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

from dataclasses import dataclass, field
from typing import Any

from db.services.errors import InputError
from rlhf import runs

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


class OnlineJob(runs.HFTrainerJob):
    KIND = "policy"

    def __init__(self, cfg: Any, algo: str) -> None:
        self.algo, self.JOB = algo, f"train_{algo}"
        super().__init__(cfg)

    def prepare(self) -> None:
        from rlhf import data
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, pad_problem, require_reward_model, resolve_model

        cfg = self.cfg
        if not cfg.reward_model:
            raise InputError("--reward_model is required", field="reward_model")
        lookup = bool(cfg.register or cfg.project)
        self.policy_ref = resolve_model(cfg.model, cfg.database_url, lookup=lookup)
        self.rm_ref = resolve_model(cfg.reward_model, cfg.database_url, lookup=lookup, field="reward_model")
        require_reward_model(self.rm_ref)
        self.rows = data.load_rows(data.PROMPT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset)
        self.train_rows, self.held_rows = data.split_by_prompt(self.rows.rows, cfg.eval_fraction)
        if cfg.max_rows:
            self.train_rows = self.train_rows[:cfg.max_rows]
        self.tok = load_tokenizer(self.policy_ref.path)
        self.rm_tok = load_tokenizer(self.rm_ref.path)
        for who, t in (("model", self.tok), ("reward_model", self.rm_tok)):
            if pad_problem(t):
                raise InputError(f"--{who}: {pad_problem(t)} (a separate pad token is needed)", field=who)
        self.chat = use_chat_for_training(self.tok, cfg.chat_format)
        self.eval_len = cfg.eval_max_new_tokens or cfg.max_completion_length or 64

    def build(self) -> None:
        from datasets import Dataset
        from transformers import set_seed
        from trl import GRPOTrainer, RLOOTrainer

        from rlhf import reward
        from rlhf.formatting import as_messages, plain_prompt
        from rlhf.modeling import device, load_causal_lm, load_reward_model

        cfg = self.cfg
        set_seed(cfg.seed)
        rm = load_reward_model(self.rm_ref.path, cfg.attn_implementation).to(device()).eval().requires_grad_(False)
        rm.config.pad_token_id = self.rm_tok.pad_token_id
        self.rm, self.rm_chat = rm, reward.trained_with_chat(rm, self.rm_tok)
        policy = load_causal_lm(self.policy_ref.path, cfg.attn_implementation)
        cfg.finalize_for_model(policy)
        ds = Dataset.from_list([{"prompt": as_messages(r["prompt"]) if self.chat else plain_prompt(r["prompt"])}
                                for r in self.train_rows])
        trainer_cls = RLOOTrainer if self.algo == "rloo" else GRPOTrainer
        func = RewardModelFunc(rm, self.rm_tok, self.rm_chat, self.rm_ref.version_name or "rm")
        self.trainer = trainer_cls(model=policy, reward_funcs=func, args=cfg, train_dataset=ds,
                                   processing_class=self.tok, callbacks=self.callbacks())

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        result = self.train_hf(resume)
        if result is None:
            return None
        return {"train_loss": result.training_loss, "global_step": result.global_step,
                "train_prompts": len(self.train_rows), "held_out_prompts": len(self.held_rows)}

    def save(self, metrics: dict[str, Any]) -> None:
        """The policy (every rank), then on the main process the held-out evaluation against --model."""
        from rlhf import reward
        from rlhf.evaluate import evaluate_policy
        from rlhf.modeling import device, load_causal_lm, stop_token_ids
        from rlhf.train_ppo import RewardScorer, render_prompts

        self.trainer.save_model(str(self.run_dir))
        if not self.is_main():
            return
        tok = self.tok
        tok.save_pretrained(str(self.run_dir))
        if self.held_rows:
            reference = load_causal_lm(self.policy_ref.path, self.cfg.attn_implementation).to(device())
            n_pos = reward.max_positions(reference) or 10 ** 9
            ids, _ = render_prompts(tok, self.held_rows, self.chat, max(1, n_pos - self.eval_len))
            scorer = RewardScorer.build(self.rm, self.rm_tok, tok, ids, [r["prompt"] for r in self.held_rows],
                                        self.chat)
            side = tok.padding_side
            tok.padding_side = "left"
            ev = evaluate_policy(self.trainer.model, reference, scorer, tok, ids, self.held_rows,
                                 max_new_tokens=self.eval_len, stop_ids=stop_token_ids(reference, tok),
                                 seed=self.cfg.seed)
            tok.padding_side = side
            metrics.update({f"eval/{k}": v for k, v in ev.items()})

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        cfg = self.cfg
        rm_info: dict[str, Any] = {"path": self.rm_ref.path}
        if cfg.register:
            from db.session import session_scope, write_transaction
            from rlhf.modeling import ensure_registered

            with session_scope(cfg.database_url) as s, write_transaction(s):
                rmv = ensure_registered(s, self.rm_ref)
                rm_info = {"id": rmv.id, "name": rmv.name, "kind": rmv.kind}
        config = {"algo": self.algo, "chat_template": self.chat, "reward_model": rm_info, "beta": cfg.beta,
                  "num_generations": cfg.num_generations}
        snapshot = {**self.rows.source, "ids": {"prompts": [r["prompt_id"] for r in self.train_rows]},
                    "held_out_prompt_ids": [r["prompt_id"] for r in self.held_rows]}
        extra = {"model": self.policy_ref.path, "reward_model": self.rm_ref.path, "source": self.rows.source}
        return self.policy_ref, config, snapshot, extra


def main(algo: str, argv: list[str] | None = None, doc: str = "") -> dict[str, Any]:
    from rlhf import runs

    if algo not in ALGOS:
        raise ValueError(algo)
    return runs.cli(lambda cfg: OnlineJob(cfg, algo).run(), config_class(algo), f"python -m rlhf.train_{algo}", doc or __doc__,
                    argv)
