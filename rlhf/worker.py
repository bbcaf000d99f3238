"""Run queued jobs: ``python -m rlhf.worker``.

    python -m rlhf.worker                          # beside the app (make demo): runs jobs until stopped
    python -m rlhf.worker --url postgresql+psycopg://... --max-jobs 4 --max-training 1    # one per GPU machine
    python -m rlhf.worker --until-idle             # run what is queued, then exit

The worker claims queued jobs from the ``jobs`` table (atomically: several workers never run one job twice),
runs each as its own process (``python -m rlhf.<job> ...``, ``python -m pretrain.pipeline ...``) with its log
in ``$INSTRUCTLOOP_HOME/jobs/<id>/log.txt``, sends a heartbeat with the job's progress (its own tqdm bar) every
few seconds, stops the process when the job is cancelled, and records the exit status and the model version
the job registered. At most one training job (SFT, reward, PPO, RLOO, GRPO, pretraining) runs at a time by
default: they take the whole device; generate and evaluate jobs may run beside one (``--max-jobs``).

At start (and every minute) it marks jobs whose process died as failed with their last log lines: on this
machine, a running job whose worker is gone (its still-running process is stopped first) or whose process is
gone; on any machine, a job without a heartbeat for ``--stale-after`` seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from db.models import JOB_KINDS, TRAINING_JOB_KINDS, Job
from db.services import jobs
from db.services.errors import ServiceError
from db.session import session_scope
from db.settings import database_url, home

log = logging.getLogger("rlhf.worker")

MODULES = {"generate": "rlhf.generate", "train_sft": "rlhf.train_sft", "train_reward": "rlhf.train_reward",
           "train_ppo": "rlhf.train_ppo", "train_rloo": "rlhf.train_rloo", "train_grpo": "rlhf.train_grpo",
           "train_kto": "rlhf.train_kto", "evaluate": "rlhf.evaluate", "pretrain": "pretrain.pipeline"}
# How long a cancelled job may take to exit after SIGTERM (pretrain saves a checkpoint) before SIGKILL.
TERMINATE_GRACE_S = 15.0
RECOVER_EVERY_S = 60.0
HEARTBEAT_S = 30.0  # how often a running job's row is touched (each heartbeat is a write)


# ------------------------------------------------------------------------------------------ processes

def process_start(pid: int) -> str | None:
    """The OS's start time of a process (clock ticks since boot, /proc/<pid>/stat field 22): with the pid it
    names one process, even after the pid is reused. None when there is no such process or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether process `pid` (started at `start`, when known) still runs (zombies count as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return not Path("/proc").is_dir()  # no /proc (macOS): kill(0) is all we know
    if state == "Z":
        return False
    return start is None or process_start(pid) == start


def stop_process_group(pid: int, grace: float = TERMINATE_GRACE_S, start: str | None = None) -> None:
    """SIGTERM the job's process group (the job and anything it started, e.g. torchrun's ranks), SIGKILL after
    `grace` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and process_alive(pid, start):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def parse_worker_id(worker: str | None) -> tuple[str, int, str | None] | None:
    """"host:pid:start/n" -> (host, pid, start)."""
    if not worker:
        return None
    rest, _, start = worker.split("/", 1)[0].rpartition(":")  # the start field may be empty
    host, _, pid = rest.rpartition(":")
    try:
        return host, int(pid), start or None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ commands

def _flag_argv(args: dict[str, Any], style: str) -> list[str]:
    """Flags as the job's parser takes them. "hf" (HfArgumentParser / TrlParser): `--key value`, booleans as
    `--key true|false`, lists as `--key a b`. "argparse": booleans are store_true switches, names with dashes."""
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + (key.replace("_", "-") if style == "dashes" else key)
        if isinstance(value, bool):
            if style == "hf":
                argv += [flag, "true" if value else "false"]
            elif value:
                argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *[str(v) for v in value]]
        else:
            argv += [flag, str(value)]
    return argv


@dataclass
class Launch:
    """How one job runs: its command line, where its log and metrics go."""

    command: list[str]
    job_dir: Path
    log_path: Path
    run_dir: Path | None = None
    result_file: Path | None = None
    pretrain_out: Path | None = None


def build_command(job: Job, root: Path, python: str = sys.executable) -> Launch:
    """The command line of a job (`root` is $INSTRUCTLOOP_HOME, absolute)."""
    from rlhf.runs import slug

    job_dir = root / "jobs" / str(job.id)
    args = dict(job.args or {})
    cmd = [python, "-m", MODULES[job.kind]]
    launch = Launch(cmd, job_dir, job_dir / "log.txt")
    if job.kind == "generate":
        cmd += _flag_argv(args, "hf")
    elif job.kind.startswith("train_"):  # rlhf.train_{sft,reward,ppo,rloo,grpo,kto}: TrlParser flags
        cmd += _flag_argv(args, "hf") + ["--name", str(job.name)]
        launch.run_dir = root / job.kind / slug(str(job.name))  # rlhf.config.default_run_dir
    elif job.kind == "evaluate":
        what = args.pop("what")
        launch.result_file = job_dir / "result.json"
        cmd += [what, *_flag_argv(args, "argparse"), "--out", str(launch.result_file)]
    elif job.kind == "pretrain":
        launch.pretrain_out = root / "pretrain" / slug(str(job.name))
        launch.run_dir = launch.pretrain_out / "run"  # pretrain.pipeline: <out>/run/metrics.jsonl, <out>/hf
        cmd += _flag_argv(args, "dashes") + ["--out", str(launch.pretrain_out)]
    else:  # validate_args refuses other kinds at enqueue
        raise ServiceError(f"job {job.id}: unknown kind {job.kind!r}")
    return launch


def _last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return {}


# ------------------------------------------------------------------------------------------ the worker

@dataclass
class Running:
    job_id: int
    kind: str
    name: str | None
    proc: subprocess.Popen
    launch: Launch
    log_fh: IO[bytes]
    pid_start: str | None
    started: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    cancelling_since: float | None = None


# The line train_sft / train_reward log about their data ("SFT sft-1: 3 train / 1 eval rows (...)").
_DATA_LINE = re.compile(r"\b(SFT|reward) \S+: (\d+) train / (\d+) eval (rows|pairs)")


def small_data_warning(log_path: str | Path | None, *, limit: int = jobs.SMALL_DATA_ROWS) -> str:
    """A warning (or "") when a training job's log says it trained on fewer than `limit` rows: not a refusal
    (a demo or a smoke test may mean it), but the result is no model to rely on."""
    try:
        with Path(log_path or "").open("rb") as fh:
            head = fh.read(1 << 20).decode("utf-8", errors="replace")  # the data line comes early
    except OSError:
        return ""
    m = _DATA_LINE.search(head)
    if m is None or int(m.group(2)) >= limit:
        return ""
    what = "demonstrations" if m.group(4) == "rows" else "preference pairs"
    return (f"trained on only {m.group(2)} {what} ({m.group(2)} train / {m.group(3)} eval {m.group(4)}): too few "
            f"to learn much beyond those examples; collect at least {limit} before relying on this model")


class Worker:
    """Claims queued jobs and runs them as processes (see the module docstring)."""

    def __init__(self, url: str | None = None, *, max_jobs: int = 2, max_training: int = 1,
                 kinds: Iterable[str] = JOB_KINDS, poll_seconds: float = 2.0, stale_after: float | None = 600.0,
                 heartbeat_seconds: float = HEARTBEAT_S,
                 root: str | Path | None = None, python: str = sys.executable) -> None:
        if max_jobs < 1 or max_training < 0:
            raise ServiceError("--max-jobs must be >= 1 and --max-training >= 0")
        self.url = url or database_url()
        self.max_jobs, self.max_training = max_jobs, max_training
        self.kinds = [k for k in kinds]
        bad = [k for k in self.kinds if k not in JOB_KINDS]
        if bad:
            raise ServiceError(f"unknown job kind(s) {', '.join(bad)}: choose from {', '.join(JOB_KINDS)}")
        self.poll_seconds, self.stale_after = poll_seconds, stale_after
        self.heartbeat_seconds = heartbeat_seconds
        self.root = Path(root).resolve() if root else home().resolve()
        self.python = python
        self.host = socket.gethostname()
        Worker._instances += 1
        # host:pid:start names the process (a restart elsewhere can check it is gone); /n tells apart several
        # workers in one process (tests run them as threads).
        self.id = f"{self.host}:{os.getpid()}:{process_start(os.getpid()) or ''}/{Worker._instances}"
        self.running: dict[int, Running] = {}
        self.stop = threading.Event()
        self._last_recover = 0.0

    _instances = 0

    # ---- recovery
    def _why_dead(self, job: Job) -> str | None:
        """Why a running job of this machine is dead, or None while it runs (or when only its heartbeat can
        tell: another machine's)."""
        if job.id in self.running or job.host != self.host:
            return None
        w = parse_worker_id(job.worker)
        # A worker in a live process is watching its job, unless the worker is this one and does not know it.
        if w is not None and job.worker != self.id and process_alive(w[1], w[2]):
            return None
        if process_alive(job.pid, job.pid_start):
            log.warning("job %d: its worker %s is gone but its process %d still runs: stopping it", job.id,
                        job.worker, job.pid)
            stop_process_group(int(job.pid), start=job.pid_start)
            return f"its worker ({job.worker}) stopped; its process {job.pid} was stopped by worker {self.id}"
        if job.pid is None:
            return f"its worker ({job.worker}) stopped before the job's process was recorded"
        return f"its process {job.pid} died while its worker ({job.worker}) was not running"

    def recover(self) -> list[int]:
        """Mark running jobs whose process died as failed (with their last log lines)."""
        self._last_recover = time.monotonic()
        with session_scope(self.url) as s:
            ended = jobs.fail_dead(s, self._why_dead, stale_after=self.stale_after)
        for jid in ended:
            log.warning("job %d: marked as ended, its process had died", jid)
        return ended

    # ---- claiming and starting
    def _free_kinds(self) -> list[str]:
        if len(self.running) >= self.max_jobs:
            return []
        training = sum(r.kind in TRAINING_JOB_KINDS for r in self.running.values())
        return [k for k in self.kinds if k not in TRAINING_JOB_KINDS or training < self.max_training]

    def claim_and_start(self) -> int | None:
        kinds = self._free_kinds()
        if not kinds:
            return None
        with session_scope(self.url) as s:
            job = jobs.claim_next(s, self.id, self.host, kinds)
        if job is None:
            return None
        try:
            self._start(job)
        except Exception as e:  # the job fails, the worker goes on with the others
            log.exception("job %d: could not start", job.id)
            with session_scope(self.url) as s:
                jobs.finish(s, job.id, exit_status=None, error=f"the worker could not start it: {e}")
        return job.id

    def command_for(self, job: Job) -> Launch:
        return build_command(job, self.root, self.python)

    def _env(self, job: Job) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DATABASE_URL": self.url, "INSTRUCTLOOP_HOME": str(self.root), "INSTRUCTLOOP_JOB_ID": str(job.id),
                    "PYTHONUNBUFFERED": "1",  # the log shows lines as they happen, in order
                    "TQDM_MININTERVAL": "2"})  # progress bars redraw every 2 s: the log stays small
        return env

    def _start(self, job: Job) -> None:
        launch = self.command_for(job)
        launch.job_dir.mkdir(parents=True, exist_ok=True)
        fh = launch.log_path.open("ab")
        fh.write(f"$ {subprocess.list2cmdline(launch.command)}\n".encode())
        fh.flush()
        # Own session: a cancel stops the job's whole process group, and a Ctrl-C meant for the worker's
        # terminal does not reach the job (the worker decides what happens to it).
        proc = subprocess.Popen(launch.command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self._env(job), start_new_session=True)
        start = process_start(proc.pid)
        self.running[job.id] = Running(job.id, job.kind, job.name, proc, launch, fh, start)
        with session_scope(self.url) as s:
            jobs.mark_started(s, job.id, pid=proc.pid, pid_start=start, command=launch.command,
                              log_path=str(launch.log_path),
                              run_dir=str(launch.run_dir) if launch.run_dir else None)
        log.info("job %d (%s%s) started: pid %d, log %s", job.id, job.kind, f" {job.name}" if job.name else "",
                 proc.pid, launch.log_path)

    # ---- watching
    def poll(self) -> None:
        """Heartbeat / cancel / finish every running job."""
        for r in list(self.running.values()):
            rc = r.proc.poll()
            if rc is not None:
                self._finish(r, rc)
                continue
            if time.monotonic() - r.last_beat >= self.heartbeat_seconds:
                frac, text = jobs.progress_from_log(jobs.log_tail(r.launch.log_path, 5))
                with session_scope(self.url) as s:
                    cancel = jobs.heartbeat(s, r.job_id, frac, text)
                r.last_beat = time.monotonic()
            else:
                with session_scope(self.url) as s:
                    cancel = jobs.cancel_requested(s, r.job_id)
            if cancel and r.cancelling_since is None:
                log.info("job %d: cancelled, stopping process %d", r.job_id, r.proc.pid)
                r.cancelling_since = time.monotonic()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, signal.SIGTERM)
            elif r.cancelling_since is not None and time.monotonic() - r.cancelling_since > TERMINATE_GRACE_S:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(r.proc.pid, signal.SIGKILL)

    def _outcome(self, r: Running, rc: int) -> tuple[int | None, dict[str, Any], str]:
        """(model version id, result, error) of a job that exited with `rc`."""
        from db.services import registry

        tail = jobs.log_tail(r.launch.log_path, jobs.LOG_TAIL_LINES)
        if rc != 0:
            how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
            return None, {}, f"the job's process ended with {how}\n--- last log lines ---\n{tail}"
        result: dict[str, Any] = {}
        if r.launch.result_file is not None and r.launch.result_file.is_file():
            with contextlib.suppress(json.JSONDecodeError):
                result = json.loads(r.launch.result_file.read_text())
        elif r.kind == "generate":
            result = _last_json_line(jobs.log_tail(r.launch.log_path, 200))
        version_id = None
        with session_scope(self.url) as s:
            if r.kind == "pretrain":
                # pretrain.pipeline exports <out>/hf and prints it; registering it as a base version is ours.
                hf = r.launch.pretrain_out / "hf" if r.launch.pretrain_out else None
                if hf is None or not (hf / "config.json").is_file():
                    return None, {}, f"pretrain finished but wrote no HF export in {hf}\n{tail}"
                mv = registry.get_or_register(s, str(r.name), "base", str(hf.resolve()),
                                              config={"job": "pretrain", "job_id": r.job_id})
                version_id = mv.id
                result = {"hf_dir": str(hf.resolve())}
            elif r.name:
                try:
                    version_id = registry.resolve(s, r.name).id
                except ServiceError:
                    result = {"note": f"the job registered no model version {r.name!r} (--no_register or "
                                      "--stop_at_step?)"}
        return version_id, result, ""

    def _finish(self, r: Running, rc: int) -> None:
        self.running.pop(r.job_id, None)
        with contextlib.suppress(OSError):
            r.log_fh.write(f"\n[worker] exit status {rc}\n".encode())
            r.log_fh.flush()
        try:
            version_id, result, error = self._outcome(r, rc)
            if rc == 0 and (warning := small_data_warning(r.launch.log_path)):
                result["warning"] = warning
                with contextlib.suppress(OSError):
                    r.log_fh.write(f"[worker] warning: {warning}\n".encode())
        except Exception as e:  # record why rather than lose the job
            log.exception("job %d: could not read its outcome", r.job_id)
            version_id, result, error = None, {}, f"the worker could not record its outcome: {e}"
        with contextlib.suppress(OSError):
            r.log_fh.close()
        with session_scope(self.url) as s:
            job = jobs.finish(s, r.job_id, exit_status=rc, model_version_id=version_id, result=result, error=error)
        log.info("job %d: %s (exit status %d)", r.job_id, job.state, rc)

    # ---- main loop
    def step(self) -> bool:
        """One round: watch running jobs, recover dead ones now and then, start queued ones. Returns whether
        any job is running or was started."""
        self.poll()
        if time.monotonic() - self._last_recover > RECOVER_EVERY_S:
            self.recover()
        started = False
        while not self.stop.is_set() and self.claim_and_start() is not None:
            started = True
        return started or bool(self.running)

    def run(self, until_idle: bool = False) -> None:
        """Run until stopped (SIGTERM / SIGINT / `self.stop`), or with `until_idle` until nothing is queued or
        running. Stopping terminates the running jobs (they are recorded as failed: interrupted)."""
        self.recover()
        log.info("worker %s: database %s, runs in %s, at most %d job(s), %d training", self.id,
                 _shown(self.url), self.root, self.max_jobs, self.max_training)
        try:
            while not self.stop.is_set():
                try:
                    busy = self.step()
                except ServiceError as e:  # e.g. the database is busy: try again at the next round
                    log.warning("%s", e)
                    busy = True
                if until_idle and not busy:
                    return
                self.stop.wait(self.poll_seconds if not until_idle else min(self.poll_seconds, 0.5))
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        for r in list(self.running.values()):
            log.warning("worker stopping: terminating job %d (pid %d)", r.job_id, r.proc.pid)
            stop_process_group(r.proc.pid, start=r.pid_start)
            rc = r.proc.wait()
            self.running.pop(r.job_id, None)
            with contextlib.suppress(OSError):
                r.log_fh.write(b"\n[worker] stopped: the job was terminated\n")
                r.log_fh.close()
            try:
                with session_scope(self.url) as s:
                    jobs.finish(s, r.job_id, exit_status=rc,
                                error="the worker was stopped while the job ran; it was terminated\n"
                                      + jobs.log_tail(r.launch.log_path, jobs.LOG_TAIL_LINES))
            except ServiceError as e:
                log.error("job %d: could not record its end (%s); the next worker start marks it failed",
                          r.job_id, e)


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m rlhf.worker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="database URL (default: $DATABASE_URL, else "
                                                "sqlite:///data/instructloop.sqlite3)")
    ap.add_argument("--max-jobs", type=int, default=2,
                    help="jobs running at once on this worker, all kinds together (default 2)")
    ap.add_argument("--max-training", type=int, default=1,
                    help=f"training jobs ({', '.join(TRAINING_JOB_KINDS)}) running at once (default 1)")
    ap.add_argument("--kinds", default=",".join(JOB_KINDS),
                    help=f"comma-separated job kinds this worker takes (default: all: {','.join(JOB_KINDS)})")
    ap.add_argument("--poll", type=float, default=2.0,
                    help="seconds between rounds: heartbeats, progress, cancels, new jobs (default 2)")
    ap.add_argument("--stale-after", type=float, default=600.0,
                    help="a running job whose worker sent no heartbeat for this many seconds is marked failed "
                         "(workers on other machines; 0 = never; default 600)")
    ap.add_argument("--home", default=None,
                    help="folder for run folders and job logs (default: $INSTRUCTLOOP_HOME, else ./runs)")
    ap.add_argument("--until-idle", action="store_true", help="exit once nothing is queued or running")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from rlhf.runs import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        w = Worker(args.url, max_jobs=args.max_jobs, max_training=args.max_training,
                   kinds=[k.strip() for k in args.kinds.split(",") if k.strip()], poll_seconds=args.poll,
                   stale_after=args.stale_after or None, root=args.home)
        from db.session import require_schema

        require_schema(w.url)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        w.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    w.run(until_idle=args.until_idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
