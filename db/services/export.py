"""Exports (DESIGN.md §5): preferences, sft, ratings, raw — streamed, ordered by id, with a manifest.

The row iterators here are also what `rlhf/` trains on (`--project NAME`), so a model trained from
the database and one trained from the exported JSONL see exactly the same rows.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import itertools
import json
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from sqlalchemy import ARRAY, Integer, Select, any_, bindparam, exists, inspect, select, text
from sqlalchemy.orm import Session, aliased

from db.models import (
    Demonstration,
    ModelVersion,
    PreferenceLabel,
    Project,
    Prompt,
    Ranking,
    Rating,
    Response,
    Task,
    User,
    utcnow,
)
from db.services import accounts, audit, projects
from db.services.content import prompt_messages
from db.services.errors import InputError

MARGIN_FOR_STRENGTH = {"slight": 0.5, "clear": 1.0, "strong": 2.0}
AGGREGATES = ("majority", "all", "unanimous")
PREF_FORMATS = ("trl", "hh")
SFT_FORMATS = ("prompt_completion", "messages")
CHUNK = 1000
STREAM_ROWS = 2000  # rows per fetch of a streamed query
EXPORT_WORK_MEM_KB = 65_536  # PostgreSQL work_mem (at least) while a preference export's query runs


# --------------------------------------------------------------------------------------- filters

def _resolve_filters(session: Session, project: str | None, model_version: str | None,
                     annotator: str | None) -> tuple[int | None, int | None, int | None]:
    pid = projects.get_project(session, project).id if project else None
    mvid = None
    if model_version:
        mv = session.scalar(select(ModelVersion).where(ModelVersion.name == model_version))
        if mv is None:
            raise InputError(f"unknown model version {model_version!r}", field="model_version")
        mvid = mv.id
    uid = accounts.get_user(session, annotator).id if annotator else None
    return pid, mvid, uid


def _parse_date(value: str | dt.date | dt.datetime | None, fieldname: str) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    try:
        d = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise InputError(f"not an ISO date ({value!r}); use YYYY-MM-DD", field=fieldname) from e
    return (d if d.tzinfo else d.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _in(session: Session, col: Any, ids: Iterable[int]) -> Any:
    """`col IN ids`; on PostgreSQL as `= ANY(array)`: one parameter instead of thousands, which psycopg
    would otherwise spend most of an export parsing."""
    ids = list(ids)
    if session.get_bind().dialect.name == "postgresql":
        return col == any_(bindparam(None, value=ids, type_=ARRAY(Integer)))
    return col.in_(ids)


def _cols(model: Any) -> Any:
    # Plain rows, not ORM objects: building 100k mapped instances costs more than the queries.
    return select(*model.__table__.c)


def _task_batches(session: Session, kinds: tuple[str, ...], pid: int | None, mvid: int | None,
                  label_tables: Iterable[Any]) -> Iterator[list[Any]]:
    """Tasks with at least one label, in id order, a chunk at a time (keyset pagination: flat memory)."""
    has_label = None
    for t in label_tables:
        cond = exists().where(t.task_id == Task.id)
        has_label = cond if has_label is None else (has_label | cond)
    last = 0
    while True:
        q = _cols(Task).where(Task.kind.in_(kinds), Task.id > last, has_label)
        if pid is not None:
            q = q.where(Task.project_id == pid)
        if mvid is not None:
            q = q.where(exists().where(Response.prompt_id == Task.prompt_id, Response.model_version_id == mvid))
        batch = session.execute(q.order_by(Task.id).limit(CHUNK)).all()
        if not batch:
            return
        if mvid is not None:
            ids = {rid for t in batch for rid in t.response_ids}
            mine = set(session.scalars(select(Response.id).where(_in(session, Response.id, ids),
                                                                 Response.model_version_id == mvid)))
            batch_f = [t for t in batch if mine.intersection(t.response_ids)]
        else:
            batch_f = batch
        yield batch_f
        last = batch[-1].id


def _load(session: Session, batch: list[Any]) -> tuple[dict[int, Any], dict[int, Any]]:
    prompts = {p.id: p for p in session.execute(select(Prompt.id, Prompt.text, Prompt.messages)
                                                .where(_in(session, Prompt.id, {t.prompt_id for t in batch})))}
    rids = {rid for t in batch for rid in t.response_ids}
    responses = {r.id: r for r in session.execute(select(Response.id, Response.text, Response.model_version_id)
                                                  .where(_in(session, Response.id, rids)))}
    return prompts, responses


def _by_labeler(q: Select, table: Any, uid: int | None, since: dt.datetime | None,
                until: dt.datetime | None) -> Select:
    """``q`` kept to the rows of label ``table`` written by user ``uid`` in [since, until), each filter when given."""
    if uid is not None:
        q = q.where(table.user_id == uid)
    if since is not None:
        q = q.where(table.created_at >= since)
    if until is not None:
        q = q.where(table.created_at < until)
    return q


def _labels(session: Session, table: Any, batch: list[Any], uid: int | None, since: dt.datetime | None,
            until: dt.datetime | None) -> dict[int, list[Any]]:
    q = _cols(table).where(_in(session, table.task_id, [t.id for t in batch]))
    q = _by_labeler(q, table, uid, since, until)
    out: dict[int, list[Any]] = defaultdict(list)
    for lab in session.execute(q.order_by(table.id)):
        out[lab.task_id].append(lab)
    return out


# ----------------------------------------------------------------------------------- preferences

def _rank_votes(task: Any, ranks: list[Any]) -> dict[tuple[int, int], list[tuple[str, float | None, int, str]]]:
    """Votes per unordered response pair of a rank task: ('x'/'y' = the lower/higher id wins, or 'tie',
    margin, label id, table)."""
    votes: dict[tuple[int, int], list] = defaultdict(list)
    for r in ranks:
        rank_of = {rid: i for i, group in enumerate(r.ordering) for rid in group}
        for x, y in itertools.combinations(sorted(task.response_ids), 2):
            if x not in rank_of or y not in rank_of:
                continue
            verdict = "tie" if rank_of[x] == rank_of[y] else ("x" if rank_of[x] < rank_of[y] else "y")
            votes[(x, y)].append((verdict, None, r.id, "rankings"))
    return votes


def _aggregate(votes: list[tuple[str, float | None, int, str]], aggregate: str
               ) -> list[tuple[str, float | None, float, list[tuple[int, str]]]]:
    """→ [(verdict, margin, agreement, [(label id, table)])]: one entry, or one per label for 'all'."""
    counts = Counter(v[0] for v in votes)
    top, n_top = counts.most_common(1)[0]
    agreement = n_top / len(votes)
    if aggregate == "all":
        return [(v[0], v[1], agreement, [(v[2], v[3])]) for v in votes]
    if aggregate == "unanimous" and len(counts) > 1:
        return []
    if aggregate == "majority" and 2 * n_top <= len(votes):
        return []  # no strict majority (more than half of the votes)
    margins = [v[1] for v in votes if v[0] == top and v[1] is not None]
    return [(top, sum(margins) / len(margins) if margins else None, agreement,
             [(v[2], v[3]) for v in votes if v[0] == top])]


def _hh(messages: list[dict[str, str]], reply: str) -> str:
    turns = "".join(f"\n\n{'Human' if m['role'] != 'assistant' else 'Assistant'}: {m['content']}"
                    for m in messages)
    return f"{turns}\n\nAssistant: {reply}"


def _conversational(session: Session, pid: int | None, mode: str) -> bool:
    if mode in ("always", "never"):
        return mode == "always"
    if mode != "auto":
        raise InputError(f"conversational must be auto, always or never, not {mode!r}", field="conversational")
    # Chat prompts are the ones without text: `messages` of a text prompt may hold JSON null, which is not
    # SQL NULL, so it cannot tell them apart.
    q = select(Prompt.id).where(Prompt.text.is_(None))
    if pid is not None:
        q = q.where(Prompt.project_id == pid)
    return session.scalar(q.limit(1)) is not None


PrefRecord = tuple[int, str | None, list[Any] | None, str, str, float, str | None, str | None]
"""(task id, prompt text, prompt chat turns, chosen text, rejected text, margin, group, tie) of one pair."""


def _note(collect: dict[str, Any] | None, used: Iterable[tuple[int, str]]) -> None:
    if collect is not None:
        for lid, table in used:
            collect.setdefault(table, []).append(lid)


def _vote_records(tid: int, is_rank: bool, text: str | None, messages: list[Any] | None,
                  votes: dict[tuple[int, int], list[tuple[str, float | None, int, str]]],
                  texts: dict[int, str], aggregate: str, include_ties: bool,
                  min_agreement: float | None, collect: dict[str, Any] | None) -> Iterator[PrefRecord]:
    """The general case (rankings, several labels on a task): aggregate each pair's votes."""
    used_here: dict[tuple[int, str], None] = {}  # each label once per task: the manifest counts unique ids
    for (x, y), pair_votes in sorted(votes.items()):
        for verdict, margin, agreement, used in _aggregate(pair_votes, aggregate):
            if min_agreement is not None and agreement < min_agreement:
                continue
            tie = verdict in ("tie", "both_bad")
            if tie and not include_ties:
                continue
            win, lose = (x, y) if verdict in ("x", "tie", "both_bad") else (y, x)
            # One group per ranked task (per ranking under 'all'): a group is one batch element in reward
            # training, so two rank tasks of a prompt or several annotators' rankings of a task must not merge
            # into one group holding the same pair twice.
            group = ((f"task-{tid}-ranking-{used[0][0]}" if aggregate == "all" else f"task-{tid}")
                     if is_rank else None)
            used_here.update(dict.fromkeys(used))
            yield (tid, text, messages, texts[win], texts[lose], float(margin) if margin is not None else 0.0,
                   group, verdict if tie else None)
    _note(collect, used_here)


def compare_label_query(pid: int | None = None, mvid: int | None = None, uid: int | None = None,
                        since: dt.datetime | None = None, until: dt.datetime | None = None) -> Select:
    """The one query behind a preference export's compare tasks: each preference label with its task, prompt
    and both responses, ordered by (task, label). `bench/db_throughput.py` times the database's own dump of it
    (COPY on PostgreSQL) as the export's ceiling."""
    ra, rb = aliased(Response), aliased(Response)
    lab = PreferenceLabel
    q = (select(Task.id, Prompt.text, Prompt.messages, lab.id, lab.choice, lab.strength,
                ra.id, ra.text, rb.id, rb.text)
         .join(lab, lab.task_id == Task.id).join(Prompt, Prompt.id == Task.prompt_id)
         .join(ra, ra.id == Task.response_ids[0].as_integer())
         .join(rb, rb.id == Task.response_ids[1].as_integer())
         .where(Task.kind == "compare"))
    if pid is not None:
        q = q.where(Task.project_id == pid)
    if mvid is not None:
        q = q.where((ra.model_version_id == mvid) | (rb.model_version_id == mvid))
    q = _by_labeler(q, lab, uid, since, until)
    return q.order_by(Task.id, lab.id)


def _plain_rows(session: Session, query: Select) -> tuple[Iterator[Any], bool]:
    """The rows of `query`, streamed as plain tuples, and whether its JSON columns come as undecoded text.

    Both straight from the driver's cursor, a fetch of STREAM_ROWS at a time chained in C (no Python frame per
    row): building a SQLAlchemy Row for each of 1M rows cost a fifth of the export. SQLite: the sqlite3 cursor
    (it streams by itself), JSON as text. PostgreSQL: a psycopg server-side cursor (flat memory) in binary
    format, in the session's transaction; psycopg decodes JSON as SQLAlchemy would (json.loads). Through
    SQLAlchemy's streamed result the fetch path took 0.20 CPU-s per 100k rows, through this cursor 0.11-0.13."""
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        result = conn.execute(query)
        cursor, close_it = result.cursor, result.close
    else:
        comp = query.compile(dialect=conn.dialect)
        # Parameters as SQLAlchemy would send them: each bind's own type processor (a JSON index, a date).
        params = comp.construct_params()
        for key, bind in comp.binds.items():
            proc = bind.type.bind_processor(conn.dialect)
            if proc is not None and key in params:
                params[key] = proc(params[key])
        # The export reads every row, so plan the cursor for all of them (PostgreSQL plans a cursor for its
        # first tenth), and give its sort of all the labels room in memory (4 MB spilled it to disk): 100k rows
        # fetched in 1.5-2.2 s wall instead of 2.8-3.0 (load ~4). Both transaction-local, restored at the end.
        prev = conn.exec_driver_sql("SELECT current_setting('cursor_tuple_fraction'), "
                                    "current_setting('work_mem')").one()
        conn.exec_driver_sql(f"SELECT set_config('cursor_tuple_fraction', '1', true), set_config('work_mem', "
                             f"greatest(setting::int, {EXPORT_WORK_MEM_KB})::text || 'kB', true) "
                             "FROM pg_settings WHERE name = 'work_mem'")
        cursor = conn.connection.driver_connection.cursor(name=f"export_{secrets.token_hex(4)}", binary=True)
        cursor.itersize = STREAM_ROWS
        cursor.execute(str(comp), params)

        def close_it() -> None:
            cursor.close()
            conn.exec_driver_sql("SELECT set_config('cursor_tuple_fraction', %s, true), "
                                 "set_config('work_mem', %s, true)", tuple(prev))

    def close() -> Iterator[Any]:
        close_it()
        yield from ()
    batches = iter(lambda: cursor.fetchmany(STREAM_ROWS), [])
    return itertools.chain(itertools.chain.from_iterable(batches), close()), conn.dialect.name == "sqlite"


def _compare_records(session: Session, pid: int | None, mvid: int | None, uid: int | None,
                     since: dt.datetime | None, until: dt.datetime | None, aggregate: str, include_ties: bool,
                     min_agreement: float | None, collect: dict[str, Any] | None) -> Iterator[PrefRecord]:
    """Compare tasks as pairs, streamed from `compare_label_query` (server-side cursor on PostgreSQL: flat
    memory). Chunked lookups (five queries per 1000 tasks, every column parsed) ran at a tenth of this; a task
    with one label, the common case, needs no vote counting."""
    session.flush()  # the connection below does not autoflush as session.execute would
    rows, json_text = _plain_rows(session, compare_label_query(pid, mvid, uid, since, until))
    one_ok = min_agreement is None or min_agreement <= 1.0
    used = None
    row = next(rows, None)
    while row is not None:
        tid, text, messages, lid, choice, strength, a, a_text, b, b_text = row
        if json_text and messages is not None:
            messages = None if messages == "null" else json.loads(messages)
        row = next(rows, None)
        if row is None or row[0] != tid:  # one label: agreement 1, every aggregate keeps its verdict
            if not one_ok:
                continue
            if choice == "a" or choice == "b":
                cw, cl = (a_text, b_text) if choice == "a" else (b_text, a_text)
                tie = None
            elif include_ties:
                cw, cl = (a_text, b_text) if a < b else (b_text, a_text)
                tie = choice
            else:
                continue
            margin = MARGIN_FOR_STRENGTH.get(strength or "")
            if collect is not None:
                if used is None:  # looked up once (and only made once a label is used)
                    used = collect.setdefault("preference_labels", [])
                used.append(lid)
            yield tid, text, messages, cw, cl, margin if margin is not None else 0.0, None, tie
            continue
        labs = [(lid, choice, strength)]
        while row is not None and row[0] == tid:
            labs.append((row[3], row[4], row[5]))
            row = next(rows, None)
        x, y = min(a, b), max(a, b)
        winner_is_x = {"a": a == x, "b": b == x}
        votes = {(x, y): [(("x" if winner_is_x[ch] else "y") if ch in winner_is_x else ch,
                           MARGIN_FOR_STRENGTH.get(st or ""), i, "preference_labels") for i, ch, st in labs]}
        yield from _vote_records(tid, False, text, messages, votes, {a: a_text, b: b_text},
                                 aggregate, include_ties, min_agreement, collect)


def _rank_records(session: Session, pid: int | None, mvid: int | None, uid: int | None,
                  since: dt.datetime | None, until: dt.datetime | None, aggregate: str, include_ties: bool,
                  min_agreement: float | None, collect: dict[str, Any] | None) -> Iterator[PrefRecord]:
    """Rank tasks, a chunk at a time: K responses and C(K,2) pairs each, fewer rows than compare tasks."""
    for batch in _task_batches(session, ("rank",), pid, mvid, (Ranking,)):
        prompts, responses = _load(session, batch)
        ranks = _labels(session, Ranking, batch, uid, since, until)
        for task in batch:
            votes = _rank_votes(task, ranks.get(task.id, []))
            if votes:
                p = prompts[task.prompt_id]
                texts = {rid: responses[rid].text for rid in task.response_ids}
                yield from _vote_records(task.id, True, p.text, p.messages, votes, texts, aggregate,
                                         include_ties, min_agreement, collect)


def _preference_records(session: Session, *, project: str | None = None, fmt: str = "trl",
                        aggregate: str = "majority", include_ties: bool = False,
                        since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
                        model_version: str | None = None, annotator: str | None = None,
                        min_agreement: float | None = None, conversational: str = "auto",
                        pair_ratings: bool = False, collect: dict[str, Any] | None = None
                        ) -> tuple[Iterator[PrefRecord], bool]:
    """The pairs of a preference export, by task id, and whether rows are conversational; with `pair_ratings`,
    then the pairs made of good and bad ratings of a prompt (see `_rating_pair_records`)."""
    if fmt not in PREF_FORMATS:
        raise InputError(f"format must be one of {', '.join(PREF_FORMATS)}, not {fmt!r}", field="format")
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}",
                         field="aggregate")
    pid, mvid, uid = _resolve_filters(session, project, model_version, annotator)
    since_t, until_t = _parse_date(since, "since"), _parse_date(until, "until")
    chat = _conversational(session, pid, conversational) if fmt == "trl" else False
    args = (session, pid, mvid, uid, since_t, until_t, aggregate, include_ties, min_agreement, collect)

    def merged() -> Iterator[PrefRecord]:
        # Two streams, each by task id: merge them so the export stays ordered by task id.
        ranked = _rank_records(*args)
        nxt = next(ranked, None)
        compared = _compare_records(*args)
        if nxt is None:  # no rank tasks (the common case): nothing to merge, no per-row comparison
            yield from compared
        for rec in compared:  # (exhausted already when there were no rank tasks)
            while nxt is not None and nxt[0] < rec[0]:
                yield nxt
                nxt = next(ranked, None)
            yield rec
        while nxt is not None:
            yield nxt
            nxt = next(ranked, None)
        if pair_ratings:
            yield from _rating_pair_records(session, pid, mvid, uid, since_t, until_t, aggregate, min_agreement,
                                            collect)
    return merged(), chat


def _pref_row(rec: PrefRecord, fmt: str, chat: bool) -> dict[str, Any]:
    _, text, messages, cw, cl, margin, group, tie = rec
    msgs = list(messages) if messages else [{"role": "user", "content": text or ""}]
    if fmt == "hh":
        row: dict[str, Any] = {"chosen": _hh(msgs, cw), "rejected": _hh(msgs, cl)}
    elif chat:
        row = {"prompt": msgs, "chosen": [{"role": "assistant", "content": cw}],
               "rejected": [{"role": "assistant", "content": cl}]}
    else:
        row = {"prompt": text if not messages else prompt_as_plain(msgs), "chosen": cw, "rejected": cl}
    row["margin"] = margin
    if group is not None:
        row["group"] = group
    if tie is not None:
        row["tie"] = tie
    return row


_dumps = json.JSONEncoder(ensure_ascii=False).encode  # json.dumps(x, ensure_ascii=False), built once
_str = encode_basestring  # the C function json uses for a str under ensure_ascii=False


def _pref_line(rec: PrefRecord, fmt: str, chat: bool) -> str:
    """`_pref_row` as its JSON line, written from a template: the same bytes as json.dumps(row,
    ensure_ascii=False) (tests compare them) at a fifth of the cost, which at 1M rows was half the export."""
    _, text, messages, cw, cl, margin, group, tie = rec
    if fmt == "hh":
        msgs = list(messages) if messages else [{"role": "user", "content": text or ""}]
        line = f'{{"chosen": {_str(_hh(msgs, cw))}, "rejected": {_str(_hh(msgs, cl))}'
    elif chat:
        prompt = (_dumps(list(messages)) if messages
                  else f'[{{"role": "user", "content": {_str(text or "")}}}]')
        line = (f'{{"prompt": {prompt}, "chosen": [{{"role": "assistant", "content": {_str(cw)}}}], '
                f'"rejected": [{{"role": "assistant", "content": {_str(cl)}}}]')
    else:
        prompt = text if not messages else prompt_as_plain(list(messages))
        line = (f'{{"prompt": {_str(prompt) if isinstance(prompt, str) else _dumps(prompt)}, '
                f'"chosen": {_str(cw)}, "rejected": {_str(cl)}')
    line += f', "margin": {margin!r}'
    if group is not None:
        line += f', "group": {_str(group)}'
    if tie is not None:
        line += f', "tie": {_str(tie)}'
    return line + "}\n"


def iter_preference_rows(session: Session, *, project: str | None = None, fmt: str = "trl",
                         aggregate: str = "majority", include_ties: bool = False,
                         since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
                         model_version: str | None = None, annotator: str | None = None,
                         min_agreement: float | None = None, conversational: str = "auto",
                         pair_ratings: bool = False, collect: dict[str, Any] | None = None
                         ) -> Iterator[dict[str, Any]]:
    """Preference pairs in TRL explicit-prompt format ({prompt, chosen, rejected, margin}) or HH.

    Rankings expand into all C(K,2) pairs with a `group` per rank task (`task-<id>`; per ranking under
    `aggregate="all"`: `task-<id>-ranking-<label id>`). `aggregate="all"` gives one row per label, each in
    its own direction (a dissenting vote is the reversed pair). Ties and both-bad are left out unless
    `include_ties` (then rows carry `"tie": "tie"` or `"tie": "both_bad"`, chosen/rejected in response-id
    order). `pair_ratings` adds, after them, every (good, bad) pair of one prompt's ratings (aggregated per
    task as `aggregate` says), grouped per prompt (`ratings-prompt-<id>`). `collect` receives the label ids used.
    """
    records, chat = _preference_records(
        session, project=project, fmt=fmt, aggregate=aggregate, include_ties=include_ties, since=since,
        until=until, model_version=model_version, annotator=annotator, min_agreement=min_agreement,
        conversational=conversational, pair_ratings=pair_ratings, collect=collect)
    for rec in records:
        yield _pref_row(rec, fmt, chat)


def prompt_as_plain(msgs: list[dict[str, str]]) -> str:
    """A chat prompt flattened to text for plain (non-conversational) rows."""
    if len(msgs) == 1:
        return msgs[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in msgs)


def _demo_batches(session: Session, pid: int | None, uid: int | None, since: dt.datetime | None,
                  until: dt.datetime | None, statuses: tuple[str, ...] | None = None) -> Iterator[list[Any]]:
    """(Demonstration, Prompt) rows in id order, a chunk at a time."""
    last = 0
    while True:
        q = (select(Demonstration, Prompt).join(Prompt, Prompt.id == Demonstration.prompt_id)
             .where(Demonstration.id > last))
        if statuses is not None:
            q = q.where(Demonstration.status.in_(statuses))
        if pid is not None:
            q = q.where(Prompt.project_id == pid)
        q = _by_labeler(q, Demonstration, uid, since, until)
        rows = session.execute(q.order_by(Demonstration.id).limit(CHUNK)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0].id


# -------------------------------------------------------------------------------------------- sft

def iter_sft_rows(session: Session, *, project: str | None = None, fmt: str = "prompt_completion",
                  statuses: tuple[str, ...] = ("accepted", "submitted"), since: str | dt.datetime | None = None,
                  until: str | dt.datetime | None = None, annotator: str | None = None,
                  conversational: str = "auto", collect: dict[str, list[int]] | None = None
                  ) -> Iterator[dict[str, Any]]:
    """Demonstrations as {prompt, completion} or {messages: [...]} (OpenAI chat), by id."""
    if fmt not in SFT_FORMATS:
        raise InputError(f"format must be one of {', '.join(SFT_FORMATS)}, not {fmt!r}", field="format")
    pid, _, uid = _resolve_filters(session, project, None, annotator)
    since, until = _parse_date(since, "since"), _parse_date(until, "until")
    chat = _conversational(session, pid, conversational) if fmt == "prompt_completion" else True
    for rows in _demo_batches(session, pid, uid, since, until, statuses):
        for d, p in rows:
            msgs = prompt_messages(p)
            if fmt == "messages":
                yield {"messages": msgs + [{"role": "assistant", "content": d.text}]}
            elif chat:
                yield {"prompt": msgs, "completion": [{"role": "assistant", "content": d.text}]}
            else:
                yield {"prompt": p.text if not p.messages else prompt_as_plain(msgs), "completion": d.text}
            if collect is not None:
                collect.setdefault("demonstrations", []).append(d.id)


# ---------------------------------------------------------------------------------------- ratings

RateRecord = tuple[int, int, str | None, list[Any] | None, str, bool, list[tuple[int, str]]]
"""(task id, prompt id, prompt text, prompt chat turns, completion, good, [(rating id, table)]) of one row."""


def rating_query(pid: int | None = None, mvid: int | None = None, uid: int | None = None,
                 since: dt.datetime | None = None, until: dt.datetime | None = None, *,
                 by_prompt: bool = False) -> Select:
    """Each rating with its task, prompt and response, ordered by (task, rating), or by prompt first."""
    q = (select(Task.id, Task.prompt_id, Prompt.text, Prompt.messages, Rating.id, Rating.good, Response.text)
         .join(Rating, Rating.task_id == Task.id).join(Prompt, Prompt.id == Task.prompt_id)
         .join(Response, Response.id == Rating.response_id)
         .where(Task.kind == "rate"))
    if pid is not None:
        q = q.where(Task.project_id == pid)
    if mvid is not None:
        q = q.where(Response.model_version_id == mvid)
    q = _by_labeler(q, Rating, uid, since, until)
    return q.order_by(*((Task.prompt_id,) if by_prompt else ()), Task.id, Rating.id)


def _rating_records(session: Session, pid: int | None, mvid: int | None, uid: int | None,
                    since: dt.datetime | None, until: dt.datetime | None, aggregate: str,
                    min_agreement: float | None, *, by_prompt: bool = False) -> Iterator[RateRecord]:
    """Rate tasks' verdicts: one per task (majority / unanimous) or one per rating ('all'), streamed."""
    session.flush()
    rows = session.connection().execute(rating_query(pid, mvid, uid, since, until, by_prompt=by_prompt),
                                        execution_options={"stream_results": True, "yield_per": STREAM_ROWS})
    for tid, labs in itertools.groupby(rows, key=lambda r: r[0]):
        labs = list(labs)
        _, prompt_id, text_, messages, _, _, completion = labs[0]
        votes = [("good" if r[5] else "bad", None, r[4], "ratings") for r in labs]
        for verdict, _, agreement, used in _aggregate(votes, aggregate):
            if min_agreement is not None and agreement < min_agreement:
                continue
            yield tid, prompt_id, text_, messages, completion, verdict == "good", used


def _check_aggregate(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise InputError(f"aggregate must be one of {', '.join(AGGREGATES)}, not {aggregate!r}",
                         field="aggregate")


def iter_rating_rows(session: Session, *, project: str | None = None, aggregate: str = "majority",
                     since: str | dt.datetime | None = None, until: str | dt.datetime | None = None,
                     model_version: str | None = None, annotator: str | None = None,
                     min_agreement: float | None = None, conversational: str = "auto",
                     collect: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Ratings in TRL's unpaired preference format {prompt, completion, label} (what KTOTrainer reads), by
    task id. Several ratings of a task: the strict majority (default; an even split is left out), every rating
    ('all') or only unanimous ones."""
    _check_aggregate(aggregate)
    pid, mvid, uid = _resolve_filters(session, project, model_version, annotator)
    since_t, until_t = _parse_date(since, "since"), _parse_date(until, "until")
    chat = _conversational(session, pid, conversational)
    for _, _, text_, messages, completion, good, used in _rating_records(
            session, pid, mvid, uid, since_t, until_t, aggregate, min_agreement):
        msgs = list(messages) if messages else [{"role": "user", "content": text_ or ""}]
        if chat:
            row = {"prompt": msgs, "completion": [{"role": "assistant", "content": completion}], "label": good}
        else:
            row = {"prompt": text_ if not messages else prompt_as_plain(msgs), "completion": completion,
                   "label": good}
        _note(collect, used)
        yield row


def _rating_pair_records(session: Session, pid: int | None, mvid: int | None, uid: int | None,
                         since: dt.datetime | None, until: dt.datetime | None, aggregate: str,
                         min_agreement: float | None, collect: dict[str, Any] | None) -> Iterator[PrefRecord]:
    """Every (good, bad) pair of completions of one prompt, from its rate tasks' verdicts: the rating
    counterpart of a ranking with two tiers, so one group per prompt. Only ratings in a pair are noted."""
    recs = _rating_records(session, pid, mvid, uid, since, until, aggregate, min_agreement, by_prompt=True)
    for prompt_id, same in itertools.groupby(recs, key=lambda r: r[1]):
        same = list(same)
        good = {r[4]: r for r in same if r[5]}  # by text: the same completion twice is one side
        bad = {r[4]: r for r in same if not r[5] and r[4] not in good}
        if not good or not bad:
            continue
        text_, messages = same[0][2], same[0][3]
        for g in good.values():
            for b in bad.values():
                yield (min(g[0], b[0]), text_, messages, g[4], b[4], 0.0, f"ratings-prompt-{prompt_id}", None)
        _note(collect, [u for r in (*good.values(), *bad.values()) for u in r[6]])


# -------------------------------------------------------------------------------------------- raw

def annotator_names(session: Session, *, salt: str | None = None, with_usernames: bool = False
                    ) -> Callable[[int], str]:
    """user id -> what an export shows for the annotator.

    By default a pseudonym: HMAC-SHA256 of the user id under a salt, so one annotator keeps one name within an
    export (agreement, per-annotator audits) but the names neither reveal the username nor link two exports
    (a plain hash of the id would: ids are small numbers anyone can hash). The salt is random per export unless
    given (the same salt: the same names, e.g. a rerun or a join of two exports); it is never written out.
    `with_usernames` gives the real usernames (an admin's choice: the file then identifies people).
    """
    if with_usernames:
        names = dict(session.execute(select(User.id, User.username)).all())
        return lambda user_id: names.get(user_id, f"user-{user_id}")
    key = (salt if salt is not None else secrets.token_hex(16)).encode()
    cache: dict[int, str] = {}

    def name(user_id: int) -> str:
        if user_id not in cache:
            cache[user_id] = "ann-" + hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()[:12]
        return cache[user_id]
    return name


def iter_raw_rows(session: Session, *, project: str | None = None, since: str | dt.datetime | None = None,
                  until: str | dt.datetime | None = None, model_version: str | None = None,
                  annotator: str | None = None, with_usernames: bool = False, salt: str | None = None,
                  collect: dict[str, list[int]] | None = None) -> Iterator[dict[str, Any]]:
    """One row per label for audits: annotator (pseudonymous unless `with_usernames`, see `annotator_names`),
    times, flags, the model versions judged."""
    who = annotator_names(session, salt=salt, with_usernames=with_usernames)
    pid, mvid, uid = _resolve_filters(session, project, model_version, annotator)
    since, until = _parse_date(since, "since"), _parse_date(until, "until")
    versions = {mv.id: mv.name for mv in session.scalars(select(ModelVersion))}
    pnames = {p.id: p.name for p in session.scalars(select(Project))}
    iso = lambda t: t.isoformat() if t else None
    for batch in _task_batches(session, ("compare", "rank"), pid, mvid, (PreferenceLabel, Ranking)):
        _, responses = _load(session, batch)
        prefs = _labels(session, PreferenceLabel, batch, uid, since, until)
        ranks = _labels(session, Ranking, batch, uid, since, until)
        for task in batch:
            shown = [{"response_id": rid, "model_version": versions.get(responses[rid].model_version_id)
                      if responses[rid].model_version_id else None} for rid in task.response_ids]
            for is_pref, lab in [(True, x) for x in prefs.get(task.id, [])] + [(False, x) for x in ranks.get(task.id, [])]:
                row = {"label_id": lab.id, "kind": task.kind, "project": pnames[task.project_id],
                       "task_id": task.id, "prompt_id": task.prompt_id,
                       "annotator": who(lab.user_id), "created_at": iso(lab.created_at),
                       "updated_at": iso(lab.updated_at), "seconds": lab.seconds, "flags": lab.flags,
                       "comment": lab.comment, "responses": shown}
                if is_pref:
                    row.update(choice=lab.choice, strength=lab.strength)
                else:
                    row.update(ordering=lab.ordering)
                if collect is not None:
                    collect.setdefault("preference_labels" if is_pref else "rankings", []).append(lab.id)
                yield row
    for batch in _task_batches(session, ("rate",), pid, mvid, (Rating,)):
        _, responses = _load(session, batch)
        rates = _labels(session, Rating, batch, uid, since, until)
        for task in batch:
            shown = [{"response_id": rid, "model_version": versions.get(responses[rid].model_version_id)
                      if responses[rid].model_version_id else None} for rid in task.response_ids]
            for lab in rates.get(task.id, []):
                if collect is not None:
                    collect.setdefault("ratings", []).append(lab.id)
                yield {"label_id": lab.id, "kind": "rate", "project": pnames[task.project_id], "task_id": task.id,
                       "prompt_id": task.prompt_id, "annotator": who(lab.user_id),
                       "created_at": iso(lab.created_at), "updated_at": iso(lab.updated_at),
                       "seconds": lab.seconds, "flags": lab.flags, "comment": lab.comment, "responses": shown,
                       "good": lab.good, "likert": lab.likert}
    if mvid is not None:
        return  # demonstrations are human-written: no model version to filter on
    for rows in _demo_batches(session, pid, uid, since, until):
        for d, p in rows:
            if collect is not None:
                collect.setdefault("demonstrations", []).append(d.id)
            yield {"label_id": d.id, "kind": "demonstrate", "project": pnames[p.project_id], "task_id": d.task_id,
                   "prompt_id": d.prompt_id, "annotator": who(d.user_id),
                   "created_at": iso(d.created_at), "updated_at": iso(d.updated_at), "seconds": d.seconds,
                   "status": d.status, "review_note": d.review_note, "text": d.text}


# -------------------------------------------------------------------------------------------- prompts

def iter_prompt_rows(session: Session, *, project: str | None = None, collect: dict[str, list[int]] | None = None,
                     batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Prompts for online RL (PPO, RLOO, GRPO): {prompt: text | chat turns, prompt_id[, answer]} by id; the
    prompt's metadata ``answer`` is kept (verifiable prompts)."""
    pid, _, _ = _resolve_filters(session, project, None, None)
    last = 0
    while True:
        q = select(Prompt).where(Prompt.id > last).order_by(Prompt.id).limit(batch)
        if pid is not None:
            q = q.where(Prompt.project_id == pid)
        rows = list(session.scalars(q))
        if not rows:
            return
        for p in rows:
            row: dict[str, Any] = {"prompt": list(p.messages) if p.messages else p.text, "prompt_id": p.id}
            if (p.meta or {}).get("answer") is not None:
                row["answer"] = str(p.meta["answer"])
            if collect is not None:
                collect.setdefault("prompts", []).append(p.id)
            yield row
        last = rows[-1].id


# ------------------------------------------------------------------------------- files and bytes

def iter_rows(session: Session, kind: str, collect: dict[str, list[int]] | None = None,
              **filters: Any) -> Iterator[dict[str, Any]]:
    if kind == "preferences":
        return iter_preference_rows(session, collect=collect, **filters)
    if kind == "sft":
        return iter_sft_rows(session, collect=collect, **filters)
    if kind == "raw":
        return iter_raw_rows(session, collect=collect, **filters)
    if kind == "prompts":
        return iter_prompt_rows(session, collect=collect, **filters)
    if kind == "ratings":
        return iter_rating_rows(session, collect=collect, **filters)
    raise InputError(f"unknown export {kind!r}: use preferences, sft, ratings, raw or prompts", field="kind")


def schema_revision(session: Session) -> str | None:
    if not inspect(session.get_bind()).has_table("alembic_version"):
        return None
    return session.scalar(text("SELECT version_num FROM alembic_version"))


class _IdTally:
    """Count and largest id of one label table, all a manifest shows: holding a 1M-row export's ids took
    more memory than the rest of the export. An export lists each label once (a label belongs to one task,
    its ids are noted once per task), so the count is the number of distinct ids."""

    __slots__ = ("count", "max_id")

    def __init__(self) -> None:
        self.count, self.max_id = 0, None

    def append(self, label_id: int) -> None:
        self.count += 1
        if self.max_id is None or label_id > self.max_id:
            self.max_id = label_id


class _Tallies(dict):
    """A `collect` mapping for files: `collect.setdefault(table, []).append(id)` lands in an `_IdTally`."""

    def setdefault(self, key: str, default: Any = None) -> _IdTally:
        tally = self.get(key)
        if tally is None:
            tally = self[key] = _IdTally()
        return tally


def _manifest(session: Session, kind: str, filters: dict[str, Any], n: int,
              collect: dict[str, Any]) -> dict[str, Any]:
    shown = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in filters.items() if k != "salt"}
    if kind == "raw":  # say how annotators appear, never the salt (it would let anyone undo the pseudonyms)
        shown["annotators"] = ("usernames" if filters.get("with_usernames") else
                               "pseudonyms, given salt" if filters.get("salt") is not None else
                               "pseudonyms, random salt of this export")
    labels = {}
    for table, ids in sorted(collect.items()):
        if isinstance(ids, _IdTally):
            labels[table] = {"count": ids.count, "max_id": ids.max_id}
        else:
            labels[table] = {"count": len(set(ids)), "max_id": max(ids) if ids else None}
    return {
        "kind": kind, "rows": n,
        "filters": shown,
        "labels": labels,
        "schema_revision": schema_revision(session),
        "created_at": utcnow().isoformat(),
    }


def _lines(session: Session, kind: str, collect: dict[str, Any], **filters: Any) -> Iterator[str]:
    """The export's JSON lines: preferences from their template, other kinds through the json encoder."""
    if kind == "preferences":
        records, chat = _preference_records(session, collect=collect, **filters)
        fmt = filters.get("fmt", "trl")
        return map(_pref_line, records, itertools.repeat(fmt), itertools.repeat(chat))
    return (_dumps(row) + "\n" for row in iter_rows(session, kind, collect=collect, **filters))


def _write_lines(lines: Iterable[str], fh: io.TextIOBase, chunk: int = 2000) -> int:
    """Write lines a chunk at a time (one write per line cost more than encoding them); returns the count."""
    n = 0
    lines = iter(lines)
    while buf := list(itertools.islice(lines, chunk)):  # no Python-level step per line
        fh.write("".join(buf))
        n += len(buf)
    return n


def write_jsonl(rows: Iterable[dict[str, Any]], fh: io.TextIOBase) -> int:
    return _write_lines((_dumps(row) + "\n" for row in rows), fh)


def _audit_export(session: Session, kind: str, filters: dict[str, Any], rows: int, actor_id: int | None,
                  file: str | None = None) -> None:
    """Who exported what (the filters, never the pseudonym salt: with it, pseudonyms map back to users)."""
    from db.session import write_transaction

    shown = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
             for k, v in filters.items() if k != "salt" and v not in (None, False, (), [])}
    with write_transaction(session):
        audit.record(session, "export", actor_id=actor_id, target=kind,
                     details={"rows": rows, "filters": shown, **({"file": file} if file else {})})


def export_file(session: Session, kind: str, out: str | Path, *, actor_id: int | None = None,
                **filters: Any) -> dict[str, Any]:
    """Stream the export to `out` (written to a temp file, renamed at the end: never half-written)
    and write `<out>.manifest.json` beside it. Returns the manifest. Admins only (`actor_id`), audited."""
    audit.require_admin(session, actor_id, "exporting")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    collect = _Tallies()
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            n = _write_lines(_lines(session, kind, collect, **filters), fh)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    manifest = {**_manifest(session, kind, filters, n, collect), "file": str(out)}
    out.with_name(out.name + ".manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _audit_export(session, kind, filters, n, actor_id, str(out))
    return manifest


def export_bytes(session: Session, kind: str, *, actor_id: int | None = None,
                 **filters: Any) -> tuple[bytes, dict[str, Any]]:
    """The export as JSONL bytes (UI downloads) plus its manifest. Admins only (`actor_id`), audited."""
    audit.require_admin(session, actor_id, "exporting")
    buf = io.StringIO()
    collect = _Tallies()
    n = _write_lines(_lines(session, kind, collect, **filters), buf)
    manifest = _manifest(session, kind, filters, n, collect)
    _audit_export(session, kind, filters, n, actor_id)
    return buf.getvalue().encode("utf-8"), manifest


def label_ids(collect: dict[str, list[int]]) -> dict[str, list[int]]:
    """Sorted unique ids per label table, for a model version's `label_snapshot`."""
    return {k: sorted(set(v)) for k, v in collect.items()}


__all__ = [
    "MARGIN_FOR_STRENGTH",
    "User",
    "annotator_names",
    "export_bytes",
    "export_file",
    "iter_preference_rows",
    "iter_rating_rows",
    "iter_raw_rows",
    "iter_rows",
    "iter_sft_rows",
    "label_ids",
]
