"""Jobs table and worker: atomic claims (threads and processes), one training job at a time, cancel, recovery of
jobs whose process died, and real jobs end to end (train_sft -> "generate comparisons from it")."""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Job, Task
from db.services import jobs, registry
from db.services.errors import InputError, ServiceError
from db.session import session_factory, session_scope
from rlhf import worker as W

ROOT = Path(__file__).resolve().parents[1]


def enqueue(url: str, kind: str = "generate", args: dict | None = None, **kw) -> int:
    with session_scope(url) as s:
        return jobs.enqueue(s, kind, args if args is not None else {"project": "p", "models": ["m"]}, **kw).id


def job(url: str, job_id: int) -> Job:
    with session_scope(url) as s:
        return jobs.get_job(s, job_id)


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ScriptWorker(W.Worker):
    """A worker whose jobs are short Python scripts instead of rlhf modules (the claim, process, log, cancel and
    finish machinery is the real one). The script gets the job id and `args["script"]` (code; `jid` is set)."""

    def command_for(self, job: Job) -> W.Launch:
        launch = W.build_command(job, self.root, self.python)
        code = f"jid = {job.id}\n" + job.args.get("script", "")
        launch.command = [self.python, "-c", code]
        launch.run_dir = launch.result_file = None
        return launch


def script_job(url: str, script: str, kind: str = "generate", **kw) -> int:
    return enqueue(url, kind, {"script": script}, **kw)


# ------------------------------------------------------------------------------------------ service

def test_enqueue_validates_and_names(db_url):
    with session_scope(db_url) as s:
        registry.register_model_version(s, "taken", "base", "/x")
    with pytest.raises(InputError, match="job kind"):
        enqueue(db_url, "train_everything")
    with pytest.raises(InputError, match="set by the worker"):
        enqueue(db_url, "train_sft", {"project": "p", "database_url": "sqlite://"})
    with pytest.raises(InputError, match="not a flag name"):
        enqueue(db_url, "generate", {"--project": "p"})
    with pytest.raises(InputError, match="plain value"):
        enqueue(db_url, "generate", {"project": {"a": 1}})
    with pytest.raises(InputError, match="what: reward or policy"):
        enqueue(db_url, "evaluate", {"model": "m"})
    with pytest.raises(InputError, match="already exists"):
        enqueue(db_url, "train_sft", {"project": "p"}, name="taken")
    with pytest.raises(InputError, match="register no model version"):
        enqueue(db_url, "generate", name="x")
    a = enqueue(db_url, "train_sft", {"project": "p", "max_steps": 2, "bf16": False})
    assert job(db_url, a).name == f"sft-job{a}" and job(db_url, a).args == {"project": "p", "max_steps": 2,
                                                                            "bf16": False}
    enqueue(db_url, "train_reward", {"project": "p"}, name="rm-1")
    with pytest.raises(InputError, match="will register 'rm-1'"):
        enqueue(db_url, "train_reward", {"project": "p"}, name="rm-1")


def test_command_lines(tmp_path):
    j = Job(id=7, kind="train_sft", name="sft v1", args={"project": "p", "max_steps": 2, "bf16": False,
                                                          "models": ["a", "b"]})
    launch = W.build_command(j, tmp_path, "py")
    assert launch.command == ["py", "-m", "rlhf.train_sft", "--project", "p", "--max_steps", "2", "--bf16", "false",
                              "--models", "a", "b", "--name", "sft v1"]
    assert launch.run_dir == tmp_path / "train_sft" / "sft-v1" and launch.log_path == tmp_path / "jobs/7/log.txt"
    e = W.build_command(Job(id=8, kind="evaluate", args={"what": "reward", "model": "rm", "dataset": "d.jsonl"}),
                        tmp_path, "py")
    assert e.command == ["py", "-m", "rlhf.evaluate", "reward", "--model", "rm", "--dataset", "d.jsonl", "--out",
                         str(tmp_path / "jobs/8/result.json")]
    r = W.build_command(Job(id=11, kind="evaluate", args={"what": "responses", "reward": "rm", "project": "p",
                                                           "models": ["a", "b"], "no_record": True}), tmp_path, "py")
    assert r.command == ["py", "-m", "rlhf.evaluate", "responses", "--reward", "rm", "--project", "p", "--models", "a",
                         "b", "--no_record", "--out", str(tmp_path / "jobs/11/result.json")]
    from rlhf.evaluate import build_parser  # the flags as the worker writes them are the ones evaluate reads

    parsed = build_parser().parse_args(r.command[3:])
    assert (parsed.what, parsed.reward, parsed.models, parsed.no_record) == ("responses", "rm", ["a", "b"], True)
    p = W.build_command(Job(id=9, kind="pretrain", name="base-2", args={"steps": 5, "vocab_size": 512,
                                                                         "no_progress": True}), tmp_path, "py")
    assert p.command == ["py", "-m", "pretrain.pipeline", "--steps", "5", "--vocab-size", "512", "--no-progress",
                         "--out", str(tmp_path / "pretrain/base-2")]
    assert p.run_dir == tmp_path / "pretrain/base-2/run"
    for kind in ("train_rloo", "train_grpo"):
        g = W.build_command(Job(id=10, kind=kind, name="pol-1", args={"model": "sft", "reward_model": "rm",
                                                                      "num_generations": 4}), tmp_path, "py")
        assert g.command == ["py", "-m", f"rlhf.{kind}", "--model", "sft", "--reward_model", "rm",
                             "--num_generations", "4", "--name", "pol-1"]
        assert g.run_dir == tmp_path / kind / "pol-1"  # where rlhf.online writes metrics.jsonl


def test_progress_and_log_tail(tmp_path):
    log = tmp_path / "log.txt"
    log.write_bytes(b"$ cmd\nloading\n" + b"\rPPO:   0%|    | 0/8 [00:00<?]\rPPO:  50%|##  | 4/8 [00:02<00:02]\n")
    tail = jobs.log_tail(log, 5)
    assert tail.splitlines() == ["$ cmd", "loading", "PPO:  50%|##  | 4/8 [00:02<00:02]"]
    frac, text = jobs.progress_from_log(tail)
    assert frac == 0.5 and text.startswith("PPO:  50%")
    assert jobs.progress_from_log("no bar here") == (None, None)
    assert jobs.log_tail(tmp_path / "missing.txt") == ""


def _claim_all(url: str, n_threads: int, kinds=None) -> list[int]:
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        s = session_factory(url)()
        try:
            while True:
                j = jobs.claim_next(s, f"thread:{i}", "host", kinds or jobs.JOB_KINDS)
                if j is None:
                    return
                with lock:
                    got.append(j.id)
        except BaseException as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return got


def test_claim_is_atomic_across_threads(db_url):
    ids = [enqueue(db_url) for _ in range(40)]
    got = _claim_all(db_url, 6)
    assert sorted(got) == ids  # every job once, none twice
    with session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.state == "running")) == 40
    assert _claim_all(db_url, 2) == []


CLAIMER = """
import json, sys
from db.services import jobs
from db.session import session_factory
s = session_factory(sys.argv[1])()
got = []
while (j := jobs.claim_next(s, "proc:" + sys.argv[2], "host")) is not None:
    got.append(j.id)
print(json.dumps(got))
"""


def test_claim_is_atomic_across_processes(db_url):
    ids = [enqueue(db_url) for _ in range(40)]
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, db_url, str(i)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) for i in range(4)]
    got = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        got += json.loads(out)
    assert sorted(got) == ids


def test_claim_respects_kinds_and_order(db_url):
    g = enqueue(db_url, "generate")
    t = enqueue(db_url, "train_sft", {"project": "p"})
    assert _claim_all(db_url, 1, kinds=["train_sft"]) == [t]
    assert _claim_all(db_url, 1) == [g]


# ------------------------------------------------------------------------------------------ the worker

WORKER_PROC = """
import sys
sys.path.insert(0, sys.argv[3])
from tests.test_jobs import ScriptWorker
ScriptWorker(sys.argv[1], root=sys.argv[2], poll_seconds=0.05, max_jobs=3).run(until_idle=%s)
"""


def test_several_workers_never_run_a_job_twice(db_url, tmp_path):
    """3 worker threads and 2 worker processes over 30 queued jobs: each job's process ran exactly once."""
    ran = tmp_path / "ran.txt"
    script = f"open({str(ran)!r}, 'a').write(f'{{jid}}\\n')"
    ids = [script_job(db_url, script) for _ in range(30)]
    procs = [subprocess.Popen([sys.executable, "-c", WORKER_PROC % "True", db_url, str(tmp_path / "runs"), str(ROOT)],
                              cwd=ROOT) for _ in range(2)]
    threads = [threading.Thread(target=ScriptWorker(db_url, root=tmp_path / "runs", poll_seconds=0.05,
                                                    max_jobs=3).run, kwargs={"until_idle": True}) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p in procs:
        assert p.wait(120) == 0
    lines = ran.read_text().split()
    assert sorted(int(x) for x in lines) == ids  # once each
    with session_scope(db_url) as s:
        rows = jobs.list_jobs(s)
        assert {r.state for r in rows} == {"succeeded"} and {r.exit_status for r in rows} == {0}
        assert len({r.worker for r in rows}) > 1  # the work was actually shared
        assert all(Path(r.log_path).is_file() and r.pid for r in rows)


def test_one_training_job_at_a_time(sqlite_url, tmp_path):
    times = tmp_path / "times.jsonl"
    script = ("import json, time; t0 = time.time(); time.sleep(0.6); "
              f"open({str(times)!r}, 'a').write(json.dumps([jid, t0, time.time()]) + '\\n')")
    trains = [script_job(sqlite_url, script, "train_sft") for _ in range(3)]
    gen = script_job(sqlite_url, script, "generate")
    ScriptWorker(sqlite_url, root=tmp_path / "runs", poll_seconds=0.05, max_jobs=2).run(until_idle=True)
    spans = {row[0]: row[1:] for row in map(json.loads, times.read_text().splitlines())}
    t = sorted(spans[i] for i in trains)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(t))  # training jobs never overlapped
    g0, g1 = spans[gen]
    assert any(a < g1 and g0 < b for a, b in t)  # the generate job ran beside a training job


def test_failed_job_records_exit_status_and_log_tail(sqlite_url, tmp_path):
    jid = script_job(sqlite_url, "import sys\nprint('step 1 ok')\nprint('boom: out of memory', file=sys.stderr)\n"
                                 "sys.exit(3)")
    ScriptWorker(sqlite_url, root=tmp_path / "runs", poll_seconds=0.05).run(until_idle=True)
    j = job(sqlite_url, jid)
    assert (j.state, j.exit_status) == ("failed", 3)
    assert "exit status 3" in j.error and "boom: out of memory" in j.error and "step 1 ok" in j.error


def test_cancel(db_url, tmp_path, tiny):
    """A queued job is cancelled at once; a running one (a real rlhf.generate process) is terminated."""
    queued = enqueue(db_url)
    with session_scope(db_url) as s:
        assert jobs.cancel(s, queued).state == "cancelled"
    with pytest.raises(ServiceError, match="already cancelled"), session_scope(db_url) as s:
        jobs.cancel(s, queued)
    jid = enqueue(db_url, "generate", {"project": "p", "models": [str(tiny)], "tasks": "compare"})
    w = W.Worker(db_url, root=tmp_path / "runs", poll_seconds=0.1)
    t = threading.Thread(target=w.run, kwargs={"until_idle": True})
    t.start()
    try:
        pid = wait_for(lambda: job(db_url, jid).pid, what="the job's process")
        with session_scope(db_url) as s:
            assert jobs.cancel(s, jid).cancel_requested
    finally:
        t.join(60)
    j = job(db_url, jid)
    assert j.state == "cancelled" and j.exit_status == -signal.SIGTERM
    # the SIGTERM was the cancel, not a crash: no error, and who asked (here the command line)
    assert j.error == "" and j.result["cancelled_by"] == "the command line"
    assert not W.process_alive(pid, j.pid_start)
    assert "exit status" in Path(j.log_path).read_text()


SLOW = "import time\nfor i in range(3): print(f'working on step {i}', flush=True)\ntime.sleep(120)"


@pytest.mark.parametrize("job_survives", [False, True])
def test_job_whose_process_died_is_marked_failed_when_the_worker_restarts(db_url, tmp_path, job_survives):
    """The worker process is SIGKILLed while its job runs. The job's process dies too (or survives, orphaned):
    the next worker start marks the job failed with its last log lines (stopping the orphan first)."""
    wp = subprocess.Popen([sys.executable, "-c", WORKER_PROC % "False", db_url, str(tmp_path / "runs"), str(ROOT)],
                          cwd=ROOT)
    jid = script_job(db_url, SLOW, "train_sft")
    try:
        j = wait_for(lambda: (x := job(db_url, jid)).pid and "step 2" in jobs.log_tail(x.log_path) and x,
                     what="the job to run")
    finally:
        wp.kill()
        wp.wait()
    if not job_survives:
        os.kill(j.pid, signal.SIGKILL)
    wait_for(lambda: W.process_alive(j.pid, j.pid_start) == job_survives, 10, "the job's process state")
    assert job(db_url, jid).state == "running"  # nobody has looked yet
    ended = W.Worker(db_url, root=tmp_path / "runs").recover()
    j2 = job(db_url, jid)
    assert ended == [jid] and j2.state == "failed" and j2.ended_at is not None
    assert "working on step 2" in j2.error and "worker" in j2.error
    assert not W.process_alive(j.pid, j.pid_start)  # the orphan was stopped


def test_recover_leaves_live_jobs_and_fails_stale_ones(db_url, tmp_path):
    """A job of a live worker stays running; a job on another machine without a heartbeat for too long fails."""
    import datetime as dt

    live, stale = enqueue(db_url), enqueue(db_url)
    host = socket.gethostname()
    me = f"{host}:{os.getpid()}:{W.process_start(os.getpid())}/999"
    with session_scope(db_url) as s:
        jobs.claim_next(s, me, host)
        jobs.claim_next(s, "elsewhere:1:1/1", "elsewhere")
        s.get(Job, stale).heartbeat_at = jobs.utcnow() - dt.timedelta(hours=1)
    assert W.Worker(db_url, root=tmp_path, stale_after=600).recover() == [stale]
    assert job(db_url, live).state == "running"
    assert "no heartbeat from worker elsewhere:1:1/1" in job(db_url, stale).error


# ------------------------------------------------------------------------------------------ real jobs

def test_train_sft_job_end_to_end_then_generate_comparisons_from_it(sqlite_url, tmp_path, tiny):
    """The real thing through the worker: train_sft (2 steps) registers its version in the job row; the
    "generate comparisons from it" job samples from it and its parent and creates compare tasks."""
    from tests import rlhf_helpers as H

    H.make_project(sqlite_url, "p")
    H.add_demonstrations(sqlite_url, "p", [(f"say {w}", f"{w} {w}") for w in H.WORDS[:6]])
    with session_scope(sqlite_url) as s:
        registry.register_model_version(s, "tiny-base", "base", str(tiny))
        sft = jobs.enqueue(s, "train_sft", {"project": "p", "model": "tiny-base", "max_steps": 2,
                                            "per_device_train_batch_size": 2, "save_strategy": "no",
                                            "eval_fraction": 0, "logging_steps": 1}, name="sft-e2e").id
    W.Worker(sqlite_url, root=tmp_path / "runs", poll_seconds=0.2).run(until_idle=True)
    j = job(sqlite_url, sft)
    assert j.state == "succeeded", j.error + jobs.log_tail(j.log_path, 30)
    with session_scope(sqlite_url) as s:
        mv = registry.resolve(s, "sft-e2e")
        assert j.model_version_id == mv.id and mv.kind == "sft" and mv.parent.name == "tiny-base"
        detail = jobs.job_detail(s, sft)
    assert detail["model_version"]["name"] == "sft-e2e"
    assert any("loss" in row for row in detail["metrics"])  # metrics.jsonl of the run folder
    assert Path(j.run_dir) == tmp_path / "runs" / "train_sft" / "sft-e2e"

    with session_scope(sqlite_url) as s:
        gen = jobs.enqueue_comparisons(s, "sft-e2e", "p", num_samples=1).id
        assert jobs.get_job(s, gen).args["models"] == ["sft-e2e", "tiny-base"]
    with session_scope(sqlite_url) as s:  # generate with small outputs: the job's args are plain flags
        s.get(Job, gen).args = {**s.get(Job, gen).args, "max_new_tokens": 4}
    W.Worker(sqlite_url, root=tmp_path / "runs", poll_seconds=0.2).run(until_idle=True)
    g = job(sqlite_url, gen)
    assert g.state == "succeeded", g.error
    assert g.result["tasks"]["compare"]["created"] == 6
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Task).where(Task.kind == "compare")) == 6


def test_worker_help_and_bad_flags():
    r = subprocess.run([sys.executable, "-m", "rlhf.worker", "--help"], check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0
    for flag in ("--url", "--max-jobs", "--max-training", "--kinds", "--poll", "--stale-after", "--home",
                 "--until-idle"):
        assert flag in r.stdout
    r = subprocess.run([sys.executable, "-m", "rlhf.worker", "--kinds", "train_everything", "--url",
                        "sqlite:///nowhere.sqlite3"], check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "unknown job kind" in r.stderr


# ------------------------------------------------------------------------------------------ the Jobs page

APP = str(ROOT / "labeling_ui" / "app.py")
JOBS_PAGE = str(ROOT / "labeling_ui" / "views" / "jobs.py")


@pytest.fixture
def seeded(sqlite_url, monkeypatch):
    from labeling_ui.seed import seed

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=2, n_rank=0, n_demonstrate=0, create_tables=False)
    info["url"] = sqlite_url
    return info


def page_as(info: dict, username: str, role: str, script: str = APP):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(script, default_timeout=60)
    at.session_state["user"] = {"id": info[f"{username}_id"], "username": username, "display_name": username,
                                "role": role}
    at.run()
    if script == APP:
        at.switch_page("views/jobs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(at) -> str:
    parts = [e.value for e in (*at.markdown, *at.error, *at.warning, *at.info, *at.success, *at.caption, *at.code)]
    return "\n".join(str(p) for p in parts)


def test_jobs_page_refuses_annotators(seeded):
    at = page_as(seeded, "alice", "annotator", JOBS_PAGE)
    assert "for admins only" in shown(at)
    assert not at.button and not at.selectbox and not at.dataframe
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not in an annotator's app
        page_as(seeded, "alice", "annotator")


def test_jobs_page_queues_watches_cancels_and_generates_from_the_new_version(seeded, tmp_path):
    url = seeded["url"]
    at = page_as(seeded, "admin", "admin")
    assert "No jobs yet" in shown(at)
    at.selectbox(key="job_kind").set_value("train_sft").run()
    at.text_input(key="job_name_train_sft").input("sft-ui")
    at.number_input(key="job_steps_train_sft").set_value(5)
    at.text_area(key="job_adv_train_sft").input("learning_rate: 0.001\nbf16: false")
    next(b for b in at.button if b.label == "Queue job").click().run()
    assert not at.exception
    with session_scope(url) as s:
        (j,) = jobs.list_jobs(s)
        assert (j.kind, j.name, j.state, j.created_by) == ("train_sft", "sft-ui", "queued", seeded["admin_id"])
        assert j.args == {"project": "demo", "model": "base-v1", "max_steps": 5, "learning_rate": 0.001,
                          "bf16": False}
    assert "Waiting for a worker" in shown(at)

    # A bad advanced box is refused with a clear message and queues nothing.
    at.text_area(key="job_adv_train_sft").input("- not a mapping")
    next(b for b in at.button if b.label == "Queue job").click().run()
    assert "one 'flag: value' per line" in shown(at)

    # A worker runs it: progress from its tqdm bar, a loss plot from metrics.jsonl, the log tail.
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 3.0 - i / 2}) + "\n"
                                                   for i in range(1, 4)))
    log.write_text("$ python -m rlhf.train_sft ...\nINFO loaded 10 rows\n 60%|######    | 3/5 [00:03<00:02]\n")
    with session_scope(url) as s:
        jobs.claim_next(s, "h:1:1/1", "h")
        jobs.mark_started(s, j.id, pid=123, pid_start=None, command=["python", "-m", "rlhf.train_sft"],
                          log_path=str(log), run_dir=str(run_dir))
    at.run()
    assert not at.exception
    assert at.get("progress")[0].proto.value == 60
    assert len(at.get("vega_lite_chart")) == 1  # the loss plot (no accuracy logged yet)
    assert "INFO loaded 10 rows" in shown(at)
    at.button(key=f"job_cancel_{j.id}").click().run()
    with session_scope(url) as s:
        assert jobs.get_job(s, j.id).cancel_requested
    assert "cancelling" in shown(at)

    # It ends having registered its version: the page offers the next turn of the loop.
    with session_scope(url) as s:
        s.get(Job, j.id).cancel_requested = False
        mv = registry.register_model_version(s, "sft-ui", "sft", str(run_dir), parent="sft-v1")
        jobs.finish(s, j.id, exit_status=0, model_version_id=mv.id)
    at.run()
    assert "Registered model version **sft-ui**" in shown(at)
    at.button(key=f"job_cmp_{j.id}").click().run()
    assert not at.exception
    with session_scope(url) as s:
        gen = jobs.list_jobs(s)[0]
        assert gen.kind == "generate" and gen.args["models"] == ["sft-ui", "sft-v1"]
        assert gen.args["project"] == "demo" and gen.args["tasks"] == "compare"
    assert at.session_state["job_pick"] == gen.id


def test_jobs_page_renders_every_kind_form(seeded):
    at = page_as(seeded, "admin", "admin")
    for kind in jobs.JOB_KINDS:
        at.selectbox(key="job_kind").set_value(kind).run()
        assert not at.exception, kind
        assert any(b.label == "Queue job" for b in at.button), kind
    at.selectbox(key="job_kind").set_value("evaluate").run()
    at.radio(key="job_eval_what").set_value("policy").run()
    assert not at.exception
    # No reward model registered yet: the policy evaluation says so instead of offering an empty choice.
    assert at.selectbox(key="job_eval_judge_none").disabled
    at.radio(key="job_eval_what").set_value("responses").run()
    assert not at.exception
    assert at.selectbox(key="job_eval_resp_judge_none").disabled
    assert at.selectbox(key="job_project_evaluate").value == "demo"


def test_db_jobs_cli(sqlite_url, tmp_path, capsys):
    from db import cli

    f = tmp_path / "args.yaml"
    f.write_text("project: demo\nmax_steps: 3\n")
    assert cli.main(["--url", sqlite_url, "jobs", "submit", "train_sft", "--name", "sft-cli", "--args-file", str(f),
                     "--arg", "learning_rate=1e-3", "--arg", "models=[a, b]", "--arg", "bf16=false"]) == 0
    assert "queued job 1 (train_sft, registers 'sft-cli')" in capsys.readouterr().out
    assert job(sqlite_url, 1).args == {"project": "demo", "max_steps": 3, "learning_rate": "1e-3",
                                       "models": ["a", "b"], "bf16": False}
    assert cli.main(["--url", sqlite_url, "jobs", "list"]) == 0
    assert "sft-cli" in capsys.readouterr().out
    assert cli.main(["--url", sqlite_url, "jobs", "show", "1"]) == 0
    assert '"state": "queued"' in capsys.readouterr().out
    assert cli.main(["--url", sqlite_url, "jobs", "cancel", "1"]) == 0
    assert "job 1: cancelled" in capsys.readouterr().out
    assert cli.main(["--url", sqlite_url, "jobs", "submit", "evaluate", "--arg", "model=rm"]) == 2
    assert "what: reward or policy" in capsys.readouterr().err
    assert cli.main(["--url", sqlite_url, "jobs", "submit", "generate", "--arg", "novalue"]) == 2
    assert "FLAG=VALUE" in capsys.readouterr().err


def test_jobs_page_forms_start_from_the_newest_sft_and_say_how_much_data_there_is(seeded):
    """Reward / PPO forms start from the newest SFT version (and PPO from the newest reward model), as the README's
    loop does; the SFT and reward forms say how many rows the job would train on, warning when very few."""
    url = seeded["url"]
    with session_scope(url) as s:
        registry.register_model_version(s, "sft-v2", "sft", "runs/sft-v2", parent="sft-v1")
        registry.register_model_version(s, "rm-a", "reward", "runs/rm-a", parent="sft-v1")
        registry.register_model_version(s, "rm-b", "reward", "runs/rm-b", parent="sft-v2")
        registry.register_model_version(s, "base-v2", "base", "runs/base-v2")  # newer, but no SFT model
        from db.services import labels
        for tid in seeded["compare_task_ids"]:  # the seed's 2 compare tasks: 2 decisive pairs
            labels.submit_preference(s, seeded["alice_id"], tid, "a")
    at = page_as(seeded, "admin", "admin")
    at.selectbox(key="job_kind").set_value("train_sft").run()
    assert at.selectbox(key="job_model_train_sft").value == "base-v1"  # SFT starts from a base model
    assert "has no accepted demonstrations yet" in shown(at)
    at.selectbox(key="job_kind").set_value("train_reward").run()
    assert at.selectbox(key="job_model_train_reward").value == "sft-v2"
    assert "has only **2** decisive preference pairs" in shown(at) and "The job still runs" in shown(at)
    at.selectbox(key="job_kind").set_value("train_ppo").run()
    assert (at.selectbox(key="job_model_ppo").value, at.selectbox(key="job_rm_ppo").value) == ("sft-v2", "rm-b")
    at.selectbox(key="job_kind").set_value("train_grpo").run()
    assert (at.selectbox(key="job_model_grpo").value, at.selectbox(key="job_rm_grpo").value) == ("sft-v2", "rm-b")
    next(b for b in at.button if b.label == "Queue job").click().run()
    assert not at.exception
    with session_scope(url) as s:
        assert jobs.list_jobs(s)[0].args["model"] == "sft-v2"


def test_a_training_job_on_tiny_data_says_so_in_its_result_and_log(sqlite_url, tmp_path):
    tiny_job = script_job(sqlite_url, "print('SFT sft-x: 3 train / 1 eval rows (project p), chat template: False')")
    fine_job = script_job(sqlite_url, "print('reward rm-x: 400 train / 40 eval pairs in 0 / 0 rankings')")
    ScriptWorker(sqlite_url, root=tmp_path / "runs", poll_seconds=0.05).run(until_idle=True)
    tiny, fine = job(sqlite_url, tiny_job), job(sqlite_url, fine_job)
    assert tiny.state == "succeeded"  # a warning, not a refusal
    assert tiny.result["warning"].startswith("trained on only 3 demonstrations (3 train / 1 eval rows)")
    assert "[worker] warning: trained on only 3 demonstrations" in Path(tiny.log_path).read_text()
    assert fine.state == "succeeded" and "warning" not in fine.result
    assert W.small_data_warning(None) == ""
    assert "only 9 preference pairs" in W.small_data_warning(
        _write(tmp_path / "l.txt", "reward r: 9 train / 1 eval pairs in 0 / 0 rankings\n"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_cancelled_job_says_who_cancelled_it_and_when_not_a_signal(seeded, tmp_path):
    url = seeded["url"]
    with session_scope(url) as s:
        queued = jobs.enqueue(s, "generate", {"project": "demo", "models": ["sft-v1"]}).id
        running = jobs.enqueue(s, "train_sft", {"project": "demo", "model": "base-v1"}, name="sft-c").id
        jobs.cancel(s, queued, actor_id=seeded["admin_id"])
        jobs.claim_next(s, "h:1:1/1", "vm")
        jobs.mark_started(s, running, pid=4242, pid_start=None, command=["python"], log_path=str(tmp_path / "l"),
                          run_dir=None)
    at = page_as(seeded, "admin", "admin")
    at.selectbox(key="job_pick").set_value(running).run()
    assert "host vm, process 4242" in shown(at)
    at.button(key=f"job_cancel_{running}").click().run()
    assert not at.exception
    assert "(cancelling…)" in shown(at)
    assert not [b for b in at.button if b.key == f"job_cancel_{running}"]  # drawn once, then gone
    with session_scope(url) as s:  # the worker's SIGTERM ends it
        j = jobs.finish(s, running, exit_status=-15, error="the job's process ended with killed by signal 15")
        assert (j.state, j.error, j.result["cancelled_by"]) == ("cancelled", "", "admin")
        assert jobs.get_job(s, queued).result["cancelled_by"] == "admin"
    at.run()
    text = shown(at)
    assert "Cancelled by admin at " in text
    assert "signal" not in text and "exit status -15" not in text
    with session_scope(url) as s:  # from the command line (no acting user)
        cli = jobs.enqueue(s, "generate", {"project": "demo", "models": ["sft-v1"]}).id
        jobs.cancel(s, cli)
        who, when = jobs.cancel_note(jobs.get_job(s, cli))
        assert who == "the command line" and when is not None


def test_jobs_page_shows_results_and_progress_in_words(seeded, tmp_path):
    url = seeded["url"]
    log = tmp_path / "log.txt"
    log.write_text("loading\n 31%|###       | 940/3000 [01:02<02:10, 15.1it/s]\n")
    with session_scope(url) as s:
        gen = jobs.enqueue(s, "generate", {"project": "demo", "models": ["ppo-job3", "sft-job1"]}).id
        ev = jobs.enqueue(s, "evaluate", {"what": "responses", "project": "demo", "reward": "rm-x"}).id
        run = jobs.enqueue(s, "train_reward", {"project": "demo", "model": "sft-v1"}, name="rm-run").id
        for jid, result in ((gen, {"project": "demo", "prompts": 30, "models": ["ppo-job3", "sft-job1"],
                                   "responses": {"generated": 120, "reused": 0},
                                   "tasks": {"compare": {"created": 60, "existing": 0}}}),
                            (ev, {"reward": "rm-x", "project": "demo", "recorded": True,
                                  "versions": {"sft-v1": {"score": -2.5, "responses": 60, "accuracy": 0.25}}})):
            jobs.claim_next(s, "h:1:1/1", "vm")
            jobs.finish(s, jid, exit_status=0, result=result)
        jobs.claim_next(s, "h:1:1/1", "vm")
        jobs.mark_started(s, run, pid=1, pid_start=None, command=["python"], log_path=str(log), run_dir=None)
    at = page_as(seeded, "admin", "admin")
    kinds = list(at.dataframe[0].value["kind"])
    assert kinds == ["reward model training", "evaluate", "generate"]
    assert at.get("progress")[0].proto.text == "940 / 3000 steps"
    at.selectbox(key="job_pick").set_value(gen).run()
    assert "60 compare tasks created from ppo-job3 and sft-job1 in project demo" in shown(at)
    at.selectbox(key="job_pick").set_value(ev).run()
    assert "rm-x judged the responses of 1 version in project demo: mean score sft-v1 -2.5 (60 responses, 25% correct)" \
        in shown(at)
