"""SQL statements and client CPU per next_task + submit, one annotator at a time (what bench/annotators_load.py
runs 32 of at once; on 2 cores the client's CPU per operation is what caps it).

    python bench/annotator_ops.py                                  # SQLite (temp file) + a throwaway PostgreSQL
    python bench/annotator_ops.py --pg-url postgresql+psycopg://…  # a PostgreSQL you own (a schema is created)
    python bench/annotator_ops.py --baseline-rev HEAD~3            # also that revision's assignment.py + labels.py
    python bench/annotator_ops.py --profile                        # + the top of a cProfile of today's pairs

Each version runs on its own freshly seeded project (bench/annotators_load.py's mix: compare, rank, demonstrate;
overlap 2); the versions take turns in rounds so load on the machine hits both alike. Per pair: statements sent
(counted with SQLAlchemy's before_cursor_execute, BEGIN/SAVEPOINT included where the driver sends them as
statements, plus db.pg_functions.CALLS: PostgreSQL's one-statement calls go to the driver directly) and client
CPU (time.process_time; on SQLite that includes SQLite itself). Prints figures; never pass/fail.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event

from bench.annotators_load import _pg_schema_url, seed
from db import pg_functions
from db.migrate import create_schema
from db.services import assignment, labels
from db.session import dispose_engines, get_engine, session_factory


def _modules_at(rev: str) -> tuple[ModuleType, ModuleType]:
    """db/services/assignment.py and labels.py as they were at `rev`, importable beside today's; that labels.py
    imports that assignment.py (not today's)."""
    mods = []
    for path in ("db/services/assignment.py", "db/services/labels.py"):
        src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                             cwd=ROOT).stdout
        if path.endswith("labels.py"):
            src = src.replace("from db.services.assignment import", "from assignment_at_rev import")
        file = Path(tempfile.mkdtemp()) / (Path(path).stem + "_at_rev.py")
        file.write_text(src)
        spec = importlib.util.spec_from_file_location(file.stem, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[file.stem] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def _submit(lab: ModuleType, s: Any, uid: int, view: Any, rng: random.Random) -> Any:
    if view.kind == "compare":
        return lab.submit_preference(s, uid, view.task_id, rng.choice(["a", "b", "tie"]), strength="clear",
                                     seconds=3.0)
    if view.kind == "rank":
        return lab.submit_ranking(s, uid, view.task_id, [[r["id"]] for r in view.responses], seconds=5.0)
    return lab.submit_demonstration(s, uid, view.task_id, f"A demonstration by {uid} for task {view.task_id}.",
                                    seconds=9.0)


class Version:
    """One version's project and its running counts."""

    def __init__(self, name: str, mods: tuple[ModuleType, ModuleType], url: str, n_tasks: int, n_users: int):
        self.name, (self.asg, self.lab) = name, mods
        self.project_id, self.users = seed(url, n_tasks, n_users)
        self.session = session_factory(url)()
        self.rng = random.Random(0)
        self.pairs = self.statements = 0
        self.cpu = 0.0
        self.turn = 0

    def pairs_round(self, n: int, counter: list[int]) -> int:
        """Up to `n` next_task + submit pairs, users in turn; returns how many ran (0: the project is done)."""
        done = 0
        for _ in range(n):
            uid = self.users[self.turn % len(self.users)]
            self.turn += 1
            before, t0 = counter[0] + pg_functions.CALLS, time.process_time()
            view = self.asg.next_task(self.session, uid, self.project_id)
            if view is not None:
                _submit(self.lab, self.session, uid, view, self.rng)
            self.cpu += time.process_time() - t0
            if view is None:
                continue
            self.statements += counter[0] + pg_functions.CALLS - before
            self.pairs += 1
            done += 1
        return done


def run(url: str, versions: dict[str, tuple[ModuleType, ModuleType]], n_tasks: int, n_users: int,
        profile: bool) -> None:
    create_schema(url)
    counter = [0]

    def count(*_a: Any) -> None:
        counter[0] += 1

    event.listen(get_engine(url), "before_cursor_execute", count)
    runs = [Version(name, mods, url, n_tasks, n_users) for name, mods in versions.items()]
    for v in runs:  # warm-up (statement caches, connection): not counted
        v.pairs_round(5, counter)
        v.pairs = v.statements = 0
        v.cpu = 0.0
    active = True
    while active:
        active = False
        for v in runs:
            active |= v.pairs_round(20, counter) > 0
    backend = get_engine(url).dialect.name
    first = runs[0]
    for v in runs:
        ratio = "" if v is first or not first.pairs else (
            f"  ({v.cpu / v.pairs / (first.cpu / first.pairs):.2f}x today's CPU, "
            f"{v.statements / v.pairs / (first.statements / first.pairs):.2f}x its statements)")
        print(f"  [{backend}] {v.name:>12}: {v.pairs} pairs, {v.statements / max(v.pairs, 1):5.1f} statements and "
              f"{1e3 * v.cpu / max(v.pairs, 1):5.2f} ms client CPU per next_task + submit{ratio}", flush=True)
    if profile:  # on a project of its own, after the timing (the profiler slows what it watches)
        v = Version("profiled", versions["now"], url, n_tasks, n_users)
        v.pairs_round(5, counter)
        before = counter[0]
        shown: list[str] = []

        def show(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
            if counter[0] - before <= 40:
                shown.append(" ".join(statement.split())[:160])

        event.listen(get_engine(url), "before_cursor_execute", show)
        v.pairs_round(2, counter)
        event.remove(get_engine(url), "before_cursor_execute", show)
        print(f"  [{backend}] statements of two pairs:\n    " + "\n    ".join(shown))
        prof = cProfile.Profile(time.process_time)  # CPU, not the wall time spent waiting on the server
        prof.enable()
        while v.pairs_round(20, counter):
            pass
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
        print(buf.getvalue())
        v.session.close()
    for v in runs:
        v.session.close()
    dispose_engines()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=300, help="tasks per version's project (default 300)")
    ap.add_argument("--users", type=int, default=4, help="annotators taking turns (default 4)")
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-url", help="PostgreSQL server to use (default: start a throwaway one)")
    ap.add_argument("--baseline-rev", help="also time db/services/assignment.py and labels.py at this git revision")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of today's pairs")
    a = ap.parse_args(argv)
    versions = {"now": (assignment, labels)}
    if a.baseline_rev:
        versions[a.baseline_rev] = _modules_at(a.baseline_rev)
    tmp = Path(tempfile.mkdtemp(prefix="annotator-ops-"))
    own_pg = None
    try:
        for backend in a.backends:
            if backend == "sqlite":
                url = f"sqlite:///{tmp / 'ops.sqlite3'}"
            else:
                base = a.pg_url
                if not base:
                    own_pg = tmp / "pg"
                    tmp.chmod(0o755)  # the server may run as user postgres: it must reach its folder
                    started = subprocess.run([str(ROOT / "scripts" / "pg_test_server.sh"), "start", str(own_pg),
                                              str(56000 + (os.getpid() + 500) % 1000)],
                                             check=False, capture_output=True, text=True)
                    if started.returncode:
                        sys.exit(f"could not start PostgreSQL (give --pg-url): {started.stderr.strip()}")
                    base = started.stdout.strip()
                url = _pg_schema_url(base)
            run(url, versions, a.tasks, a.users, a.profile)
    finally:
        dispose_engines()
        if own_pg is not None:
            subprocess.run([str(ROOT / "scripts" / "pg_test_server.sh"), "stop", str(own_pg)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
