"""Settings from environment variables, one documented default each (DESIGN.md §2).

Limits are read when they are used (not at import), so a changed variable takes effect on the next call.
"""
from __future__ import annotations

import os
from pathlib import Path

from db.services.errors import ServiceError

DEFAULT_DATABASE_URL = "sqlite:///data/instructloop.sqlite3"


def database_url() -> str:
    """`DATABASE_URL`, default a SQLite file under ./data."""
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def home() -> Path:
    """`INSTRUCTLOOP_HOME`: where runs and checkpoints go (default ./runs)."""
    return Path(os.environ.get("INSTRUCTLOOP_HOME", "runs"))


class SettingsError(ServiceError, ValueError):
    """An environment variable that cannot be used: the CLI prints it as `error: ...` (exit 2), the app shows it
    instead of a traceback."""


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name}={raw!r} must be a whole number") from None
    if value < 1:
        raise SettingsError(f"environment variable {name}={raw!r} must be at least 1")
    return value


# Size limits: what (as the refusal names it) -> (environment variable, default, unit). A value over its limit
# is refused with a message naming the limit and the variable that sets it.
SIZE_LIMITS: dict[str, tuple[str, int, str]] = {
    "prompt": ("INSTRUCTLOOP_MAX_PROMPT_CHARS", 100_000, "characters"),
    "response": ("INSTRUCTLOOP_MAX_RESPONSE_CHARS", 100_000, "characters"),
    "demonstration": ("INSTRUCTLOOP_MAX_DEMONSTRATION_CHARS", 50_000, "characters"),
    "comment": ("INSTRUCTLOOP_MAX_COMMENT_CHARS", 5_000, "characters"),
    # review notes and skip reasons share the comment limit
    "upload": ("INSTRUCTLOOP_MAX_UPLOAD_MB", 200, "MB"),
}


def size_limit(what: str) -> int:
    """The limit for `what` (a SIZE_LIMITS key), in its unit (characters; MB for "upload")."""
    env, default, _unit = SIZE_LIMITS[what]
    return _int_env(env, default)


def upload_limit_bytes() -> int:
    """`INSTRUCTLOOP_MAX_UPLOAD_MB` (default 200, Streamlit's own upload default) in bytes."""
    return size_limit("upload") * 1024 * 1024


def signin_max_failures_per_user() -> int:
    """`INSTRUCTLOOP_SIGNIN_MAX_FAILURES` (default 5): failed sign-ins of one username within the window
    after which that username must wait."""
    return _int_env("INSTRUCTLOOP_SIGNIN_MAX_FAILURES", 5)


def signin_max_failures_per_client() -> int:
    """`INSTRUCTLOOP_SIGNIN_MAX_CLIENT_FAILURES` (default 20): failed sign-ins from one client address (any
    usernames) within the window after which that client must wait."""
    return _int_env("INSTRUCTLOOP_SIGNIN_MAX_CLIENT_FAILURES", 20)


def lease_minutes() -> int:
    """`INSTRUCTLOOP_LEASE_MINUTES` (default 30): how long a handed-out task stays reserved for its annotator."""
    return _int_env("INSTRUCTLOOP_LEASE_MINUTES", 30)


def signin_window_minutes() -> int:
    """`INSTRUCTLOOP_SIGNIN_WINDOW_MINUTES` (default 15): how long a failed sign-in counts."""
    return _int_env("INSTRUCTLOOP_SIGNIN_WINDOW_MINUTES", 15)


def problems() -> list[str]:
    """What is wrong with the integer settings in the environment (empty when all can be used); the app checks
    this once per run so a bad variable is a message, not a traceback."""
    out = []
    names = [env for env, _d, _u in SIZE_LIMITS.values()] + [
        "INSTRUCTLOOP_SIGNIN_MAX_FAILURES", "INSTRUCTLOOP_SIGNIN_MAX_CLIENT_FAILURES",
        "INSTRUCTLOOP_SIGNIN_WINDOW_MINUTES", "INSTRUCTLOOP_LEASE_MINUTES"]
    for name in names:
        try:
            _int_env(name, 1)
        except SettingsError as e:
            out.append(str(e))
    return out
