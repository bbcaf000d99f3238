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
import logging
from pathlib import Path
from typing import Any

from db.services.errors import InputError

log = logging.getLogger("rlhf.train_ppo")
JOB = "train_ppo"


def _vocab_key(tok: Any) -> tuple[int, int]:
    """Tokenizers that map every string to the same ids (cheap: size + a hash of the vocabulary)."""
    vocab = tok.get_vocab()
    return len(vocab), hash(tuple(sorted(vocab.items())))


def render_prompts(tok: Any, rows: list[dict[str, Any]], chat: bool, budget: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt as the policy sees it, keeping the last `budget` tokens. Returns (ids, cut)."""
    from rlhf.formatting import generation_input, is_chat

    out, cut = [], 0
    for r in rows:
        use_chat = chat or (is_chat(r["prompt"]) and bool(getattr(tok, "chat_template", None)))
        ids = list(tok(generation_input(tok, r["prompt"], use_chat), add_special_tokens=not use_chat)["input_ids"])
        if len(ids) > budget:
            cut += 1
            ids = ids[-budget:]
        out.append(ids)
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


class RewardScorer:
    """score_fn for the trainer: the reward model's score of (prompt, response).

    Same vocabulary as the policy: the sampled ids are scored as they are (``reward.score_ids``). Otherwise the
    response is decoded and re-encoded with the reward model's tokenizer, the prompt rendered for it as it was
    in reward training (``reward.score``)."""

    def __init__(self, model: Any, tok: Any, policy_tok: Any, prompts: dict[tuple[int, ...], Any], chat: bool,
                 same_vocab: bool) -> None:
        self.model, self.tok, self.policy_tok = model, tok, policy_tok
        self.prompts, self.chat, self.same_vocab = prompts, chat, same_vocab

    def __call__(self, q_ids: Any, q_mask: Any, r_ids: Any, r_mask: Any) -> Any:
        import torch

        from rlhf import reward
        from rlhf.formatting import format_sft_row

        if self.same_vocab:
            return reward.score_ids(self.model, torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1))
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


def run(cfg: Any) -> dict[str, Any]:
    from transformers import set_seed

    from rlhf import data, reward, runs
    from rlhf.evaluate import evaluate_policy
    from rlhf.formatting import use_chat_for_training
    from rlhf.modeling import device, load_tokenizer, pad_problem, resolve_model, stop_token_ids
    from rlhf.ppo_trainer import PPOTrainer, PtxData, last_checkpoint, metrics_writer

    # ---- everything that can be wrong is checked before a rollout
    if cfg.project is None and cfg.dataset is None:
        raise InputError("give --project NAME (database) or --dataset FILE.jsonl of prompts", field="project")
    if not cfg.reward_model:
        raise InputError("--reward_model is required (a registered reward version, a directory or a hub id)",
                         field="reward_model")
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise InputError("--ptx_coef > 0 (PPO-ptx) needs pretraining data: --ptx_data DIR|FILE", field="ptx_data")
    lookup = bool(cfg.register or cfg.project)
    refs = {"policy": resolve_model(cfg.model, cfg.database_url, lookup=lookup),
            "reference": resolve_model(cfg.reference_model or cfg.model, cfg.database_url, lookup=lookup),
            "reward": resolve_model(cfg.reward_model, cfg.database_url, lookup=lookup)}
    refs["value"] = None if cfg.share_value_backbone else \
        resolve_model(cfg.value_model or cfg.reward_model, cfg.database_url, lookup=lookup)
    rows = data.load_rows(data.PROMPT_KIND, url=cfg.database_url, project=cfg.project, dataset=cfg.dataset)
    if cfg.eval_dataset:
        train_rows, held_rows = rows.rows, data.prompt_rows_from_file(cfg.eval_dataset).rows
    else:
        train_rows, held_rows = data.split_by_prompt(rows.rows, cfg.eval_fraction)
    if cfg.max_rows:
        train_rows = train_rows[:cfg.max_rows]
    if not train_rows:
        raise InputError("no training prompts left after the held-out split", field="eval_fraction")

    tok = load_tokenizer(refs["policy"].path, padding_side="left")
    problem = pad_problem(tok)
    if problem:
        raise InputError(f"policy {refs['policy'].ref!r}: {problem}; PPO pads rollouts and masks the padding, so it "
                         "needs a separate pad token (train the SFT model with one)", field="model")
    ref_tok = load_tokenizer(refs["reference"].path)
    if _vocab_key(ref_tok) != _vocab_key(tok):
        raise InputError(f"the reference {refs['reference'].ref!r} and the policy {refs['policy'].ref!r} do not share "
                         "a tokenizer: the per-token KL compares their log-probs of the same token ids",
                         field="reference_model")
    try:
        rm_tok = load_tokenizer(refs["reward"].path)
    except InputError:
        rm_tok = None
    from transformers import AutoConfig

    rm_vocab = getattr(AutoConfig.from_pretrained(refs["reward"].path), "vocab_size", None)
    if rm_tok is None:
        if rm_vocab != len(tok):
            raise InputError(f"reward model {refs['reward'].ref!r} has no tokenizer of its own and a different "
                             f"vocabulary ({rm_vocab} vs the policy's {len(tok)}): save its tokenizer beside it",
                             field="reward_model")
        rm_tok = tok
    rm_problem = pad_problem(rm_tok)
    if rm_problem:
        raise InputError(f"reward model {refs['reward'].ref!r}: {rm_problem}; it reads its score at the last non-pad "
                         "token, so it needs a separate pad token", field="reward_model")
    same_vocab = _vocab_key(rm_tok) == _vocab_key(tok)
    if refs["value"] is not None:  # the value model reads the policy's token ids
        try:
            v_tok = rm_tok if refs["value"].path == refs["reward"].path else load_tokenizer(refs["value"].path)
        except InputError:
            v_tok = tok
        if _vocab_key(v_tok) != _vocab_key(tok):
            raise InputError(f"value model {refs['value'].ref!r} (default: the reward model) has another vocabulary "
                             "than the policy, whose tokens it reads: pass --value_model with the policy's "
                             "tokenizer, or --share_value_backbone", field="value_model")
    pcfg = AutoConfig.from_pretrained(refs["policy"].path)
    n_pos = getattr(pcfg, "n_positions", None) or getattr(pcfg, "max_position_embeddings", None)
    budget = cfg.max_prompt_length or ((n_pos - cfg.max_new_tokens) if n_pos else 10 ** 9)
    if n_pos and budget + cfg.max_new_tokens > n_pos:
        budget = n_pos - cfg.max_new_tokens
    if budget < 1:
        raise InputError(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the policy's context "
                         f"of {n_pos} tokens: lower --max_new_tokens", field="max_new_tokens")
    chat = use_chat_for_training(tok, cfg.chat_format)
    train_ids, cut = render_prompts(tok, train_rows, chat, budget)
    held_ids, held_cut = render_prompts(tok, held_rows, chat, budget)
    if cut or held_cut:
        log.warning("%d training and %d held-out prompts are longer than %d tokens and were left-truncated "
                    "(their end kept)", cut, held_cut, budget)
    ptx_tokens = load_ptx_tokens(cfg.ptx_data, tok, len(tok)) if cfg.ptx_data and cfg.ptx_coef > 0 else None
    name, run_dir = runs.setup_run(cfg, JOB)
    log.info("PPO %s: %d train / %d held-out prompts (%s), chat template: %s, reward model %s (%s tokenizer)",
             name, len(train_ids), len(held_ids), rows.source.get("project") or rows.source.get("dataset"), chat,
             refs["reward"].ref, "shared" if same_vocab else "own")

    set_seed(cfg.seed)
    models = _load_models(cfg, refs)
    for key in ("reward", "value"):
        if models[key] is not None:
            models[key].config.pad_token_id = rm_tok.pad_token_id if key == "reward" else tok.pad_token_id
    models["reward"].to(device()).eval().requires_grad_(False)
    prompt_of = {tuple(ids): r["prompt"] for ids, r in zip(train_ids + held_ids, train_rows + held_rows)}
    rm_chat = reward.info(models["reward"]).get("chat_template")
    scorer = RewardScorer(models["reward"], rm_tok, tok, prompt_of,
                          bool(rm_chat) if rm_chat is not None else use_chat_for_training(rm_tok, "auto"), same_vocab)
    ptx = PtxData(ptx_tokens, cfg.ptx_block_size, cfg.seed) if ptx_tokens is not None else None
    metrics_path = run_dir / runs.METRICS_FILE
    resume = last_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", run_dir)
    trainer = PPOTrainer(cfg, models["policy"], models["reference"], scorer, tok, train_ids,
                         value_model=models["value"], stop_ids=stop_token_ids(models["policy"], tok), ptx=ptx,
                         callbacks=[metrics_writer(metrics_path)])
    if trainer.accelerator.is_main_process:
        _truncate_metrics(metrics_path, int(resume.name.split("-")[-1]) if resume else 0)
    trainer.accelerator.wait_for_everyone()
    last = trainer.train(resume_from=resume, stop_at_step=cfg.stop_at_step)
    if cfg.stop_at_step is not None and trainer.step < trainer.num_updates:
        log.info("stopped at update %d as asked (checkpoint-%d in %s): continue with --resume", trainer.step,
                 trainer.step, run_dir)
        return {"name": name, "run_dir": str(run_dir), "stopped_at": trainer.step, "version_id": None,
                "metrics": {"global_step": trainer.step}, "trainer": trainer}
    trainer.save_model(run_dir)
    metrics: dict[str, Any] = {"global_step": trainer.step, "train_prompts": len(train_ids),
                               "held_out_prompts": len(held_ids), "prompts_truncated": cut + held_cut,
                               **{k: v for k, v in last.items() if k.startswith(("objective/", "policy/", "loss/"))}}
    version_id = None
    if trainer.accelerator.is_main_process:
        if held_rows:
            ev = evaluate_policy(trainer.unwrapped.policy, models["reference"], scorer, tok, held_ids,
                                 held_rows, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 stop_ids=stop_token_ids(models["policy"], tok), seed=cfg.seed)
            metrics.update({f"eval/{k}": v for k, v in ev.items()})
            metrics["eval/kl_under_target"] = ev["kl"] <= cfg.target_kl
        runs.append_metrics(run_dir, {"final": True, **metrics})
        extra = {"job": JOB, "name": name, **{f"{k}_path": r.path for k, r in refs.items() if r is not None},
                 "chat_template": chat, "source": rows.source, "reward_tokenizer": "shared" if same_vocab else "own"}
        runs.write_config(run_dir, cfg, extra)
        if cfg.register:
            version_id = _register(cfg, name, run_dir, refs, rows, train_rows, held_rows, chat, metrics)
    trainer.accelerator.wait_for_everyone()
    log.info("PPO done: %s", json.dumps({k: v for k, v in metrics.items() if k.startswith(("eval/", "objective/"))},
                                        default=str))
    return {"name": name, "run_dir": str(run_dir), "metrics": metrics, "version_id": version_id, "trainer": trainer}


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint (they are logged again), keeping the file one run."""
    if not path.is_file():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step and not json.loads(line).get("final")]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _register(cfg: Any, name: str, run_dir: Path, refs: dict[str, Any], rows: Any, train_rows: list[dict[str, Any]],
              held_rows: list[dict[str, Any]], chat: bool, metrics: dict[str, Any]) -> int:
    from db.session import session_scope
    from rlhf import runs
    from rlhf.modeling import ensure_registered

    lineage: dict[str, Any] = {}
    with session_scope(cfg.database_url) as s:
        for key, r in refs.items():
            if r is not None:
                mv = ensure_registered(s, r)
                lineage[key] = {"id": mv.id, "name": mv.name, "kind": mv.kind}
    if cfg.share_value_backbone:
        lineage["value"] = {"shared_backbone": True}
    config = {"job": JOB, "chat_template": chat, "run_dir": str(run_dir.resolve()),
              "reference": lineage["reference"], "reward_model": lineage["reward"], "value_init": lineage["value"],
              **{k: getattr(cfg, k) for k in ("kl_coef", "adaptive_kl", "target_kl", "kl_estimator", "ptx_coef",
                                               "num_ppo_epochs", "num_mini_batches", "max_new_tokens", "temperature",
                                               "cliprange", "vf_coef", "gamma", "lam", "missing_eos_penalty")},
              **runs.training_config(cfg)}
    snapshot = {**rows.source, "ids": {"prompts": [r["prompt_id"] for r in train_rows]},
                "held_out_prompt_ids": [r["prompt_id"] for r in held_rows]}
    return runs.register(cfg.database_url, name, "policy", run_dir, refs["policy"], config, metrics, snapshot)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf import runs
    from rlhf.config import ppo_config_class

    return runs.cli(run, ppo_config_class(), "python -m rlhf.train_ppo", __doc__, argv)


if __name__ == "__main__":
    main()
