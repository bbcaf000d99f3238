"""`python -m db backup` / `restore` round-trip a database with a row in every table (SQLite and PostgreSQL),
refuse to overwrite a database that has tables without --force, and say clearly what is wrong."""
from __future__ import annotations

import sqlite3
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from db.cli import main
from db.migrate import upgrade
from db.services import accounts
from db.session import dispose_engines, session_factory
from tests.conftest import PG_URL
from tests.populated import cheap_hashes, every_table_rows, populate


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_dbs(request, tmp_path):
    """(source URL, empty target URL): two SQLite files, or two fresh PostgreSQL databases (public schema, as
    a real deployment has: restore goes into a database, not into the tests' per-test schemas)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'src.sqlite3'}", f"sqlite:///{tmp_path / 'dst.sqlite3'}"
        dispose_engines()
        return
    if not PG_URL:
        pytest.fail("no PostgreSQL: run `make test` (starts one), or set TEST_DATABASE_URL")
    names = [f"bk_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for n in names:
            c.execute(text(f'CREATE DATABASE "{n}"'))
    base = make_url(PG_URL)
    yield tuple(base.set(database=n).render_as_string(hide_password=False) for n in names)
    dispose_engines()
    with admin.connect() as c:
        for n in names:
            c.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch):
    cheap_hashes(monkeypatch)

def _without_restores(rows: dict) -> tuple[dict, list[dict]]:
    """The tables without the "db.restore" audit entries a restore adds to the restored database, and those."""
    restores = [r for r in rows["audit_log"] if r["action"] == "db.restore"]
    return {**rows, "audit_log": [r for r in rows["audit_log"] if r["action"] != "db.restore"]}, restores


def test_backup_restore_round_trip(two_dbs, tmp_path, capsys):
    src, dst = two_dbs
    upgrade(src)
    populate(src)
    before = every_table_rows(src)
    assert all(before.values()), [t for t, rows in before.items() if not rows]
    file = tmp_path / "backup.bin"
    assert main(["--url", src, "backup", str(file)]) == 0
    assert "backed up the" in capsys.readouterr().out
    assert not list(tmp_path.glob(".backup.bin.*")), "the temporary file is left behind"
    # a second backup to the same name is refused, --force replaces it
    assert main(["--url", src, "backup", str(file)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["--url", src, "backup", str(file), "--force"]) == 0

    assert main(["--url", dst, "restore", str(file)]) == 0
    assert "recorded in the audit log (db.restore)" in capsys.readouterr().out
    got, restores = _without_restores(every_table_rows(dst))
    assert got == before
    assert [(r["actor"].startswith("cli"), r["details"]["force"], r["details"]["file"]) for r in restores] == \
        [(True, False, str(file))]
    # the restored database works: new rows get fresh ids (sequences came along on PostgreSQL)
    with session_factory(dst)() as s:
        u = accounts.create_user(s, "after-restore", "password-1")
        s.commit()
        assert u.id > max(r["id"] for r in before["users"])

    # restoring over a database that has tables is refused without --force and changes nothing
    changed = every_table_rows(dst)
    capsys.readouterr()
    assert main(["--url", dst, "restore", str(file)]) == 2
    err = capsys.readouterr().err
    assert "already has" in err and "--force" in err
    assert every_table_rows(dst) == changed
    assert main(["--url", dst, "restore", str(file), "--force"]) == 0
    got, restores = _without_restores(every_table_rows(dst))
    assert got == before  # the user added after the first restore is gone again
    assert [(r["details"]["force"], r["details"]["replaced_tables"] > 0) for r in restores] == [(True, True)]


def test_restore_errors(tmp_path, capsys):
    target = f"sqlite:///{tmp_path / 'new.sqlite3'}"
    assert main(["--url", target, "restore", str(tmp_path / "missing.bin")]) == 2
    assert "no such backup file" in capsys.readouterr().err
    junk = tmp_path / "junk.bin"
    junk.write_text("not a backup\n")
    assert main(["--url", target, "restore", str(junk)]) == 2
    assert "is not a backup made by `python -m db backup`" in capsys.readouterr().err
    # a SQLite file that is no InstructLoop database, and one from a newer InstructLoop
    other = tmp_path / "other.sqlite3"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    assert main(["--url", target, "restore", str(other)]) == 2
    assert "not an InstructLoop database" in capsys.readouterr().err
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        c.execute("INSERT INTO alembic_version VALUES ('9999')")
    assert main(["--url", target, "restore", str(other)]) == 2
    assert "made by a newer version" in capsys.readouterr().err
    # a SQLite backup into a PostgreSQL URL is refused before anything connects
    assert main(["--url", "postgresql+psycopg://nobody@127.0.0.1:1/x", "restore", str(other)]) == 2
    assert "is a sqlite backup and" in capsys.readouterr().err
    assert not (tmp_path / "new.sqlite3").exists()
