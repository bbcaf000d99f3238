"""One engine/session factory for the whole project."""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.settings import database_url

_engines: dict[str, Engine] = {}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # FK enforcement is off by default in SQLite; WAL lets readers run during a write;
    # the busy timeout makes concurrent writers queue instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn) -> None:
    # pysqlite's own transaction handling is disabled (below) so that we can issue
    # BEGIN IMMEDIATE for writes: it takes the write lock up front, which makes
    # next_task's read-then-claim atomic across threads and processes.
    immediate = conn.get_execution_options().get("sqlite_immediate")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# What neither database can store as text: NUL (PostgreSQL refuses it; SQLite would keep what PostgreSQL cannot)
# and unpaired surrogates (not encodable as UTF-8, so neither driver can send them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any) -> str | None:
    if isinstance(value, str):
        m = _UNSTORABLE.search(value)
        return None if m is None else ("a NUL character (\\u0000)" if m.group() == "\x00"
                                       else f"an unpaired surrogate (\\u{ord(m.group()):04x})")
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _unstorable(v)
            if found:
                return found
    return None


@event.listens_for(Session, "before_flush")
def _refuse_unstorable_text(session: Session, _ctx: Any, _instances: Any) -> None:
    """Every row written through the ORM (a comment, a demonstration, a skip reason, a review note...) is
    checked before any SQL is sent: text that cannot be stored is refused with an InputError naming the field,
    instead of a driver error on PostgreSQL halfway through the transaction (the caller rolls it back)."""
    from sqlalchemy import inspect as sa_inspect

    from db.services.errors import InputError

    # Only what this flush writes: every column value set on a new object, and only the changed columns of a
    # dirty one (its other values were read from the database, so they are storable). Reading every column
    # through the attribute API of every pending object cost more than the flush itself on big batches.
    for objs, is_new in ((session.new, True), (session.dirty, False)):
        for obj in objs:
            state = sa_inspect(obj)
            values, changed = state.dict, (state.dict if is_new else state.committed_state)
            for key in _column_keys(state.mapper):  # in the mapper's order, so the first bad field is named
                if key in changed:
                    found = _unstorable(values.get(key))
                    if found:
                        raise InputError(f"holds {found}, which cannot be stored; remove it and try again",
                                         field=key)


_COLUMN_KEYS: dict[Any, tuple[str, ...]] = {}


def _column_keys(mapper: Any) -> tuple[str, ...]:
    keys = _COLUMN_KEYS.get(mapper)
    if keys is None:
        keys = _COLUMN_KEYS[mapper] = tuple(a.key for a in mapper.column_attrs)
    return keys


def get_engine(url: str | None = None) -> Engine:
    """Engine for `url` (default `DATABASE_URL`), cached per URL."""
    url = url or database_url()
    if url in _engines:
        return _engines[url]
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_conn, _rec):
            dbapi_conn.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    _engines[url] = engine
    return engine


def dispose_engines() -> None:
    for e in _engines.values():
        e.dispose()
    _engines.clear()
    _checked.clear()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


_checked: set[str] = set()


def require_schema(url: str | None = None) -> None:
    """Fail with a clear message on a database that was never migrated (instead of 'no such table')."""
    url = url or database_url()
    if url in _checked:
        return
    from sqlalchemy import inspect

    from db.migrate import current_revision, head_revision
    from db.services.errors import ServiceError

    shown = make_url(url).render_as_string(hide_password=True)
    if not inspect(get_engine(url)).has_table("projects"):
        raise ServiceError(f"the database {shown} has no InstructLoop tables yet: run `python -m db upgrade` "
                           "(with the same DATABASE_URL) first")
    current, head = current_revision(url), head_revision()
    if current != head:  # an older schema fails later with "no such table/column"; say why now
        from db.migrate import known_revision

        if current is not None and not known_revision(current):
            raise ServiceError(f"the database {shown} is at schema revision {current}, which this InstructLoop "
                               f"does not know (it stops at {head}): the database was upgraded by a newer "
                               "version; update InstructLoop")
        raise ServiceError(f"the database {shown} is at schema revision {current}, this InstructLoop needs "
                           f"{head}: run `python -m db upgrade` (with the same DATABASE_URL), after a backup")
    _checked.add(url)


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or dropped the connection (PostgreSQL restarting,
    a network cut, the pool exhausted), as opposed to bad input or a bug: the same call may work once it is
    back. What the services raise then: sqlalchemy's OperationalError / InterfaceError wrapping psycopg's
    (connection refused, "server closed the connection unexpectedly", AdminShutdown), with
    connection_invalidated set when a pooled connection died mid-transaction; a pool TimeoutError."""
    from sqlalchemy.exc import DBAPIError, InterfaceError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if isinstance(exc, (OperationalError, InterfaceError)):
        if type(exc.orig).__name__ in ("DeadlockDetected", "SerializationFailure"):
            return False  # a transaction conflict on a live server, not a lost connection
        module = type(exc.orig).__module__ if exc.orig is not None else ""
        if module.startswith("psycopg"):
            return True
        text_ = str(exc.orig).lower()  # SQLite: only a file that cannot be opened / read, not "no such table"
        return "unable to open" in text_ or "disk i/o" in text_
    return False


def _unavailable(e: BaseException) -> Exception:
    from db.services.errors import DatabaseUnavailable

    detail = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0][:200]
    return DatabaseUnavailable("the database is not answering (it may be restarting): try again in a moment; "
                               "a submit that was under way is never saved twice"
                               + (f" (the driver said: {detail})" if detail else ""))


@contextlib.contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error (one transaction). A database that cannot
    be reached (or drops the connection) raises DatabaseUnavailable, a ServiceError saying to try again."""
    try:
        require_schema(url)
    except Exception as e:
        if connection_lost(e):
            raise _unavailable(e) from e
        raise
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except OperationalError as e:
        with contextlib.suppress(Exception):  # the connection may be gone: rolling back cannot fail the caller
            session.rollback()
        if "locked" in str(e.orig) or "busy" in str(e.orig):  # SQLite: another write held on past busy_timeout
            from db.services.errors import ServiceError

            raise ServiceError("the database is busy with another write (a long import?): nothing was saved; "
                               "try again in a moment") from e
        if connection_lost(e):
            raise _unavailable(e) from e
        raise
    except BaseException as e:
        with contextlib.suppress(Exception):
            session.rollback()
        if connection_lost(e):
            raise _unavailable(e) from e
        raise
    finally:
        session.close()


# Which root transaction of a session has written (flushed rows or run an UPDATE/DELETE/INSERT) or was begun by
# write_transaction: write_transaction joins such a transaction instead of ending it.
_WRITES_IN = "instructloop_writes_in"


@event.listens_for(Session, "after_flush")
def _mark_flush(session: Session, _ctx) -> None:
    session.info[_WRITES_IN] = session.get_transaction()


@event.listens_for(Session, "do_orm_execute")
def _mark_dml(state) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WRITES_IN] = state.session.get_transaction()


def _has_writes(session: Session) -> bool:
    return bool(session.new or session.dirty or session.deleted) or (
        session.in_transaction() and session.info.get(_WRITES_IN) is session.get_transaction())


@contextlib.contextmanager
def write_transaction(session: Session) -> Iterator[Session]:
    """Run the block as one write transaction, composable with the caller's.

    - The session holds no writes yet (no transaction, or one that only read): the block runs in a
      transaction of its own, committed at the end and rolled back on error. A read-only transaction in
      progress is ended first (that commits nothing). SQLite: BEGIN IMMEDIATE takes the database write
      lock before the first read, so a read-then-claim cannot interleave with another writer.
      PostgreSQL: a plain transaction; callers lock rows (FOR UPDATE [SKIP LOCKED]).
    - The caller has pending or flushed writes, or is itself inside a write_transaction: the block joins
      that transaction as a SAVEPOINT. Nothing is committed here (the caller's commit or rollback
      decides); an error rolls back only the block's own work and propagates.

    So services compose: `with write_transaction(s): a(s); b(s)` is one transaction, all or nothing.
    (Writes issued on `session.connection()` directly are not seen; go through the session.)
    """
    if _has_writes(session):
        with session.begin_nested():
            yield session
        return
    if session.in_transaction():
        session.commit()  # read-only so far: nothing of the caller's is committed
    session.connection(execution_options={"sqlite_immediate": True})
    session.info[_WRITES_IN] = session.get_transaction()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
