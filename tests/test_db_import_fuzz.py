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
