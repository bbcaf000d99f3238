"""Vote -> next-task latency of the labeling app in a real browser (prints figures, never pass/fail).

Starts `streamlit run labeling_ui/app.py` on a seeded temporary SQLite database, signs in with
Playwright (Debian Chromium) and casts N votes. For each vote it measures, from the moment the key is
pressed (or the button clicked):
  - choice:  choice shortcut (1/2) -> that button highlighted
  - visible: submit (Enter / click) -> the next task's number painted
  - settled: submit -> the script run finished (all widgets of the next task live)
and prints median and p95 in milliseconds.

    .venv/bin/python bench/ui_vote_latency.py [--votes 20] [--mode keyboard|mouse]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling_ui.devserver import (
    CHROMIUM,
    current_task_id,
    launch_chromium,
    sign_in,
    streamlit_server,
    wait_task_change,
)
from labeling_ui.devserver import SETTLED_JS as SETTLED
from labeling_ui.seed import seed


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=20)
    ap.add_argument("--mode", choices=["keyboard", "mouse"], default="keyboard")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install -y chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as d:
        url = f"sqlite:///{Path(d) / 'bench.sqlite3'}"
        seed(url, n_compare=args.votes + 2, n_rank=0, n_demonstrate=0, xss=False)
        with streamlit_server(url, log=Path(d) / "streamlit.log") as base, sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            sign_in(page, base, "alice", "password123")
            page.get_by_text("PROMPT · task #").wait_for()
            page.wait_for_function(SETTLED)
            page.evaluate("() => document.activeElement && document.activeElement.blur()")
            choice_ms, visible_ms, settled_ms = [], [], []
            for i in range(args.votes):
                tid = current_task_id(page)
                key, name = (("1", "A is better"), ("2", "B is better"))[i % 2]
                t0 = time.perf_counter()
                if args.mode == "keyboard":
                    page.keyboard.press(key)
                else:
                    page.get_by_role("button", name=name).click()
                page.wait_for_function(
                    "(n) => [...document.querySelectorAll('button[data-testid=\"stBaseButton-primary\"]')]"
                    ".some(b => b.innerText.includes(n))", arg=name)
                choice_ms.append((time.perf_counter() - t0) * 1000)
                page.wait_for_function(SETTLED)
                t0 = time.perf_counter()
                if args.mode == "keyboard":
                    page.keyboard.press("Enter")
                else:
                    page.get_by_role("button", name="Submit").click()
                wait_task_change(page, tid)
                visible_ms.append((time.perf_counter() - t0) * 1000)
                page.wait_for_function(SETTLED)
                settled_ms.append((time.perf_counter() - t0) * 1000)
            browser.close()

    print(f"ui_vote_latency: {args.votes} votes, mode={args.mode}, SQLite, chromium headless")
    for name, xs in (("choice -> highlighted", choice_ms), ("submit -> next task painted", visible_ms),
                     ("submit -> run settled", settled_ms)):
        print(f"  {name:30s} median {statistics.median(xs):7.1f} ms   p95 {pct(xs, 0.95):7.1f} ms   "
              f"max {max(xs):7.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
