"""One turn of the loop in a real Chromium (the short version of tests/test_loop_e2e.py).

An admin on the Jobs page queues SFT, reward-model and PPO jobs (tiny sizes) that a real `python -m rlhf.worker`
beside the app runs, watches each job's plots, and on the PPO job clicks "Generate comparisons from it"; an
annotator then sees the new version's responses in new compare tasks and votes, and the admin finds the new
version on the Leaderboard. Screenshots go to test-artifacts/screenshots/loop_*.png.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Response, Task
from db.services import jobs, leaderboard, registry
from db.session import session_scope
from labeling_ui.devserver import (
    ROOT,
    current_task_id,
    launch_chromium,
    settle,
    sign_in,
    streamlit_server,
    wait_task_change,
)
from pretrain.tasks import project_prompts
from rlhf.simulate import SimulatedAnnotator
from tests import rlhf_helpers as H
from tests.browser.test_ui_browser import SHOTS, _need_browser, _shot

PROJECT = "loop"
JOB_TIMEOUT_MS = 240_000  # one tiny job on a loaded 2-core machine (process start, torch/transformers import)
TINY = {"train_sft": "per_device_train_batch_size: 4\nlogging_steps: 1\nsave_strategy: \"no\"\neval_fraction: 0",
        "train_reward": "per_device_train_batch_size: 4\nlogging_steps: 1\nsave_strategy: \"no\"\n"
                        "eval_fraction: 0.25",
        "train_ppo": "per_device_train_batch_size: 4\nnum_mini_batches: 2\nmax_new_tokens: 4\nsave_steps: 0\n"
                     "eval_fraction: 0.25\nmissing_eos_penalty: 1.0"}


@contextlib.contextmanager
def _worker(url: str, home: Path, log: Path):
    """`python -m rlhf.worker` beside the app, as `make demo` runs it."""
    env = {**os.environ, "DATABASE_URL": url, "INSTRUCTLOOP_HOME": str(home), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rlhf.worker", "--url", url, "--home", str(home),
                                 "--poll", "0.5"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def loop_app(tmp_path_factory):
    _need_browser()
    d = tmp_path_factory.mktemp("loop-browser")
    url = f"sqlite:///{d / 'loop.sqlite3'}"
    from db.migrate import upgrade

    upgrade(url)
    exs = project_prompts(8, ("count",))
    texts = [e.text() for e in project_prompts(60, ("count",))] + H.corpus(100)
    base = H.build_tiny_lm(d / "base", texts=texts, vocab_size=300)
    H.make_project(url, PROJECT)  # admin-loop / ann-loop, password123
    # What the annotators already did: demonstrations (accepted) and preferences between a right and a wrong
    # answer, on verifiable prompts (their answer in the prompt's metadata, for the simulated annotator).
    H.add_demonstrations(url, PROJECT, [(e.prompt, e.answer) for e in exs])
    H.add_preferences(url, PROJECT, [(e.prompt, e.answer, str(int(e.answer) + 1)) for e in exs])
    with session_scope(url) as s:
        registry.register_model_version(s, "base-tiny", "base", str(base))
        from db.models import Prompt

        for p in s.scalars(select(Prompt)):
            p.meta = {**(p.meta or {}), "answer": next(e.answer for e in exs if e.prompt == p.text)}
    SHOTS.mkdir(parents=True, exist_ok=True)
    home = d / "runs"
    with _worker(url, home, d / "worker.log"), \
            streamlit_server(url, log=d / "streamlit.log", extra_env={"INSTRUCTLOOP_HOME": str(home)}) as app:
        yield app, url, d


@pytest.fixture(scope="module")
def browser(loop_app):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()


def _select(page, label: str, option: str) -> None:
    """Pick `option` in the select box labelled `label` (typed into its search: the list may be scrolled)."""
    box = page.get_by_test_id("stSelectbox").filter(has_text=label).first
    for attempt in range(3):  # a click landing during a rerun can be dropped on a loaded machine
        box.locator("input").click()
        box.locator("input").fill(option)
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            break
        except Exception:  # playwright's TimeoutError: try again
            if attempt == 2:
                raise
            page.keyboard.press("Escape")
    settle(page, grace_ms=300)


def _queue(page, kind_title: str, picks: dict[str, str], steps: tuple[str, int], name: str, advanced: str) -> None:
    """Fill the New job form of one kind and queue it."""
    if not page.get_by_test_id("stSelectbox").filter(has_text="Kind").first.is_visible():
        page.get_by_test_id("stExpander").filter(has_text="New job").locator("summary").click()  # collapsed
        settle(page, grace_ms=300)  # once there are jobs
    _select(page, "Kind", kind_title)
    for label, option in picks.items():
        _select(page, label, option)
    page.get_by_role("spinbutton", name=steps[0]).fill(str(steps[1]))
    page.get_by_role("textbox", name="Name of the new model version").fill(name)
    page.get_by_role("textbox", name="Advanced: any other flag, as YAML").fill(advanced)
    page.get_by_role("button", name="Queue job").click()
    page.get_by_text("queued: it will register " + name).first.wait_for()
    settle(page, grace_ms=300)
    if page.get_by_test_id("stSelectbox").filter(has_text="Kind").first.is_visible():  # fold the form: the
        page.get_by_test_id("stExpander").filter(has_text="New job").locator("summary").click()  # job's panel
        settle(page, grace_ms=300)  # (state, plots, log) is what the admin watches now


def _wait_done(page, name: str, url: str) -> None:
    """The job panel (refreshing itself) reaches success and shows at least one metric plot."""
    try:
        page.get_by_text(f"Registered model version {name}").wait_for(timeout=JOB_TIMEOUT_MS)
    except Exception:  # noqa: BLE001 - say which job and why, not just a timeout
        with session_scope(url) as s:
            j = next(j for j in jobs.list_jobs(s) if j.name == name)
            raise AssertionError(f"job {name}: {j.state}: {j.error}\n{jobs.log_tail(j.log_path, 30)}") from None
    settle(page, grace_ms=500)
    page.get_by_test_id("stVegaLiteChart").first.wait_for()


def _wait_generated(page, url: str) -> None:
    """The generate job queued by "Generate comparisons from it" succeeds (its panel says so)."""
    with session_scope(url) as s:
        g = jobs.list_jobs(s)[0]
        gid = g.id
        assert g.kind == "generate" and g.args["models"] == ["ppo-ui", "sft-ui"], (g.kind, g.args)
    page.get_by_text(f"Job {gid} · Generate responses and tasks").wait_for()  # the page shows the new job
    # The earlier jobs' panels also say "succeeded": wait for this job's own state in the database first.
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while True:
        with session_scope(url) as s:
            g = jobs.get_job(s, gid)
            state, error = g.state, g.error
        if state not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert state == "succeeded", (state, error)
    page.locator("strong").filter(has_text=re.compile("^succeeded$")).first.wait_for(timeout=JOB_TIMEOUT_MS)


def test_admin_runs_sft_reward_ppo_from_the_jobs_page_then_annotators_compare_the_new_version(loop_app, browser):
    (base, url, _d) = loop_app
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    sign_in(page, base, f"admin-{PROJECT}", "password123")
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Jobs", exact=True).click()
    page.get_by_text("No jobs yet").wait_for()
    settle(page, grace_ms=300)

    _queue(page, "SFT (demonstrations)", {"Start from": "base-tiny"}, ("Steps (0 = by epochs)", 3), "sft-ui",
           TINY["train_sft"])
    _wait_done(page, "sft-ui", url)
    _shot(page, "loop_sft")
    _queue(page, "Reward model (preferences)", {"Start from": "sft-ui"}, ("Steps (0 = by epochs)", 3), "rm-ui",
           TINY["train_reward"])
    _wait_done(page, "rm-ui", url)
    assert page.get_by_text("Pairwise accuracy").count() >= 1
    _shot(page, "loop_reward")
    _queue(page, "PPO (policy against a reward model)",
           {"Policy to start from (the SFT model)": "sft-ui", "Reward model": "rm-ui"}, ("PPO updates (steps)", 2),
           "ppo-ui", TINY["train_ppo"])
    _wait_done(page, "ppo-ui", url)
    for title in ("Reward-model score", "KL to the reference"):
        assert page.get_by_text(title).count() >= 1, title
    _shot(page, "loop_ppo")
    with session_scope(url) as s:
        ppo = registry.resolve(s, "ppo-ui")
        assert ppo.kind == "policy" and ppo.parent.name == "sft-ui"

    # The next turn: compare tasks between the new policy and its parent.
    page.get_by_role("button", name="Generate comparisons from it").click()
    page.get_by_text("compare tasks from ppo-ui").first.wait_for()
    _wait_generated(page, url)
    _shot(page, "loop_generate")
    with session_scope(url) as s:
        by_version = {r.id: r.model_version.name for r in s.scalars(select(Response))
                      if r.model_version is not None}
        new = [t for t in s.scalars(select(Task).where(Task.kind == "compare"))
               if set(t.response_ids) <= set(by_version)]
    assert new and all({by_version[i] for i in t.response_ids} == {"ppo-ui", "sft-ui"} for t in new), new

    # An annotator sees them in Compare and votes; the rest are voted by the simulated annotator.
    actx = browser.new_context(viewport={"width": 1280, "height": 720})
    apage = actx.new_page()
    apage.set_default_timeout(30_000)
    sign_in(apage, base, f"ann-{PROJECT}", "password123")
    apage.get_by_text("PROMPT · task #").wait_for()
    tid = current_task_id(apage)
    assert tid in {t.id for t in new}
    _shot(apage, "loop_compare_new_version")
    apage.get_by_role("button", name="A is better").click()
    settle(apage, grace_ms=300)
    apage.get_by_role("button", name="Submit").click()
    wait_task_change(apage, tid)
    actx.close()
    SimulatedAnnotator(url, f"ann-{PROJECT}", PROJECT).label("compare")

    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Leaderboard", exact=True).click()
    page.get_by_text("votes between versions").wait_for()
    settle(page, grace_ms=500)
    page.get_by_test_id("stVegaLiteChart").first.wait_for()
    _shot(page, "loop_leaderboard")
    page.get_by_text(re.compile(r"votes between versions · 2 versions")).wait_for()
    with session_scope(url) as s:
        board = leaderboard.leaderboard(s, PROJECT).table
    assert set(board["version"]) == {"ppo-ui", "sft-ui"}, board
    ctx.close()
