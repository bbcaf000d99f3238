"""Run the app in a real `streamlit run` process and drive it with Playwright (browser tests, bench)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "labeling_ui" / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(database_url: str, *, port: int | None = None, log: Path | None = None,
                     timeout: float = 90, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `streamlit run labeling_ui/app.py` against `database_url`; yields the base URL."""
    port = port or free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
           **(extra_env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}" + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"streamlit did not answer on {base} within {timeout}s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# ------------------------------------------------------------------ page helpers (Playwright sync API)
SETTLED_JS = "() => !!document.querySelector('[data-test-script-state=\"notRunning\"]')"


def settle(page, timeout: float = 30_000, grace_ms: int = 150) -> None:
    """Wait until Streamlit has finished the current script run (the app root says notRunning).

    `grace_ms` first lets a just-triggered rerun start (the state flips to running asynchronously).
    """
    if grace_ms:
        page.wait_for_timeout(grace_ms)
    page.wait_for_function(SETTLED_JS, timeout=timeout)


def submit_sign_in(page, username: str, password: str) -> None:
    """Fill the sign-in form on the current page and submit it. On a loaded machine an Enter pressed while the
    page is still rerunning can be dropped: if the form is still there after a while, click Sign in."""
    page.get_by_role("textbox", name="Username").fill(username)
    pw = page.get_by_role("textbox", name="Password")
    pw.fill(password)
    pw.press("Enter")
    try:
        page.get_by_text("Sign out").wait_for(timeout=10_000)
    except Exception:  # noqa: BLE001 — playwright's TimeoutError: retry once with the button
        if page.get_by_role("textbox", name="Password").count():
            page.get_by_role("textbox", name="Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
        page.get_by_text("Sign out").wait_for(timeout=30_000)


def sign_in(page, base: str, username: str, password: str) -> None:
    page.goto(base + "/")
    submit_sign_in(page, username, password)


def current_task_id(page) -> int | None:
    loc = page.get_by_text("PROMPT · task #")
    if loc.count() == 0:
        return None
    return int(loc.first.inner_text().rsplit("#", 1)[1].strip())


def wait_task_change(page, old: int | None, timeout: float = 30_000) -> None:
    page.wait_for_function(
        """(old) => { const els = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')];
             const t = els.map(e => e.innerText).find(s => s.includes('PROMPT · task #'));
             if (!t) return /tasks left for you|No \\w+ tasks in/.test(document.body.innerText);
             return parseInt(t.split('#').pop()) !== old; }""", arg=old, timeout=timeout)
