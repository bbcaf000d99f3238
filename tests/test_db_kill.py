"""kill -9 in the middle of an import, of submissions and of an export (SQLite and PostgreSQL): the database
holds all of an import or none of it, never half a label, and the export reruns to the same file."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from bench.annotators_load import Behaviour, check, label_keys, run_annotators, seed
from db.models import Assignment, PreferenceLabel, Prompt, Response, Task
from db.services import accounts, projects
from db.session import dispose_engines, get_engine, session_factory

ROOT = Path(__file__).resolve().parents[1]


def _tagged(url: str) -> tuple[str, str]:
    """The URL with an application_name, so the test can see that server's sessions (PostgreSQL)."""
    tag = "kill-" + uuid.uuid4().hex[:8]
    if make_url(url).get_backend_name() != "postgresql":
        return url, tag
    return url + ("&" if "?" in url else "?") + f"application_name={tag}", tag


def _writing(url: str, tag: str) -> bool:
    """Whether some connection is inside a write transaction right now."""
    if make_url(url).get_backend_name() == "sqlite":
        probe = sqlite3.connect(make_url(url).database, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:  # "database is locked": a writer holds the lock, mid-transaction
            return True
        finally:
            probe.close()
    eng = create_engine(url.split("?")[0])
    try:
        with eng.connect() as c:
            return bool(c.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :t "
                                      "AND backend_xid IS NOT NULL"), {"t": tag}))
    finally:
        eng.dispose()


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "never reached the point to kill it"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def _cli(url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "db", "--url", url, *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rerun(url: str, *args: str) -> int:
    """The same command after the kill, in this process (the CLI's own entry point; saves a start-up)."""
    from db.cli import main

    status = main(["--url", url, *args])
    dispose_engines()
    return status


def _count(url: str, model) -> int:
    with session_factory(url)() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_kill_mid_import_leaves_all_or_nothing_and_the_rerun_imports_it_once(db_url, tmp_path):
    with session_factory(db_url)() as s:
        projects.create_project(s, "big")
        s.commit()
    n = 2000
    big = tmp_path / "big.jsonl"
    big.write_text("".join(json.dumps({"prompt": f"prompt number {i}: explain it"}) + "\n" for i in range(n)))
    url, tag = _tagged(db_url)
    proc = _cli(url, "import", "prompts", str(big), "--project", "big")
    _kill_when(proc, lambda: _writing(url, tag))
    assert _count(db_url, Prompt) == 0  # killed inside its one transaction: nothing of the file
    assert _rerun(db_url, "import", "prompts", str(big), "--project", "big") == 0
    assert _count(db_url, Prompt) == n
    assert _rerun(db_url, "import", "prompts", str(big), "--project", "big") == 0
    assert _count(db_url, Prompt) == n  # re-importing adds nothing


def test_kill_mid_submissions_leaves_no_half_label_and_annotators_carry_on(db_url):
    pid, users = seed(db_url, n_tasks=60, n_users=6, overlap=2)
    url, tag = _tagged(db_url)
    killed_at = []
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bench.annotators_load import *; "
            "run_annotators(sys.argv[2], int(sys.argv[3]), [int(u) for u in sys.argv[5:]], 'threads', "
            "Behaviour(0, 0, 0, 0), seed_=int(sys.argv[4]))")
    for round_ in range(3):  # three kills, each after a few more labels
        proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), url, str(pid), str(round_),
                                 *map(str, users)], cwd=ROOT)
        start = len(label_keys(db_url, pid))
        _kill_when(proc, lambda s=start: _writing(url, tag) and len(label_keys(db_url, pid)) >= s + 5)
        killed_at.append(len(label_keys(db_url, pid)))
        with session_factory(db_url)() as s:  # no half label: each label with its slot and counter, or neither
            for t in s.scalars(select(Task).where(Task.project_id == pid)):
                n_labels = len(label_keys_of_task(s, t.id))
                n_slots = s.scalar(select(func.count()).select_from(Assignment).where(
                    Assignment.task_id == t.id, Assignment.state == "submitted"))
                assert t.n_submitted == n_labels == n_slots, (t.id, t.n_submitted, n_labels, n_slots)
    assert killed_at[0] < killed_at[-1]
    before = label_keys(db_url, pid)
    dispose_engines()
    # The same annotators come back (their leases are still theirs) and finish the project.
    results, _ = run_annotators(db_url, pid, users, "threads", Behaviour(0, 0, 0, 0), timeout=120)
    problems = check(db_url, pid, results, preexisting=before)
    assert problems == dict.fromkeys(problems, 0)


def label_keys_of_task(s, task_id: int) -> list[int]:
    from bench.annotators_load import LABEL_TABLES

    return [lid for model in LABEL_TABLES.values() for lid in s.scalars(select(model.id).where(
        model.task_id == task_id))]


def _bulk_labels(url: str, n: int) -> None:
    """n compare tasks with one preference label each, inserted in bulk (the export is what is tested)."""
    with session_factory(url)() as s:
        pid = projects.create_project(s, "exp").id
        who = accounts.system_user(s, "bulk-labeler").id
        s.commit()
    with get_engine(url).begin() as c:
        for lo in range(1, n + 1, 5000):
            ids = range(lo, min(n, lo + 4999) + 1)
            c.execute(insert(Prompt), [{"id": i, "project_id": pid, "text": f"prompt {i}", "source": "bulk",
                                        "meta": {}, "content_hash": f"h{i}"} for i in ids])
            c.execute(insert(Response), [{"id": 2 * i + k - 1, "prompt_id": i, "text": f"response {k} to {i}",
                                          "params": {}, "sample_index": k, "content_hash": f"r{i}-{k}"}
                                         for i in ids for k in (0, 1)])
            c.execute(insert(Task), [{"id": i, "project_id": pid, "kind": "compare", "prompt_id": i,
                                      "response_ids": [2 * i - 1, 2 * i], "status": "done", "n_submitted": 1,
                                      "dedup_key": f"t{i}", "source": "bulk"} for i in ids])
            c.execute(insert(PreferenceLabel), [{"task_id": i, "user_id": who, "choice": "a" if i % 3 else "b",
                                                 "strength": "clear", "flags": [], "comment": ""} for i in ids])
        if make_url(url).get_backend_name() == "postgresql":  # explicit ids: move the sequences past them
            for table in ("prompts", "responses", "tasks", "preference_labels"):
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) "
                               f"FROM {table}))"))


def test_kill_mid_export_leaves_no_file_and_the_rerun_writes_the_same_one(db_url, tmp_path):
    _bulk_labels(db_url, 10_000)
    out = tmp_path / "prefs.jsonl"
    part = out.with_name(out.name + ".part")
    args = ("export", "preferences", "--project", "exp", "-o", str(out))
    proc = _cli(db_url, *args)
    _kill_when(proc, lambda: part.exists() and part.stat().st_size > 0)
    assert not out.exists()  # never a half-written export under the real name
    runs = []
    for _ in range(2):
        assert _rerun(db_url, *args) == 0
        runs.append(out.read_bytes())
    assert runs[0] == runs[1] and runs[0].count(b"\n") == 10_000
    assert json.loads(out.with_name(out.name + ".manifest.json").read_text())["rows"] == 10_000
