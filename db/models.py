"""SQLAlchemy 2 typed models: the tables of DESIGN.md §3.

Column types are portable (JSON, DateTime(timezone=True), String lengths) so the same
Alembic revisions run on SQLite and PostgreSQL. Every schema change goes through Alembic.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names so batch migrations on SQLite can find them again.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("admin", "annotator")
MODEL_KINDS = ("base", "sft", "reward", "policy", "external")
TASK_KINDS = ("compare", "rank", "demonstrate", "rate")
TASK_STATES = ("open", "done", "archived")
ASSIGNMENT_STATES = ("assigned", "submitted", "skipped", "expired")
CHOICES = ("a", "b", "tie", "both_bad")
STRENGTHS = ("slight", "clear", "strong")
FLAGS = ("hallucination", "fails_instruction", "harmful", "inappropriate", "other")
DEMO_STATES = ("submitted", "accepted", "rejected")
# A rate task's optional Likert score (InstructGPT's labelers gave 1-7).
LIKERT_RANGE = (1, 7)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class UTCDateTime(TypeDecorator):
    """DateTime(timezone=True) that always hands back an aware UTC datetime: PostgreSQL does, SQLite stores no
    zone and returns naive values. Everything is stored in UTC, so services can compare with utcnow() on both."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


TS = UTCDateTime()


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20), default="annotator")
    password_hash: Mapped[str | None] = mapped_column(String(300))
    # OIDC subject/email when the identity comes from st.login.
    external_id: Mapped[str | None] = mapped_column(String(300), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Pseudo-users that own imported labels (HH, TRL, OASST) cannot sign in.
    is_system: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)


class UISession(Base):
    """A "keep me signed in" session of the labeling app: the browser holds a random token in a cookie, the
    database only its SHA-256, so a leaked database cannot be replayed as sign-ins."""

    __tablename__ = "ui_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(TS)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    guidelines: Mapped[str] = mapped_column(Text, default="")
    labels_per_task: Mapped[int] = mapped_column(Integer, default=1)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    text: Mapped[str | None] = mapped_column(Text)
    # OpenAI-style chat turns [{"role", "content"}] when the prompt is a conversation.
    messages: Mapped[list[Any] | None] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(300), default="")
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)

    project: Mapped[Project] = relationship()


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(String(1000), default="")
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What it was trained on: {"project", "label_table", "ids"|"max_id", "filters"}.
    label_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)

    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "model_version_id", "content_hash", "sample_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    # NULL: written by a human (demonstration or imported text of unknown origin).
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    model_version: Mapped[ModelVersion | None] = relationship()


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("project_id", "dedup_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    # Display order (A, B, ...), randomized once at creation and stored.
    response_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default="open")
    n_submitted: Mapped[int] = mapped_column(Integer, default=0)
    dedup_key: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(300), default="")
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    project: Mapped[Project] = relationship()


# next_task scans open tasks of a project, closest to completion first, then oldest: the index
# order must match ORDER BY n_submitted DESC, id ASC exactly, or every call sorts all open tasks.
Index("ix_tasks_queue", Task.project_id, Task.status, Task.n_submitted.desc(), Task.id)
# The labeling pages always ask for one kind: without kind in the key, next_task(kind=...) walks every open task
# of the other kinds that sorts first.
Index("ix_tasks_queue_kind", Task.project_id, Task.status, Task.kind, Task.n_submitted.desc(), Task.id)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        Index("ix_assignments_user_state", "user_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(20), default="assigned")
    assigned_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(TS)
    finished_at: Mapped[dt.datetime | None] = mapped_column(TS)
    skip_reason: Mapped[str | None] = mapped_column(Text)

    task: Mapped[Task] = relationship()


# The Dashboard counts live leases (state 'assigned', expires_at > now) and skips of a project: without an index
# that starts with state, both read every assignment (1M rows at 1M labels).
Index("ix_assignments_state_expires", Assignment.state, Assignment.expires_at)


class PreferenceLabel(Base):
    __tablename__ = "preference_labels"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    choice: Mapped[str] = mapped_column(String(20))
    strength: Mapped[str | None] = mapped_column(String(20))
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(TS)

    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()


class Ranking(Base):
    __tablename__ = "rankings"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # Best first; each element is a list of response ids that tie: [[3], [1, 4], [2]].
    ordering: Mapped[list[Any]] = mapped_column(JSON)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(TS)

    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()


class Rating(Base):
    """A good/bad judgement of a rate task's single response (TRL's unpaired preference), optionally with a
    1-7 Likert score."""

    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    # The rated response, kept here too so exports need not read the task's response_ids.
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    good: Mapped[bool] = mapped_column(Boolean)
    likert: Mapped[int | None] = mapped_column(Integer)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(TS)

    task: Mapped[Task] = relationship()
    user: Mapped[User] = relationship()


class Demonstration(Base):
    __tablename__ = "demonstrations"
    __table_args__ = (UniqueConstraint("prompt_id", "user_id", "content_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), default="")
    seconds: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    review_note: Mapped[str] = mapped_column(Text, default="")
    reviewed_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime | None] = mapped_column(TS)

    prompt: Mapped[Prompt] = relationship()
    user: Mapped[User] = relationship(foreign_keys=[user_id])


JOB_KINDS = ("generate", "train_sft", "train_reward", "train_ppo", "train_rloo", "train_grpo", "train_kto", "evaluate",
             "pretrain")
# Jobs that train a model: a worker runs one of these at a time by default (they take the whole device).
TRAINING_JOB_KINDS = ("train_sft", "train_reward", "train_ppo", "train_rloo", "train_grpo", "train_kto", "pretrain")
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")


class Job(Base):
    """A job queued from the app or the CLI and run by a worker (`python -m rlhf.worker`) as its own process."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    # The model version a training job registers (its --name); null for generate/evaluate.
    name: Mapped[str | None] = mapped_column(String(200))
    # Flag name -> value, as `python -m rlhf.<kind> --flag value` takes them.
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default="queued")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(TS)
    ended_at: Mapped[dt.datetime | None] = mapped_column(TS)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(TS)
    # "host:pid:start" of the worker that claimed it (start = the OS's process start time, against pid reuse).
    worker: Mapped[str | None] = mapped_column(String(300))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[str | None] = mapped_column(String(40))
    command: Mapped[list[Any]] = mapped_column(JSON, default=list)
    log_path: Mapped[str | None] = mapped_column(String(1000))
    run_dir: Mapped[str | None] = mapped_column(String(1000))
    progress: Mapped[float | None] = mapped_column(Float)
    progress_text: Mapped[str] = mapped_column(String(300), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    exit_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")
    # What the job printed as its summary (generate's task counts, evaluate's metrics).
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))

    model_version: Mapped[ModelVersion | None] = relationship()


# Workers claim the oldest queued job: WHERE state = 'queued' ORDER BY id.
Index("ix_jobs_state_id", Job.state, Job.id)


class AuditEntry(Base):
    """Who did what to whom (db.services.audit): written in the transaction of the change it records."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow, index=True)
    # NULL with actor "cli:<os user>": the command line, run by someone with access to the database.
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    # The actor's username when it acted (kept if the account is renamed or removed).
    actor: Mapped[str] = mapped_column(String(120), default="")
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str] = mapped_column(String(300), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SignInFailure(Base):
    """A failed sign-in, counted per username and per client address for rate limiting (accounts.sign_in).
    The username is stored as a SHA-256 only: people type passwords into the username field."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_user_at", "username_hash", "at"),
        Index("ix_sign_in_failures_client_at", "client", "at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    username_hash: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(100), default="")
    at: Mapped[dt.datetime] = mapped_column(TS, default=utcnow)


# ---------------------------------------------------------------- summaries of the labels (db.services.summary)
# The Dashboard and Agreement pages read these instead of every label: written in the transaction of each label
# write (db.services.summary.labels_written), rebuilt from the labels by migration 0007 and summary.rebuild.
class LabelDay(Base):
    """Labels per project, annotator, kind ('compare', 'rank', 'rate', 'demonstrate') and UTC day."""

    __tablename__ = "label_days"
    __table_args__ = (UniqueConstraint("project_id", "user_id", "kind", "day"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    day: Mapped[str] = mapped_column(String(10))  # 'YYYY-MM-DD' of created_at in UTC
    n: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[dt.datetime] = mapped_column(TS)
    last_at: Mapped[dt.datetime] = mapped_column(TS)


class LabelSeconds(Base):
    """How many labels of a project, annotator and kind took exactly `seconds` (medians and p90 without reading
    every label: a multiset, as small as the distinct times)."""

    __tablename__ = "label_seconds"
    __table_args__ = (UniqueConstraint("project_id", "user_id", "kind", "seconds"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    seconds: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer, default=0)


class AgreementCount(Base):
    """The sums the agreement report is made of, over the items (compare tasks, rank-task response pairs, rate
    tasks) with two or more people's labels, per project and kind. `what` says which sum:
    'profile' (x: the item's label count per category, 'n_a,n_b,...'), 'pair' (user_a < user_b by id labelled an
    item x and y), 'compared' / 'agreed' (user_a had a leave-one-out majority / agreed with it).
    Unused columns hold 0 and '' (a unique key with NULLs would not catch duplicates)."""

    __tablename__ = "agreement_counts"
    __table_args__ = (UniqueConstraint("project_id", "kind", "what", "user_a", "user_b", "x", "y"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    what: Mapped[str] = mapped_column(String(10))
    user_a: Mapped[int] = mapped_column(Integer, default=0)
    user_b: Mapped[int] = mapped_column(Integer, default=0)
    x: Mapped[str] = mapped_column(String(60), default="")
    y: Mapped[str] = mapped_column(String(20), default="")
    n: Mapped[int] = mapped_column(Integer, default=0)


class ProjectCount(Base):
    """Tasks per project, kind and status, prompts per project (kind 'prompt', status '') and skipped assignments
    (kind 'skipped', status ''): the Dashboard's counts, which otherwise read every task, prompt and assignment of
    the project."""

    __tablename__ = "project_counts"
    __table_args__ = (UniqueConstraint("project_id", "kind", "status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    n: Mapped[int] = mapped_column(Integer, default=0)
