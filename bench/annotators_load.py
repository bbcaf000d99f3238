"""Simulated annotators against a real database: zero labels lost or duplicated, exact overlap, with figures.

    python bench/annotators_load.py                                  # SQLite (temp file) + a throwaway PostgreSQL
    python bench/annotators_load.py --pg-url postgresql+psycopg://…  # a PostgreSQL you own (a schema is created)
    python bench/annotators_load.py --submissions 2000 --modes threads

32 annotators (threads, then separate processes) each loop next_task -> submit over a project of compare, rank
and demonstrate tasks (`labels_per_task` 2): some skip, some submit twice, some let their lease run out and
submit late (kept while the slot is free, refused as "reassigned" once someone else has it), some give a task
up by letting the lease lapse. Afterwards every label the services reported as created must be in the database
exactly once, every task must hold exactly `labels_per_task` labels from different annotators, and no lease may
be left live. Prints submissions/s, transactions/s and p50/p95/p99 per operation; on PostgreSQL also
`pgbench -N -c 32` TPS on the same server as the ceiling. Figures, never pass/fail (the invariants do fail).

The test suite runs the same code at a small size (tests/test_db_load.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text

from db.migrate import create_schema
from db.models import Assignment, Demonstration, PreferenceLabel, Ranking, Task, utcnow
from db.services import accounts, assignment, content, labels, projects, tasks
from db.services.labels import TaskReassigned
from db.session import dispose_engines, session_factory

LABEL_TABLES = {"compare": PreferenceLabel, "rank": Ranking, "demonstrate": Demonstration}


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """Share of the tasks an annotator is given that it handles each way (the rest: one plain submit)."""
    skip: float = 0.04
    double_submit: float = 0.05
    late_submit: float = 0.03  # leased with no time left, submitted a moment later
    abandon: float = 0.02  # leased with no time left, never submitted: the task goes back to the pool


@dataclasses.dataclass
class WorkerResult:
    user_id: int
    created: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)  # (kind, label id, task id)
    latencies: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    counts: Counter = dataclasses.field(default_factory=Counter)


def seed(url: str, n_tasks: int, n_users: int, overlap: int = 2, seed_: int = 0) -> tuple[int, list[int]]:
    """A project of `n_tasks` tasks (60% compare, 25% rank of 3, 15% demonstrate) and `n_users` annotators."""
    rng = random.Random(seed_)
    with session_factory(url)() as s:
        p = projects.create_project(s, f"load-{uuid.uuid4().hex[:6]}", labels_per_task=overlap)
        users = [accounts.create_user(s, f"load{i}-{uuid.uuid4().hex[:6]}", None).id for i in range(n_users)]
        for i in range(n_tasks):
            pr, _ = content.add_prompt(s, p.id, text=f"load prompt {i}: say something useful.")
            r = rng.random()
            kind, k = ("compare", 2) if r < 0.6 else ("rank", 3) if r < 0.85 else ("demonstrate", 0)
            rids = [content.add_response(s, pr.id, f"response {j} to prompt {i}", sample_index=j)[0].id
                    for j in range(k)]
            tasks.create_task(s, p.id, kind, pr.id, rids, rng=rng)
        s.commit()
        return p.id, users


def _remaining_for(session: Any, user_id: int, project_id: int) -> int:
    """Open tasks this user has neither labelled nor skipped (some may be leased by others right now)."""
    mine = (select(Assignment.task_id).where(Assignment.user_id == user_id,
                                             Assignment.state.in_(("submitted", "skipped"))))
    return session.scalar(select(func.count()).select_from(Task).where(
        Task.project_id == project_id, Task.status == "open", Task.id.not_in(mine))) or 0


def _submit(session: Any, uid: int, view: Any, rng: random.Random) -> tuple[Any, bool]:
    if view.kind == "compare":
        return labels.submit_preference(session, uid, view.task_id, rng.choice(["a", "b", "a", "b", "tie"]),
                                        strength=rng.choice(["slight", "clear", "strong"]), seconds=3.0)
    if view.kind == "rank":
        ids = [r["id"] for r in view.responses]
        rng.shuffle(ids)
        ordering = [[ids[0]], ids[1:]] if rng.random() < 0.2 else [[x] for x in ids]
        return labels.submit_ranking(session, uid, view.task_id, ordering, seconds=5.0)
    return labels.submit_demonstration(session, uid, view.task_id,
                                       f"A demonstration by annotator {uid} for task {view.task_id}.", seconds=9.0)


def annotate(url: str, project_id: int, user_id: int, behaviour: Behaviour, seed_: int = 0) -> WorkerResult:
    """One annotator's loop until nothing is left for them. Every call is timed per operation."""
    rng = random.Random(seed_ * 100_003 + user_id)
    out = WorkerResult(user_id)

    def timed(op: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            out.latencies[op].append(time.perf_counter() - t)

    with session_factory(url)() as s:
        while True:
            r = rng.random()
            late = behaviour.skip + behaviour.double_submit <= r < behaviour.skip + behaviour.double_submit + (
                behaviour.late_submit + behaviour.abandon)
            view = timed("next_task", assignment.next_task, s, user_id, project_id,
                         lease_minutes=0 if late else None)
            if view is None:
                if _remaining_for(s, user_id, project_id) == 0:
                    break
                s.rollback()
                out.counts["waited"] += 1  # the last slots are leased by others: come back in a moment
                time.sleep(0.01)
                continue
            if r < behaviour.skip:
                timed("skip", assignment.skip_task, s, user_id, view.task_id, "load test")
                out.counts["skipped"] += 1
                continue
            if late and r >= behaviour.skip + behaviour.double_submit + behaviour.late_submit:
                out.counts["abandoned"] += 1  # the lease lapses; the task is free for anyone (us included)
                continue
            if late:
                time.sleep(rng.random() * 0.02)  # others may take the free slot meanwhile
            try:
                label, created = timed(f"submit_{view.kind}", _submit, s, user_id, view, rng)
            except TaskReassigned:
                out.counts["late_refused"] += 1
                continue
            if not created:
                raise AssertionError(f"user {user_id}'s first submit of task {view.task_id} reported a repeat")
            out.created.append((view.kind, label.id, view.task_id))
            out.counts["late_kept" if late else "submitted"] += 1
            if behaviour.skip <= r < behaviour.skip + behaviour.double_submit:
                again, created2 = timed(f"submit_{view.kind}", _submit, s, user_id, view, rng)
                if created2 or again.id != label.id:
                    raise AssertionError(f"double submit of task {view.task_id} by {user_id} wrote a second label")
                out.counts["double_submits"] += 1
    return out


# ------------------------------------------------------------------------------- running annotators

def _process_main(url: str, project_id: int, uid: int, behaviour: Behaviour, seed_: int, barrier: Any,
                  queue: Any) -> None:
    try:  # (the parent disposed its engines before forking: this process opens its own connections)
        barrier.wait()
        res = annotate(url, project_id, uid, behaviour, seed_)
        queue.put((uid, {"created": res.created, "latencies": dict(res.latencies), "counts": dict(res.counts)},
                   None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the run
        queue.put((uid, None, f"{type(e).__name__}: {e}"))


def run_annotators(url: str, project_id: int, users: list[int], mode: str, behaviour: Behaviour = Behaviour(),
                   seed_: int = 0, timeout: float = 600) -> tuple[list[WorkerResult], float]:
    """All annotators at once as threads or processes; returns their results and the wall time.
    A failing or hung annotator raises here."""
    if mode == "threads":
        import threading

        results: dict[int, WorkerResult] = {}
        errors: list[str] = []
        barrier = threading.Barrier(len(users) + 1)

        def run(uid: int) -> None:
            try:
                barrier.wait()
                results[uid] = annotate(url, project_id, uid, behaviour, seed_)
            except BaseException as e:  # noqa: BLE001
                errors.append(f"annotator {uid}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=run, args=(u,), daemon=True) for u in users]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join(max(0.0, timeout - (time.perf_counter() - t0)))
        wall = time.perf_counter() - t0
        hung = [u for u, t in zip(users, threads) if t.is_alive()]
        if errors or hung:
            raise AssertionError(f"annotators failed: {errors}; still running after {timeout:.0f} s: {hung}")
        return [results[u] for u in users], wall
    if mode != "processes":
        raise ValueError(f"mode must be threads or processes, not {mode!r}")
    dispose_engines()
    ctx = mp.get_context("fork")  # children inherit the imported modules: no 32 interpreter start-ups
    barrier, queue = ctx.Barrier(len(users) + 1), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(url, project_id, u, behaviour, seed_, barrier, queue),
                         daemon=True) for u in users]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    got, errors = {}, []
    for _ in procs:
        uid, res, err = queue.get(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        if err:
            errors.append(f"annotator {uid}: {err}")
        else:
            got[uid] = WorkerResult(uid, [tuple(c) for c in res["created"]], defaultdict(list, res["latencies"]),
                                    Counter(res["counts"]))
    wall = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    if errors:
        raise AssertionError(f"annotators failed: {errors}")
    return [got[u] for u in users], wall


# ----------------------------------------------------------------------------------------- checking

def label_keys(url: str, project_id: int) -> set[tuple[str, int]]:
    """(kind, label id) of every label on the project's tasks."""
    with session_factory(url)() as s:
        tids = select(Task.id).where(Task.project_id == project_id)
        return {(kind, lid) for kind, model in LABEL_TABLES.items()
                for lid in s.scalars(select(model.id).where(model.task_id.in_(tids)))}


def check(url: str, project_id: int, results: list[WorkerResult],
          preexisting: set[tuple[str, int]] = frozenset()) -> dict[str, Any]:
    """What the database holds against what the services reported (plus `preexisting` labels, written before
    by a run whose reports are gone, e.g. a killed process). Every count here must be 0."""
    with session_factory(url)() as s:
        overlap = projects.get_project_by_id(s, project_id).labels_per_task
        task_rows = {t.id: t for t in s.scalars(select(Task).where(Task.project_id == project_id))}
        in_db: dict[tuple[str, int], tuple[int, int]] = {}
        for kind, model in LABEL_TABLES.items():
            for lid, tid, uid in s.execute(select(model.id, model.task_id, model.user_id)
                                           .where(model.task_id.in_(list(task_rows)))):
                in_db[(kind, lid)] = (tid, uid)
        submitted = Counter(s.execute(select(Assignment.task_id).where(
            Assignment.task_id.in_(list(task_rows)), Assignment.state == "submitted")).scalars())
        live = s.scalar(select(func.count()).select_from(Assignment).where(
            Assignment.task_id.in_(list(task_rows)), Assignment.state == "assigned", Assignment.expires_at > utcnow()))
    reported = [(kind, lid) for r in results for kind, lid, _ in r.created] + list(preexisting)
    per_task = Counter(tid for tid, _ in in_db.values())
    per_task_user = Counter(in_db.values())
    return {
        "lost": len(set(reported) - set(in_db)),  # reported saved, not in the database
        "duplicated": len(reported) - len(set(reported)) + len(set(in_db) - set(reported)),
        "tasks_not_exactly_full": sum(per_task[t] != overlap for t in task_rows),
        "tasks_not_done": sum(t.status != "done" for t in task_rows.values()),
        "counter_mismatch": sum(t.n_submitted != per_task[t.id] or submitted[t.id] != per_task[t.id]
                                for t in task_rows.values()),
        "labelled_twice_by_one_user": sum(n > 1 for n in per_task_user.values()),
        "live_leases_left": live or 0,
    }


# ---------------------------------------------------------------------------------------- reporting

def percentiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        v = xs[0] if xs else float("nan")
        return v, v, v
    q = statistics.quantiles(xs, n=100, method="inclusive")
    return statistics.median(xs), q[94], q[98]


def report(label: str, results: list[WorkerResult], wall: float, problems: dict[str, Any]) -> dict[str, Any]:
    counts = sum((r.counts for r in results), Counter())
    lat: dict[str, list[float]] = defaultdict(list)
    for r in results:
        for op, xs in r.latencies.items():
            lat[op].extend(xs)
    n_created = sum(len(r.created) for r in results)
    n_calls = sum(len(xs) for xs in lat.values())
    print(f"\n{label}: {n_created:,} labels in {wall:.1f} s = {n_created / wall:,.0f} submissions/s "
          f"({n_calls / wall:,.0f} service calls/s, each its own transaction)")
    print("  " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    for op in sorted(lat):
        p50, p95, p99 = percentiles(lat[op])
        print(f"  {op:<20} n={len(lat[op]):>6,}  p50 {p50 * 1e3:7.1f} ms  p95 {p95 * 1e3:7.1f} ms  "
              f"p99 {p99 * 1e3:7.1f} ms")
    bad = {k: v for k, v in problems.items() if v}
    print("  invariants: " + ("all 0 (" + ", ".join(problems) + ")" if not bad else f"VIOLATED {bad}"))
    return {"submissions_per_s": n_created / wall, "created": n_created, "problems": problems, "counts": counts}


def pgbench_tps(sa_url: str, clients: int = 32, seconds: int = 10, scale: int = 10) -> float | None:
    """`pgbench -N -c CLIENTS` TPS in a scratch database on the same server (None without pgbench)."""
    from sqlalchemy.engine import make_url

    exe = shutil.which("pgbench") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))), None)
    if exe is None:
        print("  pgbench not found (Debian: apt-get install postgresql-contrib or postgresql)")
        return None
    u = make_url(sa_url)
    db = "pgbench_" + uuid.uuid4().hex[:8]
    admin = create_engine(u.set(query={}), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{db}"'))
    env = {**os.environ, "PGPASSWORD": u.password or ""}
    conn = ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"]
    try:
        subprocess.run([str(exe), "-i", "-q", "-s", str(scale), *conn, db], check=True, env=env,
                       capture_output=True)
        out = subprocess.run([str(exe), "-N", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                              "-T", str(seconds), *conn, db], check=True, env=env, capture_output=True, text=True)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout) or re.search(
        r"tps = ([\d.]+)", out.stdout)
    return float(m.group(1)) if m else None


def _pg_schema_url(base: str) -> str:
    schema = "load_" + uuid.uuid4().hex[:10]
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    eng.dispose()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(base: str, url: str) -> None:
    schema = url.rsplit("search_path%3D", 1)[1]
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    eng.dispose()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submissions", type=int, default=10_000, help="labels to collect per run (default 10000)")
    ap.add_argument("--annotators", type=int, default=32)
    ap.add_argument("--overlap", type=int, default=2, help="labels_per_task (default 2)")
    ap.add_argument("--modes", nargs="+", default=["threads", "processes"], choices=["threads", "processes"])
    ap.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"])
    ap.add_argument("--pg-url", help="PostgreSQL server to use (default: start a throwaway one, as `make test`)")
    ap.add_argument("--pgbench-seconds", type=int, default=10)
    args = ap.parse_args(argv)
    n_tasks = max(1, args.submissions // args.overlap)
    tmp = Path(tempfile.mkdtemp(prefix="annotators-load-"))
    own_pg = None
    try:
        pg_base = args.pg_url
        if "postgresql" in args.backends and not pg_base:
            own_pg = tmp / "pg"
            tmp.chmod(0o755)  # the server runs as user postgres (when we are root): it must reach its folder
            port = str(56000 + os.getpid() % 1000)
            started = subprocess.run([str(ROOT / "scripts" / "pg_test_server.sh"), "start", str(own_pg), port],
                                     check=False, capture_output=True, text=True)
            if started.returncode:
                sys.exit(f"could not start PostgreSQL (give --pg-url): {started.stderr.strip()}")
            pg_base = started.stdout.strip()
        print(f"{args.annotators} annotators, {n_tasks:,} tasks x {args.overlap} labels = {n_tasks * args.overlap:,} "
              f"submissions per run; cores: {os.cpu_count()}")
        for backend in args.backends:
            figures = []
            for mode in args.modes:
                url = f"sqlite:///{tmp / f'{mode}.sqlite3'}" if backend == "sqlite" else _pg_schema_url(pg_base)
                create_schema(url)
                t = time.perf_counter()
                pid, users = seed(url, n_tasks, args.annotators, args.overlap)
                print(f"\n[{backend}, {mode}] seeded in {time.perf_counter() - t:.1f} s")
                results, wall = run_annotators(url, pid, users, mode, timeout=3600)
                figures.append(report(f"[{backend}, {mode}]", results, wall, check(url, pid, results)))
                dispose_engines()
                if backend == "postgresql":  # a server given by --pg-url is left as it was found
                    _drop_schema(pg_base, url)
            if backend == "postgresql":
                tps = pgbench_tps(pg_base, args.annotators, args.pgbench_seconds)
                if tps:
                    best = max(f["submissions_per_s"] for f in figures)
                    print(f"\n[postgresql] pgbench -N -c {args.annotators}: {tps:,.0f} TPS on the same server; "
                          f"best run {best:,.0f} submissions/s = {100 * best / tps:.0f}% of it "
                          "(a submission is 2 transactions here: next_task + submit)")
            else:
                print("\n[sqlite] one writer at a time (BEGIN IMMEDIATE, WAL): the figure above is that ceiling")
    finally:
        dispose_engines()
        if own_pg is not None:
            subprocess.run([str(ROOT / "scripts" / "pg_test_server.sh"), "stop", str(own_pg)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
