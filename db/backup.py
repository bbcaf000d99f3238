"""`python -m db backup FILE` / `python -m db restore FILE`: a whole database to one file and back.

- SQLite: the online backup API (sqlite3.Connection.backup), a consistent copy even while the app writes;
  the file is itself a SQLite database.
- PostgreSQL: `pg_dump --format=custom` of the schema the tables live in, restored with `pg_restore
  --single-transaction` (all of it or nothing). The client programs must be at least the server's major version:
  Debian keeps one per version under /usr/lib/postgresql/<major>/bin, and the server's own is used when there.

A backup is written to a temporary file beside FILE and renamed into place, so a failed or killed backup never
leaves a half file under the name. Restore refuses a database that already has tables unless `force`, and a
backup made by a newer InstructLoop (a schema revision this code does not know). Passwords go to the client
programs through PGPASSWORD, never on their command line.
"""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url

from db.services.errors import ServiceError

SQLITE_MAGIC = b"SQLite format 3\x00"
PGDUMP_MAGIC = b"PGDMP"


@dataclass
class BackupInfo:
    path: Path
    backend: str
    revision: str | None
    tables: int
    audit_note: str = ""  # restore: whether the restored database's audit log records it, and if not why


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise ServiceError(f"{_shown(url)}: an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database)


def _tmp_beside(dest: Path) -> Path:
    if not dest.parent.is_dir():
        raise ServiceError(f"{dest}: folder {dest.parent} does not exist")
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    return Path(name)


def _revision_of_sqlite(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


def _check_revision(rev: str | None, where: str) -> None:
    from db.migrate import known_revision

    if rev is None:
        raise ServiceError(f"{where} is not an InstructLoop database (no schema revision in it)")
    if not known_revision(rev):
        raise ServiceError(f"{where} is at schema revision {rev}, which this InstructLoop does not know: it was "
                           "made by a newer version; restore it with that version")


# ------------------------------------------------------------------ PostgreSQL client programs

def _pg_env(url: URL) -> dict[str, str]:
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    opts = url.query.get("options")
    if opts:  # e.g. -csearch_path=... : the schema the tables live in
        env["PGOPTIONS"] = opts if isinstance(opts, str) else " ".join(opts)
    for key, var in (("sslmode", "PGSSLMODE"), ("sslrootcert", "PGSSLROOTCERT")):
        if url.query.get(key):
            env[var] = str(url.query[key])
    return env


def _pg_conn_args(url: URL) -> list[str]:
    args = []
    if url.host:
        args += ["--host", url.host]
    if url.port:
        args += ["--port", str(url.port)]
    if url.username:
        args += ["--username", url.username]
    return args + ["--no-password"]


def _server_major(url: URL) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SHOW server_version_num")).scalar()) // 10000
    finally:
        engine.dispose()


def pg_program(name: str, server_major: int) -> str:
    """The server's own version of pg_dump/pg_restore when installed, else one on PATH that is new enough."""
    own = Path(f"/usr/lib/postgresql/{server_major}/bin/{name}")
    candidates = [str(own)] if own.exists() else []
    found = shutil.which(name)
    if found:
        candidates.append(found)
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}")), reverse=True)
    for prog in candidates:
        out = subprocess.run([prog, "--version"], check=False, capture_output=True, text=True).stdout
        m = re.search(r"(\d+)(?:\.\d+)?", out)
        if m and int(m.group(1)) >= server_major:
            return prog
    raise ServiceError(f"{name} for PostgreSQL {server_major} (or newer) is not installed: install the client "
                       f"(Debian: apt-get install postgresql-client-{server_major})")


def _pg_schema(url: URL) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            schema = c.execute(text("SELECT current_schema()")).scalar()
    finally:
        engine.dispose()
    if not schema:
        raise ServiceError(f"{_shown(url)}: its search_path names no schema that exists")
    return schema


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    r = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise ServiceError(f"{what} failed: " + " | ".join(msg[-5:]))


# ------------------------------------------------------------------ backup

def backup(url: str, dest: str | Path, *, force: bool = False) -> BackupInfo:
    """Write the whole database at `url` to `dest` (refuses to replace an existing file unless `force`)."""
    u = make_url(url)
    dest = Path(dest)
    if dest.exists() and not force:
        raise ServiceError(f"{dest} already exists: choose another file or pass --force to replace it")
    if dest.is_dir():
        raise ServiceError(f"{dest} is a folder: give a file name")
    tmp = _tmp_beside(dest)
    try:
        if u.get_backend_name() == "sqlite":
            src_path = _sqlite_path(u)
            if not src_path.exists():
                raise ServiceError(f"{_shown(u)}: the database file {src_path} does not exist")
            src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True)
            dst = sqlite3.connect(tmp)
            try:
                rev = _revision_of_sqlite(src)
                src.backup(dst)
                tables = dst.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            finally:
                dst.close()
                src.close()
            backend = "sqlite"
        elif u.get_backend_name() == "postgresql":
            plain = u.set(drivername="postgresql")
            major = _server_major(u)
            schema = _pg_schema(u)
            cmd = [pg_program("pg_dump", major), *_pg_conn_args(plain), "--format=custom", "--no-owner",
                   "--no-privileges", "--schema", schema, "--file", str(tmp), "--dbname", plain.database or ""]
            _run(cmd, _pg_env(plain), "pg_dump")
            engine = create_engine(u)
            try:
                with engine.connect() as c:
                    rev = c.execute(text("SELECT version_num FROM alembic_version")).scalar()
                tables = len(inspect(engine).get_table_names())
            finally:
                engine.dispose()
            backend = "postgresql"
        else:
            raise ServiceError(f"{_shown(u)}: backup supports SQLite and PostgreSQL URLs only")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return BackupInfo(dest, backend, rev, tables)


# ------------------------------------------------------------------ restore

def _kind_of(path: Path) -> str:
    if not path.is_file():
        raise ServiceError(f"{path}: no such backup file")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(SQLITE_MAGIC):
        return "sqlite"
    if head.startswith(PGDUMP_MAGIC):
        return "postgresql"
    raise ServiceError(f"{path} is not a backup made by `python -m db backup` (neither a SQLite database nor a "
                       "pg_dump custom-format archive)")


def _dump_schema(prog: str, path: Path) -> str:
    r = subprocess.run([prog, "--list", str(path)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise ServiceError(f"{path}: pg_restore cannot read it: {r.stderr.strip()}")
    for line in r.stdout.splitlines():
        m = re.match(r"^\d+; \d+ \d+ TABLE (\S+) alembic_version ", line)
        if m:
            return m.group(1)
    raise ServiceError(f"{path} is not an InstructLoop backup (it has no alembic_version table)")


def _dump_revision(prog: str, path: Path, schema: str) -> str | None:
    """The schema revision inside a custom-format dump (its alembic_version data), read without restoring."""
    r = subprocess.run([prog, "--data-only", "--schema", schema, "--table", "alembic_version", "--file", "-",
                        str(path)], check=False, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("COPY ") and "alembic_version" in line and i + 1 < len(lines):
            value = lines[i + 1].strip()
            return None if value == "\\." else value
    return None


def restore(url: str, src: str | Path, *, force: bool = False) -> BackupInfo:
    """Replace the database at `url` with the backup `src`. Refuses a database that has tables (any at all:
    an upgraded, empty schema too) unless `force`, a backup of the other backend, and a newer schema."""
    from db.session import dispose_engines

    u = make_url(url)
    src = Path(src)
    kind = _kind_of(src)
    backend = u.get_backend_name()
    if kind != backend:
        raise ServiceError(f"{src} is a {kind} backup and {_shown(u)} is a {backend} database: restore it "
                           f"into a {kind} database (export/import moves data between the two)")
    if backend == "sqlite":
        target = _sqlite_path(u)
        check = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        try:
            if check.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                raise ServiceError(f"{src} is damaged (SQLite integrity check failed): nothing was restored")
            rev = _revision_of_sqlite(check)
            _check_revision(rev, str(src))
            existing = 0
            if target.exists():
                t = sqlite3.connect(target)
                try:
                    existing = t.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
                finally:
                    t.close()
            if existing and not force:
                raise ServiceError(f"{_shown(u)} already has {existing} table(s): restoring would overwrite it. "
                                   "Pass --force to replace it, or restore into a new database")
            dispose_engines()  # pooled connections of this process would keep reading the old pages
            target.parent.mkdir(parents=True, exist_ok=True)
            dst = sqlite3.connect(target)
            try:
                check.backup(dst)  # one step: the whole destination is replaced in one write transaction
                tables = dst.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            finally:
                dst.close()
        finally:
            check.close()
        return BackupInfo(target, backend, rev, tables,
                          _record_restore(url, src, force=force, replaced=existing, revision=rev, tables=tables))

    plain = u.set(drivername="postgresql")
    major = _server_major(u)
    prog = pg_program("pg_restore", major)
    schema = _dump_schema(prog, src)
    rev = _dump_revision(prog, src, schema)
    _check_revision(rev, str(src))
    engine = create_engine(u)
    try:
        insp = inspect(engine)
        schema_exists = schema in insp.get_schema_names()
        existing = insp.get_table_names(schema=schema) if schema_exists else []
    finally:
        engine.dispose()
    if existing and not force:
        raise ServiceError(f"{_shown(u)} already has {len(existing)} table(s) in schema {schema}: restoring "
                           "would overwrite it. Pass --force to replace them, or restore into a new database")
    dispose_engines()
    cmd = [prog, *_pg_conn_args(plain), "--no-owner", "--no-privileges", "--single-transaction",
           "--exit-on-error", "--dbname", plain.database or ""]
    if existing:
        cmd += ["--clean", "--if-exists"]
    with tempfile.TemporaryDirectory() as d:
        if schema_exists:  # e.g. public: restore into it, neither create, drop nor comment on the schema itself
            listing = subprocess.run([prog, "--list", str(src)], check=True, capture_output=True, text=True).stdout
            keep = [ln for ln in listing.splitlines()
                    if not re.search(rf" (SCHEMA - {re.escape(schema)}|COMMENT - SCHEMA {re.escape(schema)}) ", ln)]
            (Path(d) / "toc").write_text("\n".join(keep) + "\n")
            cmd += ["--use-list", str(Path(d) / "toc")]
        _run(cmd + [str(src)], _pg_env(plain), "pg_restore")
    engine = create_engine(u)
    try:
        tables = len(inspect(engine).get_table_names(schema=schema))
    finally:
        engine.dispose()
    return BackupInfo(Path(src), backend, rev, tables,
                      _record_restore(url, src, force=force, replaced=len(existing), revision=rev, tables=tables))


def _record_restore(url: str, src: Path, *, force: bool, replaced: int, revision: str | None, tables: int) -> str:
    """A "db.restore" entry in the restored database's own audit log (the old log was replaced with the rest),
    so the log says when its history was swapped. Returns what to print: recorded, or why not."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.services import audit
    from db.session import session_scope

    try:
        with session_scope(url) as s:
            audit.record(s, "db.restore", target=str(src)[:300],
                         details={"file": str(src), "force": force, "replaced_tables": replaced,
                                  "revision": revision, "tables": tables})
    except (SQLAlchemyError, ServiceError) as e:  # an older schema's audit_log: upgrade first
        return (f"the restore is not in the audit log ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                "run `python -m db upgrade`")
    return "recorded in the audit log (db.restore)"
