"""Sample responses from model versions and turn them into annotation tasks.

    python -m rlhf.generate --project P --models sft-v1 base-v1 --num_samples 2 --tasks compare
    python -m rlhf.generate --project P --models sft-v1 --num_samples 4 --tasks rank
    python -m rlhf.generate --project P --models sft-v1 --num_samples 2 --tasks rate   # good/bad of each response
    python -m rlhf.generate --project P --tasks demonstrate              # no model needed
    python -m rlhf.generate --project P --models runs/pretrain/demo/hf --few_shot 3 --tasks compare,demonstrate

For every prompt of the project, each model (a registered version name/id, a local HF directory or a hub id;
unregistered ones are registered as ``external``) samples K responses — batched, left-padded, with the KV
cache — stored as ``responses`` with their generation parameters. Then:

- ``compare``: ``--pairs_per_prompt`` random pairs per prompt, across different versions when there are
  several (A/B position randomized once and stored);
- ``rank``: one task with ``--rank_size`` (default all, >= 3) responses of the prompt;
- ``rate``: one task per sampled response (the annotator says good or bad, optionally a 1-7 score);
- ``demonstrate``: a task for every prompt without a demonstration.

Re-running is idempotent: a prompt that already has K samples from a version reuses them (``--regenerate``
samples again), and identical tasks are never created twice. Prompts are rendered with the chat template when
the prompt is a chat, or the model is sft/policy and its tokenizer has one (``--chat_format``); base models get
plain prompts with ``--few_shot`` accepted demonstrations in front (GPT-3 style in-context examples).
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from typing import Any

from db.services.errors import InputError, ServiceError

log = logging.getLogger("rlhf.generate")
TASK_KINDS = ("compare", "rank", "rate", "demonstrate", "none")


@dataclass
class GenerateArgs:
    project: str | None = field(default=None, metadata={"help": "Project whose prompts to answer (required)."})
    models: list[str] = field(default_factory=list, metadata={
        "help": "Model versions (names or ids), local HF directories or hub ids; one or more."})
    num_samples: int = field(default=2, metadata={"help": "Responses per prompt per model (K)."})
    tasks: str = field(default="compare", metadata={
        "help": "Tasks to create, comma-separated: compare, rank, rate (one per response), demonstrate, none."})
    pairs_per_prompt: int = field(default=1, metadata={"help": "compare: random pairs per prompt."})
    rank_size: int = field(default=0, metadata={"help": "rank: responses per rank task (0 = all of the prompt's)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1 = off)."})
    top_k: int = field(default=0, metadata={
        "help": "Sample only from the k most likely tokens (0 = off; a checkpoint's own default never applies)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Maximum tokens per response."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    few_shot: int = field(default=0, metadata={
        "help": "Base models: prepend this many accepted demonstrations (of other prompts) as examples."})
    chat_format: str = field(default="auto", metadata={
        "help": "auto (chat prompts, or sft/policy models with a chat template), always, never.",
        "choices": ["auto", "always", "never"]})
    limit_prompts: int | None = field(default=None, metadata={"help": "Only the first N prompts (by id)."})
    regenerate: bool = field(default=False, metadata={"help": "Sample again even where K samples exist."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling, pair choice and A/B order."})
    database_url: str | None = field(default=None, metadata={"help": "Database URL (default $DATABASE_URL)."})
    attn_implementation: str = field(default="auto", metadata={"help": "Attention kernel (auto, eager, sdpa)."})
    dtype: str = field(default="auto", metadata={
        "help": "Weights dtype: auto (bfloat16 on a CUDA GPU that supports it, else float32), float32, bfloat16, "
                "float16.", "choices": ["auto", "float32", "bfloat16", "float16"]})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar (--no_progress)."})


def _task_kinds(spec: str) -> list[str]:
    kinds = [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in kinds if k not in TASK_KINDS]
    if bad or not kinds:
        raise InputError(f"--tasks must be a comma list of {', '.join(TASK_KINDS)}, not {spec!r}", field="tasks")
    return [k for k in kinds if k != "none"]


def _few_shot_examples(url: str | None, project: str, n: int) -> list[tuple[Any, str, Any]]:
    """(prompt, completion, prompt key) of up to n+1 accepted demonstrations (one may be the prompt itself)."""
    if n <= 0:
        return []
    from rlhf import data

    try:
        rows = data.sft_rows_from_db(url, project, ("accepted",)).rows
    except InputError:
        log.warning("--few_shot %d: the project has no accepted demonstrations; sampling zero-shot", n)
        return []
    from rlhf.formatting import completion_text

    return [(r["prompt"], completion_text(r["completion"]), prompt_key(r["prompt"])) for r in rows[:n + 1]]


def prompt_key(prompt: Any) -> str:
    """The same key for a prompt whether it arrives as text or as one user turn (exports turn every prompt
    of a project with chats into turns), so a prompt's own demonstration is never its few-shot example."""
    from rlhf.formatting import as_messages

    return json.dumps(as_messages(prompt), sort_keys=True, ensure_ascii=False)


@dataclass
class _Prompt:
    id: int
    content: Any  # text or chat turns
    is_chat: bool


def _load_prompts(url: str | None, project: str, limit: int | None) -> tuple[int, list[_Prompt]]:
    from db.services import content, projects
    from db.session import session_scope

    with session_scope(url) as s:
        proj = projects.get_project(s, project)
        rows = content.list_prompts(s, proj.id)
        prompts = [_Prompt(p.id, list(p.messages) if p.messages else p.text, bool(p.messages)) for p in rows]
    if limit:
        prompts = prompts[:limit]
    return proj.id, prompts


SETTINGS = ("temperature", "top_p", "top_k", "max_new_tokens")


def _existing(url: str | None, prompt_ids: list[int], version_id: int
              ) -> tuple[dict[int, dict[int, int]], dict[int, dict[str, Any]]]:
    """(prompt id → {sample_index: response id} of this version's newest responses, response id → params).
    Newest: after --regenerate, later runs build their tasks from the new samples."""
    from db.services import content
    from db.session import session_scope

    out: dict[int, dict[int, int]] = {}
    params: dict[int, dict[str, Any]] = {}
    with session_scope(url) as s:
        for pid, rows in content.responses_for_prompts(s, prompt_ids, model_version_id=version_id).items():
            by_index: dict[int, int] = {}
            for r in sorted(rows, key=lambda r: r.id):
                by_index[r.sample_index] = r.id
                params[r.id] = dict(r.params or {})
            out[pid] = by_index
    return out, params


def _warn_if_settings_changed(version: str, reused: list[int], params: dict[int, dict[str, Any]],
                              now: dict[str, Any]) -> None:
    """Reused samples keep the settings they were made with: say so when this run asked for others."""
    differ: dict[str, set] = {}
    for rid in reused:
        for k in SETTINGS:
            if k in now and k in params.get(rid, {}) and params[rid][k] != now[k]:
                differ.setdefault(k, set()).add(json.dumps(params[rid][k]))
    if differ:
        what = "; ".join(f"{k} was {', '.join(sorted(v))} (now {json.dumps(now[k])})" for k, v in differ.items())
        log.warning("%s: %d reused samples were generated with other settings (%s): pass --regenerate to sample "
                    "them again with these", version, len(reused), what)


def fit_prompt(tok: Any, p: _Prompt, chat: bool, shots: list[tuple[Any, str]], budget: int | None
               ) -> tuple[list[int], list[tuple[Any, str]], int]:
    """Token ids of the prompt's generation input within `budget` tokens: few-shot examples that do not fit
    are dropped (last first), then the start of the text is cut. Returns (ids, shots kept, tokens cut)."""
    from rlhf.formatting import generation_input

    wanted, shots = len(shots), list(shots)
    # Plain text gets the tokenizer's special tokens (a BOS for Llama-style tokenizers), as TRL's training
    # tokenization does; a rendered chat template already holds them.
    while True:
        ids = tok(generation_input(tok, p.content, chat, shots), add_special_tokens=not chat)["input_ids"]
        if budget is None or len(ids) <= budget or not shots:
            break
        shots.pop()
    if len(shots) < wanted:
        log.warning("prompt %d: %d of %d few-shot examples do not fit in the model's context beside "
                    "--max_new_tokens and were dropped", p.id, wanted - len(shots), wanted)
    if budget is not None and len(ids) > budget:
        log.warning("prompt %d: %d tokens do not fit beside --max_new_tokens in the model's context; keeping "
                    "the last %d", p.id, len(ids), budget)
    # the rule every job uses (rlhf.truncation): the end of the prompt kept, a leading BOS stays at the front
    from rlhf.truncation import truncate_prompt

    fitted = truncate_prompt(list(ids), budget, None if chat else tok.bos_token_id)
    return fitted.ids, shots, fitted.cut


def _sample_model(args: GenerateArgs, ref: str, model_no: int, prompts: list[_Prompt],
                  few_shot: list[tuple[Any, str, Any]]) -> tuple[Any, dict[int, list[int]], dict[str, int]]:
    """Generate (or reuse) K responses per prompt with one model. Returns (version, prompt → response ids, counts)."""
    import torch
    from tqdm.auto import tqdm

    from db.services import content
    from db.session import session_scope, write_transaction
    from rlhf.formatting import FEW_SHOT_SEPARATOR, use_chat_for_generation
    from rlhf.modeling import (
        device,
        ensure_registered,
        inference_dtype,
        load_causal_lm,
        load_tokenizer,
        resolve_model,
        stop_token_ids,
    )
    from rlhf.reward import max_positions
    from rlhf.sampling import SamplingParams, left_pad, sample

    m = resolve_model(ref, args.database_url)
    with session_scope(args.database_url) as s, write_transaction(s):
        mv = ensure_registered(s, m)
        version = {"id": mv.id, "name": mv.name, "kind": mv.kind}
    K = args.num_samples
    have, have_params = _existing(args.database_url, [p.id for p in prompts], version["id"])
    todo = prompts if args.regenerate else [p for p in prompts if any(i not in have[p.id] for i in range(K))]
    counts = {"generated": 0, "reused": 0}
    todo_ids = {p.id for p in todo}
    result: dict[int, list[int]] = {p.id: [have[p.id][i] for i in range(K) if i in have[p.id]]
                                    for p in prompts if p.id not in todo_ids}
    counts["reused"] = sum(len(v) for v in result.values())
    if todo:
        tok = load_tokenizer(m.path, padding_side="left")
        if tok.pad_token is None:  # generation only needs *a* pad id; the attention mask hides it
            tok.pad_token = tok.eos_token
        dtype = inference_dtype(args.dtype)
        model = load_causal_lm(m.path, args.attn_implementation, dtype=dtype)
        model.to(device()).eval()
        n_pos = max_positions(model)
        budget = n_pos - args.max_new_tokens if n_pos else None  # prompt tokens that fit beside the answer
        if budget is not None and budget < 1:
            raise InputError(f"--max_new_tokens {args.max_new_tokens} does not fit in {version['name']}'s context "
                             f"of {n_pos} tokens (prompt {todo[0].id} would have no room): lower --max_new_tokens",
                             field="max_new_tokens")
        torch.manual_seed(args.seed + 1000 * model_no)
        sp = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            max_new_tokens=args.max_new_tokens, num_return_sequences=K)
        stops = stop_token_ids(model, tok)
        params = {**sp.record(), "seed": args.seed + 1000 * model_no, "model_version": version["name"],
                  "dtype": str(dtype).removeprefix("torch.")}
        bar = tqdm(total=len(todo), desc=f"sampling {version['name']}", unit="prompt", disable=not args.progress)
        for i in range(0, len(todo), args.batch_size):
            batch = todo[i:i + args.batch_size]
            inputs, shots_used = [], []
            for p in batch:
                chat = use_chat_for_generation(tok, args.chat_format, p.is_chat, version["kind"])
                shots = [] if chat or version["kind"] in ("sft", "policy") else \
                    [(fp, fc) for fp, fc, key in few_shot if key != prompt_key(p.content)][:args.few_shot]
                ids, shots, cut = fit_prompt(tok, p, chat, shots, budget)
                inputs.append(ids)
                shots_used.append((chat, len(shots), cut))
            q_ids, q_mask = left_pad(inputs, tok.pad_token_id)
            out = sample(model, q_ids, q_mask, sp, stops, tok.pad_token_id, return_logprobs=False)
            new, ended = out.response_ids, out.ended_with_eos.tolist()
            decoded = tok.batch_decode(new, skip_special_tokens=True)
            with session_scope(args.database_url) as s, write_transaction(s):
                for j, p in enumerate(batch):
                    chat, n_shots, cut = shots_used[j]
                    extra = {"prompt_truncated_tokens": cut} if cut else {}
                    ids = []
                    for k in range(K):
                        text = decoded[j * K + k]
                        if n_shots:  # the model tends to continue with another example
                            text = text.split(FEW_SHOT_SEPARATOR)[0]
                        # A byte-level model can emit NUL, which PostgreSQL text cannot store: shown as U+FFFD.
                        text = text.strip().replace("\0", "\ufffd")
                        if not args.regenerate and k in have[p.id]:
                            ids.append(have[p.id][k])
                            counts["reused"] += 1
                            continue
                        r, created = content.add_response(
                            s, p.id, text, model_version_id=version["id"],
                            params={**params, "chat_template": chat, "few_shot": n_shots, **extra,
                                    "ended_with_eos": bool(ended[j * K + k])},
                            sample_index=k)
                        counts["generated"] += created
                        counts["reused"] += not created
                        ids.append(r.id)
                    result[p.id] = ids
            bar.update(len(batch))
        bar.close()
        del model
    reused = [rid for ids in result.values() for rid in ids if rid in have_params]
    _warn_if_settings_changed(version["name"], reused, have_params,
                              {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
                               "max_new_tokens": args.max_new_tokens})
    return version, result, counts


def _create_tasks(args: GenerateArgs, project_id: int, prompts: list[_Prompt], kinds: list[str],
                  per_model: list[tuple[dict[str, Any], dict[int, list[int]]]]) -> dict[str, dict[str, int]]:
    from db.services import tasks
    from db.session import session_scope, write_transaction

    stats = {k: {"created": 0, "existing": 0} for k in kinds}
    source = "rlhf.generate:" + ",".join(v["name"] for v, _ in per_model)
    with session_scope(args.database_url) as s, write_transaction(s):
        for p in prompts:
            pool = [(v["id"], rid) for v, res in per_model for rid in res.get(p.id, [])]
            pool = list(dict.fromkeys(pool))
            # One stream per purpose: whether an earlier run already created some of these tasks (and so drew
            # no A/B order for them) must not change which pairs or rank members this run picks.
            base = f"{args.seed}:{p.id}"
            pair_rng, rank_rng, order_rng = (random.Random(f"{base}:{what}") for what in ("pairs", "rank", "order"))
            if "compare" in kinds and len(pool) >= 2:
                pairs = [(a, b) for a, b in itertools.combinations(pool, 2) if a[1] != b[1]]
                if len({v for v, _ in pool}) > 1:
                    pairs = [(a, b) for a, b in pairs if a[0] != b[0]]  # across versions
                for a, b in pair_rng.sample(pairs, min(args.pairs_per_prompt, len(pairs))):
                    _, created = tasks.create_task(s, project_id, "compare", p.id, [a[1], b[1]], rng=order_rng,
                                                   source=source)
                    stats["compare"]["created" if created else "existing"] += 1
            if "rank" in kinds:
                ids = list(dict.fromkeys(rid for _, rid in pool))
                size = args.rank_size or len(ids)
                if len(ids) >= 3 and size >= 3:
                    chosen = rank_rng.sample(ids, min(size, len(ids)))
                    _, created = tasks.create_task(s, project_id, "rank", p.id, chosen, rng=order_rng,
                                                   source=source)
                    stats["rank"]["created" if created else "existing"] += 1
            if "rate" in kinds:
                for rid in dict.fromkeys(rid for _, rid in pool):
                    _, created = tasks.create_task(s, project_id, "rate", p.id, [rid], source=source)
                    stats["rate"]["created" if created else "existing"] += 1
        if "demonstrate" in kinds:
            stats["demonstrate"]["created"] = tasks.create_demonstrate_tasks(s, project_id, source="rlhf.generate")
    return stats


def run(args: GenerateArgs) -> dict[str, Any]:
    kinds = _task_kinds(args.tasks)
    if not args.project:
        raise InputError("--project is required", field="project")
    if args.num_samples < 1:
        raise InputError("--num_samples must be >= 1", field="num_samples")
    project_id, prompts = _load_prompts(args.database_url, args.project, args.limit_prompts)
    if not prompts:
        raise InputError(f"project {args.project!r} has no prompts: import some first "
                         "(python -m db import-prompts ...)", field="project")
    needs_model = any(k in ("compare", "rank", "rate") for k in kinds) or not kinds
    if needs_model and not args.models:
        raise InputError("--models is required to sample responses (only --tasks demonstrate needs none)",
                         field="models")
    total = args.num_samples * len(args.models)
    if "compare" in kinds and total < 2:
        raise InputError("compare tasks need at least 2 responses per prompt: raise --num_samples or add a "
                         "model", field="num_samples")
    if "rank" in kinds and (total < 3 or 0 < args.rank_size < 3):
        raise InputError("rank tasks need K >= 3 responses per prompt (--num_samples x models, --rank_size)",
                         field="num_samples")
    few_shot = _few_shot_examples(args.database_url, args.project, args.few_shot)
    per_model, counts = [], {"generated": 0, "reused": 0}
    for i, ref in enumerate(args.models):
        version, res, c = _sample_model(args, ref, i, prompts, few_shot)
        per_model.append((version, res))
        for k in counts:
            counts[k] += c[k]
    stats = _create_tasks(args, project_id, prompts, kinds, per_model)
    summary = {"project": args.project, "prompts": len(prompts), "models": [v["name"] for v, _ in per_model],
               "responses": counts, "tasks": stats}
    log.info("generate: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from trl import TrlParser

    from rlhf.runs import setup_logging

    setup_logging()
    try:
        from rlhf.config import HelpFormatter

        parser = TrlParser((GenerateArgs,), prog="python -m rlhf.generate", description=__doc__,
                           formatter_class=HelpFormatter)
        (args,) = parser.parse_args_and_config(args=argv)
        summary = run(args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
