"""PPO against a reward model (InstructGPT step 3), our own trainer (rlhf/ppo_trainer.py).

    python -m rlhf.train_ppo --project P --model sft-v1 --reward_model rm-v1 [--name ppo-v1] [--max_steps 100]
    python -m rlhf.train_ppo --dataset prompts.jsonl --model DIR --reward_model DIR --no_register
    python -m rlhf.train_ppo --name ppo-v1 --resume ...                  # continue after a kill, exactly
    accelerate launch --num_processes 2 -m rlhf.train_ppo --name ppo-v1 ...   # several processes / GPUs

Prompts: the project's prompts (split by prompt into train and held-out, as SFT and reward split) or a prompt
JSONL (``{prompt}`` / ``{messages}`` rows, optional ``answer``; ``python -m db export prompts`` writes it).
They are rendered as SFT trained the policy (the chat template when the tokenizer has one, see
``--chat_format``) and left-truncated to ``--max_prompt_length``.

Models: ``--model`` is the policy PPO starts from (the SFT model), ``--reference_model`` the frozen KL anchor
(default: the same), ``--reward_model`` the scorer (its own tokenizer when its vocabulary differs: responses
are then decoded and re-encoded), ``--value_model`` the value initialisation (default: the reward model,
InstructGPT) or ``--share_value_backbone``. ``--ptx_coef`` > 0 with ``--ptx_data`` is PPO-ptx.

Output: ``$INSTRUCTLOOP_HOME/train_ppo/<name>/`` (the policy as an HF checkpoint + tokenizer, ``value/``,
checkpoints, metrics.jsonl, job_config.yaml), held-out metrics against the reference (reward-model score, win
rate, KL, length), and a ``policy`` model version whose lineage names the SFT parent, the reference, the reward
model, the value initialisation and the prompt ids it trained on. Every ``TrainingArguments`` flag works too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from db.services.errors import InputError
from rlhf import runs

JOB = "train_ppo"


def _vocab_key(tok: Any) -> tuple[int, int]:
    """Tokenizers that map every string to the same ids (cheap: size + a hash of the vocabulary)."""
    vocab = tok.get_vocab()
    return len(vocab), hash(tuple(sorted(vocab.items())))


def render_prompts(tok: Any, rows: list[dict[str, Any]], chat: bool, budget: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt as the policy sees it, keeping the last `budget` tokens. Returns (ids, cut)."""
    from rlhf.formatting import generation_input, is_chat
    from rlhf.truncation import truncate_prompt

    out, cut = [], 0
    for r in rows:
        use_chat = chat or (is_chat(r["prompt"]) and bool(getattr(tok, "chat_template", None)))
        ids = list(tok(generation_input(tok, r["prompt"], use_chat), add_special_tokens=not use_chat)["input_ids"])
        fitted = truncate_prompt(ids, budget, None if use_chat else tok.bos_token_id)
        cut += bool(fitted.cut)
        out.append(fitted.ids)
    return out, cut


def load_ptx_tokens(path: str, tok: Any, vocab_size: int) -> Any:
    """PPO-ptx data: a pretrain/ token-shard folder (meta.json + train.bin) or a text / JSONL file."""
    import numpy as np

    p = Path(path)
    if p.is_dir():
        from pretrain.data import load_split, read_meta

        try:
            meta = read_meta(p)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"not a pretrain/ token-shard folder: {e}", file=str(p), field="ptx_data") from e
        if int(meta.get("vocab_size", 0)) > vocab_size:
            raise InputError(f"its tokens come from a vocabulary of {meta['vocab_size']}, larger than the policy's "
                             f"{vocab_size}: shards of another tokenizer", file=str(p), field="ptx_data")
        return load_split(p, "train")
    if not p.is_file():
        raise InputError("PPO-ptx data not found", file=str(p), field="ptx_data")
    if p.suffix == ".jsonl":
        from rlhf.data import read_jsonl

        texts = [str(r.get("text", "")) for r in read_jsonl(p)]
    else:
        texts = [p.read_text(encoding="utf-8")]
    ids: list[int] = []
    for t in texts:
        if t:
            ids.extend(tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    return np.asarray(ids, dtype=np.int64)


def post_eos_suffix(tok: Any, chat: bool) -> list[int]:
    """Token ids the reward model saw after a completion's EOS in training: the chat template may close the
    turn after it (ours writes EOS, then a newline); plain rows end at EOS (TRL's tokenization)."""
    if not chat or not getattr(tok, "chat_template", None) or tok.eos_token is None:
        return []
    mark = "\u2063sentinel\u2063"
    text = tok.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
                                   tokenize=False)
    rest = text[text.index(mark) + len(mark):]
    at = rest.find(tok.eos_token)
    return list(tok(rest[at + len(tok.eos_token):], add_special_tokens=False)["input_ids"]) if at >= 0 else []


class RewardScorer:
    """score_fn for the trainer: the reward model's score of (prompt, response).

    Same vocabulary and prompt rendering as the policy: the sampled ids are scored as they are, with whatever
    the chat template writes after EOS appended to a finished response, so the score is read at the token it was
    trained at (``reward.score_ids``). Otherwise the response is decoded and re-encoded with the reward model's
    tokenizer, the prompt rendered as in reward training (``reward.score``)."""

    def __init__(self, model: Any, tok: Any, policy_tok: Any, prompts: dict[tuple[int, ...], Any], chat: bool,
                 same_vocab: bool, policy_chat: bool | None = None) -> None:
        self.model, self.tok, self.policy_tok = model, tok, policy_tok
        self.prompts, self.chat = prompts, chat
        # token ids are only comparable when the prompt is rendered the same way for both
        self.same_vocab = same_vocab and (policy_chat is None or policy_chat == chat)
        self.suffix = post_eos_suffix(tok, chat) if self.same_vocab else []
        self.eos = policy_tok.eos_token_id

    @classmethod
    def build(cls, model: Any, tok: Any, policy_tok: Any, prompt_ids: list[list[int]], prompts: list[Any],
              policy_chat: bool) -> RewardScorer:
        """A scorer for these tokenized prompts, rendering for the reward model as it was trained."""
        from rlhf import reward

        return cls(model, tok, policy_tok, {tuple(i): p for i, p in zip(prompt_ids, prompts)},
                   reward.trained_with_chat(model, tok), _vocab_key(tok) == _vocab_key(policy_tok),
                   policy_chat=policy_chat)

    def __call__(self, q_ids: Any, q_mask: Any, r_ids: Any, r_mask: Any) -> Any:
        import torch

        from rlhf import reward
        from rlhf.formatting import format_sft_row
        from rlhf.sampling import left_pad

        if self.same_vocab:
            from rlhf.truncation import truncate_left

            limit = reward.scoring_length(self.model)
            rows = []
            for q, qm, r, rm in zip(q_ids, q_mask, r_ids, r_mask):
                resp = r[rm.bool()].tolist()
                prompt = q[qm.bool()].tolist()
                seq = prompt + resp + (self.suffix if resp and resp[-1] == self.eos else [])
                # a shorter context than the policy's: the response whole, the prompt cut from the left, as in
                # reward training (rlhf.truncation)
                rows.append(truncate_left(seq, len(prompt), limit, self.tok.bos_token_id).ids)
            ids, mask = left_pad(rows, self.tok.pad_token_id)
            return reward.score_ids(self.model, ids, mask).to(q_ids.device)
        prompts, completions = [], []
        for q, qm, r, rm in zip(q_ids.tolist(), q_mask.tolist(), r_ids.tolist(), r_mask.tolist()):
            key = tuple(t for t, m in zip(q, qm) if m)
            text = self.policy_tok.decode([t for t, m in zip(r, rm) if m], skip_special_tokens=True)
            row = format_sft_row({"prompt": self.prompts[key], "completion": text}, self.chat)
            prompts.append(row["prompt"])
            completions.append(row["completion"])
        return torch.tensor(reward.score(self.model, self.tok, prompts, completions), device=q_ids.device)


def _load_models(cfg: Any, refs: dict[str, Any]) -> dict[str, Any]:
    import torch

    from rlhf.modeling import inference_dtype, load_causal_lm, load_reward_model

    frozen_dtype = inference_dtype(cfg.inference_dtype)
    if not torch.cuda.is_available():
        frozen_dtype = torch.float32 if cfg.inference_dtype == "auto" else frozen_dtype
    models = {"policy": load_causal_lm(refs["policy"].path, cfg.attn_implementation),
              "reference": load_causal_lm(refs["reference"].path, cfg.attn_implementation, dtype=frozen_dtype),
              "reward": load_reward_model(refs["reward"].path, cfg.attn_implementation, dtype=frozen_dtype)}
    models["value"] = None if cfg.share_value_backbone else \
        load_reward_model(refs["value"].path, cfg.attn_implementation)
    return models


class PPOJob(runs.TrainingJob):
    JOB, KIND = JOB, "policy"

    def prepare(self) -> None:
        """Every check before a rollout: models, tokenizers, prompts, lengths, PPO-ptx data."""
        from transformers import AutoConfig

        from rlhf import data
        from rlhf.formatting import use_chat_for_training
        from rlhf.modeling import load_tokenizer, pad_problem, require_reward_model, resolve_model

        cfg = self.cfg
        if not cfg.reward_model:
            raise InputError("--reward_model is required (a registered reward version, a directory or a hub id)",
                             field="reward_model")
        if cfg.ptx_coef > 0 and not cfg.ptx_data:
            raise InputError("--ptx_coef > 0 (PPO-ptx) needs pretraining data: --ptx_data DIR|FILE", field="ptx_data")
        lookup = bool(cfg.register or cfg.project)
        refs = {"policy": resolve_model(cfg.model, cfg.database_url, lookup=lookup),
                "reference": resolve_model(cfg.reference_model or cfg.model, cfg.database_url, lookup=lookup,
                                           field="reference_model"),
                "reward": resolve_model(cfg.reward_model, cfg.database_url, lookup=lookup, field="reward_model")}
        require_reward_model(refs["reward"])
        refs["value"] = None if cfg.share_value_backbone else \
            resolve_model(cfg.value_model or cfg.reward_model, cfg.database_url, lookup=lookup, field="value_model")
        self.refs = refs
        self.rows = data.load_rows(data.PROMPT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset)
        if cfg.eval_dataset:
            train_rows, held_rows = self.rows.rows, data.prompt_rows_from_file(cfg.eval_dataset).rows
        else:
            train_rows, held_rows = data.split_by_prompt(self.rows.rows, cfg.eval_fraction)
        if cfg.max_rows:
            train_rows = train_rows[:cfg.max_rows]
        if not train_rows:
            raise InputError("no training prompts left after the held-out split", field="eval_fraction")
        self.train_rows, self.held_rows = train_rows, held_rows

        tok = load_tokenizer(refs["policy"].path, padding_side="left")
        problem = pad_problem(tok)
        if problem:
            raise InputError(f"policy {refs['policy'].ref!r}: {problem}; PPO pads rollouts and masks the padding, so "
                             "it needs a separate pad token (train the SFT model with one)", field="model")
        if _vocab_key(load_tokenizer(refs["reference"].path)) != _vocab_key(tok):
            raise InputError(f"the reference {refs['reference'].ref!r} and the policy {refs['policy'].ref!r} do not "
                             "share a tokenizer: the per-token KL compares their log-probs of the same token ids",
                             field="reference_model")
        try:
            rm_tok = load_tokenizer(refs["reward"].path)
        except InputError:
            rm_tok = None
        if rm_tok is None:
            rm_vocab = getattr(AutoConfig.from_pretrained(refs["reward"].path), "vocab_size", None)
            if rm_vocab != len(tok):
                raise InputError(f"reward model {refs['reward'].ref!r} has no tokenizer of its own and a different "
                                 f"vocabulary ({rm_vocab} vs the policy's {len(tok)}): save its tokenizer beside it",
                                 field="reward_model")
            rm_tok = tok
        rm_problem = pad_problem(rm_tok)
        if rm_problem:
            raise InputError(f"reward model {refs['reward'].ref!r}: {rm_problem}; it reads its score at the last "
                             "non-pad token, so it needs a separate pad token", field="reward_model")
        self.same_vocab = _vocab_key(rm_tok) == _vocab_key(tok)
        if refs["value"] is not None:  # the value model reads the policy's token ids
            try:
                v_tok = rm_tok if refs["value"].path == refs["reward"].path else load_tokenizer(refs["value"].path)
            except InputError:
                v_tok = tok
            if _vocab_key(v_tok) != _vocab_key(tok):
                raise InputError(f"value model {refs['value'].ref!r} (default: the reward model) has another "
                                 "vocabulary than the policy, whose tokens it reads: pass --value_model with the "
                                 "policy's tokenizer, or --share_value_backbone", field="value_model")
        pcfg = AutoConfig.from_pretrained(refs["policy"].path)
        n_pos = getattr(pcfg, "n_positions", None) or getattr(pcfg, "max_position_embeddings", None)
        budget = cfg.max_prompt_length or ((n_pos - cfg.max_new_tokens) if n_pos else 10 ** 9)
        if n_pos and budget + cfg.max_new_tokens > n_pos:
            budget = n_pos - cfg.max_new_tokens
        if budget < 1:
            raise InputError(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the policy's "
                             f"context of {n_pos} tokens: lower --max_new_tokens", field="max_new_tokens")
        self.tok, self.rm_tok = tok, rm_tok
        self.chat = use_chat_for_training(tok, cfg.chat_format)
        self.train_ids, cut = render_prompts(tok, train_rows, self.chat, budget)
        self.held_ids, held_cut = render_prompts(tok, held_rows, self.chat, budget)
        self.truncated = cut + held_cut
        if self.truncated:
            self.log.warning("%d training and %d held-out prompts are longer than %d tokens and were left-truncated "
                             "(their end kept)", cut, held_cut, budget)
        self.ptx_tokens = load_ptx_tokens(cfg.ptx_data, tok, len(tok)) if cfg.ptx_data and cfg.ptx_coef > 0 else None

    def build(self) -> None:
        from transformers import set_seed

        from rlhf.modeling import device, stop_token_ids
        from rlhf.ppo_trainer import PPOTrainer, PtxData, metrics_writer

        cfg, tok = self.cfg, self.tok
        self.log.info("PPO %s: %d train / %d held-out prompts (%s), chat template: %s, reward model %s (%s "
                      "tokenizer)", self.name, len(self.train_ids), len(self.held_ids),
                      self.rows.source.get("project") or self.rows.source.get("dataset"), self.chat,
                      self.refs["reward"].ref, "shared" if self.same_vocab else "own")
        set_seed(cfg.seed)
        self.models = models = _load_models(cfg, self.refs)
        models["reward"].config.pad_token_id = self.rm_tok.pad_token_id
        if models["value"] is not None:
            models["value"].config.pad_token_id = tok.pad_token_id
        models["reward"].to(device()).eval().requires_grad_(False)
        self.scorer = RewardScorer.build(models["reward"], self.rm_tok, tok, self.train_ids + self.held_ids,
                                         [r["prompt"] for r in self.train_rows + self.held_rows], self.chat)
        ptx = PtxData(self.ptx_tokens, cfg.ptx_block_size, cfg.seed) if self.ptx_tokens is not None else None
        self.stop_ids = stop_token_ids(models["policy"], tok)
        self.trainer = PPOTrainer(cfg, models["policy"], models["reference"], self.scorer, tok, self.train_ids,
                                  value_model=models["value"], stop_ids=self.stop_ids, ptx=ptx,
                                  callbacks=[metrics_writer(self.run_dir / runs.METRICS_FILE)])

    def is_main(self) -> bool:
        return self.trainer.accelerator.is_main_process

    def barrier(self) -> None:
        self.trainer.accelerator.wait_for_everyone()

    def find_checkpoint(self) -> str | None:
        from rlhf.ppo_trainer import last_checkpoint

        found = last_checkpoint(self.run_dir)
        return str(found) if found else None

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        if self.is_main():  # rows logged after the checkpoint are logged again
            _truncate_metrics(self.run_dir / runs.METRICS_FILE, int(resume.rsplit("-", 1)[-1]) if resume else 0)
        self.barrier()
        tr = self.trainer
        last = tr.train(resume_from=resume, stop_at_step=self.cfg.stop_at_step)
        if self.cfg.stop_at_step is not None and tr.step < tr.num_updates:
            return None
        return {"global_step": tr.step, "train_prompts": len(self.train_ids), "held_out_prompts": len(self.held_ids),
                "prompts_truncated": self.truncated,
                **{k: v for k, v in last.items() if k.startswith(("objective/", "policy/", "loss/"))}}

    def stopped_summary(self) -> dict[str, Any]:
        step = self.trainer.step
        self.log.info("stopped at update %d as asked (checkpoint-%d in %s): continue with --resume", step, step,
                      self.run_dir)
        return self.result(stopped_at=step, metrics={"global_step": step}, version_id=None, trainer=self.trainer)

    def save(self, metrics: dict[str, Any]) -> None:
        """The policy (HF checkpoint) and value model; then, on the main process, the held-out evaluation."""
        from rlhf.evaluate import evaluate_policy

        cfg = self.cfg
        self.trainer.save_model(self.run_dir)
        if self.is_main() and self.held_rows:
            ev = evaluate_policy(self.trainer.unwrapped.policy, self.models["reference"], self.scorer, self.tok,
                                 self.held_ids, self.held_rows, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, stop_ids=self.stop_ids, seed=cfg.seed)
            metrics.update({f"eval/{k}": v for k, v in ev.items()})
            metrics["eval/kl_under_target"] = ev["kl"] <= cfg.target_kl

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        from db.session import session_scope, write_transaction
        from rlhf.modeling import ensure_registered

        cfg, refs = self.cfg, self.refs
        lineage: dict[str, Any] = {}
        if cfg.register:
            with session_scope(cfg.database_url) as s, write_transaction(s):
                for key, r in refs.items():
                    if r is not None:
                        mv = ensure_registered(s, r)
                        lineage[key] = {"id": mv.id, "name": mv.name, "kind": mv.kind}
        else:
            lineage = {k: {"path": r.path} for k, r in refs.items() if r is not None}
        if cfg.share_value_backbone:
            lineage["value"] = {"shared_backbone": True}
        config = {"chat_template": self.chat, "reference": lineage["reference"], "reward_model": lineage["reward"],
                  "value_init": lineage["value"],
                  **{k: getattr(cfg, k) for k in ("kl_coef", "adaptive_kl", "target_kl", "kl_estimator", "ptx_coef",
                                                   "num_ppo_epochs", "num_mini_batches", "max_new_tokens",
                                                   "temperature", "cliprange", "vf_coef", "gamma", "lam",
                                                   "missing_eos_penalty")}}
        snapshot = {**self.rows.source, "ids": {"prompts": [r["prompt_id"] for r in self.train_rows]},
                    "held_out_prompt_ids": [r["prompt_id"] for r in self.held_rows]}
        extra = {**{f"{k}_path": r.path for k, r in refs.items() if r is not None}, "chat_template": self.chat,
                 "source": self.rows.source, "reward_tokenizer": "shared" if self.same_vocab else "own"}
        return refs["policy"], config, snapshot, extra

    def result(self, **kw: Any) -> dict[str, Any]:
        return {"name": self.name, "run_dir": str(self.run_dir), "trainer": self.trainer, **kw}


def run(cfg: Any) -> dict[str, Any]:
    return PPOJob(cfg).run()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint (they are logged again), keeping the file one run."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step and not json.loads(line).get("final")]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import ppo_config_class

    return runs.cli(run, ppo_config_class(), "python -m rlhf.train_ppo", __doc__, argv)


if __name__ == "__main__":
    main()
