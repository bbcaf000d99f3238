"""The Dashboard and Agreement pages at 1M labels: every service call each page makes, timed, and the page total.

    python bench/dashboard_scale.py                                # SQLite, 1M tasks with 1M labels (cached)
    python bench/dashboard_scale.py --url postgresql+psycopg://…   # PostgreSQL (the fixture is a template db)
    python bench/dashboard_scale.py --tasks 100000                 # 100k labels
    python bench/dashboard_scale.py --baseline-rev a2e3ae1~1       # also time that revision's services

The fixture is bench/next_task_scale.py's (100 annotators, overlap 3, 10% rank tasks) with half the tasks
labelled: 3, 2 or 1 labels each, about as many labels as tasks, spread over 90 days. The fixture is written by
raw SQL, past the services, so its label summaries (db.services.summary) are built afterwards by the migration's
backfill, timed. Each call runs --repeat times in a fresh session; the best is printed (the page's cost on a warm
database). Target: < 1 s per page.

Prints figures; never pass/fail.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select
from sqlalchemy.engine import make_url

from bench.next_task_scale import fixture
from db.models import Base, User
from db.services import agreement, projects, stats, summary
from db.session import dispose_engines, get_engine, session_factory


def _module_at(rev: str, path: str) -> ModuleType:
    """A db/services module as it was at `rev`, importable beside today's (same db package underneath)."""
    src = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(f"{file.stem}_at_rev", file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _summaries(url: str) -> None:
    """Bring a fixture (perhaps cached before the summaries existed) to today's tables and indexes, and fill the
    summaries from its labels as migration 0007 does."""
    eng = get_engine(url)
    Base.metadata.create_all(eng)
    for table in Base.metadata.sorted_tables:
        for index in table.indexes:
            index.create(eng, checkfirst=True)
    t0 = time.perf_counter()
    with session_factory(url)() as s:
        rows = summary.rebuild(s)
        s.commit()
    print(f"  summaries rebuilt from the labels in {time.perf_counter() - t0:.1f} s (migration 0007's backfill): "
          + ", ".join(f"{n:,} {t}" for t, n in rows.items()), flush=True)


# What labeling_ui/views/dashboard.py, agreement.py and common.py (every labeling page) call, in order.
PAGES = {
    "dashboard": [
        ("stats.progress(project)", lambda st, ag, s, pid, uid: st.progress(s, pid)),
        ("stats.labels_over_time(project)", lambda st, ag, s, pid, uid: st.labels_over_time(s, pid)),
        ("stats.per_annotator(project)", lambda st, ag, s, pid, uid: st.per_annotator(s, pid)),
        ("stats.per_project()", lambda st, ag, s, pid, uid: st.per_project(s)),
    ],
    "agreement": [
        ("agreement.preference_agreement(project)", lambda st, ag, s, pid, uid: ag.preference_agreement(s, pid)),
        ("agreement.annotator_speed(project)", lambda st, ag, s, pid, uid: ag.annotator_speed(s, pid)),
        ("agreement.disagreements(project)", lambda st, ag, s, pid, uid: ag.disagreements(s, pid)),
        ("agreement.rating_agreement(project)", lambda st, ag, s, pid, uid: ag.rating_agreement(s, pid)),
    ],
    "every labeling page": [
        ("stats.label_counts(project, user)", lambda st, ag, s, pid, uid: st.label_counts(s, pid, user_id=uid)),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", action="append", help="database URL (repeatable; default: a SQLite file in --cache)")
    ap.add_argument("--tasks", type=int, default=1_000_000, help="tasks; half carry labels (default 1000000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each call; the best is shown (default 2)")
    ap.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES), help="pages to time")
    ap.add_argument("--baseline-rev", help="also time db/services/stats.py and agreement.py at this git revision")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/instructloop-bench-cache"),
                    help="where the SQLite fixture is built once and kept (default /tmp/instructloop-bench-cache)")
    a = ap.parse_args()
    for url in a.url or [f"sqlite:///{a.cache / 'dashboard_run.sqlite3'}"]:
        print(f"{make_url(url).get_backend_name()}:", flush=True)
        run_url = fixture(url, a.tasks, a.cache, labelled_share=0.5)
        _summaries(run_url)
        with session_factory(run_url)() as s:
            pid = projects.get_project(s, "scale").id
            uid = s.scalar(select(User.id).where(User.username == "ann000"))
        versions = {"now": (stats, agreement)}
        if a.baseline_rev:
            versions[a.baseline_rev] = (_module_at(a.baseline_rev, "db/services/stats.py"),
                                        _module_at(a.baseline_rev, "db/services/agreement.py"))
        for page in a.pages:
            total = dict.fromkeys(versions, 0.0)
            for name, call in PAGES[page]:
                shown = []
                for version, (st, ag) in versions.items():
                    best = float("inf")
                    for _ in range(a.repeat):
                        with session_factory(run_url)() as s:
                            t0 = time.perf_counter()
                            try:
                                call(st, ag, s, pid, uid)
                            except (TypeError, ValueError, KeyError) as e:  # a baseline may fail where today's does not
                                shown.append(f"{version}: failed ({type(e).__name__}: {e})"[:90])
                                best = None
                                break
                            best = min(best, time.perf_counter() - t0)
                    if best is not None:
                        total[version] += best
                        shown.append(f"{version} {best * 1e3:8.1f} ms")
                print(f"  {page:>20}: {name:44} " + "; ".join(shown), flush=True)
            print(f"  {page:>20}: {'page total':44} " + "; ".join(f"{v} {t * 1e3:8.1f} ms" for v, t in total.items())
                  + " (target < 1000 ms)", flush=True)
        dispose_engines()


if __name__ == "__main__":
    main()
