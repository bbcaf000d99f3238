"""Sign-in sessions of the labeling app that survive a page reload ("keep me signed in").

Streamlit starts a new server session on every reload, so a sign-in held only in memory is lost. The app
therefore gives the browser a random token (a cookie) and keeps its SHA-256 here. A token resumes a sign-in
only while it is unexpired, used within the idle timeout and its user is still active; changing the password
or deactivating the user ends all of that user's sessions (see accounts).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import UISession, User, utcnow
from db.session import write_transaction

# Writing last_seen_at on every rerun would turn each click into a write; a minute's slack is plenty for an
# idle timeout measured in tens of minutes.
TOUCH_EVERY = dt.timedelta(seconds=60)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(session: Session, user_id: int, lifetime: dt.timedelta) -> str:
    """A new session for `user_id`; returns the token for the browser (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with write_transaction(session):
        session.add(UISession(user_id=user_id, token_hash=_hash(token), created_at=now, last_seen_at=now,
                              expires_at=now + lifetime))
    return token


def resume_session(session: Session, token: str | None, idle: dt.timedelta) -> User | None:
    """The active user behind `token`, or None (unknown, expired, idle too long, user inactive). A dead session
    is deleted; a live one has its last use recorded. The app calls it on every rerun, so a sign-out, a
    password change or a deactivation elsewhere takes effect on the next click."""
    if not isinstance(token, str) or not token:
        return None
    row = session.scalar(select(UISession).where(UISession.token_hash == _hash(token)))
    if row is None:
        return None
    now = utcnow()
    user = session.get(User, row.user_id)
    # Writes go through write_transaction: on SQLite a write after a read in a plain transaction fails at
    # once ("database is locked") when another writer committed in between, instead of waiting its turn.
    if (row.expires_at <= now or now - row.last_seen_at > idle or user is None
            or not user.active or user.is_system):
        with write_transaction(session):
            session.execute(delete(UISession).where(UISession.id == row.id))
        return None
    if now - row.last_seen_at > TOUCH_EVERY:
        with write_transaction(session):
            session.execute(update(UISession).where(UISession.id == row.id).values(last_seen_at=now))
    return user


def end_session(session: Session, token: str | None) -> bool:
    """Sign-out: forget this token. True when there was a session to end."""
    if not token:
        return False
    n = session.execute(delete(UISession).where(UISession.token_hash == _hash(token))).rowcount
    session.flush()
    return bool(n)


def end_user_sessions(session: Session, user_id: int, keep_token: str | None = None) -> int:
    """End every session of a user (password changed, account deactivated), except `keep_token`'s (the
    browser that made the change). Returns how many."""
    q = delete(UISession).where(UISession.user_id == user_id)
    if keep_token:
        q = q.where(UISession.token_hash != _hash(keep_token))
    n = session.execute(q).rowcount
    session.flush()
    return n


def purge_expired(session: Session, idle: dt.timedelta) -> int:
    """Delete sessions past their expiry or unused for longer than `idle` (run at each sign-in, so the
    table holds only live sessions)."""
    now = utcnow()
    # "fetch": evaluating the dates in Python would compare SQLite's naive values with aware ones
    n = session.execute(delete(UISession).where(
        (UISession.expires_at <= now) | (UISession.last_seen_at < now - idle)),
        execution_options={"synchronize_session": "fetch"}).rowcount
    session.flush()
    return n
