"""Imports: prompts (JSONL/CSV), preference datasets (TRL or Anthropic HH), OpenAssistant trees, ratings (TRL
unpaired preferences).

Files are read as published: UTF-8 JSONL (or CSV for prompts), optionally gzip-compressed (HH and OASST ship
`.jsonl.gz`). Every line is checked. A line that cannot be read is refused with its line number, field and
reason: by default the whole file is then refused (`InvalidRowsError` lists the bad lines) and nothing it wrote
is kept; with `skip_invalid=True` every good row is imported and the refused lines come back in
`ImportResult.refused` for a report. Either way the caller commits once (one transaction per import), and
content hashes make a re-import of the same file add nothing. Prompt and preference imports stream: rows are
written a batch at a time as the file is read, in a savepoint rolled back when the file is refused (on
PostgreSQL the ids that refused import drew from the sequences are not given back, as after any rollback).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import hashlib
import io
import json
import math
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import settings
from db.models import (
    TS,
    Assignment,
    PreferenceLabel,
    Project,
    Prompt,
    Ranking,
    Rating,
    Response,
    Task,
    utcnow,
)
from db.services import accounts, audit, content, projects, summary, tasks
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
        # the details say what was added (task kinds, rows read in a special way): they follow "added", and the
        # refused lines (a different thing: see the report) come last
        extra = ", ".join(f"{k}: {v}" for k, v in self.details.items())
        n = len(self.refused)
        refused = f", {n} line{'' if n == 1 else 's'} refused" if n else ""
        return (f"{self.file}: {self.rows} rows read, {self.added} added" + (f" ({extra})" if extra else "")
                + f", {self.skipped} already present" + refused)


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


def _open_import(session: Session, source: str | Path | bytes, filename: str | None, project: str,
                 actor_id: int | None) -> tuple[str, str, Project]:
    """(text, display name, project) of an import: the admin check first, so nothing is read for anyone else."""
    audit.require_admin(session, actor_id, "importing")
    text, name = _read_text(source, filename)
    return text, name, projects.get_project(session, project)


@contextlib.contextmanager
def _open_streamed_import(session: Session, source: str | Path | bytes, filename: str | None, project: str,
                          actor_id: int | None) -> Iterator[tuple[IO[str], str, Project]]:
    """_open_import with the text as a stream (see _text_stream), closed when the import is done."""
    audit.require_admin(session, actor_id, "importing")
    stream, name = _text_stream(source, filename)
    with stream:
        yield stream, name, projects.get_project(session, project)


def _read_text(source: str | Path | bytes, filename: str | None) -> tuple[str, str]:
    """(text, display name) of a file read whole (CSV, and files told apart by their content): _text_stream's
    checks, read to the end."""
    stream, name = _text_stream(source, filename)
    with stream:
        return stream.read(), name


class _Gunzipped(io.RawIOBase):
    """A gzip stream's unpacked bytes (every member), refused past `limit` bytes (a zip bomb) and with a
    located InputError for a broken file."""

    def __init__(self, raw: IO[bytes], limit: int, name: str) -> None:
        self._gz, self._limit, self._name, self._n = gzip.GzipFile(fileobj=raw), limit, name, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            n = self._gz.readinto(buf)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(f"broken gzip file ({e}); download it again", file=self._name) from e
        self._n += n
        if self._n > self._limit:
            raise _too_big(self._name, self._n, unpacked=True)
        return n


def _text_stream(source: str | Path | bytes, filename: str | None) -> tuple[IO[str], str]:
    """(text, display name) as a stream read while the import goes: a 1M-row file is never held whole, nor its
    list of lines. Bytes come from uploads, paths from the CLI; gzip is unpacked; files over the upload limit
    are refused before reading, gzip files that unpack to more (a zip bomb) while unpacking. Only "\n" ends a
    line (see _jsonl_lines)."""
    limit = settings.upload_limit_bytes()
    raw: IO[bytes]
    if isinstance(source, (bytes, bytearray)):
        name = filename or "upload"
        if len(source) > limit:
            raise _too_big(name, len(source))
        raw = io.BytesIO(source)
    else:
        path = Path(source)
        name = filename or str(path)
        if not path.is_file():
            raise InputError("file not found", file=name)
        if path.stat().st_size > limit:
            raise _too_big(name, path.stat().st_size)
        raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        raw = io.BufferedReader(_Gunzipped(raw, limit, name), 1 << 16)
    else:
        raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="\n"), name


def _undecodable(m: re.Match[str]) -> str:
    return (f"not valid UTF-8 (byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1}); "
            "save the file as UTF-8")


def _jsonl_lines(text: str | Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number, line) of each non-blank line of a text, or of a text stream's lines."""
    # Only "\n" ends a JSONL line: str.splitlines() would also cut at U+2028, U+2029 or U+0085, which JSON
    # allows unescaped inside strings (our own exports write them so).
    pieces = _pieces(text) if isinstance(text, str) else text
    for i, piece in enumerate(pieces, start=1):
        line = piece.removesuffix("\n").removesuffix("\r")
        if line.strip():
            yield i, line


def _pieces(text: str) -> Iterator[str]:
    """text.split("\n"), one piece at a time: the list of every line of a 1M-row file would hold it twice."""
    start, end_of_text = 0, len(text)
    while start <= end_of_text:
        end = text.find("\n", start)
        if end < 0:
            end = end_of_text
        yield text[start:end]
        start = end + 1


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


@dataclass
class _Tally:
    """What a streaming pass has read: lines, and the refused ones."""

    total: int = 0
    bad: list[RefusedLine] = field(default_factory=list)


# Set while a line that cannot hold unstorable text is parsed: no longer than the smallest text limit (decoded
# JSON text is never longer than its JSON) and without "\u" escapes (the only way JSON spells NUL or a lone
# surrogate; undecodable bytes are refused before). Most lines of a published file are such lines, and
# _check_storable's walk over every value of them was a fifth of an import's time.
_PLAIN_LINE: ContextVar[bool] = ContextVar("_PLAIN_LINE", default=False)


def _each_row(text: str | Iterable[str], parse_row: Callable[[dict[str, Any], int], Any], tally: _Tally) -> Iterator[Any]:
    """parse_row(obj, line) of every line, one at a time; the lines it refuses (InputError) go to `tally`."""
    plain_max = min(settings.size_limit("prompt"), settings.size_limit("response"))
    for i, line in _jsonl_lines(text):
        tally.total += 1
        token = _PLAIN_LINE.set(len(line) <= plain_max and "\\u" not in line)
        try:
            row = parse_row(_json_object(line), i)
        except InputError as e:
            tally.bad.append(RefusedLine(i, e.reason, e.field, line.encode("utf-8", "surrogateescape")
                                         .decode("utf-8", "replace")))
            continue
        finally:
            _PLAIN_LINE.reset(token)
        yield row


def _parse_jsonl(text: str, name: str, parse_row: Callable[[dict[str, Any], int], Any],
                 refused: list[RefusedLine] | None) -> list[Any]:
    """parse_row(obj, line) for every line; lines it refuses (InputError) are collected, then settled."""
    tally = _Tally()
    rows = list(_each_row(text, parse_row, tally))
    _settle(name, tally.bad, tally.total, refused)
    return rows


# Fields checked against the size limits while parsing, so that an oversized row is refused as a line.
_SIZE_OF_FIELD = {"prompt": "prompt", "messages": "prompt", "turns": "prompt", "instruction": "prompt",
                  "chosen": "response", "rejected": "response", "completion": "response"}


def _check_storable(value: Any, fieldname: str) -> None:
    """Refuse text the database cannot hold (checked before writing, so it refuses a line, not the file)."""
    if _PLAIN_LINE.get():
        return
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


def _format_by_name(name: str) -> str | None:
    lower = name.lower().removesuffix(".gz")
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    return None


def _format_of(name: str, text: str) -> str:
    return _format_by_name(name) or ("jsonl" if text.lstrip().startswith("{") else "csv")


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


_INSERT_BATCH = 5000  # rows of the file per write of a bulk import (lookups, then one INSERT per table)
_PROMPT_COLUMNS = ("project_id", "text", "messages", "source", "meta", "content_hash", "created_at")
_RESPONSE_COLUMNS = ("prompt_id", "model_version_id", "text", "params", "sample_index", "content_hash", "created_at")
_TASK_COLUMNS = ("project_id", "kind", "prompt_id", "response_ids", "status", "n_submitted", "dedup_key", "source",
                 "created_at")
_LABEL_COLUMNS = ("task_id", "user_id", "choice", "strength", "flags", "comment", "seconds", "created_at",
                  "updated_at")
_SLOT_COLUMNS = ("task_id", "user_id", "state", "assigned_at", "expires_at", "finished_at", "skip_reason")


class _Bulk:
    """Plain SQL on the session's connection for the bulk imports: rows are tuples of stored values (JSON
    already as text, the import's one timestamp). SQLAlchemy's per-row parameter processing and the ORM cost
    several times the INSERT itself (14k prompts per CPU-s)."""

    _PARAMS_PER_STATEMENT = 30_000  # under SQLite's 32766 bound parameters
    # SQLite's page cache while importing (KiB; the default is 2 MB): the pages of the indexes on random
    # content hashes stay in memory instead of being read back each row (1M prompts: 1.4x fewer CPU-s)
    _SQLITE_CACHE_KIB = 65_536

    def __init__(self, session: Session) -> None:
        session.flush()  # what the ORM holds (a project made in this transaction) goes first
        self.conn = session.connection()
        dialect = self.conn.dialect
        self.pg = dialect.name == "postgresql"
        # as the column type binds it: SQLite stores a string (sqlite3's own adapter would add "+00:00"),
        # PostgreSQL takes the datetime
        stamp = TS.dialect_impl(dialect).bind_processor(dialect)
        self.at = utcnow()
        self.now = stamp(self.at) if stamp else self.at
        self._cache_size: int | None = None

    def __enter__(self) -> Self:
        if not self.pg:
            (self._cache_size,) = self.conn.exec_driver_sql("PRAGMA cache_size").one()
            self.conn.exec_driver_sql(f"PRAGMA cache_size = -{self._SQLITE_CACHE_KIB}")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._cache_size is not None:  # the pooled connection gets its own size back
            with contextlib.suppress(Exception):  # a lost connection has nothing to restore
                self.conn.exec_driver_sql(f"PRAGMA cache_size = {int(self._cache_size)}")

    def lookup(self, sql: str, params: tuple[Any, ...], values: Sequence[Any]) -> list[Any]:
        """Rows of `sql`, where {p} is a parameter of `params` and {IN} tests membership in `values`."""
        out: list[Any] = []
        step = self._PARAMS_PER_STATEMENT
        for lo in range(0, len(values), step):
            part = list(values[lo:lo + step])
            if self.pg:  # one array parameter
                q, args = sql.format(p="%s", IN="= ANY(%s)"), (*params, part)
            else:
                q, args = sql.format(p="?", IN=f"IN ({', '.join('?' * len(part))})"), (*params, *part)
            out.extend(self.conn.exec_driver_sql(q, args).all())
        return out

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], *,
               with_ids: bool = False) -> list[int]:
        """INSERT `rows` (tuples in `columns` order); with_ids: their new ids, in order. The ids are taken
        first (the ones the database would give, in the same order), so that the rows load without RETURNING:
        executemany on SQLite, COPY on PostgreSQL (psycopg parses a many-row VALUES statement in Python, which
        cost more than the whole import on SQLite)."""
        if not rows:
            return []
        ids: list[int] = []
        if with_ids:
            ids = self._new_ids(table, len(rows))
            columns, rows = ("id", *columns), [(i, *r) for i, r in zip(ids, rows)]
        if self.pg:
            with self.conn.connection.driver_connection.cursor() as cur, \
                    cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            self.conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                      f"({', '.join('?' * len(columns))})", rows)
        return ids

    def _new_ids(self, table: str, n: int) -> list[int]:
        if self.pg:  # drawn from the column's sequence, as a default would; one array value, not a row per
            # id (fetching 400k one-column rows through the result cost a quarter of the client's write CPU)
            return self.conn.exec_driver_sql(
                "SELECT array_agg(i ORDER BY i) FROM (SELECT nextval(pg_get_serial_sequence(%s, 'id')) AS i "
                "FROM generate_series(1, %s)) AS ids", (table, n)).scalar_one()
        # SQLite gives max(rowid) + 1; this transaction writes, so no other connection inserts before it commits
        (top,) = self.conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table}").one()
        return list(range(top + 1, top + 1 + n))

    def update_tasks(self, rows: list[tuple[int, str, int]]) -> None:
        """(n_submitted, status, id) of tasks that got an imported label."""
        if rows:
            m = "%s" if self.pg else "?"
            self.conn.exec_driver_sql(f"UPDATE tasks SET n_submitted = {m}, status = {m} WHERE id = {m}", rows)


def _batches(rows: Iterator[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _INSERT_BATCH:  # read here, so that a test can make batches small
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder(**options: Any) -> Callable[[Any], str]:
    """json.JSONEncoder(**options).encode, with the C encoder built once: encode() builds one per call, which
    for the small objects of a row cost more than the encoding."""
    enc = json.JSONEncoder(**options)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None or enc.indent is not None or not enc.check_circular:
        return enc.encode
    strings = json.encoder.encode_basestring_ascii if enc.ensure_ascii else json.encoder.encode_basestring
    # no markers: the values come from json.loads, which cannot build a cycle
    chunks = make(None, enc.default, strings, None, enc.key_separator, enc.item_separator, enc.sort_keys,
                  enc.skipkeys, enc.allow_nan)
    return lambda value: "".join(chunks(value, 0))


_STORED_JSON = _encoder()  # what SQLAlchemy's JSON type writes (json.dumps)
_HASHED_JSON = _encoder(sort_keys=True, ensure_ascii=False)  # what content.sha hashes


def _json_text(value: Any) -> str:
    """A JSON column's value as SQLAlchemy's JSON type writes it (None is JSON null, not SQL NULL)."""
    return "null" if value is None else "{}" if value == {} else _STORED_JSON(value)


def _sha(obj: Any) -> str:
    """content.sha (the same bytes hashed), faster."""
    data = obj if isinstance(obj, str) else _HASHED_JSON(obj)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def _prompt_hash(text: str | None, messages: list[dict[str, str]] | None) -> str:
    return _sha({"messages": messages}) if messages else _sha({"text": text})


def _audit_import(session: Session, result: ImportResult, project: str, actor_id: int | None) -> None:
    """The import's audit entry, in the import's transaction (rolled back with it)."""
    audit.record(session, "import", actor_id=actor_id, target=f"{result.kind} into {project}",
                 details={"file": Path(result.file).name, "rows": result.rows, "added": result.added,
                          "skipped": result.skipped, "refused": len(result.refused)})


def _prompt_record(r: dict[str, Any]) -> tuple[str, str | None, str, str]:
    """(content hash, text, messages, meta) of a parsed prompt row as content.add_prompt stores it (a one-turn
    chat is a plain prompt); JSON as stored text. Its checks ran in _prompt_row / _csv_prompt_rows."""
    text, messages = r["text"], r["messages"]
    if messages and len(messages) == 1 and messages[0]["role"] == "user":
        text, messages = messages[0]["content"], None
    if not messages and not (text or "").strip():
        raise InputError("prompt is empty", field="prompt")
    text = None if messages else text
    return _prompt_hash(text, messages), text, _json_text(messages), _json_text(r["meta"] or {})


def _write_prompts(bulk: _Bulk, project_id: int, src: str, batch: list[tuple[str, str | None, str, str]],
                   result: ImportResult) -> dict[str, int]:
    """Insert the batch's prompts not in the project yet (nor earlier in the batch); {hash: id} of them all."""
    ids = dict(bulk.lookup("SELECT content_hash, id FROM prompts WHERE project_id = {p} AND content_hash {IN}",
                           (project_id,), list({r[0] for r in batch})))
    new: dict[str, tuple[Any, ...]] = {}
    for h, text, messages, meta in batch:
        if h in ids or h in new:
            result.skipped += 1
            continue
        new[h] = (project_id, text, messages, src, meta, h, bulk.now)
    result.added += len(new)
    ids.update(zip(new, bulk.insert("prompts", _PROMPT_COLUMNS, list(new.values()), with_ids=True)))
    return ids


def _add_prompts(bulk: _Bulk, project_id: int, src: str, batch: list[tuple[str, str | None, str, str]],
                 result: ImportResult) -> None:
    """_write_prompts when no id is needed, on SQLite: the unique (project, hash) index skips what is there
    (ON CONFLICT DO NOTHING) instead of a lookup first; SQLite gives the same ids, as skipped rows take none."""
    cur = bulk.conn.exec_driver_sql(
        f"INSERT INTO prompts ({', '.join(_PROMPT_COLUMNS)}) VALUES ({', '.join('?' * len(_PROMPT_COLUMNS))}) "
        "ON CONFLICT (project_id, content_hash) DO NOTHING",
        [(project_id, text, messages, src, meta, h, bulk.now) for h, text, messages, meta in batch])
    result.added += cur.rowcount
    result.skipped += len(batch) - cur.rowcount


def _demonstrate_tasks(session: Session, project_id: int, src: str, hashes: list[str], ids: dict[str, int],
                       result: ImportResult) -> None:
    """A demonstrate task for each prompt of the batch (tasks.create_task: one per prompt, never doubled)."""
    for h in hashes:
        _, created = tasks.create_task(session, project_id, "demonstrate", ids[h], source=src)
        result.details["demonstrate tasks"] = result.details.get("demonstrate tasks", 0) + created


def import_prompts(session: Session, source: str | Path | bytes, project: str, *,
                   filename: str | None = None, demonstrate_tasks: bool = False,
                   skip_invalid: bool = False, actor_id: int | None = None) -> ImportResult:
    """Import prompts into `project`. With `demonstrate_tasks`, also queue a demonstrate task each.

    One streaming pass: each line is checked (an error names its line) and kept only as the few values its
    INSERT needs, written a batch at a time (a lookup of the batch's hashes, one multi-row INSERT) inside a
    savepoint of the caller's transaction. A bad line stops the writing (skip_invalid aside); the rest of the
    file is still read so that every bad line is listed, then the savepoint is rolled back: nothing written."""
    with _open_streamed_import(session, source, filename, project, actor_id) as (stream, name, proj):
        return _import_prompt_stream(session, stream, name, proj, project, demonstrate_tasks, skip_invalid,
                                     actor_id)


def _prompt_records(stream: IO[str], name: str, tally: _Tally) -> Iterator[tuple[str, str | None, str, str]]:
    """The file's prompt records (see _prompt_record), one at a time for JSONL."""
    text: str | IO[str] = stream
    fmt = _format_by_name(name)
    if fmt is None:  # told by the content
        text = stream.read()
        fmt = _format_of(name, text)
    if fmt == "jsonl":
        return _each_row(text, lambda obj, i: _prompt_record(_prompt_row(obj, i)), tally)
    text = text if isinstance(text, str) else text.read()  # CSV records may span lines: parsed whole
    parsed = _csv_prompt_rows(text, name, refused=tally.bad)
    tally.total = len(parsed) + len(tally.bad)
    return map(_prompt_record, parsed)


def _import_prompt_stream(session: Session, stream: IO[str], name: str, proj: Project, project: str,
                          demonstrate_tasks: bool, skip_invalid: bool, actor_id: int | None) -> ImportResult:
    src = Path(name).name
    tally = _Tally()
    records = _prompt_records(stream, name, tally)
    result = ImportResult(file=name, kind="prompts")
    with session.begin_nested(), _Bulk(session) as bulk:
        for batch in _batches(records):
            if tally.bad and not skip_invalid:
                continue  # refused anyway: only read on, to list every bad line
            if not demonstrate_tasks and not bulk.pg:
                _add_prompts(bulk, proj.id, src, batch, result)
                continue
            ids = _write_prompts(bulk, proj.id, src, batch, result)
            if demonstrate_tasks:
                _demonstrate_tasks(session, proj.id, src, [r[0] for r in batch], ids, result)
        _settle(name, tally.bad, tally.total, result.refused if skip_invalid else None)
    result.rows = tally.total - len(tally.bad)
    session.flush()
    summary.recount(session, proj.id)  # the Dashboard's task and prompt counts
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


@functools.lru_cache(maxsize=8)
def _source_params(src: str) -> str:
    """The params of a one-turn response of the file `src`, as stored: the same text for every row."""
    return _json_text({"source": src})


def _preference_record(row: dict[str, Any], src: str) -> tuple[Any, ...]:
    """A parsed preference row as its writes need it: (prompt hash, text, messages, then text, hash and params
    of the chosen and of the rejected response, label strength), JSON as stored text."""
    text, messages = _stored_prompt(row["messages"])
    rec: list[Any] = [_prompt_hash(text, messages), text, _json_text(messages)]
    for side in ("chosen", "rejected"):
        turns = row[f"{side}_turns"]
        # several turns are kept as turns too, for exports that can write them as messages
        params = _json_text({"source": src, "turns": turns}) if len(turns) > 1 else _source_params(src)
        rec += [row[side], _sha(row[side]), params]
    rec.append(strength_for_margin(row["margin"]))
    return tuple(rec)


def _pair_prompts(bulk: _Bulk, project_id: int, src: str, batch: list[tuple[Any, ...]]) -> tuple[list[int], set[int]]:
    """(prompt id of each row, ids of the prompts that were there before): the new ones are inserted."""
    ids = dict(bulk.lookup("SELECT content_hash, id FROM prompts WHERE project_id = {p} AND content_hash {IN}",
                           (project_id,), list({r[0] for r in batch})))
    old = set(ids.values())
    new: dict[str, tuple[Any, ...]] = {}
    for h, text, messages, *_ in batch:
        if h not in ids and h not in new:
            new[h] = (project_id, text, messages, src, "{}", h, bulk.now)
    ids.update(zip(new, bulk.insert("prompts", _PROMPT_COLUMNS, list(new.values()), with_ids=True)))
    return [ids[r[0]] for r in batch], old


def _pair_responses(bulk: _Bulk, pids: list[int], old_pids: set[int], batch: list[tuple[Any, ...]]
                    ) -> tuple[list[tuple[int, int]], set[int]]:
    """((chosen id, rejected id) of each row, ids of the responses that were there before). Human-written
    responses (no model version, sample 0) are found by (prompt, text hash); only a prompt that was there
    before can have any."""
    ids: dict[tuple[int, str], int] = {(pid, h): rid for pid, h, rid in bulk.lookup(
        "SELECT prompt_id, content_hash, id FROM responses WHERE prompt_id {IN} AND model_version_id IS NULL "
        "AND sample_index = 0", (), sorted(old_pids))}
    old = set(ids.values())
    new: dict[tuple[int, str], tuple[Any, ...]] = {}
    keys = []
    for pid, r in zip(pids, batch):
        for text, h, params in (r[3:6], r[6:9]):
            key = (pid, h)
            if key not in ids and key not in new:
                new[key] = (pid, None, text, params, 0, h, bulk.now)
        keys.append(((pid, r[4]), (pid, r[7])))
    ids.update(zip(new, bulk.insert("responses", _RESPONSE_COLUMNS, list(new.values()), with_ids=True)))
    return [(ids[kc], ids[kr]) for kc, kr in keys], old


def _pair_tasks(bulk: _Bulk, project_id: int, pids: list[int], rids: list[tuple[int, int]], old_rids: set[int],
                rng: random.Random) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(task key of each row, {key: {id, response_ids, n_submitted, status, new}}): compare tasks by the
    order-free key of tasks.create_task; only two responses that were both there before can have one. A new
    task's A/B order is drawn here, in file order; new tasks are inserted later, with their label counted."""
    # tasks._dedup_key's value
    keys = [_sha({"kind": "compare", "prompt": pid, "responses": sorted(ids)}) for pid, ids in zip(pids, rids)]
    maybe = sorted({k for k, ids in zip(keys, rids) if ids[0] in old_rids and ids[1] in old_rids})
    task_of: dict[str, dict[str, Any]] = {}
    for tid, key, order, n, status in bulk.lookup(
            "SELECT id, dedup_key, response_ids, n_submitted, status FROM tasks WHERE project_id = {p} "
            "AND dedup_key {IN}", (project_id,), maybe):
        order = json.loads(order) if isinstance(order, str) else order  # SQLite hands back the JSON text
        task_of[key] = {"id": tid, "response_ids": order, "n_submitted": n, "status": status, "new": False}
    for key, pid, ids in zip(keys, pids, rids):
        if key not in task_of:
            ordered = list(ids)
            rng.shuffle(ordered)
            task_of[key] = {"id": None, "prompt_id": pid, "response_ids": ordered, "n_submitted": 0,
                            "status": "open", "new": True}
    return keys, task_of


def _write_pairs(bulk: _Bulk, proj: Project, who_id: int, src: str, rng: random.Random,
                 batch: list[tuple[Any, ...]], result: ImportResult) -> list[int]:
    """Prompts, responses, compare tasks, one label each by `who_id` and its submitted assignment, for a
    batch of preference rows; a task that already has that user's label counts as already present.
    Returns the ids of the tasks it labelled."""
    pids, old_pids = _pair_prompts(bulk, proj.id, src, batch)
    rids, old_rids = _pair_responses(bulk, pids, old_pids, batch)
    keys, task_of = _pair_tasks(bulk, proj.id, pids, rids, old_rids, rng)
    labelled = {tid for (tid,) in bulk.lookup(
        "SELECT task_id FROM preference_labels WHERE user_id = {p} AND task_id {IN}", (who_id,),
        sorted(t["id"] for t in task_of.values() if not t["new"]))}
    labels: list[tuple[str, str, str | None]] = []
    counted: set[str] = set()
    for r, key, ids in zip(batch, keys, rids):
        task = task_of[key]
        if key in counted or task["id"] in labelled:
            result.skipped += 1
            continue
        counted.add(key)
        # an imported label takes a slot like an annotator's (see _count_imported_label)
        task["n_submitted"] += 1
        if task["n_submitted"] >= proj.labels_per_task:
            task["status"] = "done"
        labels.append((key, "a" if task["response_ids"][0] == ids[0] else "b", r[9]))
        result.added += 1
    new = [(k, t) for k, t in task_of.items() if t["new"]]
    for (key, t), tid in zip(new, bulk.insert("tasks", _TASK_COLUMNS, [
            (proj.id, "compare", t["prompt_id"], _json_text(t["response_ids"]), t["status"], t["n_submitted"], key,
             src, bulk.now) for key, t in new], with_ids=True)):
        t["id"] = tid
    bulk.update_tasks([(task_of[k]["n_submitted"], task_of[k]["status"], task_of[k]["id"])
                       for k in counted if not task_of[k]["new"]])
    _insert_labels(bulk, [(task_of[k]["id"], who_id, choice, strength, "[]", "", None, bulk.now, None)
                          for k, choice, strength in labels],
                   [(task_of[k]["id"], who_id, "submitted", bulk.now, bulk.now, bulk.now, None) for k, _, _ in labels])
    return [task_of[k]["id"] for k, _, _ in labels]  # for summary.labels_written


def _insert_labels(bulk: _Bulk, label_rows: list[tuple[Any, ...]], slots: list[tuple[Any, ...]]) -> None:
    """The imported labels and their submitted assignments (the last write of a batch of preference rows)."""
    bulk.insert("preference_labels", _LABEL_COLUMNS, label_rows)
    bulk.insert("assignments", _SLOT_COLUMNS, slots)


def import_preferences(session: Session, source: str | Path | bytes, project: str, *, fmt: str = "auto",
                       filename: str | None = None, seed: int = 0, skip_invalid: bool = False,
                       actor_id: int | None = None) -> ImportResult:
    """Seed a project with an existing preference dataset: each row becomes a prompt, two responses,
    a compare task (A/B randomized) and one label by the pseudo-user `import:<format>`.

    One streaming pass as in import_prompts: each line is checked with its line number and kept only as the
    values its writes need; a batch at a time is looked up and inserted (one statement per table, not per
    row: published files have tens of thousands of rows) in a savepoint of the caller's transaction, with the
    same content hashes and task keys as `content.add_prompt`, `content.add_response` and
    `tasks.create_task`, so rows they wrote are found and nothing is doubled."""
    with _open_streamed_import(session, source, filename, project, actor_id) as (text, name, proj):
        return _import_preference_stream(session, text, name, proj, project, fmt, seed, skip_invalid, actor_id)


def _import_preference_stream(session: Session, text: IO[str], name: str, proj: Project, project: str, fmt: str,
                              seed: int, skip_invalid: bool, actor_id: int | None) -> ImportResult:
    if fmt not in ("auto", "trl", "hh"):
        raise InputError(f"unknown format {fmt!r}: use auto, trl or hh", field="format")
    src = Path(name).name
    from db.session import _unstorable  # the ORM write check, which these plain inserts bypass

    bad_src = _unstorable(src)
    tally = _Tally()
    result = ImportResult(file=name, kind="preferences")
    rng = random.Random(seed)
    fmt_used, who_id, divergent = fmt, None, 0

    def parse_row(obj: dict[str, Any], i: int) -> tuple[str, bool, tuple[Any, ...]]:
        row_fmt, row = _preference_row(obj, fmt)
        return row_fmt, row["divergent"], _preference_record(row, src)

    with session.begin_nested(), _Bulk(session) as bulk:
        for batch in _batches(_each_row(text, parse_row, tally)):
            if who_id is None:  # the first good row names the format, and so the pseudo-user
                fmt_used = batch[0][0]
                who_id = accounts.system_user(session, f"import:{fmt_used}").id
            divergent += sum(d for _, d, _ in batch)
            if (tally.bad and not skip_invalid) or bad_src:
                continue  # refused anyway: only read on, to list every bad line
            labelled = _write_pairs(bulk, proj, who_id, src, rng, [r for _, _, r in batch], result)
            # the Dashboard sums: the pseudo-user's labels, all written at bulk.at (no need to read them back)
            summary.system_labels_written(session, proj.id, "compare", who_id, len(labelled), bulk.at)
        _settle(name, tally.bad, tally.total, result.refused if skip_invalid else None)
        if bad_src:
            raise InputError(f"holds {bad_src}, which cannot be stored; remove it and try again", field="source")
        if who_id is None:
            accounts.system_user(session, f"import:{fmt_used}")
    result.kind, result.rows = f"preferences ({fmt_used})", tally.total - len(tally.bad)
    if divergent:
        result.details["pairs diverging before the last reply (prompt: their shared start)"] = divergent
    session.flush()
    summary.recount(session, proj.id)  # the Dashboard's task and prompt counts
    _audit_import(session, result, project, actor_id)
    return result


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
    labelled: dict[str, list[int]] = {"rank": [], "compare": []}  # task ids, for summary.labels_written
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
            labelled[kind].append(task.id)  # for summary.labels_written
            result.added += 1
    if left_out:
        details["prompts left out: identical or equally ranked replies"] = left_out
    result.details = details
    session.flush()
    for kind, ids in labelled.items():  # the Dashboard / Agreement sums
        summary.labels_written(session, kind, who.id, ids)
    summary.recount(session, proj.id)  # the Dashboard's task and prompt counts
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
    labelled: list[int] = []  # task ids, for summary.labels_written
    for r, (key, _, rid) in zip(rows, task_keys):
        task = task_of[key]
        if task.id in rated:
            result.skipped += 1
            conflicting += rated[task.id] != r["good"]
            continue
        rated[task.id] = r["good"]
        session.add(Rating(task_id=task.id, user_id=who.id, response_id=rid, good=r["good"], flags=[], comment=""))
        _count_imported_label(session, task, who.id, proj)
        labelled.append(task.id)  # for summary.labels_written
        result.added += 1
        good += r["good"]
        bad += not r["good"]
    result.details = {"good": good, "bad": bad}
    if conflicting:
        result.details["repeats with the other label (the first one is kept)"] = conflicting
    session.flush()
    summary.labels_written(session, "rate", who.id, labelled)  # the Dashboard / Agreement sums
    summary.recount(session, proj.id)  # the Dashboard's task and prompt counts
    _audit_import(session, result, project, actor_id)
    return result
