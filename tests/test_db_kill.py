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

import pytest
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


# ------------------------------------------------------------------ the PostgreSQL server itself killed

N_TASKS, N_IMPORT = 50, 200_000  # the bulk import writes ~50k rows per CPU-s: big enough to be mid-write at the crash
PG_OPTS = "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200"


class OwnServer:
    """A PostgreSQL this test starts (scripts/pg_test_server.sh), stops with `pg_ctl stop -m immediate` (a
    crash: no checkpoint, every backend killed, crash recovery on the next start) and starts again."""

    def __init__(self, tmp: Path) -> None:
        import socket

        with socket.socket() as so:
            so.bind(("127.0.0.1", 0))
            self.port = so.getsockname()[1]
        self.dir = Path("/tmp") / f"pg-kill-{uuid.uuid4().hex[:8]}"  # short: the socket path has a length limit
        out = subprocess.run(["scripts/pg_test_server.sh", "start", str(self.dir), str(self.port)], cwd=ROOT,
                             capture_output=True, text=True, check=True)
        self.url = out.stdout.strip().splitlines()[-1]
        # The script's server turns synchronous_commit off (fast tests): a crash may then lose commits it
        # acknowledged. This one keeps PostgreSQL's promise: a commit that returned survives the crash.
        eng = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with eng.connect() as c:
            c.execute(text("ALTER DATABASE postgres SET synchronous_commit = on"))
        eng.dispose()
        self.bin = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))))

    def _pg_ctl(self, *args: str) -> None:
        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.dir), *args]
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def crash(self) -> None:
        self._pg_ctl("stop", "-m", "immediate", "-w")

    def start(self) -> None:
        self._pg_ctl("start", "-w", "-l", str(self.dir / "server.log"), "-o",
                     f"-p {self.port} -k {self.dir} {PG_OPTS}")

    def remove(self) -> None:
        subprocess.run(["scripts/pg_test_server.sh", "stop", str(self.dir)], cwd=ROOT, check=False,
                       capture_output=True)
        Path(f"{self.dir}.initdb.log").unlink(missing_ok=True)  # the script leaves it beside the folder


def _resilient_annotator(url: str, pid: int, uid: int, acked: list, outages: list, stop_after: float,
                         think: float) -> None:
    """next_task -> submit until nothing is left, as the app does: a DatabaseUnavailable is shown and the same
    action is tried again (the page keeps its task and its text), nothing else may go wrong."""
    import random

    from bench.annotators_load import _submit
    from db.services import assignment
    from db.services.errors import DatabaseUnavailable
    from db.session import session_scope

    rng, view, deadline = random.Random(uid), None, time.monotonic() + stop_after
    while time.monotonic() < deadline:
        try:
            if view is None:
                with session_scope(url) as s:
                    view = assignment.next_task(s, uid, pid)
                    if view is None and assignment.tasks_left(s, uid, pid) == 0:
                        return
                if view is None:
                    time.sleep(0.02)
                    continue
            with session_scope(url) as s:
                label, _created = _submit(s, uid, view, rng)
                label_id = label.id
            acked.append((view.kind, label_id, view.task_id))  # the app said "saved" (or "already saved")
            view = None
            time.sleep(think)  # a person reads the next task
        except DatabaseUnavailable as e:
            outages.append(str(e))
            time.sleep(0.05)
    raise AssertionError(f"annotator {uid} did not finish in {stop_after} s")


@pytest.mark.postgres
def test_postgres_server_crash_mid_load_keeps_every_acknowledged_label_and_no_half_import(tmp_path):
    """The server dies (immediate stop) while annotators submit and an import's transaction is open; it comes
    back: every submit the app acknowledged is there once, no half label, none of the import is there (its
    command said so and exited 2), and the same annotators finish the project as if nothing had happened."""
    import threading

    from bench.annotators_load import WorkerResult

    srv = OwnServer(tmp_path)
    try:
        from db.migrate import create_schema

        create_schema(srv.url)
        pid, users = seed(srv.url, n_tasks=N_TASKS, n_users=6, overlap=2)
        with session_factory(srv.url)() as s:
            projects.create_project(s, "imported")
            s.commit()
        big = tmp_path / "big.jsonl"
        big.write_text("".join(json.dumps({"prompt": f"imported prompt {i}"}) + "\n" for i in range(N_IMPORT)))
        url, tag = _tagged(srv.url)
        acked: dict[int, list] = {u: [] for u in users}
        outages: list[str] = []
        errors: list[BaseException] = []

        def run(uid: int) -> None:
            try:
                _resilient_annotator(srv.url, pid, uid, acked[uid], outages, stop_after=180, think=0.15)
            except BaseException as e:  # noqa: BLE001 - re-raised below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(u,), daemon=True) for u in users]
        imp = _cli(url, "import", "prompts", str(big), "--project", "imported")
        deadline = time.monotonic() + 60
        while not _writing(url, tag):  # the import's transaction is open (a CLI start-up takes seconds)
            assert imp.poll() is None, f"the import finished before the crash: {imp.communicate()}"
            assert time.monotonic() < deadline, "the import never started writing"
            time.sleep(0.005)
        for t in threads:
            t.start()
        while sum(map(len, acked.values())) < 5:
            assert imp.poll() is None, f"the import finished before the crash: {imp.communicate()}"
            assert time.monotonic() < deadline, "never reached the point to crash the server"
            time.sleep(0.005)
        at_crash = sum(map(len, acked.values()))
        srv.crash()
        imp_status = imp.wait(60)
        imp_err = imp.stderr.read()
        time.sleep(1.0)  # annotators keep trying against a dead server meanwhile
        srv.start()
        for t in threads:
            t.join(200)
        assert not errors, errors
        assert not [t for t in threads if t.is_alive()], "annotators hung"
        assert outages, f"the crash never reached an annotator ({at_crash} acknowledged before it, {sum(map(len, acked.values()))} after)"
        assert all("not answering" in o for o in outages)
        assert imp_status == 2 and "not answering" in imp_err and "Traceback" not in imp_err, imp_err[-2000:]
        dispose_engines()
        with session_factory(srv.url)() as s:
            imported = projects.get_project(s, "imported").id
            assert s.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == imported)) == 0
        # (that the same import then reruns whole is the process-kill test's, above)
        # every acknowledged label once (a submit retried after the crash returned the first one, so the same
        # id may be acknowledged twice: count it once); every task full; counters match
        results = [WorkerResult(u, sorted(set(acked[u]))) for u in users]
        problems = check(srv.url, pid, results)
        assert problems == dict.fromkeys(problems, 0), problems
        assert at_crash < sum(len(r.created) for r in results) == N_TASKS * 2
    finally:
        dispose_engines()
        srv.remove()


def test_app_with_the_database_down_says_retry_and_keeps_the_demonstration(sqlite_url, monkeypatch):
    """The database goes away while an annotator writes a demonstration: Submit shows a retry message (no
    traceback), the text stays; once it is back, the same Submit saves it once."""
    from streamlit.testing.v1 import AppTest

    from db.models import Demonstration
    from labeling_ui.seed import seed as seed_app

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed_app(sqlite_url, n_compare=1, n_rank=1, n_demonstrate=2, create_tables=False)
    at = AppTest.from_file(str(ROOT / "labeling_ui" / "app.py"), default_timeout=60)
    at.session_state["user"] = {"id": info["alice_id"], "username": "alice", "display_name": "alice",
                                "role": "annotator"}
    at.run()
    at.switch_page("views/demonstrate.py").run()
    tid = at.session_state[f"task:demonstrate:{info['project_id']}"].task_id
    answer = "A careful answer that took the annotator ten minutes to write."
    at.text_area(key=f"demo_text_{tid}").input(answer).run()
    # nothing listens on port 1: what a stopped or restarting PostgreSQL looks like to the app
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/postgres?connect_timeout=3")
    at.button(key=f"demo_submit_{tid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("not answering" in w.value for w in at.warning)
    retry = next(b for b in at.button if b.key and b.key.startswith("db_retry_"))
    retry.click().run()  # still down: the same message again, still no traceback
    assert not at.exception and any("not answering" in w.value for w in at.warning)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)  # back
    next(b for b in at.button if b.key and b.key.startswith("db_retry_")).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_area(key=f"demo_text_{tid}").value == answer  # what was typed is still there
    at.button(key=f"demo_submit_{tid}").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with session_factory(sqlite_url)() as s:
        assert s.scalars(select(Demonstration.text)).all() == [answer]
