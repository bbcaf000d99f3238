""""Keep me signed in" sessions: only a hash is stored; expiry, idle timeout, sign-out and account changes
end them (SQLite and PostgreSQL). Rows are re-read from the database before each check (SQLite hands back
naive datetimes, PostgreSQL aware ones)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from db.models import UISession, utcnow
from db.services import accounts, sessions

DAY = dt.timedelta(days=1)
HOUR = dt.timedelta(hours=1)


def _resume(session, token):
    session.expire_all()  # read back what the database stored, as a new page load would
    return sessions.resume_session(session, token, HOUR)


def test_token_resumes_its_user_and_only_its_hash_is_stored(session):
    u = accounts.create_user(session, "ann", "password-1")
    token = sessions.create_session(session, u.id, DAY)
    session.commit()
    session.expire_all()
    row = session.scalars(select(UISession).where(UISession.user_id == u.id)).one()
    assert token not in row.token_hash and len(token) >= 40  # 256 random bits, stored as SHA-256 only
    assert _resume(session, token).id == u.id
    assert _resume(session, token + "x") is None
    assert _resume(session, None) is None
    other = sessions.create_session(session, u.id, DAY)
    assert other != token and _resume(session, other).id == u.id


def test_expired_idle_and_ended_sessions_do_not_resume(session):
    u = accounts.create_user(session, "ann", "password-1")
    expired, idle, live = (sessions.create_session(session, u.id, DAY) for _ in range(3))
    session.commit()
    e, i, keep = session.scalars(select(UISession).order_by(UISession.id)).all()
    e.expires_at = utcnow() - dt.timedelta(seconds=1)
    i.last_seen_at = utcnow() - 2 * HOUR
    keep.last_seen_at = utcnow() - 50 * dt.timedelta(minutes=1)
    session.commit()
    assert _resume(session, expired) is None
    assert _resume(session, idle) is None
    assert session.scalars(select(UISession.id)).all() == [keep.id]  # dead sessions are deleted
    # a use records itself (at most once a minute), so an active page never goes idle
    assert _resume(session, live).id == u.id
    session.commit()
    session.expire_all()
    assert utcnow() - session.get(UISession, keep.id).last_seen_at < dt.timedelta(minutes=1)
    assert sessions.end_session(session, live) is True
    assert sessions.end_session(session, live) is False
    assert _resume(session, live) is None


def test_password_change_and_deactivation_end_every_session(session):
    u = accounts.create_user(session, "ann", "password-1")
    v = accounts.create_user(session, "bob", "password-1")
    a1, a2, mine = (sessions.create_session(session, u.id, DAY) for _ in range(3))
    b = sessions.create_session(session, v.id, DAY)
    session.commit()
    accounts.set_password(session, "ann", "password-2", keep_token=mine)  # ann changes it from one browser
    session.commit()
    assert _resume(session, a1) is None and _resume(session, a2) is None
    assert _resume(session, mine).id == u.id  # the browser that made the change stays signed in
    assert _resume(session, b).id == v.id  # other users are untouched
    accounts.set_password(session, "bob", "password-2", keep_token=mine)  # an admin's own token is not bob's
    session.commit()
    assert _resume(session, b) is None
    b2 = sessions.create_session(session, v.id, DAY)
    accounts.deactivate(session, "bob")
    session.commit()
    assert _resume(session, b2) is None
    accounts.set_active(session, "bob", True)  # reactivating does not bring old sessions back
    assert _resume(session, b2) is None


def test_purge_keeps_only_live_sessions(session):
    u = accounts.create_user(session, "ann", "password-1")
    live = sessions.create_session(session, u.id, DAY)
    sessions.create_session(session, u.id, -DAY)  # expired
    sessions.create_session(session, u.id, DAY)
    session.commit()
    stale = session.scalars(select(UISession).order_by(UISession.id.desc())).first()
    stale.last_seen_at = utcnow() - 2 * HOUR
    session.commit()
    assert sessions.purge_expired(session, HOUR) == 2
    session.commit()
    assert _resume(session, live).id == u.id and session.scalar(select(UISession.id).where(
        UISession.id != stale.id)) is not None
    assert len(session.scalars(select(UISession)).all()) == 1
