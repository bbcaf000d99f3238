""""Keep me signed in" sessions: only a hash is stored; expiry, idle timeout, sign-out and account changes
end them (SQLite and PostgreSQL)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db.models import UISession, utcnow
from db.services import accounts, sessions

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def _row(session, user_id: int) -> UISession:
    return session.scalars(select(UISession).where(UISession.user_id == user_id)).one()


def test_token_resumes_its_user_and_only_its_hash_is_stored(session):
    u = accounts.create_user(session, "ann", "password-1")
    token = sessions.create_session(session, u.id, DAY)
    session.commit()
    row = _row(session, u.id)
    assert token not in row.token_hash and len(token) >= 40  # 256 random bits, stored as SHA-256 only
    assert sessions.resume_session(session, token, HOUR).id == u.id
    assert sessions.resume_session(session, token + "x", HOUR) is None
    assert sessions.resume_session(session, None, HOUR) is None
    other = sessions.create_session(session, u.id, DAY)
    assert other != token and sessions.resume_session(session, other, HOUR).id == u.id


def test_expired_idle_and_ended_sessions_do_not_resume(session):
    u = accounts.create_user(session, "ann", "password-1")
    expired = sessions.create_session(session, u.id, DAY)
    idle = sessions.create_session(session, u.id, DAY)
    live = sessions.create_session(session, u.id, DAY)
    session.commit()
    rows = {r.id: r for r in session.scalars(select(UISession).order_by(UISession.id))}
    e, i, _ = rows.values()
    e.expires_at = utcnow() - dt.timedelta(seconds=1)
    i.last_seen_at = utcnow() - 2 * HOUR
    session.commit()
    assert sessions.resume_session(session, expired, HOUR) is None
    assert sessions.resume_session(session, idle, HOUR) is None
    assert {r.id for r in session.scalars(select(UISession))} == {max(rows)}  # dead sessions are deleted
    # a page in use keeps its session's idle clock going
    row = session.get(UISession, max(rows))
    row.last_seen_at = utcnow() - 50 * dt.timedelta(minutes=1)
    session.commit()
    assert sessions.touch_session(session, live)
    session.commit()
    assert utcnow() - sessions._aware(session.get(UISession, max(rows)).last_seen_at) < dt.timedelta(minutes=1)
    assert sessions.end_session(session, live) is True
    assert sessions.end_session(session, live) is False
    assert sessions.resume_session(session, live, HOUR) is None
    assert sessions.touch_session(session, live) is False


def test_password_change_and_deactivation_end_every_session(session):
    u = accounts.create_user(session, "ann", "password-1")
    v = accounts.create_user(session, "bob", "password-1")
    a1, a2 = (sessions.create_session(session, u.id, DAY) for _ in range(2))
    b = sessions.create_session(session, v.id, DAY)
    session.commit()
    accounts.set_password(session, "ann", "password-2")
    session.commit()
    assert sessions.resume_session(session, a1, HOUR) is None and sessions.resume_session(session, a2, HOUR) is None
    assert sessions.resume_session(session, b, HOUR).id == v.id  # other users are untouched
    b2 = sessions.create_session(session, v.id, DAY)
    accounts.deactivate(session, "bob")
    session.commit()
    assert sessions.resume_session(session, b2, HOUR) is None
    accounts.set_active(session, "bob", True)  # reactivating does not bring old sessions back
    assert sessions.resume_session(session, b2, HOUR) is None
    c = sessions.create_session(session, v.id, -DAY)
    session.commit()
    assert sessions.purge_expired(session) == 1 and sessions.resume_session(session, c, HOUR) is None
