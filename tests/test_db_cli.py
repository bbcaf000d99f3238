"""The admin CLI as a user runs it: exit codes, one-line errors, nothing half-written."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from db.cli import main
from db.migrate import upgrade
from db.models import Prompt
from db.session import session_factory


@pytest.fixture
def cli_url(empty_db_url):
    upgrade(empty_db_url)
    return empty_db_url


def run(url, *args, stdin=None):
    """The CLI in a real process (password prompts, exit status)."""
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "db", *args], check=False, input=stdin, capture_output=True, text=True,
                          env=env, timeout=120)


def test_full_admin_flow(cli_url, tmp_path, shared_data, capsys):
    assert main(["--url", cli_url, "projects", "create", "mt", "--labels-per-task", "2"]) == 0
    r = run(cli_url, "users", "add", "alice", "--role", "admin", "--password-stdin", stdin="s3cret-pass\n")
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout + r.stderr
    assert main(["--url", cli_url, "import", "prompts", str(shared_data / "mt_bench_questions.jsonl"),
                 "--project", "mt", "--tasks", "demonstrate"]) == 0
    assert "80 added" in capsys.readouterr().out
    assert main(["--url", cli_url, "import", "oasst", str(shared_data / "oasst_en_100_tree.jsonl"),
                 "--project", "mt"]) == 0
    out = tmp_path / "prefs.jsonl"
    assert main(["--url", cli_url, "export", "preferences", "--project", "mt", "-o", str(out)]) == 0
    assert out.exists() and json.loads(out.with_name("prefs.jsonl.manifest.json").read_text())["rows"] > 0
    assert main(["--url", cli_url, "stats"]) == 0
    text = capsys.readouterr().out
    assert "mt" in text and "import:oasst" in text
    assert main(["--url", cli_url, "users", "deactivate", "alice"]) == 0
    assert main(["--url", cli_url, "users", "list"]) == 0
    assert "False" in capsys.readouterr().out


@pytest.mark.parametrize("content,expect", [
    (b'{"prompt": "fine"}\n{"prompt": 12}\n', "bad.jsonl:2, field 'prompt'"),
    (b'{"prompt": "fine"}\nnot json\n', "bad.jsonl:2: malformed JSON"),
    (b'{"prompt": "caf\xe9"}\n', "bad.jsonl:1: not valid UTF-8"),
])
def test_bad_import_exits_nonzero_and_writes_nothing(cli_url, tmp_path, content, expect, capsys):
    assert main(["--url", cli_url, "projects", "create", "p"]) == 0
    f = tmp_path / "bad.jsonl"
    f.write_bytes(content)
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and err.count("\n") == 1
    s = session_factory(cli_url)()
    assert s.scalar(select(func.count()).select_from(Prompt)) == 0
    s.close()


def test_unknown_project_and_missing_file(cli_url, tmp_path, capsys):
    f = tmp_path / "x.jsonl"
    f.write_text('{"prompt": "a"}\n')
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "ghost"]) == 2
    assert "unknown project 'ghost'" in capsys.readouterr().err
    assert main(["--url", cli_url, "projects", "create", "p"]) == 0
    assert main(["--url", cli_url, "import", "prompts", str(tmp_path / "nope.jsonl"), "--project", "p"]) == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err


def test_help_everywhere():
    for args in (["--help"], ["users", "add", "--help"], ["import", "preferences", "--help"],
                 ["export", "preferences", "--help"], ["stats", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0


def test_password_never_from_argv():
    with pytest.raises(SystemExit) as e:
        main(["users", "add", "bob", "--password", "x"])
    assert e.value.code == 2


def test_unmigrated_database_gets_a_clear_message(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"
    assert main(["--url", url, "projects", "list"]) == 2
    err = capsys.readouterr().err
    assert "has no InstructLoop tables yet" in err and "python -m db upgrade" in err
    assert main(["--url", url, "upgrade"]) == 0
    assert main(["--url", url, "projects", "list"]) == 0


def test_database_behind_the_code_gets_a_clear_message(tmp_path, capsys):
    from db.migrate import upgrade
    from db.session import dispose_engines

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, "0001")  # as left by an older InstructLoop
    dispose_engines()
    assert main(["--url", url, "users", "list"]) == 2
    err = capsys.readouterr().err
    assert "schema revision 0001" in err and "python -m db upgrade" in err
    assert main(["--url", url, "upgrade"]) == 0
    dispose_engines()
    assert main(["--url", url, "users", "list"]) == 0


def test_import_prompts_queues_demonstrate_tasks_for_the_file_only(cli_url, tmp_path):
    from db.models import Task
    from db.services import content, projects

    assert main(["--url", cli_url, "projects", "create", "d"]) == 0
    s = session_factory(cli_url)()
    content.add_prompt(s, projects.get_project(s, "d").id, text="an older prompt, not in the file")
    s.commit()
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "first"}\n{"prompt": "second"}\n')
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "d", "--tasks", "demonstrate"]) == 0
    s.expire_all()
    assert s.scalar(select(func.count()).select_from(Task).where(Task.kind == "demonstrate")) == 2
    s.close()


def test_database_newer_than_the_code_says_so(tmp_path, capsys):
    from sqlalchemy import text

    from db.session import dispose_engines, get_engine

    url = f"sqlite:///{tmp_path / 'newer.sqlite3'}"
    upgrade(url)
    with get_engine(url).begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = '0099'"))  # as left by a newer InstructLoop
    dispose_engines()
    assert main(["--url", url, "users", "list"]) == 2
    err = capsys.readouterr().err
    assert "0099" in err and "newer version" in err and "update InstructLoop" in err


def test_sqlite_migrations_run_with_foreign_keys_off(tmp_path):
    """A batch migration rebuilds a table (copy, drop, rename); with foreign keys on, dropping `tasks` would
    cascade-delete every label. Revisions therefore run with them off, and they are on again afterwards."""
    from db.migrate import _migration_connection
    from db.session import get_engine

    url = f"sqlite:///{tmp_path / 'fk.sqlite3'}"
    with _migration_connection(url) as c:
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    with get_engine(url).connect() as c:
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _hh_with_bad_lines(tmp_path, n_good: int = 4, n_bad: int = 7):
    good = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"}
            for i in range(n_good)]
    lines = [json.dumps(r) for r in good] + [f'{{"chosen": "broken {i}' for i in range(n_bad)]
    f = tmp_path / "hh.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def _count(url, model) -> int:
    s = session_factory(url)()
    try:
        return s.scalar(select(func.count()).select_from(model))
    finally:
        s.close()


def test_import_with_bad_lines_names_the_count_the_first_few_and_the_flag(cli_url, tmp_path, capsys):
    from db.models import PreferenceLabel

    assert main(["--url", cli_url, "projects", "create", "hh"]) == 0
    f = _hh_with_bad_lines(tmp_path)
    r = run(cli_url, "import", "preferences", str(f), "--project", "hh")
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.splitlines()
    assert err[0] == f"error: {f}: 7 of 11 lines cannot be imported; nothing was imported:"
    assert err[1:6] == [f"  {f}:{i}: malformed JSON (Unterminated string starting at column 12)" for i in range(5, 10)]
    assert err[6] == "  ... and 2 more"
    assert "--skip-invalid REPORT.jsonl" in err[7] and "4 good rows" in err[7] and len(err) == 8
    assert _count(cli_url, PreferenceLabel) == 0


def test_import_skip_invalid_imports_the_good_rows_and_writes_the_report(cli_url, tmp_path, capsys):
    from db.models import PreferenceLabel

    assert main(["--url", cli_url, "projects", "create", "hh"]) == 0
    f, report = _hh_with_bad_lines(tmp_path), tmp_path / "refused.jsonl"
    r = run(cli_url, "import", "preferences", str(f), "--project", "hh", "--skip-invalid", str(report))
    assert r.returncode == 0, r.stderr
    assert f"{f}: 4 rows read, 4 added, 0 already present, 7 lines refused" in r.stdout
    assert f"7 refused line(s) written to {report}" in r.stdout
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(o["line"], o["field"]) for o in rows] == [(i, None) for i in range(5, 12)]
    assert all(o["reason"].startswith("malformed JSON") and o["text"].startswith('{"chosen": "broken') for o in rows)
    assert _count(cli_url, PreferenceLabel) == 4
    # again: nothing new, the report rewritten the same
    assert main(["--url", cli_url, "import", "preferences", str(f), "--project", "hh", "--skip-invalid",
                 str(report)]) == 0
    assert "0 added, 4 already present" in capsys.readouterr().out
    assert _count(cli_url, PreferenceLabel) == 4 and len(report.read_text().splitlines()) == 7


def test_import_skip_invalid_refusals(cli_url, tmp_path, capsys, monkeypatch):
    from db.models import PreferenceLabel
    from db.services import importers
    from db.services.errors import InputError

    assert main(["--url", cli_url, "projects", "create", "hh"]) == 0
    f = _hh_with_bad_lines(tmp_path)
    before = f.read_bytes()
    # the report must not overwrite the input, and its folder must exist
    assert main(["--url", cli_url, "import", "preferences", str(f), "--project", "hh", "--skip-invalid", str(f)]) == 2
    assert "would overwrite the file being imported" in capsys.readouterr().err and f.read_bytes() == before
    assert main(["--url", cli_url, "import", "preferences", str(f), "--project", "hh", "--skip-invalid",
                 str(tmp_path / "nope" / "r.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # every line bad: nothing to import is a failure, the report still says why
    allbad = tmp_path / "allbad.jsonl"
    allbad.write_text("nope\n[1]\n")
    rep = tmp_path / "r.jsonl"
    assert main(["--url", cli_url, "import", "preferences", str(allbad), "--project", "hh", "--skip-invalid",
                 str(rep)]) == 2
    assert "no line of" in capsys.readouterr().err and len(rep.read_text().splitlines()) == 2
    # a report that cannot be written rolls the import back

    def cannot_write(path, name, refused):
        raise InputError("cannot write the report: No space left on device", file=str(path))

    monkeypatch.setattr(importers, "write_report", cannot_write)
    assert main(["--url", cli_url, "import", "preferences", str(f), "--project", "hh", "--skip-invalid",
                 str(rep)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert _count(cli_url, PreferenceLabel) == 0


def test_import_help_explains_skip_invalid(capsys):
    for what in ("prompts", "preferences", "oasst"):
        with pytest.raises(SystemExit):
            main(["import", what, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--skip-invalid REPORT.jsonl" in out and "line, field, reason" in out and ".jsonl.gz" in out


def test_bad_setting_is_an_error_line_and_hint_counts_good_rows(cli_url, tmp_path, capsys, monkeypatch):
    assert main(["--url", cli_url, "projects", "create", "p"]) == 0
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a"}\n')
    monkeypatch.setenv("INSTRUCTLOOP_MAX_PROMPT_CHARS", "abc")
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert err == "error: environment variable INSTRUCTLOOP_MAX_PROMPT_CHARS='abc' must be a whole number\n"
    monkeypatch.delenv("INSTRUCTLOOP_MAX_PROMPT_CHARS")
    # every line bad: nothing to skip to, so no --skip-invalid suggestion; one good line: "1 good row"
    f.write_text('{"prompt": 1}\n{"prompt": 2}\n')
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert "--skip-invalid" not in err and "0 good" not in err and "Fix them and import the file again" in err
    f.write_text('{"prompt": "ok"}\n{"prompt": 2}\n')
    assert main(["--url", cli_url, "import", "prompts", str(f), "--project", "p"]) == 2
    err = capsys.readouterr().err
    assert "import the 1 good row and" in err


def _walk(parser, path=()):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_argument_has_help_and_min_agreement_is_a_share(capsys):
    from db.cli import build_parser
    missing = [(" ".join(path), a.dest) for path, a in _walk(build_parser()) if not a.help]
    assert missing == []
    for what in ("preferences", "ratings"):
        for bad in ("1.5", "-0.1", "most"):
            with pytest.raises(SystemExit) as e:
                main(["export", what, "--min-agreement", bad, "-o", "x.jsonl"])
            assert e.value.code == 2 and "--min-agreement" in capsys.readouterr().err


def test_models_list_prints_counts_blanks_and_a_short_metrics_summary(cli_url, capsys):
    from db.services import registry
    s = session_factory(cli_url)()
    base = registry.register_model_version(s, "base-v1", "base", "/m/base")
    metrics = {"eval_accuracy": 0.912345, "train_loss": 0.4, "train_runtime": 12.5, "epoch": 2.0,
               **{f"extra_{i}": i for i in range(6)}}
    registry.register_model_version(s, "rm-v1", "reward", "/m/rm", parent=base.id, metrics=metrics,
                                    label_snapshot={"preference_labels": list(range(49))})
    s.commit()
    s.close()
    assert main(["--url", cli_url, "models", "list"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "None" not in out and "<NA>" not in out and "49.0" not in out
    rm = next((line for line in out.splitlines() if line.strip().startswith("rm-v1")), out)
    assert " base-v1 " in rm and " 49 " in rm
    assert "eval_accuracy=0.9123" in rm and "(+" in rm and "train_runtime" not in rm and len(rm) < 200
    assert main(["--url", cli_url, "stats", "--json"]) == 0
    (mv,) = [m for m in json.loads(capsys.readouterr().out)["model_versions"] if m["name"] == "base-v1"]
    assert mv["trained_on_labels"] is None and mv["parent"] is None


def test_import_help_says_what_imported_labels_are(capsys):
    for what in ("preferences", "oasst", "ratings"):
        with pytest.raises(SystemExit):
            main(["import", what, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "pseudo-user" in text and "agreement figures leave them out" in text


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`python -m db stats | head`: when the reader closes the pipe the command stops without a traceback."""
    url = f"sqlite:///{tmp_path / 'pipe.sqlite3'}"
    upgrade(url)
    with session_factory(url)() as s:
        from db.services import projects
        for i in range(200):  # more output than a pipe buffer holds, so the write that fails is ours
            projects.create_project(s, f"project-{i:03d}-" + "x" * 300)
        s.commit()
    p = subprocess.Popen([sys.executable, "-m", "db", "--url", url, "stats"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "Projects"
    p.stdout.close()  # as `head -1` does once it has its line
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err
