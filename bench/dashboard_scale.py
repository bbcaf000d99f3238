"""The Dashboard and Agreement pages at 1M labels: every service call each page makes, timed, and the page total.

    python bench/dashboard_scale.py                                # SQLite, 1M tasks with 1M labels (cached)
    python bench/dashboard_scale.py --url postgresql+psycopg://…   # PostgreSQL (the fixture is a template db)
    python bench/dashboard_scale.py --tasks 100000                 # 100k labels

The fixture is bench/next_task_scale.py's (100 annotators, overlap 3, 10% rank tasks) with half the tasks
labelled: 3, 2 or 1 labels each, about as many labels as tasks, spread over 90 days. Each call runs --repeat
times in a fresh session; the best is printed (the page's cost on a warm database). Target: < 1 s per page.

Prints figures; never pass/fail.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bench.next_task_scale import fixture
from db.models import User
from db.services import agreement, projects, stats
from db.session import dispose_engines, session_factory

# What labeling_ui/views/dashboard.py, agreement.py and common.py (every labeling page) call, in order.
PAGES = {
    "dashboard": [
        ("stats.progress(project)", lambda s, pid, uid: stats.progress(s, pid)),
        ("stats.labels_over_time(project)", lambda s, pid, uid: stats.labels_over_time(s, pid)),
        ("stats.per_annotator(project)", lambda s, pid, uid: stats.per_annotator(s, pid)),
        ("stats.per_project()", lambda s, pid, uid: stats.per_project(s)),
    ],
    "agreement": [
        ("agreement.preference_agreement(project)", lambda s, pid, uid: agreement.preference_agreement(s, pid)),
        ("agreement.annotator_speed(project)", lambda s, pid, uid: agreement.annotator_speed(s, pid)),
        ("agreement.disagreements(project)", lambda s, pid, uid: agreement.disagreements(s, pid)),
    ],
    "every labeling page": [
        ("stats.label_counts(project, user)", lambda s, pid, uid: stats.label_counts(s, pid, user_id=uid)),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", action="append", help="database URL (repeatable; default: a SQLite file in --cache)")
    ap.add_argument("--tasks", type=int, default=1_000_000, help="tasks; half carry labels (default 1000000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each call; the best is shown (default 2)")
    ap.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES), help="pages to time")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instructloop-bench-cache"),
                    help="where the SQLite fixture is built once and kept (default /tmp/instructloop-bench-cache)")
    a = ap.parse_args()
    for url in a.url or [f"sqlite:///{a.cache / 'dashboard_run.sqlite3'}"]:
        print(f"{make_url(url).get_backend_name()}:", flush=True)
        run_url = fixture(url, a.tasks, a.cache, labelled_share=0.5)
        with session_factory(run_url)() as s:
            pid = projects.get_project(s, "scale").id
            uid = s.scalar(select(User.id).where(User.username == "ann000"))
        for page in a.pages:
            total = 0.0
            for name, call in PAGES[page]:
                best = float("inf")
                for _ in range(a.repeat):
                    with session_factory(run_url)() as s:
                        t0 = time.perf_counter()
                        call(s, pid, uid)
                        best = min(best, time.perf_counter() - t0)
                total += best
                print(f"  {page:>20}: {name:44} {best * 1e3:9.1f} ms", flush=True)
            print(f"  {page:>20}: {'page total':44} {total * 1e3:9.1f} ms (target < 1000 ms)", flush=True)
        dispose_engines()


if __name__ == "__main__":
    main()
