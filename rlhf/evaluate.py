"""Evaluate trained models.

    python -m rlhf.evaluate reward --model DIR|VERSION --dataset prefs.jsonl [--out metrics.json]
    python -m rlhf.evaluate policy --model ppo-v1 --reference sft-v1 --reward rm-v1 --project P|--dataset F
    python -m rlhf.evaluate responses --reward rm-v1 --project P [--models base-v1 sft-v1 ppo-v1]

``policy``: on held-out prompts (the same split PPO holds out, or every prompt of a file with ``--split all``)
sample one response per prompt from the policy and from the reference, score both with the reward model, and
print the mean reward-model score of each, the policy's win rate against the reference (RM-judged, ties half),
the KL of the policy to the reference on its own samples (nats per response), mean lengths, and, when the
prompts carry an ``answer`` (verifiable tasks), the share of responses whose first line is it
(``pretrain.tasks.is_correct``, the simulated annotator's rule).

``responses``: score every stored response of each model version to the project's prompts (what the annotators
compared) with one reward model, rendered as in reward training; prints each version's mean score, how many
responses and, on verifiable prompts, the share that is correct, and records them on the versions (the
leaderboard's RM-judged column beside the human score; ``--no_record`` only prints).

``reward``: score every pair of a preference file (TRL explicit/implicit prompt or Anthropic HH) with any
sequence-classification reward model; prints pairwise accuracy (ties count as wrong), mean margin, ECE of
sigmoid(r_c - r_r), a 95% bootstrap interval of the accuracy and mean rewards as JSON. Long pairs are cut as in
training (rlhf/truncation.py: the response whole, the prompt from the left, to the max_length the model was trained
at, else its context) and counted in ``truncated_pairs``; a pair whose response alone does not fit is left out
(``pairs_too_long``), as training leaves it out. Prompts are rendered as the model was trained (recorded in its
config by rlhf.train_reward; otherwise the chat template when the tokenizer has one, see --chat_format).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from db.services.errors import InputError, ServiceError


def evaluate_reward(model_ref: str, dataset: str, *, chat_format: str = "auto", batch_size: int = 16,
                    database_url: str | None = None, attn: str = "auto", dtype: str = "float32") -> dict[str, Any]:
    from rlhf import data, reward
    from rlhf.formatting import format_preference_row, use_chat_for_training
    from rlhf.modeling import (
        device,
        inference_dtype,
        load_reward_model,
        load_tokenizer,
        pad_problem,
        resolve_model,
    )

    m = resolve_model(model_ref, database_url, lookup=database_url is not None or not Path(model_ref).exists())
    rows = data.preference_rows_from_file(dataset)
    tok = load_tokenizer(m.path)
    problem = pad_problem(tok)
    if problem:
        raise InputError(f"{problem}: this reward model cannot score padded batches reliably", field="model")
    torch_dtype = inference_dtype(dtype)
    model = load_reward_model(m.path, attn, dtype=torch_dtype).to(device())
    recorded = reward.info(model).get("chat_template")
    chat = bool(recorded) if recorded is not None and chat_format == "auto" else \
        use_chat_for_training(tok, chat_format)
    formatted = [format_preference_row(r, chat) for r in rows.rows]
    metrics = reward.evaluate_pairs(model, tok, formatted, batch_size)
    return {"model": m.path, "model_version": m.version_name, "dataset": str(Path(dataset).resolve()),
            "chat_template": chat, "dtype": str(torch_dtype).removeprefix("torch."), **metrics}


def evaluate_policy(policy: Any, reference: Any, score_fn: Any, tok: Any, prompt_ids: list[list[int]],
                    rows: list[dict[str, Any]], *, max_new_tokens: int, stop_ids: list[int], temperature: float = 1.0,
                    seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Policy vs reference on tokenized prompts (see the module docstring). The global RNG is left as it was."""
    import torch

    from pretrain.tasks import is_correct
    from rlhf.sampling import SamplingParams, left_pad, sample, token_logprobs

    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
    pad = tok.pad_token_id
    sp, sr, kl, lp, lr, hits = [], [], [], [], [], {"policy": [], "reference": []}
    modes = (policy.training, reference.training)
    policy.eval(), reference.eval()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for i in range(0, len(prompt_ids), batch_size):
            q, m = left_pad(prompt_ids[i:i + batch_size], pad)
            outs = {}
            for who, model in (("policy", policy), ("reference", reference)):
                torch.manual_seed(seed * 1000 + i)  # each model its own stream: the reference's samples (and
                outs[who] = sample(model, q, m, params, stop_ids, pad, return_logprobs=False)  # score) repeat
            a, b = outs["policy"], outs["reference"]
            sp += score_fn(a.query_ids, a.query_mask, a.response_ids, a.response_mask).float().tolist()
            sr += score_fn(b.query_ids, b.query_mask, b.response_ids, b.response_mask).float().tolist()
            dev = next(reference.parameters()).device
            lp_pol = token_logprobs(policy, a.query_ids, a.query_mask, a.response_ids, a.response_mask, temperature)
            lp_ref = token_logprobs(reference, a.query_ids.to(dev), a.query_mask.to(dev), a.response_ids.to(dev),
                                    a.response_mask.to(dev), temperature)
            kl += (lp_pol.float().cpu() - lp_ref.float().cpu()).sum(1).tolist()
            lp += a.lengths.tolist()
            lr += b.lengths.tolist()
            for who, o in outs.items():
                for j, row in enumerate(rows[i:i + batch_size]):
                    if row.get("answer") is not None:
                        text = tok.decode(o.response_ids[j][o.response_mask[j].bool()], skip_special_tokens=True)
                        hits[who].append(is_correct(str(row["answer"]), text))  # the annotator's rule
    policy.train(modes[0]), reference.train(modes[1])
    n = len(sp)
    out: dict[str, Any] = {
        "prompts": n, "score": sum(sp) / n, "reference_score": sum(sr) / n,
        "win_rate": sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(sp, sr)) / n,
        "kl": sum(kl) / n, "length": sum(lp) / n, "reference_length": sum(lr) / n}
    if hits["policy"]:
        out["accuracy"] = sum(hits["policy"]) / len(hits["policy"])
        out["reference_accuracy"] = sum(hits["reference"]) / len(hits["reference"])
    return out


def evaluate_policy_cli(args: argparse.Namespace) -> dict[str, Any]:
    """`evaluate policy`: load the three models, the held-out prompts, and run :func:`evaluate_policy`."""
    from rlhf import data, reward
    from rlhf.formatting import use_chat_for_training
    from rlhf.modeling import (
        device,
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        pad_problem,
        resolve_model,
        stop_token_ids,
    )
    from rlhf.train_ppo import RewardScorer, render_prompts

    if bool(args.project) == bool(args.dataset):
        raise InputError("give exactly one of --project or --dataset (prompts)", field="project")
    refs = {k: resolve_model(getattr(args, k), args.database_url) for k in ("model", "reference", "reward")}
    rows = data.load_rows(data.PROMPT_KIND, url=args.database_url, project=args.project, dataset=args.dataset)
    held = data.split_by_prompt(rows.rows, args.eval_fraction)[1] if args.split == "held_out" else rows.rows
    if not held:
        raise InputError("no held-out prompts (too few prompts for --eval_fraction): pass --split all",
                         field="split")
    tok = load_tokenizer(refs["model"].path, padding_side="left")
    rm_tok = load_tokenizer(refs["reward"].path)
    for who, t in (("model", tok), ("reward", rm_tok)):
        if pad_problem(t):
            raise InputError(f"--{who} {getattr(args, who)!r}: {pad_problem(t)}", field=who)
    policy = load_causal_lm(refs["model"].path).to(device())
    reference = load_causal_lm(refs["reference"].path).to(device())
    rm = load_reward_model(refs["reward"].path).to(device()).eval()
    rm.config.pad_token_id = rm_tok.pad_token_id
    n_pos = reward.max_positions(policy)
    budget = (n_pos - args.max_new_tokens) if n_pos else 10 ** 9
    if budget < 1:
        raise InputError(f"--max_new_tokens {args.max_new_tokens} leaves no room for a prompt", field="max_new_tokens")
    chat = use_chat_for_training(tok, args.chat_format)
    ids, cut = render_prompts(tok, held, chat, budget)
    scorer = RewardScorer.build(rm, rm_tok, tok, ids, [r["prompt"] for r in held], chat)
    res = evaluate_policy(policy, reference, scorer, tok, ids, held, max_new_tokens=args.max_new_tokens,
                          stop_ids=stop_token_ids(policy, tok), temperature=args.temperature, seed=args.seed,
                          batch_size=args.batch_size)
    return {"model": refs["model"].version_name or refs["model"].path,
            "reference": refs["reference"].version_name or refs["reference"].path,
            "reward": refs["reward"].version_name or refs["reward"].path,
            "split": args.split, "prompts_truncated": cut, **res}


def evaluate_responses_cli(args: argparse.Namespace) -> dict[str, Any]:
    """`evaluate responses`: the reward model's mean score of each version's stored responses in a project."""
    from db.services import leaderboard
    from db.session import session_scope
    from db.settings import database_url
    from pretrain.tasks import is_correct
    from rlhf import reward
    from rlhf.formatting import format_sft_row
    from rlhf.modeling import (
        device,
        load_reward_model,
        load_tokenizer,
        pad_problem,
        require_reward_model,
        resolve_model,
    )

    url = args.database_url or database_url()
    m = resolve_model(args.reward, url, field="reward")
    require_reward_model(m, field="reward")
    with session_scope(url) as s:
        rows = leaderboard.version_responses(s, args.project, args.models or None)
    if not rows:
        raise InputError(f"project {args.project!r} has no responses of model versions"
                         + (f" {', '.join(args.models)}" if args.models else "")
                         + ": generate some first (python -m rlhf.generate)", field="project")
    tok = load_tokenizer(m.path)
    if pad_problem(tok):
        raise InputError(f"--reward {args.reward!r}: {pad_problem(tok)}", field="reward")
    model = load_reward_model(m.path).to(device()).eval()
    model.config.pad_token_id = tok.pad_token_id
    chat = reward.trained_with_chat(model, tok)
    formatted = [format_sft_row({"prompt": r["prompt"], "completion": r["response"]}, chat) for r in rows]
    stats: dict[str, int] = {}
    scores = reward.score(model, tok, [f["prompt"] for f in formatted], [f["completion"] for f in formatted],
                          batch_size=args.batch_size, stats=stats)
    by_version: dict[str, dict[str, list[Any]]] = {}
    for r, sc in zip(rows, scores):
        e = by_version.setdefault(r["version"], {"scores": [], "hits": []})
        e["scores"].append(sc)
        if r.get("answer") is not None:
            e["hits"].append(is_correct(r["answer"], r["response"]))  # the simulated annotator's rule
    versions: dict[str, dict[str, Any]] = {}
    for v, e in by_version.items():
        versions[v] = {"score": sum(e["scores"]) / len(e["scores"]), "responses": len(e["scores"])}
        if e["hits"]:
            versions[v]["accuracy"] = sum(e["hits"]) / len(e["hits"])
    judge = m.version_name or m.path
    if not args.no_record:
        with session_scope(url) as s:
            leaderboard.record_rm_scores(s, args.project, judge, versions)
    return {"reward": judge, "project": args.project, "chat_template": chat, "versions": versions,
            "truncated": stats.get("truncated", 0), "too_long": stats.get("too_long", 0),
            "recorded": not args.no_record}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rlhf.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    r = sub.add_parser("reward", help="pairwise metrics of a reward model on a preference file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--model", required=True, help="reward model directory, version name/id, or hub id")
    r.add_argument("--dataset", required=True, help="preference JSONL (TRL or HH)")
    r.add_argument("--chat_format", "--chat-format", default="auto", choices=["auto", "always", "never"],
                   help="render prompts with the tokenizer's chat template: auto (as recorded at training, else "
                        "when the tokenizer has one), always, never (plain 'prompt\\n' + response)")
    r.add_argument("--batch_size", "--batch-size", type=int, default=16, help="sequences per forward pass")
    r.add_argument("--database_url", "--database-url", default=None,
                   help="database URL to resolve a model version name/id (None: $DATABASE_URL)")
    r.add_argument("--attn_implementation", "--attn-implementation", default="auto",
                   help="attention kernel: auto (eager for GPT-Neo, sdpa otherwise), eager, sdpa, "
                        "flash_attention_2")
    r.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype while scoring. float32 by default so metrics compare across devices "
                        "(bf16 rounding turns close pairs into ties, which count as wrong); auto = bfloat16 on "
                        "a CUDA GPU that supports it")
    r.add_argument("--out", default=None, help="also write the metrics JSON here")

    pp = sub.add_parser("policy", help="policy vs reference on held-out prompts, judged by a reward model",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pp.add_argument("--model", required=True, help="policy to evaluate (version name/id, directory or hub id)")
    pp.add_argument("--reference", required=True, help="reference model (usually the SFT model PPO started from)")
    pp.add_argument("--reward", required=True, help="reward model that judges both")
    pp.add_argument("--project", help="prompts of this project (held-out split unless --split all)")
    pp.add_argument("--dataset", help="prompt JSONL ({prompt} / {messages} rows, optional 'answer')")
    pp.add_argument("--split", choices=["held_out", "all"], default="held_out",
                    help="held_out: the prompts PPO holds out (same hash split, --eval_fraction); all: every prompt")
    pp.add_argument("--eval_fraction", "--eval-fraction", type=float, default=0.1,
                    help="share of prompts held out (must match the PPO run's)")
    pp.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64, help="longest response")
    pp.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of both models (the KL is measured under it)")
    pp.add_argument("--chat_format", "--chat-format", default="auto", choices=["auto", "always", "never"],
                    help="render prompts with the policy's chat template (auto: when it has one)")
    pp.add_argument("--seed", type=int, default=0, help="sampling seed")
    pp.add_argument("--batch_size", "--batch-size", type=int, default=16, help="prompts per generate call")
    pp.add_argument("--database_url", "--database-url", default=None, help="database URL (None: $DATABASE_URL)")
    pp.add_argument("--out", default=None, help="also write the metrics JSON here")

    rs = sub.add_parser("responses", help="every version's stored responses in a project, judged by a reward "
                                          "model (the leaderboard's RM column)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    rs.add_argument("--reward", required=True, help="reward model that judges (version name/id or directory)")
    rs.add_argument("--project", required=True, help="project whose prompts' responses are scored")
    rs.add_argument("--models", nargs="+", default=None, help="only these versions (default: every version with "
                                                              "responses in the project)")
    rs.add_argument("--batch_size", "--batch-size", type=int, default=16, help="sequences per forward pass")
    rs.add_argument("--no_record", "--no-record", action="store_true",
                    help="print only: leave the versions' recorded RM-judged scores as they are")
    rs.add_argument("--database_url", "--database-url", default=None, help="database URL (None: $DATABASE_URL)")
    rs.add_argument("--out", default=None, help="also write the metrics JSON here")
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        if args.what == "policy":
            res = evaluate_policy_cli(args)
        elif args.what == "responses":
            res = evaluate_responses_cli(args)
        else:
            res = evaluate_reward(args.model, args.dataset, chat_format=args.chat_format, batch_size=args.batch_size,
                                  database_url=args.database_url, attn=args.attn_implementation, dtype=args.dtype)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
