"""Database and JSONL → ``datasets.Dataset`` in TRL formats: one code path for both sources.

``--project P`` reads rows with ``db.services.export.iter_sft_rows`` / ``iter_preference_rows`` — the very
iterators ``python -m db export`` writes to JSONL — and ``--dataset FILE`` reads those rows back. Everything
after the row source (validation, rendering, train/eval split, Dataset) is shared, so a model trained from a
project and one trained from that project's export see identical data.

Preference files may also be Anthropic HH or TRL implicit-prompt rows: those are converted with
``db.services.importers.parse_preferences`` (the importer's parser).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.services.errors import InputError
from rlhf.formatting import format_preference_row, format_sft_row, is_chat

SFT_KIND, PREF_KIND, PROMPT_KIND = "sft", "preferences", "prompts"


@dataclass
class Rows:
    """Rows from one source plus what they were made from (for the model version's lineage)."""

    rows: list[dict[str, Any]]
    source: dict[str, Any] = field(default_factory=dict)  # {"project"|"dataset", ...}
    label_ids: dict[str, list[int]] = field(default_factory=dict)
    dropped: int = 0

    def snapshot(self) -> dict[str, Any]:
        snap = dict(self.source)
        if self.label_ids:
            snap["ids"] = self.label_ids
            snap["max_id"] = {k: max(v) for k, v in self.label_ids.items() if v}
        return snap


# ------------------------------------------------------------------------------------- row sources

def rows_from_db(url: str | None, project: str, iter_rows: str, check: Callable[[list[dict[str, Any]], str], Any],
                 empty: str, label_table: str, filters: dict[str, Any]) -> Rows:
    """A project's rows from ``db.services.export.<iter_rows>`` (the iterator ``python -m db export`` writes,
    given ``filters``), refused with ``empty`` when there are none, checked by ``check``, with the ids of the
    labels they came from (the model version's lineage)."""
    from db.services import export
    from db.session import session_scope

    collect: dict[str, list[int]] = {}
    with session_scope(url) as s:
        rows = list(getattr(export, iter_rows)(s, project=project, collect=collect, **filters))
    if not rows:
        raise InputError(empty, field="project")
    return Rows(check(rows, f"project {project}"),
                {"project": project, "label_table": label_table,
                 "filters": {k: list(v) if isinstance(v, tuple) else v for k, v in filters.items()}},
                export.label_ids(collect))


def sft_rows_from_db(url: str | None, project: str, statuses: Iterable[str] = ("accepted",)) -> Rows:
    statuses = tuple(statuses)
    return rows_from_db(url, project, "iter_sft_rows", check_sft_rows,
                        f"project {project!r} has no demonstrations with status {'/'.join(statuses)}: accept some "
                        "in the review page (or pass --statuses accepted,submitted)",
                        "demonstrations", {"statuses": statuses})


def preference_rows_from_db(url: str | None, project: str, aggregate: str = "majority") -> Rows:
    return rows_from_db(url, project, "iter_preference_rows", check_preference_rows,
                        f"project {project!r} has no preference labels or rankings to train on "
                        f"(aggregate={aggregate}; ties and both-bad are left out)",
                        "preference_labels+rankings", {"aggregate": aggregate})


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise InputError("file not found", file=str(p))
    rows = []
    with p.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not JSON: {e.msg}", file=str(p), line=i) from e
            if not isinstance(obj, dict):
                raise InputError("each line must be a JSON object", file=str(p), line=i)
            rows.append(obj)
    if not rows:
        raise InputError("the file has no rows", file=str(p))
    return rows


def file_source(path: str | Path) -> dict[str, Any]:
    """Where a JSONL file's rows came from, for the lineage: its resolved path, sha256 and the
    ``<file>.manifest.json`` that ``python -m db export`` writes beside it, when there is one."""
    p = Path(path)
    src: dict[str, Any] = {"dataset": str(p.resolve()),
                           "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    manifest = p.with_name(p.name + ".manifest.json")
    if manifest.is_file():
        try:
            src["manifest"] = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            pass
    return src


def sft_rows_from_file(path: str | Path) -> Rows:
    raw = read_jsonl(path)
    rows = []
    for i, r in enumerate(raw, 1):
        if "messages" in r and "prompt" not in r:  # OpenAI chat style: the last assistant turn is the completion
            msgs = r["messages"]
            if not is_chat(msgs) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
                raise InputError("'messages' must be chat turns ending with an assistant turn",
                                 file=str(path), line=i, field="messages")
            rows.append({"prompt": msgs[:-1], "completion": [msgs[-1]]})
        else:
            rows.append(r)
    return Rows(check_sft_rows(rows, str(path)), file_source(path))


def is_oasst_tree(row: dict[str, Any]) -> bool:
    """An OpenAssistant message tree (oasst1/oasst2 ``*_tree.jsonl``): a root message with replies."""
    return isinstance(row.get("prompt"), dict) and "replies" in row["prompt"]


def oasst_preference_rows(path: str | Path) -> Rows:
    """OpenAssistant trees as ranked pairs (the importer's parser, ``db import oasst``): each prompter message
    with ranked replies is one ranking (``group``); equal ranks are ties and left out. ``split_key`` is the
    tree, so a held-out split never puts one conversation's branches on both sides."""
    from db.services.importers import parse_oasst

    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    rows: list[dict[str, Any]] = []
    for line, nodes in parse_oasst(text, str(path)):
        tree = str(json.loads(lines[line - 1]).get("message_tree_id") or f"line-{line}")
        for k, (conv, ranked) in enumerate(nodes):
            prompt: Any = conv[0]["content"] if len(conv) == 1 else conv
            for i, a in enumerate(ranked):
                for b in ranked[i + 1:]:
                    if a["rank"] < b["rank"] and a["text"] != b["text"]:
                        rows.append({"prompt": prompt, "chosen": a["text"], "rejected": b["text"], "margin": 0.0,
                                     "group": f"oasst-{tree}-{k}", "split_key": tree})
    if not rows:
        raise InputError("no ranked replies in these OpenAssistant trees", file=str(path))
    return Rows(check_preference_rows(rows, str(path)), file_source(path))


def preference_rows_from_file(path: str | Path) -> Rows:
    raw = read_jsonl(path)
    if is_oasst_tree(raw[0]):
        return oasst_preference_rows(path)
    if all("prompt" in r for r in raw):  # TRL explicit prompt: exactly what the export writes
        rows = [r for r in raw if not r.get("tie")]
        return Rows(check_preference_rows(rows, str(path)), file_source(path), dropped=len(raw) - len(rows))
    # HH or TRL implicit prompt: the importer's parser splits the shared conversation from the replies
    for i, r in enumerate(raw, 1):
        if "prompt" not in r and not (isinstance(r.get("chosen"), list)
                                      or "Human:" in str(r.get("chosen", ""))):
            raise InputError(f"row {i} has no 'prompt' column (columns: {', '.join(sorted(r))}); expected TRL "
                             "rows {prompt, chosen, rejected[, margin]}, chat-turn chosen/rejected, or HH rows "
                             "('\\n\\nHuman: ...\\n\\nAssistant: ...')", file=str(path), line=i, field="prompt")
    from db.services.importers import parse_preferences

    text = Path(path).read_text(encoding="utf-8")
    _fmt, parsed = parse_preferences(text, str(path))
    rows = []
    for r in parsed:
        msgs = r["messages"]
        prompt: Any = msgs[0]["content"] if len(msgs) == 1 and msgs[0]["role"] == "user" else msgs
        rows.append({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"],
                     "margin": float(r["margin"] or 0.0)})
    return Rows(check_preference_rows(rows, str(path)), file_source(path))


def prompt_rows_from_db(url: str | None, project: str) -> Rows:
    """The project's prompts as {prompt, prompt_id[, answer]} (what ``python -m db export prompts`` writes):
    text, or chat turns for chat prompts; ``answer`` when the prompt's metadata has one (verifiable tasks)."""
    from db.services import export
    from db.session import session_scope

    with session_scope(url) as s:
        rows = list(export.iter_prompt_rows(s, project=project))
    if not rows:
        raise InputError(f"project {project!r} has no prompts: import some first (python -m db import prompts ...)",
                         field="project")
    return Rows(rows, {"project": project, "label_table": "prompts"},
                {"prompts": sorted(r["prompt_id"] for r in rows)})


def prompt_rows_from_file(path: str | Path) -> Rows:
    """Prompt JSONL: {prompt: text | chat turns} or {messages: [...]} rows (an SFT or preference file works too:
    only its prompts are read); an optional ``answer`` makes the prompt verifiable."""
    rows = []
    for i, r in enumerate(read_jsonl(path), 1):
        prompt = r.get("prompt")
        if prompt is None and "messages" in r:
            msgs = r["messages"]
            prompt = msgs[:-1] if is_chat(msgs) and msgs and msgs[-1].get("role") == "assistant" else msgs
        if not (isinstance(prompt, str) and prompt.strip()) and not (is_chat(prompt) and prompt):
            raise InputError("each row needs a non-empty 'prompt' (text or chat turns) or 'messages'",
                             file=str(path), line=i, field="prompt")
        row = {"prompt": prompt, "prompt_id": r.get("prompt_id", i)}
        if r.get("answer") is not None:
            row["answer"] = str(r["answer"])
        rows.append(row)
    return Rows(rows, file_source(path))


# ------------------------------------------------------------------------------------- validation

def _missing(rows: list[dict[str, Any]], columns: tuple[str, ...], where: str) -> None:
    if not rows:
        raise InputError(f"{where}: no rows")
    for i, r in enumerate(rows, 1):
        missing = [c for c in columns if c not in r]
        if missing:
            raise InputError(f"{where}: row {i} is missing column(s) {', '.join(missing)} "
                             f"(expected {', '.join(columns)})", field=missing[0])


def check_sft_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    _missing(rows, ("prompt", "completion"), where)
    for i, r in enumerate(rows, 1):
        for c in ("prompt", "completion"):
            v = r[c]
            if not (isinstance(v, str) and v.strip()) and not (is_chat(v) and v):
                raise InputError(f"{where}: row {i}: '{c}' must be non-empty text or chat turns", field=c)
    return rows


def check_preference_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    _missing(rows, ("prompt", "chosen", "rejected"), where)
    for i, r in enumerate(rows, 1):
        for c in ("prompt", "chosen", "rejected"):
            v = r[c]
            if not isinstance(v, str) and not (is_chat(v) and v):
                raise InputError(f"{where}: row {i}: '{c}' must be text or chat turns", field=c)
        m = r.get("margin")
        if m is not None and not isinstance(m, (int, float)):
            raise InputError(f"{where}: row {i}: 'margin' must be a number", field="margin")
    return rows


# ------------------------------------------------------------------------------- split and Dataset

def conversation_start(prompt: Any) -> Any:
    """What the held-out split hashes for a row without a ``split_key``: a plain prompt itself, and for a
    conversation its opening turn, so every branch of one conversation (an OpenAssistant tree imported into a
    project keeps no tree id) lands on one side. A one-turn chat hashes as the same text prompt."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
        # a shared system message says nothing about the conversation: with it, the first user turn
        opening = next((i for i, m in enumerate(prompt) if m.get("role") != "system"), len(prompt) - 1)
        if opening == 0:
            return prompt[0].get("content")
        return [[m.get("role"), m.get("content")] for m in prompt[:opening + 1]]
    return prompt


def _split_key(row: dict[str, Any]) -> float:
    return _prompt_key(row["split_key"] if row.get("split_key") is not None else conversation_start(row["prompt"]))


def _prompt_key(prompt: Any) -> float:
    h = hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return int(h[:12], 16) / 16 ** 12


def split_by_prompt(rows: list[dict[str, Any]], eval_fraction: float, keys: list[float] | None = None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic split on a hash of the prompt's opening turn (``conversation_start``; or of ``split_key``
    when a row has one: an OpenAssistant tree): all pairs of one conversation land on the same side. ``keys``:
    the rows' keys computed beforehand (from the rows before formatting)."""
    if eval_fraction <= 0:
        return rows, []
    keys = keys if keys is not None else [_split_key(r) for r in rows]
    train = [r for r, k in zip(rows, keys) if k >= eval_fraction]
    held = [r for r, k in zip(rows, keys) if k < eval_fraction]
    distinct = sorted(set(keys))
    if not held and len(distinct) > 1:  # tiny data: hold out the lowest-hash prompt
        held = [r for r, k in zip(rows, keys) if k == distinct[0]]
        train = [r for r, k in zip(rows, keys) if k != distinct[0]]
    if not train:
        train, held = held, []
    return train, held


def build_datasets(rows: list[dict[str, Any]], kind: str, chat: bool, eval_fraction: float,
                   max_rows: int | None = None, eval_rows: list[dict[str, Any]] | None = None):
    """→ (train Dataset, eval Dataset or None) in TRL prompt-completion / explicit-prompt preference format."""
    fmt = format_sft_row if kind == SFT_KIND else format_preference_row
    return formatted_datasets(rows, fmt, chat, eval_fraction, max_rows, eval_rows)


def formatted_datasets(rows: list[dict[str, Any]], fmt: Callable[[dict[str, Any], bool], dict[str, Any]],
                       chat: bool, eval_fraction: float, max_rows: int | None = None,
                       eval_rows: list[dict[str, Any]] | None = None):
    """→ (train Dataset, eval Dataset or None) of rows rendered by ``fmt(row, chat)``: held out by prompt hash
    (``split_by_prompt``) unless ``eval_rows`` are given; ``max_rows`` caps the training rows."""
    from datasets import Dataset

    formatted = [fmt(r, chat) for r in rows]
    if eval_rows is not None:
        train, held = formatted, [fmt(r, chat) for r in eval_rows]
    else:  # keyed on the raw rows: a plain rendering has lost the conversation's turns
        train, held = split_by_prompt(formatted, eval_fraction, keys=[_split_key(r) for r in rows])
    if max_rows:
        train = train[:max_rows]
    return Dataset.from_list(train), (Dataset.from_list(held) if held else None)


def ranking_rows(pairs: list[dict[str, Any]], grouped: bool = True) -> list[dict[str, Any]]:
    """Formatted pair rows → one row per ranking: ``{prompt, responses, pairs, margins}``.

    Pairs with the same ``group`` (one per ranked task: ``db.services.export`` names it ``task-<id>``, so two
    rank tasks of one prompt stay two rankings) become one row whose distinct responses are each scored once
    in training (rlhf.reward_trainer); a pair without a group, or every pair with ``grouped=False``, is a
    ranking of two. Rows keep the order of their first pair."""
    out: list[dict[str, Any]] = []
    by_group: dict[Any, dict[str, Any]] = {}
    for i, p in enumerate(pairs):
        key = p.get("group") if grouped and p.get("group") is not None else ("\0pair", i)
        row = by_group.get(key)
        if row is None:
            row = by_group[key] = {"prompt": p["prompt"], "responses": [], "pairs": [], "margins": [], "_at": {}}
            out.append(row)
        idx = []
        for side in ("chosen", "rejected"):
            k = json.dumps(p[side], sort_keys=True, ensure_ascii=False)
            if k not in row["_at"]:
                row["_at"][k] = len(row["responses"])
                row["responses"].append(p[side])
            idx.append(row["_at"][k])
        row["pairs"].append(idx)
        row["margins"].append(float(p.get("margin") or 0.0))
    for row in out:
        del row["_at"]
    return out


def load_rows(kind: str, *, url: str | None, project: str | None, dataset: str | None, **filters: Any) -> Rows:
    """One entry point for both sources."""
    if bool(project) == bool(dataset):
        raise InputError("give exactly one of --project (database) or --dataset (JSONL file)", field="project")
    if kind == SFT_KIND:
        return sft_rows_from_db(url, project, **filters) if project else sft_rows_from_file(dataset)
    if kind == PROMPT_KIND:
        return prompt_rows_from_db(url, project) if project else prompt_rows_from_file(dataset)
    return preference_rows_from_db(url, project, **filters) if project else preference_rows_from_file(dataset)
