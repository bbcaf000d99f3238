"""Sign-in, roles, idle expiry and sign-out, behind a few small functions.

Local accounts (username + password, scrypt hash in the database) by default; Streamlit's OIDC
(`st.login`) when `.streamlit/secrets.toml` has an `[auth]` section. The signed-in user lives in
`st.session_state["user"]` as a plain dict; every rerun re-checks it against the database (a
deactivated user or a changed role takes effect at once) and against the idle timeout.

A reload starts a new Streamlit session, so a local sign-in also gets a database-backed session token
(db.services.sessions) kept in a cookie: the next page load reads it from the request (`st.context.cookies`)
and resumes. Streamlit cannot send Set-Cookie headers, so the cookie is written by a one-off script
(`st.html(..., unsafe_allow_javascript=True)`); SameSite=Strict, Secure over https. It is not HttpOnly
(JavaScript writes it), which is why the database keeps only its hash and model text is never rendered as HTML.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any
from urllib.parse import urlparse

import streamlit as st

from db.services import accounts, sessions
from db.services.errors import ServiceError
from labeling_ui.common import db

USER_KEY = "user"
SEEN_KEY = "_last_seen"
TOKEN_KEY = "_session_token"
COOKIE_JS_KEY = "_cookie_action"
DEAD_COOKIE_KEY = "_cookie_dead"
COOKIE_PREFIX = "instructloop_session"


def idle_timeout_s() -> float:
    """`INSTRUCTLOOP_UI_IDLE_MINUTES` (default 60): idle time after which the session signs out."""
    return float(os.environ.get("INSTRUCTLOOP_UI_IDLE_MINUTES", "60")) * 60


def session_days() -> float:
    """`INSTRUCTLOOP_UI_SESSION_DAYS` (default 14): how long "keep me signed in" lasts at most."""
    return float(os.environ.get("INSTRUCTLOOP_UI_SESSION_DAYS", "14"))


def cookie_name() -> str:
    """Cookies ignore ports, so two apps on one host (8501, 8502) each get their own name."""
    try:
        port = urlparse(st.context.url or "").port
    except Exception:  # noqa: BLE001 - no request context (bare script run, tests)
        port = None
    return f"{COOKIE_PREFIX}_{port}" if port else COOKIE_PREFIX


def _cookie_token() -> str | None:
    try:
        value = st.context.cookies.get(cookie_name())
    except Exception:  # noqa: BLE001 - no request context
        return None
    return value if isinstance(value, str) and value else None  # AppTest's context is a stand-in


def _resume_from_cookie() -> dict[str, Any] | None:
    """The user of a live session token sent by the browser, else None (asked once per dead token)."""
    token = _cookie_token()
    if not token or st.session_state.get(DEAD_COOKIE_KEY) == token:
        return None
    with db() as s:
        user = sessions.resume_session(s, token, dt.timedelta(seconds=idle_timeout_s()))
        info = _as_dict(user) if user is not None else None
    if info is None:
        st.session_state[DEAD_COOKIE_KEY] = token
        return None
    st.session_state[TOKEN_KEY] = token
    return info


def current_token() -> str | None:
    """This browser's session token (None for OIDC sign-ins), e.g. to keep it through a password change."""
    return st.session_state.get(TOKEN_KEY)


def _cookie_path() -> str:
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    return f"/{base}" if base else "/"


def write_cookie() -> None:
    """Carry out a pending cookie change (after sign-in or sign-out) with a one-off script in the page."""
    action = st.session_state.pop(COOKIE_JS_KEY, None)
    if action is None:
        return
    kind, token, remember = action
    name = json.dumps(cookie_name())
    if kind == "set":
        max_age = f"; Max-Age={int(session_days() * 86400)}" if remember else ""  # else: until the browser closes
        value = json.dumps(f"={token}; Path={_cookie_path()}; SameSite=Strict{max_age}")
    else:
        value = json.dumps(f"=; Path={_cookie_path()}; SameSite=Strict; Max-Age=0")
    st.html(f"<script>document.cookie = {name} + {value} + (location.protocol === 'https:' ? '; Secure' : '');"
            "</script>", unsafe_allow_javascript=True)


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all, or an unreadable one
        return False


def _as_dict(user: Any) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "display_name": user.display_name or user.username,
            "role": user.role}


def client_address() -> str | None:
    """The browser's address as the server sees it (None without a request, e.g. AppTest): sign-in failures
    are rate limited per client as well as per username."""
    try:
        ip = st.context.ip_address
    except Exception:  # noqa: BLE001 - no request context
        return None
    return ip if isinstance(ip, str) and ip else None


def sign_in_local(username: str, password: str, remember: bool = True) -> dict[str, Any] | None:
    """Check the password; on success store the user in the session, start a session token that survives
    reloads (kept across browser restarts when `remember`), and return the user. Raises
    accounts.TooManyAttempts (with the wait) after too many failures for the username or this client."""
    with db() as s:
        user = accounts.sign_in(s, (username or "").strip(), password or "", client=client_address())
        info = _as_dict(user) if user is not None else None
        token = None
        if user is not None:
            sessions.purge_expired(s, dt.timedelta(seconds=idle_timeout_s()))
            token = sessions.create_session(s, user.id, dt.timedelta(days=session_days()))
    if info:
        st.session_state[USER_KEY] = info
        st.session_state[SEEN_KEY] = time.time()
        st.session_state[TOKEN_KEY] = token
        st.session_state[COOKIE_JS_KEY] = ("set", token, remember)
    return info


def _oidc_user() -> dict[str, Any] | None:
    """Map a live st.login identity to a user row (None when not logged in or unknown/inactive)."""
    if not oidc_configured():
        return None
    u = st.user
    if not getattr(u, "is_logged_in", False):
        return None
    sub = str(u.get("sub") or u.get("email") or "")
    with db() as s:
        user = accounts.user_for_identity(s, sub, email=u.get("email"), name=u.get("name"),
                                           email_verified=bool(u.get("email_verified")))
        return _as_dict(user) if user is not None else None


def sign_out(message: str | None = None) -> None:
    from labeling_ui.common import release_held_tasks
    user = st.session_state.get(USER_KEY)
    if user:
        release_held_tasks(user["id"])
    token = st.session_state.get(TOKEN_KEY)
    if token:
        try:
            with db() as s:
                sessions.end_session(s, token)
        except ServiceError:
            pass
    for k in list(st.session_state.keys()):
        del st.session_state[k]
    if message:
        st.session_state["_signin_message"] = message
    if token:
        st.session_state[COOKIE_JS_KEY] = ("clear", None, False)
        st.session_state[DEAD_COOKIE_KEY] = token  # the request's cookie still shows it until the next load
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def current_user() -> dict[str, Any] | None:
    """The signed-in user (re-validated against the database), or None. Updates the idle clock."""
    user = st.session_state.get(USER_KEY)
    if user is None:
        user = _oidc_user() or _resume_from_cookie()
        if user is not None:
            st.session_state[USER_KEY] = user
            st.session_state[SEEN_KEY] = time.time()
    if user is None:
        return None
    now = time.time()
    token = st.session_state.get(TOKEN_KEY)
    if token is None and now - st.session_state.get(SEEN_KEY, now) > idle_timeout_s():
        sign_out("Your session expired after a period of inactivity. Please sign in again.")
        return None
    try:
        with db() as s:
            if token is not None:  # the database session decides: idle time counts across this browser's tabs
                row = sessions.resume_session(s, token, dt.timedelta(seconds=idle_timeout_s()))
            else:
                row = accounts.get_user(s, user["username"])
                row = row if row.active and not row.is_system else None
            fresh = _as_dict(row) if row is not None else None
    except ServiceError:
        fresh = None
    if fresh is None:
        sign_out("Your session has ended (signed out elsewhere, password changed, idle too long or account "
                 "deactivated). Please sign in again." if token else "Your account is not active any more.")
        return None
    st.session_state[USER_KEY] = fresh
    st.session_state[SEEN_KEY] = now
    return fresh


def require_user(role: str | None = None) -> dict[str, Any]:
    """Stop the page unless someone (with `role`, if given) is signed in. Admins pass every role check."""
    user = current_user()
    if user is None:
        st.warning("Please sign in to continue.")
        st.stop()
    if role == "admin" and user["role"] != "admin":
        refuse()
    return user


def refuse() -> None:
    st.error("You do not have access to this page: it is for admins only.", icon=":material/block:")
    st.stop()


def sign_in_page() -> None:
    """The only page a visitor who is not signed in can see."""
    _, mid, _ = st.columns([1, 1.2, 1])
    with mid:
        st.title("InstructLoop")
        st.caption("Sign in to label.")
        msg = st.session_state.pop("_signin_message", None)
        if msg:
            st.info(msg)
        if oidc_configured():
            if getattr(st.user, "is_logged_in", False):
                st.error("Your identity is not linked to an active account here. Ask an admin to add you.")
                if st.button("Sign out"):
                    st.logout()
            else:
                st.button("Sign in with your organisation", type="primary", on_click=st.login)
            st.divider()
            st.caption("Or use a local account:")
        with st.form("signin"):
            username = st.text_input("Username", key="signin_username", autocomplete="username")
            password = st.text_input("Password", type="password", key="signin_password",
                                     autocomplete="current-password")
            remember = st.checkbox("Keep me signed in on this browser", value=True, key="signin_remember",
                                   help=f"Up to {session_days():g} days, ended by signing out or "
                                        f"{idle_timeout_s() / 60:g} minutes without use. Unticked: until "
                                        "the browser closes.")
            ok = st.form_submit_button("Sign in", type="primary", width="stretch")
        if ok:
            try:
                signed_in = sign_in_local(username, password, remember)
            except accounts.TooManyAttempts as e:
                st.error(f"{str(e)[:1].upper()}{str(e)[1:]}.", icon=":material/timer:")
            else:
                if signed_in:
                    st.rerun()
                st.error("Unknown username or wrong password (or the account is deactivated).")
