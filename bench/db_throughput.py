"""Database throughput: next_task latency (p50/p95) with 100k tasks, export rows/s for 100k preference rows.

    python bench/db_throughput.py                       # SQLite (temp file)
    python bench/db_throughput.py --url postgresql+psycopg://…   # a PostgreSQL database you own (tables are created)

Prints figures; never pass/fail.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from db.migrate import create_schema
from db.models import Base, PreferenceLabel, Prompt, Response, Task
from db.services import accounts, assignment, export, labels, projects
from db.session import dispose_engines, get_engine, session_factory


def seed(url: str, n: int, rank_share: float = 0.0) -> int:
    """n prompts with two responses and one task each; the last `rank_share` of the tasks are rank tasks
    (so a next_task(kind="rank") has every compare task sorting before it)."""
    eng = get_engine(url)
    Base.metadata.drop_all(eng)
    create_schema(url)
    s = session_factory(url)()
    pid = projects.create_project(s, "bench", labels_per_task=1).id
    s.commit()
    t0 = time.perf_counter()
    chunk = 10_000
    with eng.begin() as c:
        for lo in range(0, n, chunk):
            ids = range(lo + 1, min(n, lo + chunk) + 1)
            c.execute(insert(Prompt), [{"id": i, "project_id": pid, "text": f"prompt {i}", "source": "bench",
                                        "meta": {}, "content_hash": f"h{i}"} for i in ids])
            c.execute(insert(Response), [{"id": 2 * i + k - 1, "prompt_id": i, "text": f"response {k} to {i}",
                                          "params": {}, "sample_index": k, "content_hash": f"r{i}-{k}"}
                                         for i in ids for k in (0, 1)])
            first_rank = n - int(n * rank_share)
            c.execute(insert(Task), [{"id": i, "project_id": pid, "kind": "rank" if i > first_rank else "compare",
                                      "prompt_id": i,
                                      "response_ids": [2 * i - 1, 2 * i], "status": "open", "n_submitted": 0,
                                      "dedup_key": f"t{i}", "source": "bench"} for i in ids])
    print(f"  seeded {n:,} prompts/200k responses/{n:,} tasks in {time.perf_counter() - t0:.1f}s")
    s.close()
    return pid


QUEUE_INDEXES = {
    # What next_task's ORDER BY n_submitted DESC, id needs, and the first version (ascending), which
    # made every call sort all open tasks: kept to measure the ratio in one run.
    "queue index (n_submitted DESC, id)": "CREATE INDEX ix_tasks_queue ON tasks (project_id, status, n_submitted DESC, id)",
    "old index (n_submitted, id)": "CREATE INDEX ix_tasks_queue ON tasks (project_id, status, n_submitted, id)",
}


def use_index(url: str, ddl: str, name: str = "ix_tasks_queue") -> None:
    with get_engine(url).begin() as c:
        c.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        if ddl:
            c.exec_driver_sql(ddl)
        c.exec_driver_sql("ANALYZE")


KIND_INDEX = ("CREATE INDEX ix_tasks_queue_kind ON tasks (project_id, status, kind, n_submitted DESC, id)")


def bench_next_task_of_kind(url: str, pid: int, calls: int, label: str) -> float:
    """next_task(kind="rank") as the Rank page asks for it; each call a new lease (no submit: rank tasks)."""
    s = session_factory(url)()
    tag = abs(hash(label)) % 10_000
    users = [accounts.create_user(s, f"k{tag}-{i}", "password-1").id for i in range(calls)]
    s.commit()
    lat = []
    for uid in users:
        t0 = time.perf_counter()
        v = assignment.next_task(s, uid, pid, kind="rank")
        lat.append(time.perf_counter() - t0)
        assert v is not None and v.kind == "rank"
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"  next_task(kind='rank'), {label}, {calls} calls: p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms")
    s.close()
    return p50


def bench_next_task(url: str, pid: int, calls: int, label: str = "next_task") -> float:
    s = session_factory(url)()
    tag = abs(hash(label)) % 10_000
    users = [accounts.create_user(s, f"u{tag}-{i}", "password-1").id for i in range(20)]
    s.commit()
    lat = []
    for i in range(calls):
        uid = users[i % len(users)]
        t0 = time.perf_counter()
        v = assignment.next_task(s, uid, pid)
        lat.append(time.perf_counter() - t0)
        labels.submit_preference(s, uid, v.task_id, "a", strength="clear")
    lat.sort()
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"  next_task, {label}, {calls} calls: p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms")
    return p50
    s.close()


def bench_export(url: str, n: int, out: Path) -> None:
    eng = get_engine(url)
    s = session_factory(url)()
    who = accounts.system_user(s, "bench-labeler")
    s.commit()
    with eng.begin() as c:
        for lo in range(0, n, 10_000):
            c.execute(insert(PreferenceLabel), [{"task_id": i, "user_id": who.id, "choice": "a" if i % 3 else "b",
                                                 "strength": "clear", "flags": [], "comment": ""}
                                                for i in range(lo + 1, min(n, lo + 10_000) + 1)])
    t0 = time.perf_counter()
    m = export.export_file(s, "preferences", out, project="bench", aggregate="all")
    dt = time.perf_counter() - t0
    print(f"  export preferences: {m['rows']:,} rows in {dt:.1f}s = {m['rows'] / dt:,.0f} rows/s")
    s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", action="append", help="database URL (repeatable; default: a temp SQLite file)")
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks / preference rows (default 100000)")
    ap.add_argument("--calls", type=int, default=300, help="next_task calls to time (default 300)")
    ap.add_argument("--compare-index", action="store_true",
                    help="also time next_task with the first, ascending queue index (ratio in one run)")
    ap.add_argument("--compare-kind-index", action="store_true",
                    help="10%% of the tasks are rank tasks, sorting after the compare tasks: time "
                         "next_task(kind='rank') without and with the kind queue index (ratio in one run)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    urls = args.url or [f"sqlite:///{tmp / 'bench.sqlite3'}"]
    for url in urls:
        print(f"{get_engine(url).dialect.name}:")
        pid = seed(url, args.tasks, rank_share=0.1 if args.compare_kind_index else 0.0)
        if args.compare_kind_index:
            use_index(url, "", "ix_tasks_queue_kind")
            before = bench_next_task_of_kind(url, pid, args.calls, "without the kind index")
            use_index(url, KIND_INDEX, "ix_tasks_queue_kind")
            after = bench_next_task_of_kind(url, pid, args.calls, "with the kind index")
            print(f"  next_task(kind) p50 ratio without/with kind index: {before / after:.0f}x")
        if args.compare_index:
            p50 = {}
            for label, ddl in QUEUE_INDEXES.items():
                use_index(url, ddl)
                p50[label] = bench_next_task(url, pid, args.calls, label)
            new, old = p50.values()
            print(f"  next_task p50 ratio old/new index: {old / new:.0f}x")
            use_index(url, QUEUE_INDEXES["queue index (n_submitted DESC, id)"])
        else:
            bench_next_task(url, pid, args.calls)
        bench_export(url, args.tasks, tmp / "prefs.jsonl")
        dispose_engines()


if __name__ == "__main__":
    main()
