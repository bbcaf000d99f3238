"""Imports: prompts (JSONL/CSV), preference datasets (TRL or Anthropic HH), OpenAssistant trees, ratings (TRL
unpaired preferences).

Files are read as published: UTF-8 JSONL (or CSV for prompts), optionally gzip-compressed (HH and OASST ship
`.jsonl.gz`). Every line is checked before anything is written. A line that cannot be read is refused with
its line number, field and reason: by default the whole file is then refused (`InvalidRowsError` lists the
bad lines); with `skip_invalid=True` every good row is imported and the refused lines come back in
`ImportResult.refused` for a report. Either way the caller commits once (one transaction per import), and
content hashes make a re-import of the same file add nothing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from db import settings
from db.models import Assignment, PreferenceLabel, Project, Prompt, Ranking, Rating, Response, Task, utcnow
from db.services import accounts, audit, content, projects, tasks
from db.services.content import validate_messages
from db.services.errors import InputError

STRENGTH_FOR_MARGIN = ((0.75, "slight"), (1.5, "clear"), (float("inf"), "strong"))
SHOWN_BAD_LINES = 5  # how many refused lines an error message lists

# What to do about bad lines, as each front end words it ({good}: rows that would import).
CLI_HINT = ("fix {them}, or pass --skip-invalid REPORT.jsonl to import the {good} good {rows} and write each "
            "refused line (line number and reason) to REPORT.jsonl")
UI_HINT = ("fix {them}, or tick 'Skip invalid rows' to import the {good} good {rows} and download a report of "
           "the refused lines")


def fill_hint(hint: str, good: int, bad: int) -> str:
    """`hint` (CLI_HINT or UI_HINT) for `good` importable and `bad` refused lines; with no good line there is
    nothing to skip to, so only "fix them" is left."""
    them = "it" if bad == 1 else "them"
    if good <= 0:
        return f"fix {them} and import the file again"
    return hint.format(good=good, them=them, rows="row" if good == 1 else "rows")


# ------------------------------------------------------------------------------ refused lines

@dataclass
class RefusedLine:
    """A line of the input that cannot be imported, as it appears in the report."""

    line: int
    reason: str
    field: str | None = None
    text: str = ""  # the line as it stands in the file

    def located(self, name: str) -> str:
        return str(InputError(self.reason, file=name, line=self.line, field=self.field))

    def as_json(self, name: str) -> dict[str, Any]:
        return {"file": name, "line": self.line, "field": self.field, "reason": self.reason, "text": self.text}


class InvalidRowsError(InputError):
    """Some lines cannot be imported and the caller did not ask to skip them: nothing was imported."""

    def __init__(self, name: str, refused: list[RefusedLine], total: int, hint: str = CLI_HINT) -> None:
        self.refused, self.total = refused, total
        first = refused[0]
        if len(refused) == 1:  # one bad line: the located message of that line, as for any input error
            super().__init__(f"{first.reason} (1 of {total} lines cannot be imported; nothing was imported: "
                             f"{self._hint(hint)})", file=name, line=first.line, field=first.field)
        else:
            super().__init__(self.describe(hint, name=name), file=name)
            self.line, self.field = first.line, first.field

    def _hint(self, hint: str) -> str:
        return fill_hint(hint, self.total - len(self.refused), len(self.refused))

    def describe(self, hint: str = CLI_HINT, *, name: str | None = None) -> str:
        """The message with `hint` saying what to do; lists the first few bad lines, one per line."""
        name = name or self.file or "input"
        if len(self.refused) == 1:
            return self.refused[0].located(name) + (f" (1 of {self.total} lines cannot be imported; nothing "
                                                     f"was imported: {self._hint(hint)})")
        shown = [f"  {r.located(name)}" for r in self.refused[:SHOWN_BAD_LINES]]
        more = len(self.refused) - SHOWN_BAD_LINES
        if more > 0:
            shown.append(f"  ... and {more} more")
        return (f"{len(self.refused)} of {self.total} lines cannot be imported; nothing was imported:\n"
                + "\n".join(shown) + f"\n{self._hint(hint)[:1].upper()}{self._hint(hint)[1:]}")


def report_lines(name: str, refused: list[RefusedLine]) -> Iterator[str]:
    """The skip-invalid report: one JSON object per refused line (file, line, field, reason, text)."""
    for r in refused:
        yield json.dumps(r.as_json(name), ensure_ascii=False) + "\n"


def report_bytes(name: str, refused: list[RefusedLine]) -> bytes:
    return "".join(report_lines(name, refused)).encode("utf-8")


def write_report(path: str | Path, name: str, refused: list[RefusedLine]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(report_lines(name, refused))
    except OSError as e:
        raise InputError(f"cannot write the report: {e.strerror}", file=str(path)) from e


def _settle(name: str, bad: list[RefusedLine], total: int, refused: list[RefusedLine] | None) -> None:
    """Bad lines either go to the caller's list (skip invalid) or refuse the whole file."""
    if not bad:
        return
    if refused is None:
        raise InvalidRowsError(name, bad, total)
    refused.extend(bad)


@dataclass
class ImportResult:
    file: str
    kind: str
    rows: int = 0  # rows read and importable
    added: int = 0  # new prompts / preference pairs / trees, by kind
    skipped: int = 0  # rows already in the project
    details: dict[str, int] = field(default_factory=dict)
    refused: list[RefusedLine] = field(default_factory=list)  # only with skip_invalid

    def summary(self) -> str:
        extra = ", ".join(f"{k}: {v}" for k, v in self.details.items())
        refused = f", {len(self.refused)} lines refused" if self.refused else ""
        return (f"{self.file}: {self.rows} rows read, {self.added} added, {self.skipped} already present"
                + refused + (f" ({extra})" if extra else ""))


# ---------------------------------------------------------------------------------- reading

# Bytes that are not UTF-8 decode to U+DC80..U+DCFF ("surrogateescape"), so a bad byte refuses its own line
# only; valid UTF-8 never decodes to a surrogate.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# What neither database can store as text: NUL (PostgreSQL) and unpaired surrogates (not encodable as UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _too_big(name: str, size: int, unpacked: bool = False) -> InputError:
    limit_mb = settings.size_limit("upload")
    what = "unpacks to more than" if unpacked else f"has {size / 2**20:,.1f} MB, over"
    return InputError(f"the file {what} the upload limit of {limit_mb:,} MB (set by "
                      f"{settings.SIZE_LIMITS['upload'][0]}); split it into smaller files", file=name)


def _gunzip(raw: bytes, limit: int, name: str) -> bytes:
    """gzip.decompress (every member) that stops at `limit` bytes of output instead of filling the memory."""
    out, data = bytearray(), raw
    while data.strip(b"\x00"):
        unpack = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += unpack.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _too_big(name, len(out), unpacked=True)
        if not unpack.eof:
            raise EOFError("Compressed file ended before the end-of-stream marker was reached")
        data = unpack.unused_data
    return bytes(out)


def _open_import(session: Session, source: str | Path | bytes, filename: str | None, project: str,
                 actor_id: int | None) -> tuple[str, str, Project]:
    """(text, display name, project) of an import: the admin check first, so nothing is read for anyone else."""
    audit.require_admin(session, actor_id, "importing")
    text, name = _read_text(source, filename)
    return text, name, projects.get_project(session, project)


def _read_text(source: str | Path | bytes, filename: str | None) -> tuple[str, str]:
    """(text, display name). Bytes come from uploads; paths from the CLI. Gzip is unpacked. Files over the
    upload limit are refused before reading, and gzip files that unpack to more (a zip bomb) while unpacking."""
    limit = settings.upload_limit_bytes()
    if isinstance(source, (bytes, bytearray)):
        name, raw = filename or "upload", bytes(source)
        if len(raw) > limit:
            raise _too_big(name, len(raw))
    else:
        path = Path(source)
        name = filename or str(path)
        if not path.is_file():
            raise InputError("file not found", file=name)
        if path.stat().st_size > limit:
            raise _too_big(name, path.stat().st_size)
        raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = _gunzip(raw, limit, name)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"broken gzip file ({e}); download it again", file=name) from e
    return raw.decode("utf-8-sig", errors="surrogateescape"), name


def _undecodable(m: re.Match[str]) -> str:
    return (f"not valid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1}); "
            "save the file as UTF-8")


def _jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    # Only "\n" ends a JSONL line: str.splitlines() would also cut at U+2028, U+2029 or U+0085, which JSON
    # allows unescaped inside strings (our own exports write them so).
    for i, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            yield i, line


def _json_object(line: str) -> dict[str, Any]:
    bad = _UNDECODABLE.search(line)
    if bad:
        raise InputError(_undecodable(bad))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        at = "" if e.msg.endswith(" at") else " at"  # "Unterminated string starting at" + column
        raise InputError(f"malformed JSON ({e.msg}{at} column {e.colno})") from e
    except (ValueError, RecursionError) as e:  # e.g. an integer of more than 4300 digits, nesting too deep
        raise InputError(f"unreadable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise InputError("each line must be a JSON object")
    return obj


def _parse_jsonl(text: str, name: str, parse_row: Callable[[dict[str, Any], int], Any],
                 refused: list[RefusedLine] | None) -> list[Any]:
    """parse_row(obj, line) for every line; lines it refuses (InputError) are collected, then settled."""
    rows, bad, total = [], [], 0
    for i, line in _jsonl_lines(text):
        total += 1
        try:
            rows.append(parse_row(_json_object(line), i))
        except InputError as e:
            bad.append(RefusedLine(i, e.reason, e.field, line.encode("utf-8", "surrogateescape")
                                   .decode("utf-8", "replace")))
    _settle(name, bad, total, refused)
    return rows


# Fields checked against the size limits while parsing, so that an oversized row is refused as a line.
_SIZE_OF_FIELD = {"prompt": "prompt", "messages": "prompt", "turns": "prompt", "instruction": "prompt",
                  "chosen": "response", "rejected": "response", "completion": "response"}


def _check_storable(value: Any, fieldname: str) -> None:
    """Refuse text the database cannot hold (checked before writing, so it refuses a line, not the file)."""
    if fieldname in _SIZE_OF_FIELD:
        content.check_size(_SIZE_OF_FIELD[fieldname], value, field=fieldname)
    if isinstance(value, str):
        m = _UNSTORABLE.search(value)
        if m:
            what = ("a NUL character (\\u0000)" if m.group() == "\x00"
                    else f"an unpaired surrogate (\\u{ord(m.group()):04x}, a broken emoji?)")
            raise InputError(f"contains {what}, which cannot be stored as text", field=fieldname)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_storable(k, fieldname)
            _check_storable(v, fieldname)
    elif isinstance(value, list):
        for v in value:
            _check_storable(v, fieldname)


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
    lower = name.lower().removesuffix(".gz")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


# ---------------------------------------------------------------------------------------- prompts

def _prompt_row(obj: dict[str, Any], i: int) -> dict[str, Any]:
    meta = {k: v for k, v in obj.items() if k not in ("prompt", "messages", "turns", "instruction", "input",
                                                       "output", "instances")}
    for k, v in meta.items():  # kept as the prompt's metadata, so stored too
        _check_storable(k, "metadata key")
        _check_storable(v, k)
    if "messages" in obj:
        msgs = validate_messages(obj["messages"])
        # A trailing assistant turn is an answer, not part of the prompt.
        while msgs and msgs[-1]["role"] == "assistant":
            msgs.pop()
        if not msgs:
            raise InputError("no user turn", field="messages")
        _check_storable(msgs, "messages")
        return {"text": None, "messages": msgs, "meta": meta, "line": i}
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise InputError("must be a non-empty string", field="prompt")
        _check_storable(obj["prompt"], "prompt")
        return {"text": obj["prompt"], "messages": None, "meta": meta, "line": i}
    if "turns" in obj:  # MT-Bench questions: the first turn is the prompt
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise InputError("must be a non-empty list of strings", field="turns")
        _check_storable(turns, "turns")
        return {"text": turns[0], "messages": None, "meta": {**meta, "turns": turns}, "line": i}
    if "instruction" in obj:  # Alpaca / self-instruct seed tasks
        instr = obj["instruction"]
        instances = obj.get("instances") or [{}]
        if not isinstance(instances, list) or not all(isinstance(x, dict) for x in instances):
            raise InputError("must be a list of objects", field="instances")
        inp = obj.get("input") or instances[0].get("input") or ""
        if not isinstance(inp, str):
            raise InputError("must be a string", field="input")
        if not isinstance(instr, str) or not instr.strip():
            raise InputError("must be a non-empty string", field="instruction")
        text = instr + (f"\n\n{inp}" if inp else "")
        _check_storable(text, "instruction")
        return {"text": text, "messages": None, "meta": meta, "line": i}
    raise InputError("needs a 'prompt' or 'messages' field", field="prompt")


def _csv_prompt_rows(text: str, name: str, refused: list[RefusedLine] | None) -> list[dict[str, Any]]:
    bad_byte = _UNDECODABLE.search(text)
    if bad_byte:  # a CSV record may span lines, so a bad byte cannot refuse just one record
        raise InputError(_undecodable(bad_byte), file=name, line=text.count("\n", 0, bad_byte.start()) + 1)
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise InputError(f"CSV needs a 'prompt' column (found: {', '.join(reader.fieldnames or [])})",
                         file=name, line=1, field="prompt")
    try:
        records = [(reader.line_num, rec) for rec in reader]  # line_num: where the record ends in the file
    except csv.Error as e:
        raise InputError(f"malformed CSV: {e}", file=name, line=reader.line_num) from e
    rows, bad = [], []
    for i, rec in records:
        value = (rec.get("prompt") or "").strip()
        meta = {k: v for k, v in rec.items() if k != "prompt" and k is not None and v not in (None, "")}
        try:
            if not value:
                raise InputError("empty prompt", field="prompt")
            _check_storable(rec.get("prompt"), "prompt")
            _check_storable(meta, "meta")
        except InputError as e:
            bad.append(RefusedLine(i, e.reason, e.field, json.dumps(rec, ensure_ascii=False)))
            continue
        rows.append({"text": value, "messages": None, "meta": meta, "line": i})
    _settle(name, bad, len(records), refused)
    return rows


def parse_prompts(text: str, name: str, *, refused: list[RefusedLine] | None = None) -> list[dict[str, Any]]:
    """Rows {text|messages, meta, line}. JSONL needs `prompt` (string) or `messages` (chat turns);
    MT-Bench style `turns` (first turn) and Alpaca style `instruction`/`input` are accepted too.
    CSV needs a `prompt` column. Bad lines go to `refused` when given, else raise InvalidRowsError."""
    if _format_of(name, text) == "csv":
        return _csv_prompt_rows(text, name, refused)
    return _parse_jsonl(text, name, _prompt_row, refused)


def _audit_import(session: Session, result: ImportResult, project: str, actor_id: int | None) -> None:
    """The import's audit entry, in the import's transaction (rolled back with it)."""
    audit.record(session, "import", actor_id=actor_id, target=f"{result.kind} into {project}",
                 details={"file": Path(result.file).name, "rows": result.rows, "added": result.added,
                          "skipped": result.skipped, "refused": len(result.refused)})


_INSERT_BATCH = 5000  # rows per INSERT ... RETURNING of a bulk import
_PROMPTS = Prompt.__table__
_RESPONSES = Response.__table__
_TASKS = Task.__table__


def _stored_prompt_row(r: dict[str, Any]) -> tuple[str | None, list[dict[str, str]] | None]:
    """(text, messages) of a parsed prompt row as content.add_prompt would store it, with its checks."""
    text, messages = r["text"], r["messages"]
    if messages:
        messages = validate_messages(messages)
        if len(messages) == 1 and messages[0]["role"] == "user":  # a one-turn chat is a plain prompt
            text, messages = messages[0]["content"], None
    if not messages and not (text or "").strip():
        raise InputError("prompt is empty", field="prompt")
    content.check_size("prompt", messages or text, field="prompt")
    return (text if not messages else None), (messages or None)


def import_prompts(session: Session, source: str | Path | bytes, project: str, *,
                   filename: str | None = None, demonstrate_tasks: bool = False,
                   skip_invalid: bool = False, actor_id: int | None = None) -> ImportResult:
    """Import prompts into `project`. With `demonstrate_tasks`, also queue a demonstrate task each."""
    text, name, proj = _open_import(session, source, filename, project, actor_id)
    refused: list[RefusedLine] = []
    rows = parse_prompts(text, name, refused=refused if skip_invalid else None)
    result = ImportResult(file=name, kind="prompts", rows=len(rows), refused=refused)
    src = Path(name).name
    # Every row checked first, as content.add_prompt checks it (an error names its line; nothing is written
    # yet), then written in bulk: one lookup per 500 hashes and one INSERT batch instead of a SELECT and a
    # flush per row, which ran at ~2k rows/s.
    stored = []
    for r in rows:
        with _located(name, r["line"]):
            stored.append(_stored_prompt_row(r))
    hashes = [content.prompt_hash(t, m) for t, m in stored]
    session.flush()
    prompt_id: dict[str, int] = {}
    for chunk in _chunks(sorted(set(hashes))):
        prompt_id.update(session.execute(select(Prompt.content_hash, Prompt.id).where(
            Prompt.project_id == proj.id, Prompt.content_hash.in_(chunk))).all())
    new: dict[str, dict[str, Any]] = {}
    for h, (t, m), r in zip(hashes, stored, rows):
        if h in prompt_id or h in new:
            result.skipped += 1
            continue
        new[h] = {"project_id": proj.id, "text": t, "messages": m, "source": src, "meta": r["meta"] or {},
                  "content_hash": h}
        result.added += 1
    values = list(new.values())
    for lo in range(0, len(values), _INSERT_BATCH):
        # the Core table, not the mapped class: the ORM's bulk layer cost more than the INSERT itself
        prompt_id.update(session.execute(insert(_PROMPTS).returning(_PROMPTS.c.content_hash, _PROMPTS.c.id),
                                         values[lo:lo + _INSERT_BATCH]).all())
    if demonstrate_tasks:
        for h in hashes:
            _, t_created = tasks.create_task(session, proj.id, "demonstrate", prompt_id[h], source=src)
            result.details["demonstrate tasks"] = result.details.get("demonstrate tasks", 0) + t_created
    session.flush()
    _audit_import(session, result, project, actor_id)
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


# HH turn markers. The space after the colon is optional: an empty last reply is published as "\n\nAssistant:".
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_SPEAKER = {"user": "Human", "assistant": "Assistant", "system": "System"}


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


def _tail_text(turns: list[dict[str, str]]) -> str:
    """A response of several turns (the rows' conversations part before their last reply) as text: the first
    reply, then the later turns HH-style, so an HH export writes the original transcript back."""
    return turns[0]["content"] + "".join(f"\n\n{_HH_SPEAKER[m['role']]}: {m['content']}" for m in turns[1:])


def split_conversations(chosen: list[dict[str, str]], rejected: list[dict[str, str]]
                        ) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, chosen tail, rejected tail): the prompt is the longest shared start of the two conversations
    that ends with a user turn answered by the assistant on both sides; the tails are the rest. Usually
    that is everything before the last reply; published HH rows that diverge earlier get a shorter prompt
    and several-turn tails, so no row is lost. Raises InputError (with the field) for rows with no pair."""
    for side, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            last = conv[-1]["role"] if conv else "no"
            raise InputError(f"ends with a {last} turn, not with an assistant reply", field=side)
    if chosen == rejected:
        raise InputError("chosen and rejected are identical", field="rejected")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    k = shared
    while k > 0 and not (chosen[k - 1]["role"] == "user" and k < len(chosen) and k < len(rejected)
                         and chosen[k]["role"] == rejected[k]["role"] == "assistant"):
        k -= 1
    if k == 0:
        raise InputError("chosen and rejected share no prompt: they differ from their first turn, or no shared "
                         "user turn is answered by the assistant on both sides", field="chosen")
    return chosen[:k], chosen[k:], rejected[k:]


def _prompt_turns(value: Any) -> list[dict[str, str]]:
    """TRL explicit-prompt prompts (preferences and ratings): a non-empty string (one user turn) or chat turns."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError("empty prompt", field="prompt")
        return [{"role": "user", "content": value}]
    return validate_messages(value, field="prompt")


def _completion_turns(value: Any, fieldname: str) -> list[dict[str, str]]:
    """TRL explicit-prompt completions: a string (one assistant reply) or chat turns."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        return validate_messages(value, field=fieldname)
    raise InputError("must be a string or a list of chat turns", field=fieldname)


def _preference_row(obj: dict[str, Any], fmt: str) -> tuple[str, dict[str, Any]]:
    """(format of the row, {messages, chosen, rejected, margin, ...}); InputError names the field."""
    for f in ("chosen", "rejected"):
        if f not in obj:
            raise InputError("missing field", field=f)
    row_fmt = fmt
    if fmt == "auto":
        row_fmt = "trl" if "prompt" in obj or isinstance(obj["chosen"], list) else "hh"
    if row_fmt == "hh":
        convs = []
        for f in ("chosen", "rejected"):
            if not isinstance(obj[f], str):
                raise InputError("HH rows need string 'chosen' and 'rejected' transcripts", field=f)
            try:
                convs.append(parse_hh(obj[f]))
            except ValueError as e:
                raise InputError(str(e), field=f) from e
        chosen_conv, rejected_conv = convs
    elif "prompt" in obj:
        prompt_msgs = _prompt_turns(obj["prompt"])
        chosen_conv = prompt_msgs + _completion_turns(obj["chosen"], "chosen")
        rejected_conv = prompt_msgs + _completion_turns(obj["rejected"], "rejected")
    else:
        if not isinstance(obj["chosen"], list) or not isinstance(obj["rejected"], list):
            raise InputError("TRL rows need a 'prompt', or chat-turn 'chosen'/'rejected'", field="prompt")
        chosen_conv = validate_messages(obj["chosen"], field="chosen")
        rejected_conv = validate_messages(obj["rejected"], field="rejected")
    prompt, chosen_tail, rejected_tail = split_conversations(chosen_conv, rejected_conv)
    if not any(m["content"].strip() for m in prompt):
        raise InputError("the prompt is empty", field="prompt")
    chosen, rejected = _tail_text(chosen_tail), _tail_text(rejected_tail)
    if chosen == rejected:
        raise InputError("chosen and rejected are identical", field="rejected")
    margin = obj.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))
                               or not math.isfinite(margin)):
        raise InputError("must be a finite number", field="margin")
    if obj.get("tie"):  # rows of an export made with --include-ties: no winner to import
        raise InputError(f"a '{obj['tie']}' row (exported with --include-ties) has no preferred "
                         "response; export without ties to import", field="tie")
    _check_storable(prompt, "prompt")
    _check_storable(chosen, "chosen")
    _check_storable(rejected, "rejected")
    return row_fmt, {"messages": prompt, "chosen": chosen, "rejected": rejected, "margin": margin,
                     "chosen_turns": chosen_tail, "rejected_turns": rejected_tail,
                     "divergent": len(chosen_tail) > 1 or len(rejected_tail) > 1}


def parse_preferences(text: str, name: str, fmt: str = "auto", *, refused: list[RefusedLine] | None = None
                      ) -> tuple[str, list[dict[str, Any]]]:
    """(format, rows {messages, chosen, rejected, margin, line, chosen_turns, rejected_turns, divergent}).

    Formats: TRL explicit prompt (`prompt`/`chosen`/`rejected`, strings or chat turns, optional `margin`),
    TRL implicit prompt (chat-turn `chosen`/`rejected` sharing a start) and Anthropic HH (`chosen`/`rejected`
    transcripts with Human:/Assistant: turns). The prompt is the conversations' shared start up to a user
    turn (see `split_conversations`). Bad lines go to `refused` when given, else raise InvalidRowsError."""
    if fmt not in ("auto", "trl", "hh"):
        raise InputError(f"unknown format {fmt!r}: use auto, trl or hh", field="format")
    seen: list[str] = []

    def parse_row(obj: dict[str, Any], i: int) -> dict[str, Any]:
        row_fmt, row = _preference_row(obj, fmt)
        seen.append(row_fmt)
        return {**row, "line": i}

    rows = _parse_jsonl(text, name, parse_row, refused)
    return (seen[0] if seen else fmt), rows


def strength_for_margin(margin: float | None) -> str | None:
    """Label strength from a dataset's margin; a margin of 0 or less (what our export writes for a label
    without strength, e.g. a ranking pair) means none, so export -> import -> export keeps it."""
    if margin is None or margin <= 0:
        return None
    for bound, name in STRENGTH_FOR_MARGIN:
        if margin < bound:
            return name
    return "strong"


_CHUNK = 500  # ids / hashes per IN (...) lookup


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for lo in range(0, len(items), _CHUNK):
        yield items[lo:lo + _CHUNK]


def _stored_prompt(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]] | None]:
    """(text, messages) as content.add_prompt stores them: a one-turn chat is a plain text prompt."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"], None
    return None, messages


def import_preferences(session: Session, source: str | Path | bytes, project: str, *, fmt: str = "auto",
                       filename: str | None = None, seed: int = 0, skip_invalid: bool = False,
                       actor_id: int | None = None) -> ImportResult:
    """Seed a project with an existing preference dataset: each row becomes a prompt, two responses,
    a compare task (A/B randomized) and one label by the pseudo-user `import:<format>`.

    Written in bulk (one lookup and one insert batch per table, not per row: published files have tens of
    thousands of rows), with the same content hashes and task keys as `content.add_prompt`,
    `content.add_response` and `tasks.create_task`, so rows they wrote are found and nothing is doubled."""
    text, name, proj = _open_import(session, source, filename, project, actor_id)
    refused: list[RefusedLine] = []
    fmt_used, rows = parse_preferences(text, name, fmt, refused=refused if skip_invalid else None)
    result = ImportResult(file=name, kind=f"preferences ({fmt_used})", rows=len(rows), refused=refused)
    n_divergent = sum(r["divergent"] for r in rows)
    if n_divergent:
        result.details["pairs diverging before the last reply (prompt: their shared start)"] = n_divergent
    who = accounts.system_user(session, f"import:{fmt_used}")
    rng = random.Random(seed)
    src = Path(name).name

    from db.session import _unstorable  # the ORM write check, which Core inserts bypass

    bad_src = _unstorable(src)
    if bad_src:
        raise InputError(f"holds {bad_src}, which cannot be stored; remove it and try again", field="source")
    # Every row was checked with its line above; from here on Core INSERT ... RETURNING batches on the tables
    # (the ORM's unit of work cost ~6 statements and most of the CPU per row) in the caller's one transaction.
    session.flush()
    now = utcnow()

    # prompts, by content hash
    stored = [_stored_prompt(r["messages"]) for r in rows]
    hashes = [content.prompt_hash(t, m) for t, m in stored]
    prompt_id: dict[str, int] = {}
    for chunk in _chunks(sorted(set(hashes))):
        prompt_id.update(session.execute(select(Prompt.content_hash, Prompt.id).where(
            Prompt.project_id == proj.id, Prompt.content_hash.in_(chunk))).all())
    new_prompts: dict[str, dict[str, Any]] = {}
    for h, (t, m) in zip(hashes, stored):
        if h not in prompt_id and h not in new_prompts:
            new_prompts[h] = {"project_id": proj.id, "text": t, "messages": m, "source": src, "meta": {},
                              "content_hash": h, "created_at": now}
    prompt_id.update(_insert_returning(session, _PROMPTS, list(new_prompts.values()), "content_hash"))

    # responses (human-written: no model version, sample 0), by (prompt, text hash)
    pids = [prompt_id[h] for h in hashes]
    response_id: dict[tuple[int, str], int] = {}
    for chunk in _chunks(sorted(set(pids))):
        response_id.update(((pid, h), rid) for pid, h, rid in session.execute(
            select(Response.prompt_id, Response.content_hash, Response.id).where(
                Response.prompt_id.in_(chunk), Response.model_version_id.is_(None), Response.sample_index == 0)))
    new_responses: dict[tuple[int, str], dict[str, Any]] = {}
    pairs = []
    for pid, r in zip(pids, rows):
        keys = []
        for side in ("chosen", "rejected"):
            key = (pid, content.sha(r[side]))
            if key not in response_id and key not in new_responses:
                turns = r[f"{side}_turns"]
                # several turns are kept as turns too, for exports that can write them as messages
                params = {"source": src, **({"turns": turns} if len(turns) > 1 else {})}
                new_responses[key] = {"prompt_id": pid, "model_version_id": None, "text": r[side],
                                      "params": params, "sample_index": 0, "content_hash": key[1],
                                      "created_at": now}
            keys.append(key)
        pairs.append(keys)
    response_id.update(_insert_returning(session, _RESPONSES, list(new_responses.values()),
                                         "prompt_id", "content_hash"))

    # compare tasks, by the order-free key tasks.create_task uses; the A/B order is drawn once, at creation
    task_keys = []
    for pid, (kc, kr) in zip(pids, pairs):
        ids = [response_id[kc], response_id[kr]]
        task_keys.append((tasks._dedup_key("compare", pid, ids), pid, ids))
    task_of: dict[str, dict[str, Any]] = {}  # key -> {id, response_ids, n_submitted, status, new}
    for chunk in _chunks(sorted({k for k, _, _ in task_keys})):
        for tid, key, rids, n, status in session.execute(
                select(Task.id, Task.dedup_key, Task.response_ids, Task.n_submitted, Task.status).where(
                    Task.project_id == proj.id, Task.dedup_key.in_(chunk))):
            task_of[key] = {"id": tid, "response_ids": rids, "n_submitted": n, "status": status, "new": False}
    new_tasks: dict[str, dict[str, Any]] = {}
    for key, pid, ids in task_keys:
        if key not in task_of:
            ordered = list(ids)
            rng.shuffle(ordered)
            task_of[key] = {"id": None, "response_ids": ordered, "n_submitted": 0, "status": "open", "new": True}
            new_tasks[key] = {"project_id": proj.id, "kind": "compare", "prompt_id": pid, "response_ids": ordered,
                              "dedup_key": key, "source": src, "created_at": now}

    # one label per task by the import's pseudo-user; a task it already labelled is "already present"
    labelled: set[int] = set()
    known = sorted(t["id"] for t in task_of.values() if not t["new"])
    for chunk in _chunks(known):
        labelled.update(session.scalars(select(PreferenceLabel.task_id).where(
            PreferenceLabel.task_id.in_(chunk), PreferenceLabel.user_id == who.id)))
    labels: list[tuple[str, dict[str, Any]]] = []
    counted: set[str] = set()
    for r, (key, _, ids) in zip(rows, task_keys):
        task = task_of[key]
        if key in counted or task["id"] in labelled:
            result.skipped += 1
            continue
        counted.add(key)
        # an imported label takes a slot like an annotator's (see _count_imported_label)
        task["n_submitted"] += 1
        if task["n_submitted"] >= proj.labels_per_task:
            task["status"] = "done"
        choice = "a" if task["response_ids"][0] == ids[0] else "b"
        labels.append((key, {"user_id": who.id, "choice": choice, "strength": strength_for_margin(r["margin"]),
                             "flags": [], "comment": "", "seconds": None, "created_at": now,
                             "updated_at": None}))
        result.added += 1
    for key, t in new_tasks.items():  # a new task is written with its label counted
        t["n_submitted"], t["status"] = task_of[key]["n_submitted"], task_of[key]["status"]
    for key, tid in _insert_returning(session, _TASKS, list(new_tasks.values()), "dedup_key").items():
        task_of[key]["id"] = tid
    changed = [{"tid": task_of[k]["id"], "n": task_of[k]["n_submitted"], "st": task_of[k]["status"]}
               for k in counted if not task_of[k]["new"]]
    if changed:
        session.execute(update(_TASKS).where(_TASKS.c.id == bindparam("tid")).values(
            n_submitted=bindparam("n"), status=bindparam("st")), changed)
    label_rows, slots = [], []
    for key, lab in labels:
        tid = task_of[key]["id"]
        label_rows.append({"task_id": tid, **lab})
        slots.append({"task_id": tid, "user_id": who.id, "state": "submitted", "assigned_at": now,
                      "expires_at": now, "finished_at": now, "skip_reason": None})
    _insert_labels(session, label_rows, slots)
    session.flush()
    _audit_import(session, result, project, actor_id)
    return result


def _insert_labels(session: Session, label_rows: list[dict[str, Any]], slots: list[dict[str, Any]]) -> None:
    """The imported labels and their submitted assignments (the last write of a preference import)."""
    for table, values in ((PreferenceLabel.__table__, label_rows), (Assignment.__table__, slots)):
        for lo in range(0, len(values), _INSERT_BATCH):
            session.execute(insert(table), values[lo:lo + _INSERT_BATCH])


def _insert_returning(session: Session, table: Any, values: list[dict[str, Any]], *key: str) -> dict[Any, int]:
    """INSERT `values` into the Core table in batches; {key column value (a tuple for several): new id}."""
    out: dict[Any, int] = {}
    cols = [table.c[k] for k in key]
    for lo in range(0, len(values), _INSERT_BATCH):
        for row in session.execute(insert(table).returning(*cols, table.c.id), values[lo:lo + _INSERT_BATCH]):
            out[row[0] if len(key) == 1 else tuple(row[:-1])] = row[-1]
    return out


# ---------------------------------------------------------------------------------- OpenAssistant

def _oasst_nodes(tree: dict[str, Any]) -> list[tuple[list[dict[str, str]], list[dict[str, Any]]]]:
    """(conversation up to a prompter message, its ranked assistant replies) for every prompter node.
    Deleted messages (and what hangs below them) are left out, as OpenAssistant's own exports do."""
    root = tree.get("prompt")
    if not isinstance(root, dict):
        raise InputError("missing message tree", field="prompt")
    out: list[tuple[list[dict[str, str]], list[dict[str, Any]]]] = []

    def walk(node: dict[str, Any], path: list[dict[str, str]]) -> None:
        for f in ("text", "role"):
            if f not in node:
                raise InputError("message without this field", field=f)
            if not isinstance(node[f], str):
                raise InputError("must be a string", field=f)
        if not isinstance(node.get("replies") or [], list):
            raise InputError("must be a list of messages", field="replies")
        for r in node.get("replies") or []:
            rank = r.get("rank") if isinstance(r, dict) else None
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))
                                     or not math.isfinite(rank)):
                raise InputError(f"must be a number, not {rank!r}", field="rank")
        if node.get("deleted"):
            return
        role = {"prompter": "user", "assistant": "assistant"}.get(node["role"])
        if role is None:
            raise InputError(f"unknown role {node['role']!r}", field="role")
        _check_storable(node["text"], "text")
        here = path + [{"role": role, "content": node["text"]}]
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict) and not r.get("deleted")]
        if role == "user":
            ranked = [r for r in replies if r.get("role") == "assistant" and r.get("rank") is not None]
            if len(ranked) >= 2:
                if not any(m["content"].strip() for m in here):
                    raise InputError("the prompter message of ranked replies is empty", field="text")
                for r in ranked:
                    if not isinstance(r.get("text"), str):
                        raise InputError("must be a string", field="text")
                    _check_storable(r["text"], "text")
                    _check_storable(r.get("message_id"), "message_id")
                out.append((here, sorted(ranked, key=lambda r: r["rank"])))
        for r in replies:
            walk(r, here)

    walk(root, [])
    return out


def parse_oasst(text: str, name: str, *, refused: list[RefusedLine] | None = None
                ) -> list[tuple[int, list[tuple[list[dict[str, str]], list[dict[str, Any]]]]]]:
    """[(line, nodes of its tree)]; a tree with any bad message is refused whole (never half a tree)."""
    return _parse_jsonl(text, name, lambda tree, i: (i, _oasst_nodes(tree)), refused)


def import_oasst(session: Session, source: str | Path | bytes, project: str, *,
                 filename: str | None = None, seed: int = 0, skip_invalid: bool = False,
                 actor_id: int | None = None) -> ImportResult:
    """OpenAssistant message trees: each prompter message with ≥2 ranked replies becomes a task —
    a rank task (with the tree's ranking as a label) for ≥3 replies, a compare task for 2."""
    text, name, proj = _open_import(session, source, filename, project, actor_id)
    refused: list[RefusedLine] = []
    trees = parse_oasst(text, name, refused=refused if skip_invalid else None)
    result = ImportResult(file=name, kind="oasst", rows=len(trees), refused=refused)
    who = accounts.system_user(session, "import:oasst")
    rng = random.Random(seed)
    src = Path(name).name
    details = {"rank tasks": 0, "compare tasks": 0}
    left_out = 0  # replies that cannot be ranked apart: counted, never dropped silently
    for line, nodes in trees:
        for conv, ranked in nodes:
            with _located(name, line):
                prompt, _ = content.add_prompt(session, proj.id, messages=conv, source=src)
                resp = []
                for r in ranked:
                    params = {"source": src, "oasst_message_id": r.get("message_id"), "oasst_rank": r["rank"]}
                    if r.get("synthetic"):
                        params["oasst_synthetic"] = True
                    resp.append(content.add_response(session, prompt.id, r["text"], params=params)[0])
            groups: dict[float, list[int]] = {}
            for src_node, row in zip(ranked, resp):
                groups.setdefault(src_node["rank"], []).append(row.id)
            kind = "rank" if len(resp) >= 3 else "compare"
            # identical reply texts, or K replies all ranked equal: no order to record
            if len({r.id for r in resp}) < len(resp) or (kind == "rank" and len(groups) < 2):
                left_out += 1
                continue
            with _located(name, line):
                task, _ = tasks.create_task(session, proj.id, kind, prompt.id, [r.id for r in resp], rng=rng,
                                            source=src)
            table = Ranking if kind == "rank" else PreferenceLabel
            if session.scalar(select(table.id).where(table.task_id == task.id, table.user_id == who.id)):
                result.skipped += 1
                continue
            if kind == "rank":  # equal OASST ranks tie
                ordering = [groups[k] for k in sorted(groups)]
                session.add(Ranking(task_id=task.id, user_id=who.id, ordering=ordering, flags=[], comment=""))
            else:
                choice = ("tie" if len(groups) < 2 else "a" if task.response_ids[0] == resp[0].id else "b")
                session.add(PreferenceLabel(task_id=task.id, user_id=who.id, choice=choice, flags=[],
                                            comment=""))
            details[f"{kind} tasks"] += 1
            _count_imported_label(session, task, who.id, proj)
            result.added += 1
    if left_out:
        details["prompts left out: identical or equally ranked replies"] = left_out
    result.details = details
    session.flush()
    _audit_import(session, result, project, actor_id)
    return result


# ------------------------------------------------------------------------- ratings (TRL unpaired)

def _rating_row(obj: dict[str, Any], i: int) -> dict[str, Any]:
    """TRL's unpaired preference row {"prompt", "completion", "label": bool}: prompt and completion as
    strings or chat turns (KTOTrainer takes both)."""
    for f in ("prompt", "completion", "label"):
        if f not in obj:
            raise InputError("missing field", field=f)
    messages = _prompt_turns(obj["prompt"])
    if messages[-1]["role"] != "user":  # a string prompt is one user turn
        raise InputError("the prompt's last turn must be a user turn", field="prompt")
    turns = _completion_turns(obj["completion"], "completion")
    if turns[0]["role"] != "assistant":
        raise InputError("the completion must start with an assistant turn", field="completion")
    completion = _tail_text(turns)
    if not completion.strip():
        raise InputError("empty completion", field="completion")
    label = obj["label"]
    # Only JSON true/false: "false" or 0 could be read either way.
    if not isinstance(label, bool):
        raise InputError(f"must be true or false, not {json.dumps(label)}", field="label")
    _check_storable(messages, "prompt")
    _check_storable(completion, "completion")
    return {"messages": messages, "completion": completion, "turns": turns, "good": label, "line": i}


def parse_ratings(text: str, name: str, *, refused: list[RefusedLine] | None = None) -> list[dict[str, Any]]:
    """Rows {messages, completion, turns, good, line}. Bad lines go to `refused` when given, else raise
    InvalidRowsError."""
    return _parse_jsonl(text, name, _rating_row, refused)


def import_ratings(session: Session, source: str | Path | bytes, project: str, *, filename: str | None = None,
                   skip_invalid: bool = False, actor_id: int | None = None) -> ImportResult:
    """Seed a project with TRL unpaired preferences: each row becomes a prompt, a response, a rate task and
    one rating by the pseudo-user `import:trl-unpaired`. A row whose (prompt, completion) that user already
    rated (a re-import, or a repeat inside the file) adds nothing and counts as already present."""
    text, name, proj = _open_import(session, source, filename, project, actor_id)
    refused: list[RefusedLine] = []
    rows = parse_ratings(text, name, refused=refused if skip_invalid else None)
    result = ImportResult(file=name, kind="ratings (trl unpaired)", rows=len(rows), refused=refused)
    who = accounts.system_user(session, "import:trl-unpaired")
    src = Path(name).name

    # Written in bulk as import_preferences does (published KTO sets have tens of thousands of rows), with the
    # hashes and task keys of content.add_prompt / add_response / tasks.create_task.
    stored = [_stored_prompt(r["messages"]) for r in rows]
    hashes = [content.prompt_hash(t, m) for t, m in stored]
    prompt_id: dict[str, int] = {}
    for chunk in _chunks(sorted(set(hashes))):
        prompt_id.update(session.execute(select(Prompt.content_hash, Prompt.id).where(
            Prompt.project_id == proj.id, Prompt.content_hash.in_(chunk))).all())
    new_prompts: dict[str, Prompt] = {}
    for h, (t, m) in zip(hashes, stored):
        if h not in prompt_id and h not in new_prompts:
            new_prompts[h] = Prompt(project_id=proj.id, text=t, messages=m, source=src, meta={}, content_hash=h)
    session.add_all(new_prompts.values())
    session.flush()
    prompt_id.update({h: p.id for h, p in new_prompts.items()})

    pids = [prompt_id[h] for h in hashes]
    response_id: dict[tuple[int, str], int] = {}
    for chunk in _chunks(sorted(set(pids))):
        response_id.update(((pid, h), rid) for pid, h, rid in session.execute(
            select(Response.prompt_id, Response.content_hash, Response.id).where(
                Response.prompt_id.in_(chunk), Response.model_version_id.is_(None), Response.sample_index == 0)))
    new_responses: dict[tuple[int, str], Response] = {}
    keys = []
    for pid, r in zip(pids, rows):
        key = (pid, content.sha(r["completion"]))
        if key not in response_id and key not in new_responses:
            params = {"source": src, **({"turns": r["turns"]} if len(r["turns"]) > 1 else {})}
            new_responses[key] = Response(prompt_id=pid, text=r["completion"], params=params, sample_index=0,
                                          content_hash=key[1])
        keys.append(key)
    session.add_all(new_responses.values())
    session.flush()
    response_id.update({k: resp.id for k, resp in new_responses.items()})

    task_keys = [(tasks._dedup_key("rate", pid, [response_id[k]]), pid, response_id[k]) for pid, k in zip(pids, keys)]
    task_of: dict[str, Task] = {}
    for chunk in _chunks(sorted({k for k, _, _ in task_keys})):
        task_of.update((t.dedup_key, t) for t in session.scalars(select(Task).where(
            Task.project_id == proj.id, Task.dedup_key.in_(chunk))))
    new_tasks = []
    for key, pid, rid in task_keys:
        if key not in task_of:
            task_of[key] = Task(project_id=proj.id, kind="rate", prompt_id=pid, response_ids=[rid], status="open",
                                n_submitted=0, dedup_key=key, source=src)
            new_tasks.append(task_of[key])
    session.add_all(new_tasks)
    session.flush()

    # one rating per task by the import's pseudo-user; a task it already rated is "already present"
    rated: dict[int, bool] = {}
    for chunk in _chunks(sorted({t.id for t in task_of.values()})):
        rated.update(session.execute(select(Rating.task_id, Rating.good).where(
            Rating.task_id.in_(chunk), Rating.user_id == who.id)).all())
    good = bad = conflicting = 0
    for r, (key, _, rid) in zip(rows, task_keys):
        task = task_of[key]
        if task.id in rated:
            result.skipped += 1
            conflicting += rated[task.id] != r["good"]
            continue
        rated[task.id] = r["good"]
        session.add(Rating(task_id=task.id, user_id=who.id, response_id=rid, good=r["good"], flags=[], comment=""))
        _count_imported_label(session, task, who.id, proj)
        result.added += 1
        good += r["good"]
        bad += not r["good"]
    result.details = {"good": good, "bad": bad}
    if conflicting:
        result.details["repeats with the other label (the first one is kept)"] = conflicting
    session.flush()
    _audit_import(session, result, project, actor_id)
    return result
