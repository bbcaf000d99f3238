"""Users: create, authenticate (scrypt hash), rate-limited sign-in, roles, deactivate, system users for imports.

The admin actions (create, set_role, set_active, set_password of someone else) take `actor_id`, the signed-in
user the app acts for: an annotator is refused (audit.require_admin), and each change is written to the audit
log in its own transaction. `actor_id=None` is the command line.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import re

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db import settings
from db.models import ROLES, SignInFailure, User, utcnow
from db.services import audit, sessions
from db.services.errors import InputError, NotFound, ServiceError
from db.session import write_transaction

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,80}$")
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash`, salt and hash base64; never stores the password."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = lambda b: base64.b64encode(b).decode()
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), dklen=32, n=int(n), r=int(r),
                         p=int(p))
    return hmac.compare_digest(got, base64.b64decode(digest))


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InputError(f"password must have at least {MIN_PASSWORD} characters", field="password")


def create_user(session: Session, username: str, password: str | None, *, role: str = "annotator",
                display_name: str = "", external_id: str | None = None, actor_id: int | None = None) -> User:
    """Create an active user. `password` may be None for OIDC-only accounts."""
    audit.require_admin(session, actor_id, "creating users")
    if not _USERNAME.match(username or ""):
        raise InputError("username must be 2-80 letters, digits or . _ @ -", field="username")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise ServiceError(f"user {username!r} already exists")
    if password is not None:
        _check_password(password)
    user = User(username=username, display_name=display_name or username, role=role,
                password_hash=hash_password(password) if password is not None else None,
                external_id=external_id, active=True)
    session.add(user)
    session.flush()
    audit.record(session, "user.create", actor_id=actor_id, target=username, details={"role": role})
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user named {username!r}")
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active, non-system user with this password, or None (same answer for every failure)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        # Spend the same time as a real check so timing does not reveal which usernames exist.
        verify_password(password, hash_password("x" * MIN_PASSWORD))
        return None
    if not verify_password(password, user.password_hash) or not user.active or user.is_system:
        return None
    return user


def user_for_identity(session: Session, external_id: str, *, email: str | None = None,
                      name: str | None = None, email_verified: bool = False) -> User | None:
    """Map an OIDC identity to a user row: by external id, else (first sign-in) by username == email.

    Linking by email needs a verified email and an account without a password (one an admin created for
    single sign-on): otherwise anyone whose identity provider lets them claim an address could take over
    a local account, admins included.
    """
    user = session.scalar(select(User).where(User.external_id == external_id))
    if user is None and email and email_verified:
        candidate = session.scalar(select(User).where(User.username == email))
        if candidate is not None and candidate.external_id is None and candidate.password_hash is None:
            user = candidate
            user.external_id = external_id
            if name and user.display_name == user.username:
                user.display_name = name
            session.flush()
    if user is None or not user.active or user.is_system:
        return None
    return user


def set_password(session: Session, username: str, password: str, keep_token: str | None = None, *,
                 actor_id: int | None = None) -> User:
    """Set a new password and sign every browser of the user out, except the session `keep_token` (the
    one making the change, when it is the user's own). Someone else's password: admins only."""
    _check_password(password)
    user = get_user(session, username)
    if actor_id != user.id:
        audit.require_admin(session, actor_id, "setting another user's password")
    user.password_hash = hash_password(password)
    sessions.end_user_sessions(session, user.id, keep_token=keep_token)
    session.flush()
    audit.record(session, "user.password", actor_id=actor_id, target=username)  # the fact, never the password
    return user


def set_role(session: Session, username: str, role: str, *, actor_id: int | None = None) -> User:
    audit.require_admin(session, actor_id, "changing roles")
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    user = get_user(session, username)
    before = user.role
    user.role = role
    session.flush()
    audit.record(session, "user.role", actor_id=actor_id, target=username, details={"from": before, "to": role})
    return user


def set_active(session: Session, username: str, active: bool, *, actor_id: int | None = None) -> User:
    """(De)activate a user; deactivating ends every live session of theirs at once (their next click)."""
    audit.require_admin(session, actor_id, "activating or deactivating users")
    user = get_user(session, username)
    user.active = active
    ended = 0
    if not active:
        ended = sessions.end_user_sessions(session, user.id)
    session.flush()
    audit.record(session, "user.activate" if active else "user.deactivate", actor_id=actor_id, target=username,
                 details={"sessions_ended": ended} if not active else {})
    return user


def deactivate(session: Session, username: str, *, actor_id: int | None = None) -> User:
    return set_active(session, username, False, actor_id=actor_id)


# ------------------------------------------------------------------ rate-limited sign-in

class TooManyAttempts(ServiceError):
    """Too many failed sign-ins for this username or from this client: `retry_after` seconds to wait."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _name_hash(username: str) -> str:
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()


def _wait(session: Session, column, key: str, limit: int, window: dt.timedelta, now: dt.datetime) -> float:
    """Seconds until fewer than `limit` failures of `key` fall in the window (0 when under the limit)."""
    recent = list(session.scalars(select(SignInFailure.at).where(column == key, SignInFailure.at > now - window)
                                  .order_by(SignInFailure.at.desc()).limit(limit)))
    if len(recent) < limit:
        return 0.0
    return max(1.0, (recent[-1] + window - now).total_seconds())


def sign_in_wait(session: Session, username: str, client: str | None = None, *,
                 now: dt.datetime | None = None) -> float:
    """How long `username` (or this client) must wait before the next sign-in attempt is checked; 0 if none."""
    now = now or utcnow()
    window = dt.timedelta(minutes=settings.signin_window_minutes())
    wait = _wait(session, SignInFailure.username_hash, _name_hash(username), settings.signin_max_failures_per_user(),
                 window, now)
    if client:
        wait = max(wait, _wait(session, SignInFailure.client, client[:100],
                               settings.signin_max_failures_per_client(), window, now))
    return wait


def sign_in(session: Session, username: str, password: str, *, client: str | None = None,
            now: dt.datetime | None = None) -> User | None:
    """`authenticate`, rate limited: after too many failures for the username (per user) or from `client`
    (its address; per client, against one client trying many usernames) within the window, raise
    TooManyAttempts without checking the password, so guessing gets nowhere. A failure is recorded (hashed
    username, client, time) in its own committed transaction; a success clears the username's failures."""
    now = now or utcnow()
    username = (username or "").strip()
    wait = sign_in_wait(session, username, client, now=now)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        raise TooManyAttempts(f"too many failed sign-ins: wait {minutes} minute{'s' if minutes != 1 else ''} "
                              "before trying again", retry_after=wait)
    user = authenticate(session, username, password or "")
    window = dt.timedelta(minutes=settings.signin_window_minutes())
    with write_transaction(session):
        if user is None:
            session.add(SignInFailure(username_hash=_name_hash(username), client=(client or "")[:100], at=now))
            # the table holds only failures that still count
            session.execute(delete(SignInFailure).where(SignInFailure.at < now - window),
                            execution_options={"synchronize_session": False})
        else:
            session.execute(delete(SignInFailure).where(SignInFailure.username_hash == _name_hash(username)),
                            execution_options={"synchronize_session": False})
    return user


def failed_sign_ins(session: Session) -> int:
    """How many failed sign-ins still count (for the admin's overview)."""
    return session.scalar(select(func.count()).select_from(SignInFailure)) or 0


def list_users(session: Session, *, include_system: bool = False) -> list[User]:
    q = select(User).order_by(User.id)
    if not include_system:
        q = q.where(User.is_system.is_(False))
    return list(session.scalars(q))


def system_user(session: Session, name: str) -> User:
    """The pseudo-user owning labels imported from `name` (e.g. 'import:hh'); cannot sign in."""
    username = name[:80]
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        user = User(username=username, display_name=name, role="annotator", password_hash=None,
                    active=False, is_system=True)
        session.add(user)
        session.flush()
    return user


def pseudonym(user_id: int) -> str:
    """Stable pseudonymous annotator id for exports (no username leaves the database)."""
    return "ann-" + hashlib.sha256(f"instructloop:{user_id}".encode()).hexdigest()[:10]
