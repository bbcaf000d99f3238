"""Roles, table-driven: every admin page and every admin service refuse an annotator; an annotator reads and
revises only their own labels; a deactivated user cannot sign in and their live session ends; sign-in failures
are rate limited per user and per client (the sign-in page shows the wait); passwords never appear in logs,
exports, `stats` or the database; admin actions land in the audit log in the change's own transaction."""
from __future__ import annotations

import ast
import datetime as dt
import json
import logging
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db.cli import main
from db.migrate import upgrade
from db.models import AuditEntry, Demonstration, Job, PreferenceLabel, Project, SignInFailure, User
from db.services import (
    accounts,
    audit,
    export,
    importers,
    jobs,
    labels,
    projects,
    registry,
    sessions,
    tasks,
)
from db.services.errors import Forbidden, NotFound
from db.session import session_factory, session_scope
from labeling_ui.seed import seed
from tests.populated import cheap_hashes, every_table_rows, populate

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "labeling_ui" / "app.py"
VIEWS = APP.parent / "views"
TIMEOUT = 60
SECRET = "Tr0ub4dor&3-never-logged"


def _literal(name: str):
    """A list assigned at the top of app.py, read without running Streamlit."""
    for node in ast.parse(APP.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node.value
    raise AssertionError(f"app.py has no {name}")


ADMIN_VIEWS = [elt.elts[0].value for elt in _literal("ADMIN_PAGES").elts]
ANNOTATOR_VIEWS = [call.args[0].right.value for call in _literal("ANNOTATOR_PAGES").elts]


def test_every_view_is_registered_with_a_role():
    assert "audit.py" in ADMIN_VIEWS
    files = {p.name for p in VIEWS.glob("*.py")}
    unregistered = files - set(ADMIN_VIEWS) - set(ANNOTATOR_VIEWS)
    assert not unregistered, f"views not in app.py's ADMIN_PAGES or ANNOTATOR_PAGES: {unregistered}"
    for f in ADMIN_VIEWS:  # each admin page stops non-admins before it reads anything
        assert 'auth.require_user("admin")' in (VIEWS / f).read_text(), f


@pytest.fixture
def seeded(sqlite_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=2, n_rank=1, n_demonstrate=1, create_tables=False)
    info["url"] = sqlite_url
    return info


def _run_as(script: Path, info: dict, username: str, role: str) -> AppTest:
    at = AppTest.from_file(str(script), default_timeout=TIMEOUT)
    at.session_state["user"] = {"id": info[f"{username}_id"], "username": username, "display_name": username,
                                "role": role}
    return at.run()


def _texts(at: AppTest) -> str:
    parts = [e.value for e in (*at.markdown, *at.subheader, *at.error, *at.warning, *at.info, *at.caption)]
    return "\n".join(map(str, parts))


def test_every_admin_page_refuses_an_annotator(seeded):
    # even one who claims the admin role in a stale session: the role comes from the database on every run
    for page, claimed in [(p, "annotator") for p in ADMIN_VIEWS] + [("users.py", "admin")]:
        at = _run_as(VIEWS / page, seeded, "alice", claimed)
        assert not at.exception, (page, [e.value for e in at.exception])
        assert "for admins only" in _texts(at), (page, claimed)
        assert not at.dataframe and not at.download_button and not at.text_area, (page, claimed)
    at = _run_as(VIEWS / "audit.py", seeded, "admin", "admin")  # the admin sees the log the seed wrote
    assert not at.exception and "for admins only" not in _texts(at)
    shown = at.dataframe[0].value
    assert {"user.create"} <= set(shown["action"]) and "alice" in set(shown["target"])
    # details read as words, not JSON
    assert shown.loc[shown["target"] == "alice", "details"].tolist() == ["role: annotator"]


# ------------------------------------------------------------------ admin services

def _service_calls(view: Path) -> set[str]:
    """`module.function` for every call of a db.services module in a view."""
    tree = ast.parse(view.read_text())
    mods = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "db.services"
            for a in n.names}
    return {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)
            and n.func.value.id in mods}


# Read-only services of admin pages: the page's admin check guards them (test above); they change nothing.
READ_ONLY = {
    "accounts.list_users", "agreement.annotator_speed", "agreement.disagreements", "agreement.preference_agreement",
    "agreement.rating_agreement",
    "audit.entries", "export.iter_preference_rows", "export.iter_rows", "export.iter_sft_rows",
    "importers.fill_hint", "importers.report_bytes", "jobs.cancel_note", "jobs.job_detail", "jobs.list_jobs",
    "labels.list_demonstrations", "leaderboard.leaderboard", "projects.list_projects", "registry.list_versions",
    "stats.labels_over_time", "stats.metrics_summary", "stats.model_versions_table", "stats.per_annotator", "stats.per_project",
    "stats.progress",
}
# The acting user's own work, open to every signed-in user as on the labeling pages (a lease on a task).
OWN_WORK = {"assignment.open_task"}


def _admin_service_calls(ctx: dict) -> dict:
    """Every service of an admin page that writes, called as ctx's actor (`actor_id` or `created_by`)."""
    a = ctx["actor"]
    prompts = b'{"prompt": "a new prompt"}\n'
    prefs = b'{"prompt": "q?", "chosen": "yes", "rejected": "no"}\n'
    oasst = (json.dumps({"message_tree_id": "t0", "prompt": {"message_id": "m0", "role": "prompter", "text": "hi?",
                         "replies": [{"message_id": "m1", "role": "assistant", "text": "one", "rank": 0},
                                     {"message_id": "m2", "role": "assistant", "text": "two", "rank": 1}]}})
             + "\n").encode()
    ratings = b'{"prompt": "r?", "completion": "sure", "label": true}\n'
    return {
        "accounts.create_user": lambda s: accounts.create_user(s, "newbie", "password-9", actor_id=a),
        "accounts.set_role": lambda s: accounts.set_role(s, "ann1", "admin", actor_id=a),
        "accounts.set_active": lambda s: accounts.set_active(s, "ann1", False, actor_id=a),
        "accounts.set_password": lambda s: accounts.set_password(s, "ann1", "password-new", actor_id=a),
        "labels.review_demonstration": lambda s: labels.review_demonstration(s, ctx["demo"], a, False, "no"),
        "export.export_bytes": lambda s: export.export_bytes(s, "raw", actor_id=a),
        "importers.import_prompts": lambda s: importers.import_prompts(s, prompts, "every-table", actor_id=a),
        "importers.import_preferences": lambda s: importers.import_preferences(s, prefs, "every-table",
                                                                               actor_id=a),
        "importers.import_oasst": lambda s: importers.import_oasst(s, oasst, "every-table", actor_id=a),
        "importers.import_ratings": lambda s: importers.import_ratings(s, ratings, "every-table", actor_id=a),
        "projects.create_project": lambda s: projects.create_project(s, "another", actor_id=a),
        "projects.update_project": lambda s: projects.update_project(s, "every-table", labels_per_task=3,
                                                                     actor_id=a),
        "tasks.create_demonstrate_tasks": lambda s: tasks.create_demonstrate_tasks(s, ctx["project"], actor_id=a),
        "registry.register_model_version": lambda s: registry.register_model_version(s, "v9", "external",
                                                                                     actor_id=a),
        "jobs.enqueue": lambda s: jobs.enqueue(s, "generate", {"project": "every-table", "models": ["sft-v1"]},
                                               created_by=a),
        "jobs.enqueue_comparisons": lambda s: jobs.enqueue_comparisons(s, "sft-v1", "every-table", created_by=a),
        "jobs.cancel": lambda s: jobs.cancel(s, ctx["job"], actor_id=a),
        # the command line's export (no page calls it, the CLI does with actor None): gated alike
        "export.export_file": lambda s: export.export_file(s, "raw", ctx["tmp"] / "raw.jsonl", actor_id=a),
    }


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch):
    cheap_hashes(monkeypatch)


def _full(url: str, tmp_path: Path) -> dict:
    upgrade(url)
    populate(url)
    with session_factory(url)() as s:
        ids = {u.username: u.id for u in s.query(User)}
        return {"url": url, "tmp": tmp_path, "ids": ids, "project": s.query(Project).one().id,
                "demo": s.query(Demonstration).first().id, "job": s.query(Job).first().id}


@pytest.fixture
def full_db(empty_db_url, tmp_path):
    """A database with a row in every table (tests/populated.py), SQLite and PostgreSQL."""
    return _full(empty_db_url, tmp_path)


@pytest.fixture
def full_sqlite(tmp_path):
    """The same on SQLite only, for checks that do not depend on the database."""
    yield _full(f"sqlite:///{tmp_path / 'full.sqlite3'}", tmp_path)
    from db.session import dispose_engines
    dispose_engines()


def test_every_admin_service_refuses_an_annotator_and_writes_nothing(full_db):
    ctx = full_db
    ctx["actor"] = ctx["ids"]["ann0"]
    calls = _admin_service_calls(ctx)
    # the table covers every service an admin page calls (a new one must be listed here or in READ_ONLY)
    used = set().union(*(_service_calls(VIEWS / f) for f in ADMIN_VIEWS))
    unlisted = used - set(calls) - READ_ONLY - OWN_WORK
    assert not unlisted, f"admin pages call services this test does not know: {sorted(unlisted)}"
    before = every_table_rows(ctx["url"])
    for call in calls.values():
        with session_scope(ctx["url"]) as s, pytest.raises(Forbidden, match="is for admins only"):
            call(s)
    after = every_table_rows(ctx["url"])
    assert after == before, f"an annotator's call changed {[t for t in before if after[t] != before[t]]}"
    # a deactivated admin is refused too
    with session_scope(ctx["url"]) as s:
        accounts.set_role(s, "gone", "admin")
    with session_scope(ctx["url"]) as s, pytest.raises(Forbidden):
        accounts.set_role(s, "ann1", "admin", actor_id=ctx["ids"]["gone"])


def test_admin_services_are_audited_in_the_same_transaction(full_db):
    ctx = full_db
    ctx["actor"] = ctx["ids"]["admin"]
    calls = _admin_service_calls(ctx)
    audited = {"accounts.create_user": "user.create", "accounts.set_role": "user.role",
               "accounts.set_active": "user.deactivate", "accounts.set_password": "user.password",
               "labels.review_demonstration": "demonstration.review", "export.export_bytes": "export",
               "export.export_file": "export", "importers.import_prompts": "import",
               "importers.import_preferences": "import", "importers.import_oasst": "import",
               "importers.import_ratings": "import"}
    for name, action in audited.items():
        with session_scope(ctx["url"]) as s:
            n = s.query(AuditEntry).count()
            calls[name](s)
            s.flush()
            new = s.query(AuditEntry).order_by(AuditEntry.id.desc()).first()
            assert s.query(AuditEntry).count() == n + 1 and new.action == action, name
            assert new.actor == "admin" and new.actor_id == ctx["ids"]["admin"]
    with session_scope(ctx["url"]) as s:
        rows = {r["action"]: r for r in reversed(audit.entries(s))}  # the newest of each
    assert rows["user.role"]["details"] == {"from": "annotator", "to": "admin"}
    assert rows["demonstration.review"]["details"]["to"] == "rejected"
    assert rows["import"]["details"]["added"] == 1
    assert rows["export"]["target"] == "raw"
    # a change that fails leaves no audit entry: the import of a file with a bad line rolls both back
    with session_scope(ctx["url"]) as s:
        n = s.query(AuditEntry).count()
    with pytest.raises(importers.InvalidRowsError), session_scope(ctx["url"]) as s:
        importers.import_prompts(s, b'{"prompt": "ok"}\n{"nope": 1}\n', "every-table", actor_id=ctx["actor"])
    with session_scope(ctx["url"]) as s:
        assert s.query(AuditEntry).count() == n
    # label revisions are audited under the annotator who revised; the command line as cli:<user>
    with session_scope(ctx["url"]) as s:
        lab = s.query(PreferenceLabel).filter_by(user_id=ctx["ids"]["ann1"]).first()
        labels.revise_preference(s, ctx["ids"]["ann1"], lab.id, "tie")
        accounts.set_role(s, "ann2", "admin")
    with session_scope(ctx["url"]) as s:
        e = audit.entries(s, limit=2)
    assert e[1]["action"] == "label.revise" and e[1]["actor"] == "ann1" and e[1]["details"]["choice"] == "tie"
    assert e[0]["action"] == "user.role" and e[0]["actor"].startswith("cli")


# ------------------------------------------------------------------ annotators see only their own labels

def test_annotator_reads_and_revises_only_their_own_labels(full_sqlite):
    url, ids = full_sqlite["url"], full_sqlite["ids"]
    with session_scope(url) as s:
        mine = labels.history(s, ids["ann0"])
        assert mine and all(_owner(s, r) == ids["ann0"] for r in mine)
        assert {r["kind"] for r in mine} >= {"compare", "rank", "rate", "demonstrate"}
        theirs = s.query(PreferenceLabel).filter_by(user_id=ids["ann1"]).first()
        demo = s.query(Demonstration).filter_by(user_id=ids["ann0"]).first()
    with session_scope(url) as s, pytest.raises(NotFound, match="of yours"):
        labels.revise_preference(s, ids["ann0"], theirs.id, "tie")
    with session_scope(url) as s, pytest.raises(NotFound, match="of yours"):
        labels.revise_demonstration(s, ids["ann1"], demo.id, "someone else's words, long enough to pass")
    with session_scope(url) as s:
        assert s.get(PreferenceLabel, theirs.id).choice == "a"


def _owner(s, row: dict) -> int:
    from db.models import Ranking, Rating
    model = {"compare": PreferenceLabel, "rank": Ranking, "rate": Rating, "demonstrate": Demonstration}[row["kind"]]
    return s.get(model, row["id"]).user_id


# ------------------------------------------------------------------ deactivation, rate limits

def test_deactivated_user_cannot_sign_in_and_their_live_session_ends(full_sqlite):
    url, ids = full_sqlite["url"], full_sqlite["ids"]
    idle = dt.timedelta(hours=1)
    with session_scope(url) as s:
        assert accounts.sign_in(s, "ann2", "password-1") is not None
        token = sessions.create_session(s, ids["ann2"], dt.timedelta(days=1))
        assert sessions.resume_session(s, token, idle).username == "ann2"
        accounts.set_active(s, "ann2", False, actor_id=ids["admin"])
    with session_scope(url) as s:
        assert sessions.resume_session(s, token, idle) is None  # the browser's next click signs it out
        assert accounts.sign_in(s, "ann2", "password-1") is None
        assert accounts.authenticate(s, "ann2", "password-1") is None


def test_sign_in_failures_rate_limited_per_user_and_per_client(full_db, monkeypatch):
    monkeypatch.setenv("INSTRUCTLOOP_SIGNIN_MAX_FAILURES", "3")
    monkeypatch.setenv("INSTRUCTLOOP_SIGNIN_MAX_CLIENT_FAILURES", "5")
    url = full_db["url"]
    t0 = dt.datetime.now(dt.UTC)
    with session_scope(url) as s:
        for i in range(3):
            assert accounts.sign_in(s, "ann0", "guess", client="10.0.0.1", now=t0 + dt.timedelta(seconds=i)) is None
        # the right password no longer helps, from any client: the username waits out the window
        with pytest.raises(accounts.TooManyAttempts, match="wait 15 minutes") as e:
            accounts.sign_in(s, "ann0", "password-1", client="10.0.0.2", now=t0 + dt.timedelta(seconds=5))
        assert 14 * 60 < e.value.retry_after <= 15 * 60
        # other users are not held up; after the window the user signs in, which clears their failures
        assert accounts.sign_in(s, "ann1", "password-1", client="10.0.0.3", now=t0) is not None
        later = t0 + dt.timedelta(minutes=15, seconds=1)
        assert accounts.sign_in(s, "ann0", "password-1", client="10.0.0.2", now=later).username == "ann0"
        assert accounts.sign_in_wait(s, "ann0", now=later) == 0
        # one client trying many usernames is stopped as a client, other clients are not
        for i, name in enumerate(["x1", "x2", "ann2", "x3", "x4"]):
            assert accounts.sign_in(s, name, "guess", client="10.9.9.9", now=later + dt.timedelta(seconds=i)) is None
        with pytest.raises(accounts.TooManyAttempts):
            accounts.sign_in(s, "ann2", "password-1", client="10.9.9.9", now=later + dt.timedelta(seconds=9))
        assert accounts.sign_in(s, "ann2", "password-1", client="10.0.0.4", now=later) is not None
        # only hashes are kept: a password typed into the username field is not stored
        accounts.sign_in(s, SECRET, "x", client="10.0.0.5", now=later)
        assert SECRET not in str([(f.username_hash, f.client) for f in s.query(SignInFailure)])


def test_sign_in_page_shows_the_wait(seeded, monkeypatch):
    monkeypatch.setenv("INSTRUCTLOOP_SIGNIN_MAX_FAILURES", "2")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    for password in ("wrong-1", "wrong-2", "password123"):
        at.text_input(key="signin_username").input("alice")
        at.text_input(key="signin_password").input(password)
        at.button[0].click().run()
    assert not at.exception
    assert "user" not in at.session_state
    assert "Too many failed sign-ins: wait 15 minutes before trying again." in [e.value for e in at.error]


# ------------------------------------------------------------------ passwords stay secret

def test_passwords_never_in_logs_exports_stats_or_database(empty_db_url, tmp_path, capsys, caplog, monkeypatch):
    url = empty_db_url
    upgrade(url)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # every statement with its parameters
    monkeypatch.setattr("getpass.getpass", lambda prompt="": SECRET)
    assert main(["--url", url, "users", "add", "root", "--role", "admin"]) == 0
    assert main(["--url", url, "users", "add", "ann"]) == 0
    assert main(["--url", url, "users", "set-password", "ann"]) == 0
    assert main(["--url", url, "projects", "create", "p"]) == 0
    with session_scope(url) as s:
        assert accounts.sign_in(s, "ann", SECRET) is not None
        assert accounts.sign_in(s, "ann", SECRET + "-wrong") is None
        accounts.set_password(s, "ann", SECRET + "2", actor_id=accounts.get_user(s, "root").id)
        hashes = [u.password_hash for u in accounts.list_users(s)]
    out_file = tmp_path / "raw.jsonl"
    for args in (["export", "raw", "--with-usernames", "-o", str(out_file)], ["stats"], ["stats", "--json"],
                 ["users", "list"], ["audit"]):
        assert main(["--url", url, *args]) == 0, args
    printed = capsys.readouterr()
    # `db audit` lists what the command line and the admin did (the passwords set, never the passwords)
    assert "cli:" in printed.out and "user.password" in printed.out and "export" in printed.out
    seen = {"logs": caplog.text, "stdout": printed.out, "stderr": printed.err,
            "export": out_file.read_text() + Path(f"{out_file}.manifest.json").read_text(),
            "database": json.dumps(every_table_rows(url), default=str).replace(hashes[0], "").replace(
                hashes[1], "")}
    assert "users" in caplog.text.lower()  # the SQL log did record the statements
    for where, text in seen.items():
        assert SECRET not in text, f"the password appears in {where}"
    for where in ("stdout", "export"):
        assert not any(h in seen[where] for h in hashes), f"a password hash appears in {where}"
