from __future__ import annotations

import pytest

from db.models import User
from db.services import accounts, projects, registry
from db.services.errors import InputError, NotFound, ServiceError


def test_create_and_authenticate(session):
    u = accounts.create_user(session, "alice", "correct horse", role="admin")
    session.commit()
    assert u.password_hash.startswith("scrypt$") and "correct horse" not in u.password_hash
    assert accounts.authenticate(session, "alice", "correct horse").id == u.id
    assert accounts.authenticate(session, "alice", "wrong password") is None
    assert accounts.authenticate(session, "nobody", "correct horse") is None


def test_deactivate_and_password_reset(session):
    accounts.create_user(session, "bob", "password-1")
    accounts.deactivate(session, "bob")
    assert accounts.authenticate(session, "bob", "password-1") is None
    accounts.set_active(session, "bob", True)
    accounts.set_password(session, "bob", "password-2")
    assert accounts.authenticate(session, "bob", "password-1") is None
    assert accounts.authenticate(session, "bob", "password-2") is not None


def test_bad_users(session):
    accounts.create_user(session, "carol", "password-1")
    with pytest.raises(ServiceError, match="already exists"):
        accounts.create_user(session, "carol", "password-1")
    with pytest.raises(InputError, match="password"):
        accounts.create_user(session, "dave", "short")
    with pytest.raises(InputError, match="role"):
        accounts.create_user(session, "erin", "password-1", role="root")
    with pytest.raises(InputError, match="username"):
        accounts.create_user(session, "bad name!", "password-1")
    with pytest.raises(NotFound):
        accounts.set_password(session, "ghost", "password-1")


def test_system_users_cannot_sign_in(session):
    u = accounts.system_user(session, "import:hh")
    assert accounts.system_user(session, "import:hh").id == u.id
    assert accounts.authenticate(session, "import:hh", "") is None
    assert all(x.username != "import:hh" for x in accounts.list_users(session))


def test_oidc_identity_mapping(session):
    accounts.create_user(session, "ann@example.org", None)
    u = accounts.user_for_identity(session, "sub-123", email="ann@example.org", name="Ann", email_verified=True)
    assert u is not None and u.external_id == "sub-123"
    assert accounts.user_for_identity(session, "sub-123").id == u.id
    assert accounts.user_for_identity(session, "sub-999", email="stranger@example.org") is None


def test_projects_and_registry(session):
    p = projects.create_project(session, "p1", guidelines="# Be kind", labels_per_task=3)
    assert projects.get_project(session, "p1").labels_per_task == 3
    with pytest.raises(NotFound, match="unknown project 'nope'"):
        projects.get_project(session, "nope")
    with pytest.raises(ServiceError):
        projects.create_project(session, "p1")
    projects.update_project(session, "p1", guidelines="new", settings={"min_demonstration_chars": 5})
    assert p.guidelines == "new" and projects.setting(p, "min_demonstration_chars") == 5
    base = registry.register_model_version(session, "base-1", "base", "/ckpt/base")
    sft = registry.register_model_version(session, "sft-1", "sft", "/ckpt/sft", parent="base-1",
                                          label_snapshot={"demonstrations": [1, 2]})
    assert [m.name for m in registry.lineage(session, "sft-1")] == ["sft-1", "base-1"]
    assert registry.resolve(session, "/ckpt/base").id == base.id
    assert registry.resolve(session, sft.id).name == "sft-1"
    with pytest.raises(InputError):
        registry.register_model_version(session, "x", "weird", "")
    session.commit()
    assert session.query(User).count() == 0


@pytest.mark.parametrize("settings, field, says", [
    ({"min_demonstration_chars": "abc"}, "min_demonstration_chars", "whole number"),
    ({"min_demonstration_chars": 0}, "min_demonstration_chars", "from 1 to 50,000"),
    ({"min_demonstration_chars": 2.5}, "min_demonstration_chars", "whole number"),
    ({"min_demonstration_chars": float("inf")}, "min_demonstration_chars", "whole number"),
    ({"min_demonstration_chars": True}, "min_demonstration_chars", "whole number"),
    ({"min_demonstration_chars": 50_001}, "min_demonstration_chars", "size limit"),
    ({"revision_window_hours": -1}, "revision_window_hours", ">= 0"),
    ({"revision_window_hours": float("nan")}, "revision_window_hours", ">= 0"),
    ({"revision_window_hours": "24"}, "revision_window_hours", ">= 0"),
    ({"render": "html"}, "render", "markdown, plain"),
    ({"min_demonstartion_chars": 5}, "min_demonstartion_chars", "unknown project setting"),
])
def test_bad_project_settings_are_refused_naming_the_setting(session, settings, field, says):
    """A bad setting is refused when it is set (it used to fail later, at an annotator's submit), and a refused
    update changes nothing of the project."""
    with pytest.raises(InputError, match=says) as e:
        projects.create_project(session, "bad", settings=settings)
    assert e.value.field == field
    p = projects.create_project(session, "good", guidelines="old", labels_per_task=2)
    with pytest.raises(InputError, match=says):
        projects.update_project(session, "good", guidelines="new", labels_per_task=3, settings=settings)
    assert (p.guidelines, p.labels_per_task, p.settings) == ("old", 2, projects.DEFAULT_SETTINGS)


def test_good_project_settings_and_overlap_checks(session):
    p = projects.create_project(session, "ok", settings={"min_demonstration_chars": 5.0, "render": "plain",
                                                        "revision_window_hours": 0.5})
    assert p.settings == {"min_demonstration_chars": 5, "revision_window_hours": 0.5, "render": "plain"}
    assert type(p.settings["min_demonstration_chars"]) is int
    for bad in (0, "2", 1.5, True):
        with pytest.raises(InputError, match="labels_per_task must be a whole number >= 1") as e:
            projects.create_project(session, "lpt", labels_per_task=bad)
        assert e.value.field == "labels_per_task"
    with pytest.raises(InputError, match="settings must be a mapping"):
        projects.update_project(session, "ok", settings=["render", "plain"])


def test_oidc_never_takes_over_a_password_account(session):
    accounts.create_user(session, "boss@example.org", "password-1", role="admin")
    accounts.create_user(session, "sso@example.org", None)
    # Unverified email, or an account with a password: no link.
    assert accounts.user_for_identity(session, "sub-1", email="sso@example.org", email_verified=False) is None
    assert accounts.user_for_identity(session, "sub-2", email="boss@example.org", email_verified=True) is None
    assert accounts.user_for_identity(session, "sub-3", email="sso@example.org", email_verified=True) is not None


def test_get_or_register_when_another_process_inserts_the_same_name_first(session, monkeypatch):
    """Both processes saw no row; the second insert hits the unique name and gets the first one's row."""
    first = registry.register_model_version(session, "ext-model", "external", "/models/x")
    session.commit()
    real, seen = session.scalar, {"n": 0}

    def blind_twice(q, *a, **kw):  # the lookups made before the other process's row was visible
        seen["n"] += 1
        return None if seen["n"] <= 2 else real(q, *a, **kw)

    monkeypatch.setattr(session, "scalar", blind_twice)
    got = registry.get_or_register(session, "ext-model", "external", "/models/x")
    monkeypatch.undo()
    assert got.id == first.id
    session.commit()  # the session is still usable: only the savepoint was rolled back
    assert len(registry.list_versions(session)) == 1
