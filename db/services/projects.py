"""Projects: create, list, update guidelines and overlap."""
from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Project, Task
from db.services import audit, summary
from db.services.errors import InputError, NotFound, ServiceError
from db.settings import size_limit

DEFAULT_SETTINGS: dict[str, Any] = {
    "min_demonstration_chars": 20,
    "revision_window_hours": 24,  # annotators may revise their own labels this long after submitting
}
RENDERS = ("markdown", "plain")  # how the labeling pages show model text (labeling_ui/text.py); default markdown
KNOWN_SETTINGS = (*DEFAULT_SETTINGS, "render")


def _check_overlap(labels_per_task: Any) -> None:
    if isinstance(labels_per_task, bool) or not isinstance(labels_per_task, int) or labels_per_task < 1:
        raise InputError(f"labels_per_task must be a whole number >= 1, not {labels_per_task!r}",
                         field="labels_per_task")


def check_settings(settings: Any) -> dict[str, Any]:
    """The settings, each known one of the right type and range. A bad value is refused here, naming the
    setting, instead of failing later at an annotator's submit (`min_demonstration_chars: "abc"` did)."""
    if not isinstance(settings, dict):
        raise InputError(f"settings must be a mapping of setting name to value, not {type(settings).__name__}",
                         field="settings")
    for key, value in settings.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "min_demonstration_chars":
            top = size_limit("demonstration")  # a longer minimum would refuse every demonstration
            if not (number and math.isfinite(value) and value == int(value) and 1 <= value <= top):
                raise InputError(f"min_demonstration_chars must be a whole number of characters from 1 to {top:,} "
                                 f"(the demonstration size limit), not {value!r}", field=key)
        elif key == "revision_window_hours":
            if not (number and math.isfinite(value) and value >= 0):
                raise InputError(f"revision_window_hours must be a number of hours >= 0, not {value!r}", field=key)
        elif key == "render":
            if value not in RENDERS:
                raise InputError(f"render must be one of {', '.join(RENDERS)}, not {value!r}", field=key)
        else:
            raise InputError(f"unknown project setting {key!r} (known: {', '.join(KNOWN_SETTINGS)})", field=key)
    return {k: int(v) if k == "min_demonstration_chars" else v for k, v in settings.items()}


def create_project(session: Session, name: str, *, guidelines: str = "", labels_per_task: int = 1,
                   settings: dict[str, Any] | None = None, actor_id: int | None = None) -> Project:
    """A new project. `actor_id`: the acting user (admins only; None is the command line)."""
    audit.require_admin(session, actor_id, "creating projects")
    name = (name or "").strip()
    if not name:
        raise InputError("project name is empty", field="name")
    _check_overlap(labels_per_task)
    settings = check_settings(settings or {})
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise ServiceError(f"project {name!r} already exists")
    project = Project(name=name, guidelines=guidelines, labels_per_task=labels_per_task,
                      settings={**DEFAULT_SETTINGS, **settings})
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        known = ", ".join(p.name for p in list_projects(session)) or "none"
        raise NotFound(f"unknown project {name!r} (known: {known})")
    return project


def get_project_by_id(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"no project with id {project_id}")
    return project


def ensure_project(session: Session, name: str, **kwargs: Any) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    return project if project is not None else create_project(session, name, **kwargs)


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


def update_project(session: Session, name: str, *, guidelines: str | None = None,
                   labels_per_task: int | None = None, settings: dict[str, Any] | None = None,
                   actor_id: int | None = None) -> Project:
    audit.require_admin(session, actor_id, "changing projects")
    if settings is not None:
        settings = check_settings(settings)  # before any change: bad input leaves the project as it was
    if labels_per_task is not None:
        _check_overlap(labels_per_task)
    project = get_project(session, name)
    if guidelines is not None:
        project.guidelines = guidelines
    if labels_per_task is not None and labels_per_task != project.labels_per_task:
        project.labels_per_task = labels_per_task
        # Re-decide which tasks still need labels: raising the overlap reopens finished tasks, lowering it
        # closes tasks that already have enough.
        pid, need = project.id, labels_per_task
        session.execute(update(Task).where(Task.project_id == pid, Task.status.in_(("open", "done")),
                                           Task.n_submitted >= need).values(status="done"))
        session.execute(update(Task).where(Task.project_id == pid, Task.status.in_(("open", "done")),
                                           Task.n_submitted < need).values(status="open"))
        summary.recount(session, pid)  # the Dashboard's task counts
    if settings is not None:
        project.settings = {**project.settings, **settings}
    session.flush()
    return project


def setting(project: Project, key: str) -> Any:
    return (project.settings or {}).get(key, DEFAULT_SETTINGS.get(key))
