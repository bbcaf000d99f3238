"""Users: create, authenticate (scrypt hash), roles, deactivate, system users for imports."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import ROLES, User
from db.services import sessions
from db.services.errors import InputError, NotFound, ServiceError

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
                display_name: str = "", external_id: str | None = None) -> User:
    """Create an active user. `password` may be None for OIDC-only accounts."""
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


def set_password(session: Session, username: str, password: str, keep_token: str | None = None) -> User:
    """Set a new password and sign every browser of the user out, except the session `keep_token` (the
    one making the change, when it is the user's own)."""
    _check_password(password)
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    sessions.end_user_sessions(session, user.id, keep_token=keep_token)
    session.flush()
    return user


def set_role(session: Session, username: str, role: str) -> User:
    if role not in ROLES:
        raise InputError(f"role must be one of {', '.join(ROLES)}, not {role!r}", field="role")
    user = get_user(session, username)
    user.role = role
    session.flush()
    return user


def set_active(session: Session, username: str, active: bool) -> User:
    user = get_user(session, username)
    user.active = active
    if not active:
        sessions.end_user_sessions(session, user.id)
    session.flush()
    return user


def deactivate(session: Session, username: str) -> User:
    return set_active(session, username, False)


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
