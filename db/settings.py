"""Settings from environment variables, one documented default each (DESIGN.md §2)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATABASE_URL = "sqlite:///data/instructloop.sqlite3"


def database_url() -> str:
    """`DATABASE_URL`, default a SQLite file under ./data."""
    return os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)


def home() -> Path:
    """`INSTRUCTLOOP_HOME`: where runs and checkpoints go (default ./runs)."""
    return Path(os.environ.get("INSTRUCTLOOP_HOME", "runs"))


LEASE_MINUTES = int(os.environ.get("INSTRUCTLOOP_LEASE_MINUTES", "30"))
