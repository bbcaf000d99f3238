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


def seed(url: str, n: int) -> int:
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
            c.execute(insert(Task), [{"id": i, "project_id": pid, "kind": "compare", "prompt_id": i,
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


def use_index(url: str, ddl: str) -> None:
    with get_engine(url).begin() as c:
        c.exec_driver_sql("DROP INDEX IF EXISTS ix_tasks_queue")
        c.exec_driver_sql(ddl)
        c.exec_driver_sql("ANALYZE")


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
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    urls = args.url or [f"sqlite:///{tmp / 'bench.sqlite3'}"]
    for url in urls:
        print(f"{get_engine(url).dialect.name}:")
        pid = seed(url, args.tasks)
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
