"""Imports: prompts (JSONL/CSV), preference datasets (TRL or Anthropic HH), OpenAssistant trees.

Every import validates the whole file first and raises `InputError` naming file, line and field
before anything is written; the caller commits once (one transaction per import). Content hashes
make a re-import of the same file add nothing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Assignment, PreferenceLabel, Project, Ranking, Task, utcnow
from db.services import accounts, content, projects, tasks
from db.services.content import validate_messages
from db.services.errors import InputError

STRENGTH_FOR_MARGIN = ((0.75, "slight"), (1.5, "clear"), (float("inf"), "strong"))


@dataclass
class ImportResult:
    file: str
    kind: str
    rows: int = 0
    added: int = 0  # new prompts / preference pairs / trees, by kind
    skipped: int = 0  # rows already in the project
    details: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.details.items())
        return (f"{self.file}: {self.rows} rows read, {self.added} added, {self.skipped} already present"
                + (f" ({extra})" if extra else ""))


def _read_text(source: str | Path | bytes, filename: str | None) -> tuple[str, str]:
    """(text, display name). Bytes come from uploads; paths from the CLI."""
    if isinstance(source, (bytes, bytearray)):
        name, raw = filename or "upload", bytes(source)
    else:
        path = Path(source)
        name = filename or str(path)
        if not path.exists():
            raise InputError("file not found", file=name)
        raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), name
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                         "save the file as UTF-8", file=name, line=line) from e


def _jsonl(text: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    # Only "\n" ends a JSONL line: str.splitlines() would also cut at U+2028, U+2029 or U+0085, which JSON
    # allows unescaped inside strings (our own exports write them so).
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON ({e.msg} at column {e.colno})", file=name, line=i) from e
        if not isinstance(obj, dict):
            raise InputError("each line must be a JSON object", file=name, line=i)
        yield i, obj


@contextlib.contextmanager
def _located(name: str, line: int) -> Iterator[None]:
    """Give errors raised by shared validation (content.add_prompt …) the file and line of the row."""
    try:
        yield
    except InputError as e:
        if e.file:
            raise
        raise InputError(e.reason, file=name, line=line, field=e.field) from e


def _format_of(name: str, text: str) -> str:
    lower = name.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


# ---------------------------------------------------------------------------------------- prompts

def parse_prompts(text: str, name: str) -> list[dict[str, Any]]:
    """Rows {text|messages, meta, line}. JSONL needs `prompt` (string) or `messages` (chat turns);
    MT-Bench style `turns` (first turn) and Alpaca style `instruction`/`input` are accepted too.
    CSV needs a `prompt` column."""
    rows: list[dict[str, Any]] = []
    if _format_of(name, text) == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise InputError(f"CSV needs a 'prompt' column (found: {', '.join(reader.fieldnames or [])})",
                             file=name, line=1, field="prompt")
        try:
            records = [(reader.line_num, rec) for rec in reader]  # line_num: where the record ends in the file
        except csv.Error as e:
            raise InputError(f"malformed CSV: {e}", file=name, line=reader.line_num) from e
        for i, rec in records:
            value = (rec.get("prompt") or "").strip()
            if not value:
                raise InputError("empty prompt", file=name, line=i, field="prompt")
            meta = {k: v for k, v in rec.items() if k != "prompt" and k is not None and v not in (None, "")}
            rows.append({"text": value, "messages": None, "meta": meta, "line": i})
        return rows
    for i, obj in _jsonl(text, name):
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "messages", "turns", "instruction", "input",
                                                           "output", "instances")}
        if "messages" in obj:
            try:
                msgs = validate_messages(obj["messages"])
            except InputError as e:
                raise InputError(e.reason, file=name, line=i, field=e.field) from e
            # A trailing assistant turn is an answer, not part of the prompt.
            while msgs and msgs[-1]["role"] == "assistant":
                msgs.pop()
            if not msgs:
                raise InputError("no user turn", file=name, line=i, field="messages")
            rows.append({"text": None, "messages": msgs, "meta": meta, "line": i})
        elif "prompt" in obj:
            if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
                raise InputError("must be a non-empty string", file=name, line=i, field="prompt")
            rows.append({"text": obj["prompt"], "messages": None, "meta": meta, "line": i})
        elif "turns" in obj:  # MT-Bench questions: the first turn is the prompt
            turns = obj["turns"]
            if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
                raise InputError("must be a non-empty list of strings", file=name, line=i, field="turns")
            rows.append({"text": turns[0], "messages": None, "meta": {**meta, "turns": turns}, "line": i})
        elif "instruction" in obj:  # Alpaca / self-instruct seed tasks
            instr = obj["instruction"]
            instances = obj.get("instances") or [{}]
            if not isinstance(instances, list) or not all(isinstance(x, dict) for x in instances):
                raise InputError("must be a list of objects", file=name, line=i, field="instances")
            inp = obj.get("input") or instances[0].get("input") or ""
            if not isinstance(inp, str):
                raise InputError("must be a string", file=name, line=i, field="input")
            if not isinstance(instr, str) or not instr.strip():
                raise InputError("must be a non-empty string", file=name, line=i, field="instruction")
            rows.append({"text": instr + (f"\n\n{inp}" if inp else ""), "messages": None, "meta": meta,
                         "line": i})
        else:
            raise InputError("needs a 'prompt' or 'messages' field", file=name, line=i, field="prompt")
    return rows


def import_prompts(session: Session, source: str | Path | bytes, project: str, *,
                   filename: str | None = None, demonstrate_tasks: bool = False) -> ImportResult:
    """Import prompts into `project`. With `demonstrate_tasks`, also queue a demonstrate task each."""
    text, name = _read_text(source, filename)
    proj = projects.get_project(session, project)
    rows = parse_prompts(text, name)
    result = ImportResult(file=name, kind="prompts", rows=len(rows))
    for r in rows:
        with _located(name, r["line"]):
            p, created = content.add_prompt(session, proj.id, text=r["text"], messages=r["messages"],
                                            source=Path(name).name, meta=r["meta"])
        result.added += created
        result.skipped += not created
        if demonstrate_tasks:
            _, t_created = tasks.create_task(session, proj.id, "demonstrate", p.id, source=Path(name).name)
            result.details["demonstrate tasks"] = result.details.get("demonstrate tasks", 0) + t_created
    session.flush()
    return result


# ------------------------------------------------------------------------------------ preferences

def _count_imported_label(session: Session, task: Task, who_id: int, proj: Project) -> None:
    """An imported label takes a slot like an annotator's: a submitted assignment and the counter."""
    now = utcnow()
    session.add(Assignment(task_id=task.id, user_id=who_id, state="submitted", assigned_at=now, expires_at=now,
                           finished_at=now))
    task.n_submitted += 1
    if task.n_submitted >= proj.labels_per_task:
        task.status = "done"


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: …\\n\\nAssistant: …' → chat turns."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    turns = []
    for speaker, body in zip(parts[1::2], parts[2::2]):
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": body.strip()})
    if not turns:
        raise ValueError("no 'Human:'/'Assistant:' turns")
    return turns


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Implicit-prompt rows: the prompt is everything before the final assistant turn."""
    if not chosen or not rejected or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("chosen and rejected must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected do not share the same conversation before the last reply")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _completion_text(value: Any, fieldname: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = validate_messages(value, field=fieldname)
        if msgs[-1]["role"] != "assistant":
            raise InputError("must end with an assistant turn", field=fieldname)
        return "\n\n".join(m["content"] for m in msgs if m["role"] == "assistant")
    raise InputError("must be a string or a list of chat turns", field=fieldname)


def parse_preferences(text: str, name: str, fmt: str = "auto") -> tuple[str, list[dict[str, Any]]]:
    """Rows {messages, chosen, rejected, margin, line}. Formats: TRL explicit prompt
    (`prompt`/`chosen`/`rejected`, strings or chat turns, optional `margin`), TRL implicit prompt
    (chat-turn `chosen`/`rejected` sharing a prefix) and Anthropic HH (`chosen`/`rejected` strings
    with Human:/Assistant: turns)."""
    if fmt not in ("auto", "trl", "hh"):
        raise InputError(f"unknown format {fmt!r}: use auto, trl or hh", field="format")
    rows, seen_fmt = [], None
    for i, obj in _jsonl(text, name):
        for f in ("chosen", "rejected"):
            if f not in obj:
                raise InputError("missing field", file=name, line=i, field=f)
        row_fmt = fmt
        if fmt == "auto":
            row_fmt = ("trl" if "prompt" in obj or isinstance(obj["chosen"], list) else "hh")
        seen_fmt = seen_fmt or row_fmt
        try:
            if row_fmt == "hh":
                if not isinstance(obj["chosen"], str) or not isinstance(obj["rejected"], str):
                    raise InputError("HH rows need string 'chosen' and 'rejected'", field="chosen")
                try:
                    prompt_msgs, chosen, rejected = _split_shared_prefix(parse_hh(obj["chosen"]),
                                                                         parse_hh(obj["rejected"]))
                except ValueError as e:
                    raise InputError(str(e), field="chosen") from e
            elif "prompt" in obj:
                p = obj["prompt"]
                if isinstance(p, str):
                    if not p.strip():
                        raise InputError("empty prompt", field="prompt")
                    prompt_msgs = [{"role": "user", "content": p}]
                else:
                    prompt_msgs = validate_messages(p, field="prompt")
                chosen = _completion_text(obj["chosen"], "chosen")
                rejected = _completion_text(obj["rejected"], "rejected")
            else:
                if not isinstance(obj["chosen"], list) or not isinstance(obj["rejected"], list):
                    raise InputError("TRL rows need a 'prompt', or chat-turn 'chosen'/'rejected'", field="prompt")
                try:
                    prompt_msgs, chosen, rejected = _split_shared_prefix(
                        validate_messages(obj["chosen"], field="chosen"),
                        validate_messages(obj["rejected"], field="rejected"))
                except ValueError as e:
                    raise InputError(str(e), field="chosen") from e
            if not prompt_msgs:
                raise InputError("no prompt before the responses", field="prompt")
            margin = obj.get("margin")
            if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                                       or not math.isfinite(margin)):
                raise InputError("must be a finite number", field="margin")
            if chosen == rejected:
                raise InputError("chosen and rejected are identical", field="rejected")
            if obj.get("tie"):  # rows of an export made with --include-ties: no winner to import
                raise InputError(f"a '{obj['tie']}' row (exported with --include-ties) has no preferred "
                                 "response; export without ties to import", field="tie")
        except InputError as e:
            raise InputError(e.reason, file=name, line=i, field=e.field) from e
        rows.append({"messages": prompt_msgs, "chosen": chosen, "rejected": rejected, "margin": margin,
                     "line": i})
    return seen_fmt or fmt, rows


def strength_for_margin(margin: float | None) -> str | None:
    """Label strength from a dataset's margin; a margin of 0 or less (what our export writes for a label
    without strength, e.g. a ranking pair) means none, so export -> import -> export keeps it."""
    if margin is None or margin <= 0:
        return None
    for bound, name in STRENGTH_FOR_MARGIN:
        if margin < bound:
            return name
    return "strong"


def import_preferences(session: Session, source: str | Path | bytes, project: str, *, fmt: str = "auto",
                       filename: str | None = None, seed: int = 0) -> ImportResult:
    """Seed a project with an existing preference dataset: each row becomes a prompt, two responses,
    a compare task (A/B randomized) and one label by the pseudo-user `import:<file>`."""
    text, name = _read_text(source, filename)
    proj = projects.get_project(session, project)
    fmt_used, rows = parse_preferences(text, name, fmt)
    result = ImportResult(file=name, kind=f"preferences ({fmt_used})", rows=len(rows))
    who = accounts.system_user(session, f"import:{fmt_used}")
    rng = random.Random(seed)
    src = Path(name).name
    for r in rows:
        with _located(name, r["line"]):
            prompt, _ = content.add_prompt(session, proj.id, messages=r["messages"], source=src)
        rc, _ = content.add_response(session, prompt.id, r["chosen"], params={"source": src})
        rr, _ = content.add_response(session, prompt.id, r["rejected"], params={"source": src})
        task, _ = tasks.create_task(session, proj.id, "compare", prompt.id, [rc.id, rr.id], rng=rng, source=src)
        if session.scalar(select(PreferenceLabel.id).where(PreferenceLabel.task_id == task.id,
                                                           PreferenceLabel.user_id == who.id)) is not None:
            result.skipped += 1
            continue
        choice = "a" if task.response_ids[0] == rc.id else "b"
        session.add(PreferenceLabel(task_id=task.id, user_id=who.id, choice=choice,
                                    strength=strength_for_margin(r["margin"]), flags=[],
                                    comment="", seconds=None))
        _count_imported_label(session, task, who.id, proj)
        result.added += 1
    session.flush()
    return result


# ---------------------------------------------------------------------------------- OpenAssistant

def _oasst_nodes(tree: dict[str, Any], name: str, line: int
                 ) -> Iterator[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """(conversation up to a prompter message, its ranked assistant replies) for every prompter node."""
    root = tree.get("prompt")
    if not isinstance(root, dict):
        raise InputError("missing message tree", file=name, line=line, field="prompt")

    def walk(node: dict[str, Any], path: list[dict[str, str]]) -> Iterator:
        for f in ("text", "role"):
            if f not in node:
                raise InputError("message without this field", file=name, line=line, field=f)
            if not isinstance(node[f], str):
                raise InputError("must be a string", file=name, line=line, field=f)
        if not isinstance(node.get("replies") or [], list):
            raise InputError("must be a list of messages", file=name, line=line, field="replies")
        for r in node.get("replies") or []:
            rank = r.get("rank") if isinstance(r, dict) else None
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))):
                raise InputError(f"must be a number, not {rank!r}", file=name, line=line, field="rank")
        if node.get("deleted"):
            return
        role = {"prompter": "user", "assistant": "assistant"}.get(node["role"])
        if role is None:
            raise InputError(f"unknown role {node['role']!r}", file=name, line=line, field="role")
        here = path + [{"role": role, "content": node["text"]}]
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict) and not r.get("deleted")]
        if role == "user":
            ranked = [r for r in replies if r.get("role") == "assistant" and r.get("rank") is not None]
            if len(ranked) >= 2:
                yield here, sorted(ranked, key=lambda r: r["rank"])
        for r in replies:
            yield from walk(r, here)

    yield from walk(root, [])


def import_oasst(session: Session, source: str | Path | bytes, project: str, *,
                 filename: str | None = None, seed: int = 0) -> ImportResult:
    """OpenAssistant message trees: each prompter message with ≥2 ranked replies becomes a task —
    a rank task (with the tree's ranking as a label) for ≥3 replies, a compare task for 2."""
    text, name = _read_text(source, filename)
    proj = projects.get_project(session, project)
    trees = list(_jsonl(text, name))
    nodes = [(line, conv, ranked) for line, tree in trees for conv, ranked in _oasst_nodes(tree, name, line)]
    result = ImportResult(file=name, kind="oasst", rows=len(trees))
    who = accounts.system_user(session, "import:oasst")
    rng = random.Random(seed)
    src = Path(name).name
    details = {"rank tasks": 0, "compare tasks": 0}
    for line, conv, ranked in nodes:
        with _located(name, line):
            prompt, _ = content.add_prompt(session, proj.id, messages=conv, source=src)
        resp = []
        for r in ranked:
            row, _ = content.add_response(session, prompt.id, r["text"],
                                          params={"source": src, "oasst_message_id": r.get("message_id"),
                                                  "oasst_rank": r["rank"]})
            resp.append(row)
        if len({r.id for r in resp}) < len(resp):  # identical reply texts: cannot rank them apart
            continue
        kind = "rank" if len(resp) >= 3 else "compare"
        task, _ = tasks.create_task(session, proj.id, kind, prompt.id, [r.id for r in resp], rng=rng, source=src)
        table = Ranking if kind == "rank" else PreferenceLabel
        if session.scalar(select(table.id).where(table.task_id == task.id, table.user_id == who.id)):
            result.skipped += 1
            continue
        if kind == "rank":
            # Equal OASST ranks tie.
            groups: dict[int, list[int]] = {}
            for src_node, row in zip(ranked, resp):
                groups.setdefault(src_node["rank"], []).append(row.id)
            ordering = [groups[k] for k in sorted(groups)]
            if len(ordering) < 2:
                continue
            session.add(Ranking(task_id=task.id, user_id=who.id, ordering=ordering, flags=[], comment=""))
        else:
            best = resp[0].id
            choice = ("tie" if ranked[0]["rank"] == ranked[1]["rank"]
                      else "a" if task.response_ids[0] == best else "b")
            session.add(PreferenceLabel(task_id=task.id, user_id=who.id, choice=choice, flags=[], comment=""))
        details[f"{kind} tasks"] += 1
        _count_imported_label(session, task, who.id, proj)
        result.added += 1
    result.details = details
    session.flush()
    return result
