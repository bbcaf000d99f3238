"""Run folders, metrics.jsonl, resolved config, and the model-version row with lineage."""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from db.services.errors import InputError, ServiceError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "job_config.yaml"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


# Set by torchrun (and so by `accelerate launch` on several processes): the same value on every rank of a job.
# torchrun's default rendezvous id without --standalone / --rdzv_id is "none", which names no run.
RUN_ID_ENV = ("INSTRUCTLOOP_RUN_ID", "TORCHELASTIC_RUN_ID")


def world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def default_name(job: str, project: str | None, dataset: str | None) -> str:
    """<job>-<source>-<timestamp> on one process. Each rank of a multi-process job computes its own default,
    so a clock-based name could differ between ranks (and send them to different run folders): there the
    name comes from the launcher's run id, shared by all ranks, or --name is required."""
    src = slug(project or Path(dataset or "data").stem)
    if world_size() <= 1:
        return f"{job}-{src}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for key in RUN_ID_ENV:
        run_id = os.environ.get(key, "").strip()
        if run_id and run_id.lower() != "none":
            return f"{job}-{src}-{slug(run_id)[:40]}"
    raise InputError(f"running on {world_size()} processes without --name: each rank would pick its own "
                     "timestamped name and run folder. Pass --name (the same on every rank), or launch with "
                     "torchrun --rdzv_id ID / --standalone, or set INSTRUCTLOOP_RUN_ID", field="name")


def setup_run(cfg: Any, job: str) -> tuple[str, Path]:
    """Pick the version name and run folder; refuse to clobber a finished run or a registered name."""
    from rlhf.config import default_run_dir

    given_dir = getattr(cfg, "_output_dir_given", False)
    if cfg.name:
        name = cfg.name
    elif given_dir:
        name = Path(cfg.output_dir).name
    elif cfg.resume:
        raise InputError("--resume needs --name (or --output_dir) of the run to resume", field="resume")
    else:
        name = default_name(job, cfg.project, cfg.dataset)
        if world_size() <= 1:  # two jobs started in the same second: the folder is claimed atomically
            base, n = name, 1
            while True:
                try:
                    Path(default_run_dir(job, slug(name))).mkdir(parents=True, exist_ok=False)
                    break
                except FileExistsError:
                    n += 1
                    name = f"{base}-{n}"
    if not given_dir:
        cfg.output_dir = default_run_dir(job, slug(name))
    run_dir = Path(cfg.output_dir)
    if not cfg.resume and list(run_dir.glob("checkpoint-*")):
        raise InputError(f"run folder {run_dir} already has checkpoints: pass --resume to continue it, "
                         "or another --name", field="name")
    if cfg.register:
        check_name_free(cfg.database_url, name)
    return name, run_dir


def check_name_free(url: str | None, name: str) -> None:
    from db.services import registry
    from db.session import session_scope

    with session_scope(url) as s:
        try:
            registry.resolve(s, name)
        except ServiceError:
            return
    raise InputError(f"model version {name!r} already exists: pick another --name", field="name")


def _complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without a whole one was cut by a kill."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint-N (a job killed while writing one resumes from the one before)."""
    if not run_dir.is_dir():
        return None
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    complete = [p for p in found if _complete(p)]
    return str(max(complete, key=lambda p: int(p.name.split("-", 1)[1]))) if complete else None


def totals_callback(trainer: Any, before: dict[str, float]) -> Any:
    """Keeps, inside each checkpoint's trainer_state.json, the running sums the Trainer holds only in memory
    and restarts from 0 on resume: the summed training loss (its final ``train_loss`` is the mean over one
    call's steps) and TRL's token count (``num_tokens`` in SFT logs). `before`: the sums saved with the
    checkpoint being resumed; the final ``train_loss`` is then the mean over every step, as a straight run's."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class ResumeTotals(TrainerCallback, ExportableState):
        train_loss: float | None = None

        def state(self) -> dict[str, Any]:
            # called by _save_checkpoint just before it writes trainer_state.json (so a complete checkpoint
            # has these), and once when the Trainer builds its state
            attrs: dict[str, Any] = {"total_loss": before.get("total_loss", 0.0)
                                     + getattr(trainer, "_total_loss_scalar", 0.0)
                                     + float(getattr(trainer, "_tr_loss", 0.0))}
            if hasattr(trainer, "_total_train_tokens"):
                attrs["num_tokens"] = trainer._total_train_tokens
            return {"args": {}, "attributes": attrs}

        def on_train_begin(self, args, state, control, **kw):
            state.stateful_callbacks.setdefault(type(self).__name__, self.state())  # an older checkpoint's
            if "num_tokens" in before and hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = before["num_tokens"]

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "train_loss" in logs and "total_loss" in before and state.global_step:
                # the end-of-training line; _total_loss_scalar holds every step since the resume by now
                self.train_loss = (before["total_loss"] + trainer._total_loss_scalar) / state.global_step
                logs["train_loss"] = self.train_loss

    return ResumeTotals()


def saved_totals(checkpoint: str) -> dict[str, float]:
    """What totals_callback saved in `checkpoint` ({} for a checkpoint written without it)."""
    try:
        st = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
        return dict(st.get("stateful_callbacks", {}).get("ResumeTotals", {}).get("attributes", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop rows logged after the checkpoint (the resumed run logs them again) and any final row,
    so metrics.jsonl reads as one uninterrupted run."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if row.get("step", 0) <= step and not row.get("final"):
            keep.append(line)
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def metrics_callback(run_dir: Path, stop_at_step: int | None = None) -> Any:
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        """Appends every log (train and eval) to <run>/metrics.jsonl, main process only; with `stop_at_step`,
        saves a checkpoint there and stops, as if the job were killed right after it."""

        def on_step_end(self, args, state, control, **kw):
            if stop_at_step is not None and state.global_step == stop_at_step:
                control.should_save = control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            run_dir.mkdir(parents=True, exist_ok=True)
            row = {"step": state.global_step, "epoch": state.epoch, **{k: _clean(v) for k, v in logs.items()}}
            with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, default=str) + "\n")

    return MetricsJsonl()


TRAINING_KEYS = ("learning_rate", "num_train_epochs", "max_steps", "seed", "per_device_train_batch_size",
                 "max_length")


def training_config(cfg: Any) -> dict[str, Any]:
    """The optimisation settings every job records in its model version's config."""
    return {k: getattr(cfg, k) for k in TRAINING_KEYS if hasattr(cfg, k)}


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({k: _clean(v) for k, v in row.items()}, default=str) + "\n")


def write_config(run_dir: Path, cfg: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The resolved configuration (every field after defaults and device resolution) as YAML."""
    import yaml

    resolved = json.loads(json.dumps(cfg.to_dict(), default=str))
    resolved["_resolved"] = json.loads(json.dumps(extra, default=str))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(resolved, sort_keys=True))
    return resolved


def register(url: str | None, name: str, kind: str, path: Path, parent: Any, config: dict[str, Any],
             metrics: dict[str, Any], label_snapshot: dict[str, Any]) -> int:
    """Register the trained model (parent = the model it started from, registered as external if needed)."""
    from db.services import registry
    from db.session import session_scope, write_transaction
    from rlhf.modeling import ensure_registered

    with session_scope(url) as s, write_transaction(s):
        parent_row = ensure_registered(s, parent) if parent is not None else None
        mv = registry.register_model_version(
            s, name, kind, str(Path(path).resolve()), parent=parent_row.id if parent_row else None,
            config=json.loads(json.dumps(config, default=str)),
            metrics={k: _clean(v) for k, v in metrics.items()}, label_snapshot=label_snapshot)
        return mv.id


class TrainingJob:
    """The skeleton every training job runs: check inputs -> set up the run -> load models -> train -> save ->
    record (final metrics, resolved config, model version with lineage). A job fills in the steps:

    - ``prepare()``: everything that can be wrong, before the run folder or a model exists;
    - ``build()``: load the models and the trainer;
    - ``fit(resume)``: train (from a checkpoint path) and return the metrics, or None when it stopped early
      at ``--stop_at_step`` (nothing is saved or registered then);
    - ``save(metrics)``: write the model (every rank: FSDP / DeepSpeed gather collectively);
    - ``record()``: (parent ModelRef, version config, label snapshot, extra resolved config) on the main process.
    """

    JOB = ""  # run-folder group and default name prefix, e.g. "train_sft"
    KIND = ""  # model version kind, e.g. "sft"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.log = logging.getLogger(f"rlhf.{self.JOB}")
        self.name = ""
        self.run_dir = Path()

    def prepare(self) -> None:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def fit(self, resume: str | None) -> dict[str, Any] | None:
        raise NotImplementedError

    def save(self, metrics: dict[str, Any]) -> None:
        raise NotImplementedError

    def record(self) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    def is_main(self) -> bool:
        return True

    def barrier(self) -> None:
        """Wait for every rank (multi-process jobs)."""

    def find_checkpoint(self) -> str | None:
        return last_checkpoint(self.run_dir)

    def result(self, **kw: Any) -> dict[str, Any]:
        return {"name": self.name, "run_dir": str(self.run_dir), **kw}

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.project is None and cfg.dataset is None:
            raise InputError("give --project NAME (database) or --dataset FILE.jsonl", field="project")
        self.prepare()
        self.name, self.run_dir = setup_run(cfg, self.JOB)
        self.build()
        resume = self.find_checkpoint() if cfg.resume else None
        if cfg.resume and resume is None:
            self.log.warning("--resume: no checkpoint in %s, starting from the beginning", self.run_dir)
        metrics = self.fit(resume)
        if metrics is None:
            return self.stopped_summary()
        self.save(metrics)
        version_id = None
        if self.is_main():
            parent, config, snapshot, extra = self.record()
            append_metrics(self.run_dir, {"final": True, **metrics})
            write_config(self.run_dir, cfg, {"job": self.JOB, "name": self.name, **extra})
            if cfg.register:
                version_id = register(cfg.database_url, self.name, self.KIND, self.run_dir, parent,
                                      {"job": self.JOB, "run_dir": str(self.run_dir.resolve()), **config,
                                       **training_config(cfg)}, metrics, snapshot)
        self.barrier()
        self.log.info("%s done: %s", self.JOB, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
        return self.result(metrics=metrics, version_id=version_id)

    def stopped_summary(self) -> dict[str, Any]:
        raise NotImplementedError


class HFTrainerJob(TrainingJob):
    """A TrainingJob whose trainer is a transformers/TRL ``Trainer`` (SFT, reward, RLOO, GRPO)."""

    trainer: Any = None

    def is_main(self) -> bool:
        return self.trainer.is_world_process_zero()

    def callbacks(self) -> list[Any]:
        return [metrics_callback(self.run_dir, self.cfg.stop_at_step)]

    def save(self, metrics: dict[str, Any]) -> None:
        """The trained model and its tokenizer in the run directory (SFT, KTO)."""
        self.trainer.save_model(str(self.run_dir))  # every rank: FSDP / DeepSpeed gather the weights collectively
        if self.is_main():
            self.tokenizer.save_pretrained(str(self.run_dir))

    def train_hf(self, resume: str | None) -> Any | None:
        """trainer.train(); None when it stopped early at --stop_at_step. A resumed run's training_loss is the
        mean over every step, as an uninterrupted run's (the Trainer's own covers only the steps since resume)."""
        before: dict[str, float] = {}
        if resume is not None:
            before = saved_totals(resume)
            if self.is_main():
                truncate_metrics(self.run_dir / METRICS_FILE, int(Path(resume).name.split("-", 1)[1]))
        totals = totals_callback(self.trainer, before)
        self.trainer.callback_handler.callbacks.insert(0, totals)  # before metrics.jsonl's writer sees the logs
        result = self.trainer.train(resume_from_checkpoint=resume)
        step, cfg = self.trainer.state.global_step, self.cfg
        if cfg.stop_at_step is not None and step == cfg.stop_at_step and step < self.trainer.state.max_steps:
            return None
        if totals.train_loss is not None:
            result = type(result)(result.global_step, totals.train_loss,
                                  {**result.metrics, "train_loss": totals.train_loss})
        return result

    def stopped_summary(self) -> dict[str, Any]:
        step = self.trainer.state.global_step
        self.log.info("stopped at step %d as asked (checkpoint-%d in %s): continue with --resume", step, step,
                      self.run_dir)
        return self.result(stopped_at=step, metrics={"global_step": step}, version_id=None, trainer=self.trainer)

    def result(self, **kw: Any) -> dict[str, Any]:
        return {"name": self.name, "run_dir": str(self.run_dir), "trainer": self.trainer, **kw}


def setup_logging() -> None:
    """The jobs' log format on stderr (INFO: what each job loaded, trained and registered)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def cli(run: Callable[[Any], Any], config_cls: type, prog: str, doc: str, argv: list[str] | None) -> Any:
    """Set up logging, parse, run, and turn user errors into one clear line on stderr (exit status 2)."""
    from rlhf.config import parse

    setup_logging()
    try:
        cfg = parse(config_cls, argv, prog, doc)
        return run(cfg)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from e
