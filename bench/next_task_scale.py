"""next_task latency at team scale: p50/p95/p99 with 1M tasks (10% rank, overlap 3, a third already labelled)
and 100 annotators' histories, on SQLite and PostgreSQL.

    python bench/next_task_scale.py                                   # SQLite, 1M tasks (fixture cached)
    python bench/next_task_scale.py --url postgresql+psycopg://…      # a PostgreSQL database you own
    python bench/next_task_scale.py --tasks 100000 --calls 300 --verbose   # + the query plans

The fixture (see `seed_scale`) is built by the database itself (recursive CTE inserts) and cached: on SQLite as a
file under --cache (copied per run, since the run labels tasks), on PostgreSQL as a template database. Each timed
call is what the labeling pages do: next_task(kind=compare|rank) by one of the 100 annotators, then (untimed)
that annotator's label, so the head of the queue moves as it does in use. --verbose prints the plan of every
query next_task sends (EXPLAIN QUERY PLAN / EXPLAIN ANALYZE), so a regression to a scan is visible.

Prints figures; never pass/fail.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import JSON, String, case, cast, event, func, insert, literal, select, text
from sqlalchemy.engine import make_url

from db.migrate import create_schema
from db.models import TS, Assignment, Base, PreferenceLabel, Prompt, Ranking, Response, Task, User, utcnow
from db.services import assignment, labels, projects
from db.session import dispose_engines, get_engine, session_factory

ANNOTATORS = 100
OVERLAP = 3


def _numbers(n: int):
    """1..n as a recursive CTE: the database generates the rows (1M through Python took minutes)."""
    ids = select(literal(1).label("i")).cte("ids", recursive=True)
    return ids.union_all(select(ids.c.i + 1).where(ids.c.i < n))


def _days_ago(eng, days):
    """`days` days before now, as the column's own type stores it."""
    if eng.dialect.name == "sqlite":  # SQLAlchemy's SQLite DATETIME text form
        return func.strftime("%Y-%m-%d %H:%M:%f000", "now", "-" + cast(days, String) + " days")
    return func.now() - days * text("interval '1 day'")


def seed_scale(url: str, n: int, labelled_share: float = 1 / 3, rank_share: float = 0.1) -> dict[str, int]:
    """n prompts, two responses each, one task each (every 1/rank_share-th a rank task), project overlap 3;
    the first `labelled_share` of the tasks carry 3, 2 or 1 submitted labels (by task id mod 3: a third of them
    done) from 100 annotators, spread over 90 days with 5-54 s each: the annotators' histories."""
    eng = get_engine(url)
    Base.metadata.drop_all(eng)
    create_schema(url)
    s = session_factory(url)()
    pid = projects.create_project(s, "scale", labels_per_task=OVERLAP).id
    s.commit()
    s.close()
    t0 = time.perf_counter()
    every = round(1 / rank_share) if rank_share else 0
    n_lab = int(n * labelled_share)
    i = _numbers(n).c.i
    now, txt = literal(utcnow(), TS), lambda x: cast(x, String)
    json_array = func.json_array if eng.dialect.name == "sqlite" else func.json_build_array
    k = 3 - i % 3  # labels on a labelled task: 3 (done), 2 or 1
    with eng.begin() as c:
        first_user = c.execute(insert(User).returning(User.id), [
            {"username": f"ann{u:03d}", "display_name": "", "role": "annotator", "active": True,
             "is_system": False, "created_at": utcnow()} for u in range(ANNOTATORS)]).scalars().all()[0]
        c.execute(insert(Prompt).from_select(
            ["id", "project_id", "text", "source", "meta", "content_hash", "created_at"],
            select(i, literal(pid), "prompt " + txt(i), literal("bench"), literal({}, JSON), "h" + txt(i), now)))
        for r in (0, 1):
            c.execute(insert(Response).from_select(
                ["id", "prompt_id", "text", "params", "sample_index", "content_hash", "created_at"],
                select(2 * i + r - 1, i, f"response {r} to " + txt(i), literal({}, JSON), literal(r),
                       "r" + txt(i) + f"-{r}", now)))
        is_rank = (i % every == 0) if every else literal(False)
        c.execute(insert(Task).from_select(
            ["id", "project_id", "kind", "prompt_id", "response_ids", "status", "n_submitted", "dedup_key",
             "source", "created_at"],
            select(i, literal(pid), case((is_rank, "rank"), else_="compare"), i, json_array(2 * i - 1, 2 * i),
                   case((i <= n_lab, case((k == 3, "done"), else_="open")), else_="open"),
                   case((i <= n_lab, k), else_=0), "t" + txt(i), literal("bench"), now)))
        for j in range(OVERLAP):
            lab = _numbers(n_lab).c.i
            kk = 3 - lab % 3
            uid = first_user + (lab + 37 * j) % ANNOTATORS
            when = _days_ago(eng, (lab + j) % 90)
            secs = 5.0 + (lab * 7 + j) % 50
            cond = (j < kk)
            rank_cond = (lab % every == 0) if every else literal(False)
            c.execute(insert(Assignment).from_select(
                ["task_id", "user_id", "state", "assigned_at", "expires_at", "finished_at"],
                select(lab, uid, literal("submitted"), when, when, when).where(cond)))
            c.execute(insert(PreferenceLabel).from_select(
                ["task_id", "user_id", "choice", "strength", "flags", "comment", "seconds", "created_at"],
                select(lab, uid, case(((lab + j) % 4 == 0, "b"), else_="a"), literal("clear"), literal([], JSON),
                       literal(""), secs, when).where(cond, ~rank_cond)))
            c.execute(insert(Ranking).from_select(
                ["task_id", "user_id", "ordering", "flags", "comment", "seconds", "created_at"],
                select(lab, uid, case(((lab + j) % 4 == 0, json_array(json_array(2 * lab), json_array(2 * lab - 1))),
                                      else_=json_array(json_array(2 * lab - 1), json_array(2 * lab))),
                       literal([], JSON), literal(""), secs, when).where(cond, rank_cond)))
        c.exec_driver_sql("ANALYZE")
    with eng.connect() as c:
        counts = {t.__tablename__: c.scalar(select(func.count()).select_from(t))
                  for t in (Task, Assignment, PreferenceLabel, Ranking)}
    print(f"  seeded {n:,} tasks (every {every}th rank, overlap {OVERLAP}), {ANNOTATORS} annotators: "
          + ", ".join(f"{v:,} {k}" for k, v in counts.items()) + f" in {time.perf_counter() - t0:.0f}s", flush=True)
    return counts


def fixture(url: str, n: int, cache: Path, labelled_share: float = 1 / 3) -> str:
    """A fresh copy of the cached fixture (built once): the URL to run against."""
    tag = f"scale_{n}_{round(labelled_share * 1000)}"
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        cache.mkdir(parents=True, exist_ok=True)
        built = cache / f"{tag}.sqlite3"
        if not built.exists():
            seed_scale(f"sqlite:///{built}.part", n, labelled_share)
            dispose_engines()
            Path(f"{built}.part").rename(built)
        work = Path(u.database)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(built, work)
        return url
    # PostgreSQL: the fixture lives in a template database; each run gets its own copy of it.
    admin = get_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        have = c.scalar(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": tag})
    if not have:
        with admin.connect() as c:
            c.exec_driver_sql(f"CREATE DATABASE {tag}_part")
        seed_scale(u.set(database=f"{tag}_part").render_as_string(hide_password=False), n, labelled_share)
        dispose_engines()
        admin = get_engine(url).execution_options(isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f"ALTER DATABASE {tag}_part RENAME TO {tag}")
    run = f"{tag}_run"
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {run}")
        c.exec_driver_sql(f"CREATE DATABASE {run} TEMPLATE {tag}")
    dispose_engines()
    return u.set(database=run).render_as_string(hide_password=False)


def explain(url: str, uid: int, pid: int, kind: str) -> None:
    """The plan of each query one next_task(kind) sends, as the database will run it."""
    eng = get_engine(url)
    sent: list[tuple[str, object]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "tasks" in statement:
            sent.append((statement, parameters))
    event.listen(eng, "before_cursor_execute", grab)
    s = session_factory(url)()
    try:
        assignment.next_task(s, uid, pid, kind=kind)
    finally:
        event.remove(eng, "before_cursor_execute", grab)
        s.rollback()
        s.close()
    pg = eng.dialect.name == "postgresql"
    with eng.connect() as c:
        for statement, params in sent:
            print(f"    -- {' '.join(statement.split())[:160]}…")
            how = "EXPLAIN (ANALYZE, BUFFERS) " if pg else "EXPLAIN QUERY PLAN "
            for row in c.exec_driver_sql(how + statement, params):
                print("      " + (row[0] if pg else f"{'  ' * 0}{row[-1]}"))
        c.rollback()


def bench(url: str, calls: int, verbose: bool) -> dict[str, list[float]]:
    s = session_factory(url)()
    pid = projects.get_project(s, "scale").id
    users = list(s.scalars(select(User.id).where(User.username.like("ann%")).order_by(User.id)))
    kinds = ["compare", "compare", "rank"]  # the Compare page is the busy one
    lat: dict[str, list[float]] = {"compare": [], "rank": [], "compare cpu": [], "rank cpu": []}
    for n in range(calls):
        uid, kind = users[(n * 7) % len(users)], kinds[n % len(kinds)]
        t0, c0 = time.perf_counter(), time.process_time()
        v = assignment.next_task(s, uid, pid, kind=kind)
        lat[kind].append(time.perf_counter() - t0)
        lat[kind + " cpu"].append(time.process_time() - c0)
        assert v is not None and v.kind == kind
        if kind == "compare":
            labels.submit_preference(s, uid, v.task_id, "a", strength="clear")
        else:
            labels.submit_ranking(s, uid, v.task_id, [[r["id"]] for r in v.responses])
    s.close()
    if verbose:
        for kind in ("compare", "rank"):
            print(f"  plans of next_task(kind={kind!r}) for annotator {users[0]}:")
            explain(url, users[0], pid, kind)
    return lat


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", action="append",
                    help="database URL (repeatable; default: a SQLite file beside the cache). PostgreSQL: a "
                         "server where this user may create databases (the fixture is a template database)")
    ap.add_argument("--tasks", type=int, default=1_000_000, help="tasks (default 1000000)")
    ap.add_argument("--calls", type=int, default=600, help="next_task calls to time (default 600)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instructloop-bench-cache"),
                    help="where the SQLite fixture file is built once and kept (default /tmp/instructloop-bench-cache)")
    ap.add_argument("--verbose", action="store_true", help="print each next_task query's plan")
    a = ap.parse_args()
    for url in a.url or [f"sqlite:///{a.cache / 'next_task_run.sqlite3'}"]:
        name = make_url(url).get_backend_name()
        print(f"{name}:", flush=True)
        run_url = fixture(url, a.tasks, a.cache)
        lat = bench(run_url, a.calls, a.verbose)
        # Wall time is what an annotator waits; this process's CPU time is the part that does not depend on how
        # busy the machine is (on SQLite it includes the database's own work, on PostgreSQL not the server's).
        for kind in ("compare", "rank", "all"):
            wall = lat[kind] if kind != "all" else lat["compare"] + lat["rank"]
            cpu = lat[kind + " cpu"] if kind != "all" else lat["compare cpu"] + lat["rank cpu"]
            print(f"  next_task({'kind=' + repr(kind) if kind != 'all' else 'all kinds'}), {len(wall)} calls: "
                  f"wall p50 {statistics.median(wall) * 1e3:.2f} / p95 {_pct(wall, 0.95) * 1e3:.2f} / "
                  f"p99 {_pct(wall, 0.99) * 1e3:.2f} ms; client CPU p50 {statistics.median(cpu) * 1e3:.2f} / "
                  f"p95 {_pct(cpu, 0.95) * 1e3:.2f} / p99 {_pct(cpu, 0.99) * 1e3:.2f} ms", flush=True)
        print("  (target: p95 < 20 ms)")
        dispose_engines()


if __name__ == "__main__":
    main()
