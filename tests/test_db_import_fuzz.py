"""Fuzzed importers: any input either imports or fails with a located InputError, never a traceback."""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from db.migrate import create_schema
from db.services import importers, projects
from db.services.errors import InputError
from db.session import session_factory

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
TURN = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", 3]),
                              "content": st.text(max_size=8) | st.integers()})
PROMPT_ROW = st.one_of(
    st.fixed_dictionaries({"prompt": JSON}), st.fixed_dictionaries({"messages": st.lists(TURN, max_size=3) | JSON}),
    st.fixed_dictionaries({"instruction": JSON}, optional={"input": JSON, "instances": JSON}),
    st.fixed_dictionaries({"turns": JSON}), st.dictionaries(st.text(max_size=6), JSON, max_size=3))
PREF_ROW = st.fixed_dictionaries(
    {}, optional={"prompt": st.text(max_size=8) | st.lists(TURN, max_size=2) | JSON,
                  "chosen": st.text(max_size=8) | st.lists(TURN, max_size=2) | JSON,
                  "rejected": st.text(max_size=8) | st.lists(TURN, max_size=2) | JSON, "margin": JSON})
NODE = st.recursive(
    st.fixed_dictionaries({"role": st.sampled_from(["assistant", "prompter"]) | JSON, "text": st.text(max_size=6) | JSON},
                          optional={"rank": st.integers(0, 3) | JSON, "deleted": st.booleans()}),
    lambda inner: st.fixed_dictionaries({"role": st.sampled_from(["assistant", "prompter"]),
                                         "text": st.text(max_size=6)},
                                        optional={"rank": st.integers(0, 3) | JSON,
                                                  "replies": st.lists(inner, max_size=3) | JSON}),
    max_leaves=6)
TREE = st.fixed_dictionaries({}, optional={"prompt": NODE | JSON})


def _lines(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


_session = None


def _s(tmp_path_factory):
    global _session
    if _session is None:
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'f.sqlite3'}"
        create_schema(url)
        _session = session_factory(url)()
        projects.create_project(_session, "p")
        _session.commit()
    return _session


def _check(session, fn, data: bytes) -> None:
    try:
        fn(session, data, "p", filename="fuzz.jsonl")
    except InputError as e:
        assert "fuzz.jsonl" in str(e)  # located: the message names the file (and line/field)
    finally:
        session.rollback()


FUZZ = settings(max_examples=int(__import__("os").environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(PROMPT_ROW, min_size=1, max_size=3))
def test_prompt_import_fuzz(tmp_path_factory, rows):
    _check(_s(tmp_path_factory), importers.import_prompts, _lines(rows))


@FUZZ
@given(st.lists(PREF_ROW, min_size=1, max_size=3))
def test_preference_import_fuzz(tmp_path_factory, rows):
    _check(_s(tmp_path_factory), importers.import_preferences, _lines(rows))


@FUZZ
@given(st.lists(TREE, min_size=1, max_size=2))
def test_oasst_import_fuzz(tmp_path_factory, rows):
    _check(_s(tmp_path_factory), importers.import_oasst, _lines(rows))


@FUZZ
@given(st.binary(max_size=40))
def test_arbitrary_bytes(tmp_path_factory, data):
    _check(_s(tmp_path_factory), importers.import_prompts, data)


def _check_skip(session, fn, data: bytes) -> None:
    """With skip_invalid every non-blank line is either imported or refused (with its line), never both."""
    lines = [i for i, line in enumerate(data.split(b"\n"), 1) if line.strip()]
    try:
        r = fn(session, data, "p", filename="fuzz.jsonl", skip_invalid=True)
        assert r.rows + len(r.refused) == len(lines)
        assert {x.line for x in r.refused} <= set(lines) and len({x.line for x in r.refused}) == len(r.refused)
        assert all(x.reason for x in r.refused)
    finally:
        session.rollback()


@FUZZ
@given(st.lists(PREF_ROW | JSON, min_size=1, max_size=4))
def test_preference_import_skip_invalid_fuzz(tmp_path_factory, rows):
    _check_skip(_s(tmp_path_factory), importers.import_preferences, _lines(rows))


@FUZZ
@given(st.lists(TREE | JSON, min_size=1, max_size=3))
def test_oasst_import_skip_invalid_fuzz(tmp_path_factory, rows):
    _check_skip(_s(tmp_path_factory), importers.import_oasst, _lines(rows))


# the importers added since (ratings, CSV) and the no-partial-write check: fewer examples, the budget is shared
FUZZ_MORE = settings(FUZZ, max_examples=max(1, FUZZ.max_examples // 3))

RATING_ROW = st.fixed_dictionaries(
    {}, optional={"prompt": st.text(max_size=8) | st.lists(TURN, max_size=2) | JSON,
                  "completion": st.text(max_size=8) | st.lists(TURN, max_size=2) | JSON,
                  "label": st.booleans() | JSON})


@FUZZ_MORE
@given(st.lists(RATING_ROW, min_size=1, max_size=3))
def test_rating_import_fuzz(tmp_path_factory, rows):
    _check(_s(tmp_path_factory), importers.import_ratings, _lines(rows))


CSV_CELL = st.text(max_size=10) | st.sampled_from(['"', '""', "\n", "\r\n", ",", "\x00", "\ufeff", "é"])


@FUZZ_MORE
@given(st.lists(st.sampled_from(["prompt", "meta", "", "prompt "]), min_size=1, max_size=3),
       st.lists(st.lists(CSV_CELL, max_size=4), max_size=4))
def test_csv_prompt_import_fuzz(tmp_path_factory, header, rows):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    session = _s(tmp_path_factory)
    try:
        importers.import_prompts(session, buf.getvalue().encode(), "p", filename="fuzz.csv")
    except InputError as e:
        assert "fuzz.csv" in str(e)
    finally:
        session.rollback()


def _counts(session) -> dict[str, int]:
    from sqlalchemy import func, select

    from db.models import Base

    return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


@FUZZ_MORE
@given(st.sampled_from(["prompts", "preferences", "oasst", "ratings"]),
       st.lists(PROMPT_ROW | PREF_ROW | TREE | RATING_ROW, min_size=1, max_size=4))
def test_refused_import_writes_nothing(tmp_path_factory, kind, rows):
    """As the CLI and the Imports page run it (one write transaction): refused means no row in any table."""
    from db.session import write_transaction

    session = _s(tmp_path_factory)
    before = _counts(session)
    fn = getattr(importers, f"import_{kind}")
    try:
        with write_transaction(session):
            fn(session, _lines(rows), "p", filename="fuzz.jsonl")
    except InputError:
        session.rollback()
        assert _counts(session) == before
    else:
        assert all(_counts(session)[t] >= n for t, n in before.items())
