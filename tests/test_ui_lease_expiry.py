"""A demonstration submitted after its lease ran out and the task went to someone else: the page says so
(the service's message) and the annotator's text stays in the box."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from db.models import Assignment, Demonstration, utcnow
from db.services import assignment
from db.session import session_scope
from tests.test_ui_app import app_as, count, no_exception, seeded, texts

__all__ = ["seeded"]  # the fixture, imported for pytest


def test_a_reassigned_demonstration_is_refused_with_its_reason_and_the_text_is_kept(seeded):
    at = app_as("alice", seeded)
    at.switch_page("views/demonstrate.py").run()
    tid = at.session_state[f"task:demonstrate:{seeded['project_id']}"].task_id
    text = "A long, careful answer that took the annotator most of an hour to write."
    at.text_area(key=f"demo_text_{tid}").input(text).run()
    with session_scope(seeded["url"]) as s:  # alice's lease runs out; bob is given the task
        s.execute(update(Assignment).where(Assignment.task_id == tid, Assignment.user_id == seeded["alice_id"])
                  .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    with session_scope(seeded["url"]) as s:
        assert assignment.next_task(s, seeded["bob_id"], seeded["project_id"], kind="demonstrate").task_id == tid
    at.button(key=f"demo_submit_{tid}").click().run()
    no_exception(at)
    assert f"task {tid} was reassigned" in texts(at).lower() and "NOT saved" in texts(at)
    assert at.text_area(key=f"demo_text_{tid}").value == text
    at.run()  # any later rerun of the page still shows the text
    assert at.text_area(key=f"demo_text_{tid}").value == text
    assert count(seeded["url"], Demonstration) == 0
