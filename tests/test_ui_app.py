"""AppTest coverage of every page of the labeling app (streamlit.testing.v1, no browser).

Each test seeds a fresh SQLite database (labeling_ui.seed) and points the app at it through
DATABASE_URL. Signing in is exercised once through the form; other tests put the signed-in user
into session state directly (the app re-validates it against the database on every run).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from db.models import Assignment, Demonstration, PreferenceLabel, Prompt, Ranking
from db.session import session_scope
from labeling_ui.common import safe_markdown
from labeling_ui.seed import seed

APP = str(Path(__file__).resolve().parents[1] / "labeling_ui" / "app.py")
VIEWS = Path(APP).parent / "views"
TIMEOUT = 60


@pytest.fixture
def seeded(sqlite_url, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    info = seed(sqlite_url, n_compare=4, n_rank=2, n_demonstrate=2, create_tables=False)
    info["url"] = sqlite_url
    return info


def app_as(username: str | None, info: dict, role: str = "annotator", script: str = APP) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT)
    if username:
        uid = info[f"{username}_id"]
        at.session_state["user"] = {"id": uid, "username": username, "display_name": username, "role": role}
    return at.run()


def count(url: str, model) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(model))


def texts(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.subheader] + [e.value for e in at.title]
    parts += [e.value for e in at.error] + [e.value for e in at.warning] + [e.value for e in at.info]
    parts += [e.value for e in at.success] + [e.value for e in at.caption]
    return "\n".join(str(p) for p in parts)


def btn(at: AppTest, name: str):
    """A compare-page button by its name; keys end in the task id (a press for a task no longer on screen is
    dropped)."""
    return next(b for b in at.button if b.key and b.key.rsplit("_", 1)[0] == name)


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ------------------------------------------------------------------ sign-in, roles, expiry
def test_sign_in_wrong_then_right_then_sign_out(seeded):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert "Sign in" in texts(at) or at.text_input(key="signin_username")
    assert not [b for b in at.button if b.label == "Submit"]
    at.text_input(key="signin_username").input("alice")
    at.text_input(key="signin_password").input("wrong-password")
    at.button[0].click().run()
    assert "wrong password" in texts(at)
    assert "user" not in at.session_state
    at.text_input(key="signin_password").input("password123")
    at.button[0].click().run()
    no_exception(at)
    assert at.session_state["user"]["username"] == "alice"
    assert "Compare · demo" in texts(at)
    at.button(key="signout_btn").click().run()
    assert "user" not in at.session_state
    assert "You have signed out." in texts(at)
    assert "Compare · demo" not in texts(at)


def test_signed_out_sees_only_sign_in(seeded):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert at.text_input(key="signin_username") is not None
    for page in ("users", "export", "compare"):
        # The page's script is not registered while signed out: no URL reaches it (its URL path shows the
        # sign-in form instead: tests/browser checks that in a real browser).
        with pytest.raises(ValueError, match="Could not find a navigation page"):
            at.switch_page(f"views/{page}.py")
    # An admin page run directly (as if its URL were opened) refuses too.
    direct = AppTest.from_file(str(VIEWS / "users.py"), default_timeout=TIMEOUT).run()
    assert "Please sign in" in texts(direct) and "alice" not in texts(direct)


def test_annotator_refused_on_admin_pages(seeded):
    at = app_as("alice", seeded)
    for page in ("users", "export", "dashboard", "imports", "projects", "agreement", "review", "models"):
        direct = app_as("alice", seeded, script=str(VIEWS / f"{page}.py"))
        assert "for admins only" in texts(direct), page
        assert not direct.dataframe and not direct.download_button
    # Through the app, admin page files are not registered for annotators (their URLs map to a refusal).
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page("views/users.py")


def test_deactivated_user_and_idle_expiry_sign_out(seeded, monkeypatch):
    at = app_as("alice", seeded)
    assert "Compare · demo" in texts(at)
    at.session_state["_last_seen"] = time.time() - 10 * 3600
    at.run()
    assert "user" not in at.session_state
    assert "expired" in texts(at)
    at = app_as("bob", seeded)
    from db.services import accounts
    with session_scope(seeded["url"]) as s:
        accounts.deactivate(s, "bob")
    at.run()
    assert "user" not in at.session_state and "not active" in texts(at)



def test_cookie_session_resumes_idles_out_and_ends_when_revoked(seeded, monkeypatch):
    """A new Streamlit session (a reload) with the browser's cookie: resumed; a password change elsewhere or
    idle time in the database signs the open page out at its next rerun; a dead cookie is not asked again."""
    import datetime as dt

    from db.models import UISession, utcnow
    from db.services import accounts, sessions
    from labeling_ui import auth

    cookie = {"token": None}
    monkeypatch.setattr(auth, "_cookie_token", lambda: cookie["token"])
    calls = []
    real = sessions.resume_session
    monkeypatch.setattr(sessions, "resume_session", lambda *a, **k: calls.append(a[1]) or real(*a, **k))

    def reload_with(token: str) -> AppTest:
        cookie["token"] = token
        return AppTest.from_file(APP, default_timeout=TIMEOUT).run()

    with session_scope(seeded["url"]) as s:
        t1, t2 = (sessions.create_session(s, seeded["alice_id"], dt.timedelta(days=1)) for _ in range(2))
    at = reload_with(t1)
    no_exception(at)
    assert at.session_state["user"]["username"] == "alice" and "Compare · demo" in texts(at)
    with session_scope(seeded["url"]) as s:
        accounts.set_password(s, "alice", "password-2")  # e.g. an admin resets it
    at.run()  # the next click, no reload
    assert "user" not in at.session_state and "session has ended" in texts(at)
    n = len(calls)
    at.run()
    at.run()
    assert len(calls) == n  # the request's (dead) cookie is not looked up again
    assert reload_with(t2).text_input(key="signin_username") is not None  # ended too

    with session_scope(seeded["url"]) as s:
        t3 = sessions.create_session(s, seeded["bob_id"], dt.timedelta(days=1))
    at = reload_with(t3)
    assert at.session_state["user"]["username"] == "bob"
    at.session_state["_last_seen"] = time.time() - 10 * 3600  # this tab idle, but the database decides
    at.run()
    assert at.session_state["user"]["username"] == "bob"
    with session_scope(seeded["url"]) as s:
        s.query(UISession).update({"last_seen_at": utcnow() - dt.timedelta(hours=10)})
    at.run()
    assert "user" not in at.session_state and "idle too long" in texts(at)


# ------------------------------------------------------------------ compare
def _prompt_shown(at: AppTest) -> str:
    return next(m.value for m in at.markdown if "tell me about" in m.value or "Short please" in m.value)


def test_compare_submit_writes_one_label_and_shows_next(seeded):
    at = app_as("alice", seeded)
    first = _prompt_shown(at)
    # HTML in model text is escaped so it shows as text.
    assert any("\\<script>" in m.value for m in at.markdown)
    btn(at, "cmp_submit").click().run()
    assert "Pick one first" in texts(at)
    assert count(seeded["url"], PreferenceLabel) == 0
    tid = seeded["compare_task_ids"][0]
    btn(at, "btn_b").click().run()
    assert btn(at, "btn_b").proto.type == "primary"
    btn(at, "btn_strong").click().run()
    at.pills(key=f"cmp_flags_{tid}").set_value(["hallucination"]).run()
    at.text_input(key=f"cmp_comment_{tid}").input("B is right").run()
    btn(at, "cmp_submit").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        labels = s.scalars(select(PreferenceLabel)).all()
        assert len(labels) == 1
        lab = labels[0]
        assert (lab.task_id, lab.user_id, lab.choice, lab.strength) == (tid, seeded["alice_id"], "b", "strong")
        assert lab.flags == ["hallucination"] and lab.comment == "B is right"
        assert lab.seconds is not None and lab.seconds >= 0
    assert _prompt_shown(at) != first
    # the outcome is said in the header (a toast covered Response B), and the page scrolls back to the top
    assert ":green[:material/check: Saved]" in [m.value for m in at.markdown] and not at.toast
    assert any("scrollTop = 0" in h.proto.body for h in at.get("html"))


def test_compare_double_submit_writes_one_label(seeded):
    at = app_as("alice", seeded)
    tid = seeded["compare_task_ids"][0]
    view = at.session_state[f"task:compare:{seeded['project_id']}"]
    btn(at, "btn_a").click().run()
    btn(at, "cmp_submit").click().run()
    assert count(seeded["url"], PreferenceLabel) == 1
    # The old task comes back on screen (a resent request, a stale tab): it is not shown again for labelling
    at.session_state[f"task:compare:{seeded['project_id']}"] = view
    at.session_state[f"cmp_choice_{tid}"] = "a"
    at.run()
    no_exception(at)
    assert at.session_state[f"task:compare:{seeded['project_id']}"].task_id != tid
    assert f"Task #{tid} was already finished" in texts(at)
    assert count(seeded["url"], PreferenceLabel) == 1


def test_two_tabs_of_one_annotator_never_lose_an_answer_silently(seeded):
    """Both tabs show the user's leased task; tab 1 submits. Tab 2's next run moves on and says why; a second,
    different answer for the same task reaching the service is refused (the page then says NOT saved)."""
    tab1, tab2 = app_as("alice", seeded), app_as("alice", seeded)
    key = f"task:compare:{seeded['project_id']}"
    t = tab1.session_state[key].task_id
    assert tab2.session_state[key].task_id == t  # next_task hands back the lease the user holds
    btn(tab1, "btn_a").click().run()
    btn(tab1, "cmp_submit").click().run()
    assert tab1.session_state[key].task_id != t
    tab2.run()  # any interaction
    assert tab2.session_state[key].task_id != t
    assert f"Task #{t} was already finished" in texts(tab2)
    from db.services import labels
    with session_scope(seeded["url"]) as s:
        lab, created = labels.submit_preference(s, seeded["alice_id"], t, "b", strength="strong")
        assert not created and lab.choice == "a"
    assert count(seeded["url"], PreferenceLabel) == 1


def test_compare_skip_asks_why_then_history_lists_it_and_undoes_it(seeded):
    at = app_as("alice", seeded)
    tid = seeded["compare_task_ids"][0]
    key = f"task:compare:{seeded['project_id']}"
    btn(at, "cmp_skip").click().run()  # S: nothing skipped yet, a reason is asked for
    no_exception(at)
    assert at.session_state[key].task_id == tid and "Skip this task?" in texts(at)
    assert btn(at, "btn_a").proto.shortcut == ""  # 1-4 choose a reason while the panel is open
    assert not [b for b in at.button if b.key == f"cmp_submit_{tid}"]
    at.button(key=f"cmp_skipback_{tid}").click().run()  # Esc: back, still nothing skipped
    assert btn(at, "btn_a").proto.shortcut and at.button(key=f"cmp_submit_{tid}")
    btn(at, "cmp_skip").click().run()
    at.button(key=f"cmp_skipwhy_3_{tid}").click().run()  # "Other": asks for words
    at.button(key=f"cmp_skipgo_{tid}").click().run()
    assert "Say in a few words" in texts(at) and at.session_state[key].task_id == tid
    at.text_input(key=f"cmp_skip_other_{tid}").input("not my language").run()
    at.button(key=f"cmp_skipgo_{tid}").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        a = s.scalar(select(Assignment).where(Assignment.task_id == tid))
        assert a.state == "skipped" and a.skip_reason == "Other: not my language"
    assert count(seeded["url"], PreferenceLabel) == 0
    assert at.session_state[key].task_id != tid
    # My history lists the skip; undo gives the task back (it is the next one Compare shows)
    at.switch_page("views/history.py").run()
    no_exception(at)
    assert at.dataframe[0].value.iloc[0]["Your label"] == "Skipped: Other: not my language"
    at.button(key=f"hist_unskip_{tid}").click().run()
    no_exception(at)
    assert f"task #{tid} is back" in texts(at)
    with session_scope(seeded["url"]) as s:
        assert s.scalar(select(Assignment.state).where(Assignment.task_id == tid)) == "assigned"
    at.switch_page("views/compare.py").run()
    assert at.session_state[key].task_id == tid  # shown at once, before the task that was on screen


def test_skip_with_a_reason_key_and_undo_refused_once_the_task_is_full(seeded):
    at = app_as("alice", seeded)
    tid = seeded["compare_task_ids"][0]
    btn(at, "cmp_skip").click().run()
    at.button(key=f"cmp_skipwhy_2_{tid}").click().run()  # "Prompt is unclear": one step
    with session_scope(seeded["url"]) as s:
        assert s.scalar(select(Assignment.skip_reason).where(Assignment.task_id == tid)) == "Prompt is unclear"
    bob = app_as("bob", seeded)
    assert bob.session_state[f"task:compare:{seeded['project_id']}"].task_id == tid
    btn(bob, "btn_a").click().run()
    btn(bob, "cmp_submit").click().run()  # the task has its one label now
    at.switch_page("views/history.py").run()
    assert "Skipped: Prompt is unclear" in at.dataframe[0].value["Your label"].tolist()
    assert not [b for b in at.button if b.key == f"hist_unskip_{tid}"]
    assert "has all the labels it needs" in texts(at)
    from db.services import skips
    from db.services.errors import ServiceError
    with session_scope(seeded["url"]) as s, pytest.raises(ServiceError, match="cannot be undone"):
        skips.undo_skip(s, seeded["alice_id"], tid)


def test_compare_empty_state(seeded):
    at = app_as("alice", seeded)
    for _ in range(4):
        at.session_state[f"task:compare:{seeded['project_id']}"]
        btn(at, "btn_tie").click().run()
        btn(at, "cmp_submit").click().run()
    no_exception(at)
    assert count(seeded["url"], PreferenceLabel) == 4
    assert "No compare tasks left for you in this project — thanks!" in texts(at)
    # a project with no tasks at all does not thank anyone: it says none exist yet, and who adds them
    from db.services import projects
    with session_scope(seeded["url"]) as s:
        projects.create_project(s, "fresh")
    at.run()
    _pick_project(at, "fresh")
    # an annotator is told in words whom to ask; no command line they cannot run
    assert "No compare tasks in **fresh** yet" in texts(at) and "ask one to create compare tasks" in texts(at)
    assert "thanks" not in texts(at) and "python -m" not in texts(at)
    at.switch_page("views/rate.py").run()
    assert "ask one to create rate tasks" in texts(at) and "import ratings" not in texts(at)
    at.switch_page("views/demonstrate.py").run()
    assert "No demonstrate tasks in **fresh** yet" in texts(at) and "python -m" not in texts(at)
    # an admin is given the action: the generate job (rate tasks come from a model, not from importing ratings)
    admin = app_as("admin", seeded, role="admin")
    _pick_project(admin, "fresh")
    admin.switch_page("views/rate.py").run()
    assert "**Generate responses and tasks** job on the Jobs page" in texts(admin) and "--tasks rate" in texts(admin)
    assert "import ratings" not in texts(admin)


def test_a_project_whose_tasks_need_no_labels_says_so_not_thanks(seeded):
    """Compare tasks that came with their labels (an imported preference set, one label per task): an annotator
    who never saw one is not thanked for finishing them; the progress line counts in words ("1 compare task")."""
    from db.services import importers, projects
    with session_scope(seeded["url"]) as s:
        projects.create_project(s, "pairs", labels_per_task=1)
        importers.import_preferences(s, b'{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n', "pairs",
                                     filename="pairs.jsonl")
    at = app_as("alice", seeded)
    _pick_project(at, "pairs")
    no_exception(at)
    assert "No compare tasks in **pairs** need a label from you: the only one has the labels" in texts(at)
    assert "thanks" not in texts(at) and "**0** compare tasks left" in texts(at)


# ------------------------------------------------------------------ rank, demonstrate, history
def test_rank_submit_with_ties(seeded):
    at = app_as("alice", seeded)
    at.switch_page("views/rank.py").run()
    view = at.session_state[f"task:rank:{seeded['project_id']}"]
    ids = [r["id"] for r in view.responses]
    assert len(ids) >= 3
    at.button(key=f"rank_submit_{view.task_id}").click().run()
    assert "Give every response a rank" in texts(at)
    for rid, rank in zip(ids, [2, 1, 2, 3]):
        at.button_group(key=f"rank_{view.task_id}_{rid}").set_value(rank)
    at.run()
    at.button(key=f"rank_submit_{view.task_id}").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        r = s.scalars(select(Ranking)).one()
        assert r.ordering == [[ids[1]], sorted([ids[0], ids[2]]), [ids[3]]]
        assert r.seconds is not None
    assert at.session_state[f"task:rank:{seeded['project_id']}"].task_id != view.task_id


def test_rank_by_next_best_keys_then_clear(seeded):
    """The A/B/C... buttons (keyboard shortcuts) rank best first; the last response ranks itself."""
    at = app_as("alice", seeded)
    at.switch_page("views/rank.py").run()
    view = at.session_state[f"task:rank:{seeded['project_id']}"]
    tid, ids = view.task_id, [r["id"] for r in view.responses]
    assert len(ids) == 4
    rank_of = lambda: [at.button_group(key=f"rank_{tid}_{r}").value for r in ids]
    at.button(key=f"rank_next_{tid}_{ids[2]}").click().run()
    at.button(key=f"rank_next_{tid}_{ids[2]}").click().run()  # again: no change
    at.button(key=f"rank_next_{tid}_{ids[0]}").click().run()
    assert rank_of() == [2, None, 1, None]
    at.button(key=f"rank_clear_{tid}").click().run()
    assert rank_of() == [None] * 4
    for i in (3, 1, 0):
        at.button(key=f"rank_next_{tid}_{ids[i]}").click().run()
    assert rank_of() == [3, 2, 4, 1]  # C was left and took the last rank
    at.button(key=f"rank_clear_{tid}").click().run()
    at.button_group(key=f"rank_{tid}_{ids[0]}").set_value(3)  # one rank clicked by hand, then keys
    at.run()
    for i in (1, 2):
        at.button(key=f"rank_next_{tid}_{ids[i]}").click().run()
    assert rank_of() == [3, 1, 2, 4]  # the free ranks, never beyond K
    at.button(key=f"rank_submit_{tid}").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        assert s.scalars(select(Ranking)).one().ordering == [[ids[1]], [ids[2]], [ids[0]], [ids[3]]]


def test_demonstrate_validation_then_submit(seeded):
    at = app_as("alice", seeded)
    at.switch_page("views/demonstrate.py").run()
    view = at.session_state[f"task:demonstrate:{seeded['project_id']}"]
    assert "At least 20 characters: checked when you submit." in texts(at)
    at.text_area(key=f"demo_text_{view.task_id}").input("Too short").run()
    # no count drawn from the server's copy of the text (stale until the field loses focus): none is shown
    assert "characters ·" not in texts(at) and "9 characters" not in texts(at)
    at.button(key=f"demo_submit_{view.task_id}").click().run()
    # in words, not "field 'text': the demonstration has 9 characters..."
    assert [e.value for e in at.error] == ["The demonstration has 9 characters; write at least 20."]
    assert count(seeded["url"], Demonstration) == 0
    at.text_area(key=f"demo_text_{view.task_id}").input("A complete, helpful answer that is long enough.").run()
    at.button(key=f"demo_submit_{view.task_id}").click().run()
    no_exception(at)
    assert count(seeded["url"], Demonstration) == 1


def test_history_lists_and_revises(seeded):
    at = app_as("alice", seeded)
    btn(at, "btn_a").click().run()
    btn(at, "cmp_submit").click().run()
    at.switch_page("views/history.py").run()
    no_exception(at)
    table = at.dataframe[0].value
    assert table.shape[0] == 1 and table.iloc[0]["Your label"] == "A is better (clear)"
    assert "+00:00" not in table.iloc[0]["When"]  # the viewer's time, not a raw UTC offset
    at.radio(key=f"hist_choice_{_label_id(seeded, PreferenceLabel)}").set_value("b")
    next(b for b in at.button if b.label == "Save revision").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        lab = s.scalars(select(PreferenceLabel)).one()
        assert lab.choice == "b" and lab.updated_at is not None
    # the picker, the table and the form all show the new answer
    pick = next(sb for sb in at.selectbox if sb.label == "Label")
    assert "B is better (clear)" in pick.format_func(pick.value)
    assert at.dataframe[0].value.iloc[0]["Your label"] == "B is better (clear)"
    assert at.radio(key=f"hist_choice_{lab.id}").value == "b"
    # the confirmation is beside Save revision (where the annotator is looking), not above the table at the top
    done = next(e for e in at.success if e.value == "Revision saved.")
    save = next(b for b in at.button if b.label == "Save revision")
    assert _at(at, at.dataframe[0]) < _at(at, save) < _at(at, done)


def _at(at: AppTest, node) -> int:
    """`node`'s place in the page, top to bottom."""
    return next(i for i, n in enumerate(at.main) if n is node)


def test_history_says_a_skip_is_undone_where_its_button_was(seeded):
    at = app_as("alice", seeded)
    btn(at, "btn_a").click().run()
    btn(at, "cmp_submit").click().run()  # a label too, so the table stays after the undo
    tid = at.session_state[f"task:compare:{seeded['project_id']}"].task_id
    btn(at, "cmp_skip").click().run()
    at.button(key=f"cmp_skipwhy_0_{tid}").click().run()
    at.switch_page("views/history.py").run()
    assert "Skipped:" in at.dataframe[0].value.iloc[0]["Your label"]
    at.button(key=f"hist_unskip_{tid}").click().run()
    no_exception(at)
    done = next(e for e in at.success if "Skip undone" in e.value)
    heading = next(m for m in at.markdown if m.value == "#### Revise a label or undo a skip")
    assert _at(at, at.dataframe[0]) < _at(at, heading) < _at(at, done)


def _label_id(seeded: dict, model) -> int:
    with session_scope(seeded["url"]) as s:
        return s.scalar(select(model.id))


def test_history_shows_a_ranking_in_the_order_it_was_shown_and_revises_it_so(seeded):
    """The task shows its responses in an order that is not their id order: history and the revise form use the
    response numbers the annotator saw, never database ids."""
    from db.services import content, projects, tasks
    with session_scope(seeded["url"]) as s:
        p = projects.create_project(s, "ranked")
        pr, _ = content.add_prompt(s, p.id, text="Rank these.", source="test")
        r0, r1, r2 = (content.add_response(s, pr.id, f"answer {i}")[0].id for i in range(3))
        tid = tasks.create_task(s, p.id, "rank", pr.id, [r2, r0, r1], shuffle=False)[0].id
    at = app_as("alice", seeded)
    _pick_project(at, "ranked")
    at.switch_page("views/rank.py").run()
    for rid in (r0, r1):  # on screen: response 2 best, then 3, then 1
        at.button(key=f"rank_next_{tid}_{rid}").click().run()
    at.button(key=f"rank_submit_{tid}").click().run()
    with session_scope(seeded["url"]) as s:
        assert s.scalars(select(Ranking)).one().ordering == [[r0], [r1], [r2]]
    at.switch_page("views/history.py").run()
    no_exception(at)
    assert at.dataframe[0].value.iloc[0]["Your label"] == "Best first: 2 > 3 > 1"
    rid = _label_id(seeded, Ranking)
    controls = [at.button_group(key=f"hist_rank_{rid}_{x}") for x in (r2, r0, r1)]  # screen order
    assert [c.label for c in controls] == ["Rank of response 1", "Rank of response 2", "Rank of response 3"]
    assert [c.value for c in controls] == [3, 1, 2]
    shown = [m.value for m in at.markdown if m.value.startswith("answer ")]
    assert shown == ["answer 2", "answer 0", "answer 1"]  # the responses in the order they were shown
    for c, rank in zip(controls, (1, 2, 2)):
        c.set_value(rank)
    next(b for b in at.button if b.label == "Save revision").click().run()
    no_exception(at)
    with session_scope(seeded["url"]) as s:
        assert s.scalars(select(Ranking)).one().ordering == [[r2], sorted([r0, r1])]
    assert at.dataframe[0].value.iloc[0]["Your label"] == "Best first: 1 > 2 = 3"


# ------------------------------------------------------------------ admin pages
def shown_columns(df) -> list[str]:
    """A data grid's column headers as shown: the column_config label where one is given, else the name."""
    config = json.loads(df.proto.columns or "{}")
    return [config.get(str(c), {}).get("label") or str(c) for c in df.value.columns]


def test_admin_pages_render(seeded):
    alice = app_as("alice", seeded)  # one label, so the dashboard has per-annotator rows with times
    btn(alice, "btn_a").click().run()
    btn(alice, "cmp_submit").click().run()
    at = app_as("admin", seeded, role="admin")
    for page in ("dashboard", "agreement", "review", "projects", "users", "imports", "models", "jobs", "leaderboard",
                 "export", "compare", "history"):
        at.switch_page(f"views/{page}.py").run()
        no_exception(at)
        assert "for admins only" not in texts(at), page
        # column names in words, times without a raw UTC offset
        for df in at.dataframe:
            assert not [c for c in shown_columns(df) if "_" in c], (page, shown_columns(df))
            assert "+00:00" not in df.value.to_string(), page


def test_admin_import_bad_file_shows_error_and_writes_nothing(seeded):
    before = count(seeded["url"], Prompt)
    at = app_as("admin", seeded, role="admin")
    at.switch_page("views/imports.py").run()
    bad = b'{"prompt": "fine"}\n{"prompt": "also fine"}\n{"nope": 1}\n'
    at.file_uploader(key="imp_file").upload("bad.jsonl", bad, "application/jsonl").run()
    at.button(key="imp_go").click().run()
    no_exception(at)
    err = " ".join(e.value for e in at.error).replace("\u2060", "")
    # in words: the line, the field, no `bad.jsonl:3, field 'prompt':`
    assert "Line 3 of bad.jsonl:" in err and "Nothing was imported" in err and "field '" not in err, err
    assert count(seeded["url"], Prompt) == before
    good = b'{"prompt": "A brand new prompt"}\n{"prompt": "Another new prompt"}\n'
    at.file_uploader(key="imp_file").upload("good.jsonl", good, "application/jsonl").run()
    at.button(key="imp_go").click().run()
    assert not at.error and "2 added" in texts(at)
    assert count(seeded["url"], Prompt) == before + 2


def test_export_page_previews_rows_and_builds_files_only_on_download(seeded, monkeypatch):
    """Filters change the preview; the export itself runs only when a download is clicked (deferred), and the
    deferred files hold every row (the download itself is clicked in tests/browser)."""
    from db.services import export

    at = app_as("alice", seeded)
    for tid, choice in zip(seeded["compare_task_ids"][:2], ["a", "b"]):
        btn(at, f"btn_{choice}").click().run()
        btn(at, "cmp_submit").click().run()
    assert count(seeded["url"], PreferenceLabel) == 2
    built = []
    real = export.export_bytes
    monkeypatch.setattr(export, "export_bytes", lambda *a, **kw: built.append(kw) or real(*a, **kw))
    admin = app_as("admin", seeded, role="admin")
    admin.switch_page("views/export.py").run()
    no_exception(admin)
    rows = [json.loads(j.proto.body) for j in admin.json]
    assert len(rows) == 2 and {"prompt", "chosen", "rejected"} <= set(rows[0])
    admin.selectbox(key="exp_fmt").set_value("hh").run()
    rows = [json.loads(j.proto.body) for j in admin.json]
    assert rows[0]["chosen"].startswith("\n\nHuman:")
    admin.radio(key="exp_kind").set_value("raw").run()
    no_exception(admin)
    assert len(admin.json) == 2 and built == []  # three reruns, no full export built


def test_admin_users_create_and_deactivate(seeded):
    at = app_as("admin", seeded, role="admin")
    at.switch_page("views/users.py").run()
    form_inputs = at.text_input
    form_inputs[0].input("carol")
    form_inputs[1].input("Carol")
    form_inputs[2].input("short")
    next(b for b in at.button if b.label == "Create user").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "Password must have at least 8" in errors and "field '" not in errors  # words, not code
    # what was typed is still there
    assert [at.text_input(key=k).value for k in ("nu_username", "nu_display")] == ["carol", "Carol"]
    at.text_input(key="nu_password").input("long-enough-pw")
    next(b for b in at.button if b.label == "Create user").click().run()
    no_exception(at)
    from db.services import accounts
    with session_scope(seeded["url"]) as s:
        assert accounts.authenticate(s, "carol", "long-enough-pw") is not None
    assert at.text_input(key="nu_username").value == ""  # cleared once created


def test_errors_read_as_words_next_to_their_field_on_projects_and_jobs(seeded):
    at = app_as("admin", seeded, role="admin")
    at.switch_page("views/projects.py").run()
    at.text_area(key="np_guide").input("Be kind.")  # typed, then a nameless project
    next(b for b in at.button if b.label == "Create project").click().run()
    no_exception(at)
    (err,) = [e.value for e in at.error]
    assert err == "Project name is empty."
    assert at.text_area(key="np_guide").value == "Be kind."  # kept after the error
    at.text_input(key="np_name").input("demo")  # a taken name: under the name too
    next(b for b in at.button if b.label == "Create project").click().run()
    assert [e.value for e in at.error] == ["Project 'demo' already exists."]
    at.switch_page("views/jobs.py").run()
    next(t for t in at.text_area if (t.key or "").startswith("job_adv_")).input("output_dir: /tmp/x")
    next(b for b in at.button if b.label == "Queue job").click().run()
    no_exception(at)
    (err,) = [e.value for e in at.error]
    assert err.startswith("Output dir is set by the worker") and "field '" not in err, err


def test_sidebar_says_a_name_once_when_it_is_the_role(seeded):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["user"] = {"id": seeded["bob_id"], "username": "bob", "display_name": "annotator",
                                "role": "annotator"}
    at.run()
    side = "\n".join(m.value for m in at.sidebar.markdown)
    assert "annotator" in side and side.count("annotator") == 1, side  # not "annotator / annotator"
    alice = app_as("alice", seeded)
    assert ":gray[annotator]" in "\n".join(m.value for m in alice.sidebar.markdown)  # a name and its role


def test_make_app_prints_the_url_last_once_the_app_answers(tmp_path):
    """`make app` (and so `make demo`): Streamlit's banner (offline: "Did not auto detect external IP ... debugging
    hints") is off, and the URL is the last thing printed, once the app answers."""
    import os
    import selectors
    import signal
    import subprocess

    from labeling_ui.devserver import ROOT, free_port

    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'app.sqlite3'}", "INSTRUCTLOOP_HOME": str(tmp_path)}
    proc = subprocess.Popen(["make", "--no-print-directory", "app", "SIGN_IN=1", f"PORT={port}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        deadline, quiet_until = time.time() + 120, None
        while time.time() < (quiet_until or deadline):
            # after the banner, 3 s more: nothing else (the worker starting, say) may print below it
            if not sel.select(timeout=0.5):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Ctrl-C stops" in line:
                quiet_until = time.time() + 3
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    text = "".join(out)
    assert "Ctrl-C stops the app and the worker." in text, text
    tail = text[text.index("InstructLoop is up"):]
    assert f"http://localhost:{port}" in tail and "admin / admin-pass" in tail and "annotator / annotator-pass" in tail
    assert tail.rstrip().endswith("Ctrl-C stops the app and the worker."), tail  # last
    assert "external IP" not in text and "You can now view" not in text, text
    assert (tmp_path / "worker.log").exists()


def test_review_accept(seeded):
    at = app_as("alice", seeded)
    at.switch_page("views/demonstrate.py").run()
    view = at.session_state[f"task:demonstrate:{seeded['project_id']}"]
    at.text_area(key=f"demo_text_{view.task_id}").input("A complete, helpful answer that is long enough.").run()
    at.button(key=f"demo_submit_{view.task_id}").click().run()
    admin = app_as("admin", seeded, role="admin")
    admin.switch_page("views/review.py").run()
    with session_scope(seeded["url"]) as s:
        did = s.scalars(select(Demonstration)).one().id
    admin.text_input(key=f"note_{did}").input("great")
    admin.button(key=f"accept_{did}").click().run()
    no_exception(admin)
    with session_scope(seeded["url"]) as s:
        d = s.scalars(select(Demonstration)).one()
        assert d.status == "accepted" and d.review_note == "great"


# ------------------------------------------------------------------ text safety
def test_safe_markdown_escapes_html_outside_code():
    src = "Hi <script>alert(1)</script> $5\n\n```html\n<b>code</b>\n```\nand `<i>` inline"
    out = safe_markdown(src)
    assert "\\<script>" in out and "\\$5" in out
    assert "```html\n<b>code</b>\n```" in out and "`<i>`" in out
    # nothing that loads, links, hides or fakes the UI: images, links, maths after a backslash, colours, icons
    assert safe_markdown("![x](http://e/x.png) [click](http://p)") == "!\\[x](http://e/x.png) \\[click](http://p)"
    assert safe_markdown(r"costs \$5") == r"costs \\\$5"  # shows \$5, no math
    assert safe_markdown(":red[hidden] :material/home:") == r"\:red\[hidden] \:material\/home:"
    # a bare URL is no link either (GFM would autolink it): a word joiner after the scheme, the text unchanged
    assert safe_markdown("see https://example.com/a") == "see https\u2060://example.com/a"
    # a fence closed by a longer fence ends there: what follows is prose again
    assert safe_markdown("```\ncode $x$\n````\nafter $y$") == "```\ncode $x$\n````\nafter \\$y\\$"


# What an annotator sees must be what the model wrote (issue 14): the characters of text that is not Markdown
# formatting survive the renderer. The browser test compares the painted text with the stored text.
TRICKY = (">>> import os\n>>> os.getcwd()\n'/home'\n-\nroses are red\nviolets are blue\n    indented\n"
          "1. first\n7. seventh\n# not a heading\n---\n__init__ 2*3*4 x &amp; y :smile: a -> b -- c")


def test_safe_markdown_keeps_what_the_model_wrote():
    out = safe_markdown(TRICKY)
    lines = out.split("\n")
    assert lines[0] == "\\>>> import os"  # no blockquote that eats the >>>
    assert lines[3] == "\\-"  # no empty bullet, no setext heading of the line above
    assert lines[6] == "\u2060    indented"  # indentation kept (no code block, no stripped continuation)
    assert lines[7:9] == ["1\\. first", "7\\. seventh"]  # no renumbered list
    assert lines[9] == "\\# not a heading" and lines[10] == "\\---"
    assert "\\_\\_init\\_\\_" in out and "2\\*3\\*4" in out and "\\&amp;" in out
    assert ":\u2060smile:" in out and "-\u2060>" in out and "-\u2060-" in out  # no emoji, arrow or dash
    assert safe_markdown("trailing  \nnext") == "trailing  \u2060\nnext"  # no hard break, spaces kept
    # Real formatting still renders: bold, code fences and spans are left alone.
    real = "**Answer.** About it:\n```python\n>>> x = 1\n```\nuse `a -> b`"
    assert safe_markdown(real) == real
    # A "- " line keeps its "-" (a list would show a bullet glyph instead), and a run of blank lines stays that
    # many lines (Markdown merges it into one paragraph break): each blank line holds a word joiner. Blank lines
    # next to a code fence stay paragraph breaks.
    assert safe_markdown("Steps:\n- a dash line\n* star\n+ plus\n*emphasis* stays") == (
        "Steps:\n\\- a dash line\n\\* star\n\\+ plus\n*emphasis* stays")
    assert safe_markdown("one\n\n\nfour") == "one\n\u2060\n\u2060\nfour"
    # ... except beside a table, which must start its own block and end at a blank line (else no table renders,
    # or the filled line reads as one more row)
    table = "Scores:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter"
    assert safe_markdown(table).split("\n")[1] == "" and safe_markdown(table).split("\n")[5] == ""
    # bold closed right after a word still closes (its stars were escaped as intraword: "*bold*" showed)
    assert safe_markdown("a **bold** word, 2**3") == "a **bold** word, 2\\*\\*3"
    assert safe_markdown("a\n\n```\nx\n\n\ny\n```\n\nb") == "a\n\n```\nx\n\n\ny\n```\n\nb"
    # Nothing but the joiners is added: removing them and the escapes gives the text back.
    import re
    assert re.sub(r"\\(.)", r"\1", safe_markdown(TRICKY).replace("\u2060", "")) == TRICKY


def _project_with_pair(url: str, name: str, a: str, b: str, settings: dict | None = None) -> int:
    from db.services import content, projects, tasks
    with session_scope(url) as s:
        p = projects.create_project(s, name, settings=settings)
        pr, _ = content.add_prompt(s, p.id, text="Say it exactly.", source="test")
        ids = [content.add_response(s, pr.id, t)[0].id for t in (a, b)]
        return tasks.create_task(s, p.id, "compare", pr.id, ids, shuffle=False)[0].id


def _pick_project(at: AppTest, name: str) -> None:
    next(sb for sb in at.sidebar.selectbox if sb.label == "Project").select(name).run()


def test_compare_raw_toggle_plain_projects_and_empty_responses(seeded):
    tid = _project_with_pair(seeded["url"], "exact", TRICKY, "")
    at = app_as("alice", seeded)
    _pick_project(at, "exact")
    no_exception(at)
    md = [m.value for m in at.markdown]
    assert safe_markdown(TRICKY) in md
    assert any("(empty response)" in m for m in md)  # a badge, not a blank pane
    assert not at.code
    at.toggle(key=f"raw_{tid}_A").set_value(True).run()
    assert [c.value for c in at.code] == [TRICKY]  # the raw source, character for character
    assert safe_markdown(TRICKY) not in [m.value for m in at.markdown]
    # A project set to plain shows the text as it is, no Markdown at all.
    tid2 = _project_with_pair(seeded["url"], "plain", "**not bold**\n>>> x", "B", settings={"render": "plain"})
    at.run()
    _pick_project(at, "plain")
    assert "**not bold**\n>>> x" in [t.value for t in at.text]
    assert at.session_state[f"task:compare:{_pid(seeded, 'plain')}"].task_id == tid2


def _pid(seeded: dict, name: str) -> int:
    from db.services import projects
    with session_scope(seeded["url"]) as s:
        return projects.get_project(s, name).id


def test_projects_page_sets_the_render_mode(seeded):
    at = app_as("admin", seeded, role="admin")
    at.switch_page("views/projects.py").run()
    at.radio(key=f"proj_render_{seeded['project_id']}").set_value("plain")
    next(b for b in at.button if b.label == "Save").click().run()
    no_exception(at)
    from db.services import projects
    with session_scope(seeded["url"]) as s:
        assert projects.get_project(s, "demo").settings["render"] == "plain"


def test_agreement_page_with_overlap(seeded):
    from db.services import projects
    with session_scope(seeded["url"]) as s:
        projects.update_project(s, "demo", labels_per_task=2)
    for who, choices in (("alice", ["a", "b", "a"]), ("bob", ["a", "a", "a"])):
        at = app_as(who, seeded)
        for c in choices:
            btn(at, f"btn_{c}").click().run()
            btn(at, "cmp_submit").click().run()
    assert count(seeded["url"], PreferenceLabel) == 6
    admin = app_as("admin", seeded, role="admin")
    admin.switch_page("views/agreement.py").run()
    no_exception(admin)
    metrics = {m.label: m.value for m in admin.metric}
    assert metrics["Items with ≥ 2 labels"] == "3"
    assert metrics["Percent agreement"] == "67%"
    dis = next(d.value for d in admin.dataframe if "majority" in d.value.columns)
    assert len(dis) == 1 and "alice: B is better" in dis.iloc[0]["labels"]  # in words, not "alice: b"
    tid = int(dis.iloc[0]["task"].split("=")[1])
    assert dis.iloc[0]["task"] == f"agreement?task={tid}"  # a link to the task
    # Cohen's kappa is a plain table (never cut off) with its columns in words
    (pairs,) = admin.table
    assert list(pairs.value.columns) == ["other annotator", "shared items", "agreement", "Cohen's kappa"]
    assert not [c for df in admin.dataframe for c in shown_columns(df) if "_" in c]  # no snake_case column
    # the link opens that task on the page: prompt, both responses as shown, the labels in words
    admin.query_params["task"] = str(tid)
    admin.run()
    no_exception(admin)
    assert f"Task #{tid} · compare" in texts(admin) and "**Response B**" in texts(admin)
    assert "alice: B is better" in texts(admin)


def test_agreement_page_says_why_it_is_empty_with_one_annotator(seeded):
    at = app_as("alice", seeded)
    btn(at, "btn_a").click().run()
    btn(at, "cmp_submit").click().run()
    admin = app_as("admin", seeded, role="admin")
    admin.switch_page("views/agreement.py").run()
    no_exception(admin)
    (info,) = [i.value for i in admin.info]
    assert "labels per task = 1" in info and "only one annotator has labelled a compare or rank task here (alice)" in info
    assert "Projects page" in info and "Users page" in info  # how to get figures
    assert not admin.table  # no empty tables beside the explanation


def test_oidc_identity_maps_to_user_row(seeded):
    """With an [auth] section, a st.login identity with a verified email signs in the password-less user
    whose username is that email."""
    from db.services import accounts
    with session_scope(seeded["url"]) as s:
        accounts.create_user(s, "carol@example.com", None, display_name="carol@example.com")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.secrets["auth"] = {"redirect_uri": "http://localhost/oauth2callback", "cookie_secret": "x" * 32,
                          "client_id": "id", "client_secret": "secret",
                          "server_metadata_url": "https://idp.example/.well-known/openid-configuration"}
    at.user = {"is_logged_in": False}
    at.run()
    assert [b for b in at.button if "organisation" in b.label], "OIDC sign-in button missing"
    # An unverified email never links to an account.
    at.user = {"is_logged_in": True, "sub": "idp|42", "email": "carol@example.com", "name": "Carol",
               "email_verified": False}
    at.run()
    assert "user" not in at.session_state and "not linked" in texts(at)
    at.user = {"is_logged_in": True, "sub": "idp|42", "email": "carol@example.com", "name": "Carol",
               "email_verified": True}
    at.run()
    no_exception(at)
    assert at.session_state["user"]["username"] == "carol@example.com"
    assert "Compare · demo" in texts(at)
    with session_scope(seeded["url"]) as s:
        assert accounts.get_user(s, "carol@example.com").external_id == "idp|42"
    # An identity with no account gets a clear refusal, not a page.
    other = AppTest.from_file(APP, default_timeout=TIMEOUT)
    other.secrets["auth"] = at.secrets["auth"]
    other.user = {"is_logged_in": True, "sub": "idp|99", "email": "mallory@example.com"}
    other.run()
    assert "user" not in other.session_state and "not linked" in texts(other)


def test_project_choice_survives_a_visit_to_an_admin_page(seeded):
    from db.services import projects
    with session_scope(seeded["url"]) as s:
        projects.create_project(s, "second")
    at = app_as("admin", seeded, role="admin")
    pick = next(sb for sb in at.sidebar.selectbox if sb.label == "Project")
    second = next(o for o in pick.options if o == "second")
    pick.select(second).run()
    assert "Compare · second" in texts(at)
    at.switch_page("views/users.py").run()  # no project picker there: Streamlit drops the widget's state
    at.switch_page("views/compare.py").run()
    no_exception(at)
    assert "Compare · second" in texts(at)


def test_model_versions_page_reads_as_words(seeded):
    """A dash, not "None", for a missing parent / label count; RM-judged scores as a sentence, not a raw dict."""
    from db.services import leaderboard, registry

    with session_scope(seeded["url"]) as s:
        leaderboard.record_rm_scores(s, "demo", "rm-x", {"sft-v1": {"score": -2.734, "responses": 60}})
        registry.update_metrics(s, "sft-v1", {"eval_loss": 0.5})
    at = app_as("admin", seeded, role="admin")
    at.switch_page("views/models.py").run()
    no_exception(at)
    (df,) = at.dataframe
    import pyarrow as pa

    shown = pa.ipc.open_stream(df.proto.arrow_data.styler.display_values).read_pandas()
    shown.columns = list(df.value.columns)
    shown = shown.set_index("name")
    assert (shown.loc["base-v1", "parent"], shown.loc["base-v1", "trained on labels"]) == ("—", "—")
    assert shown.loc["sft-v1", "metrics"] == "RM-judged in demo: -2.73 by rm-x (60 responses); eval_loss=0.5"
    assert "None" not in shown.to_string() and "{" not in shown.to_string()


def test_counts_read_in_words_one_task_many_tasks(seeded):
    from labeling_ui.vocab import plural
    assert [plural(n, "line") for n in (0, 1, 2)] == ["0 lines", "1 line", "2 lines"]
    at = app_as("alice", seeded)
    assert "**4** compare tasks left" in texts(at)
    for _ in range(3):
        btn(at, "btn_a").click().run()
        btn(at, "cmp_submit").click().run()
    no_exception(at)
    assert "**1** compare task left" in texts(at) and "compare tasks left" not in texts(at)
