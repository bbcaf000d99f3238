"""Sign-in, roles, idle expiry and sign-out, behind a few small functions.

Local accounts (username + password, scrypt hash in the database) by default; Streamlit's OIDC
(`st.login`) when `.streamlit/secrets.toml` has an `[auth]` section. The signed-in user lives in
`st.session_state["user"]` as a plain dict; every rerun re-checks it against the database (a
deactivated user or a changed role takes effect at once) and against the idle timeout.
"""
from __future__ import annotations

import os
import time
from typing import Any

import streamlit as st

from db.services import accounts
from db.services.errors import ServiceError
from labeling_ui.common import db

USER_KEY = "user"
SEEN_KEY = "_last_seen"


def idle_timeout_s() -> float:
    """`INSTRUCTLOOP_UI_IDLE_MINUTES` (default 60): idle time after which the session signs out."""
    return float(os.environ.get("INSTRUCTLOOP_UI_IDLE_MINUTES", "60")) * 60


def oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all, or an unreadable one
        return False


def _as_dict(user: Any) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "display_name": user.display_name or user.username,
            "role": user.role}


def sign_in_local(username: str, password: str) -> dict[str, Any] | None:
    """Check the password; on success store the user in the session and return it."""
    with db() as s:
        user = accounts.authenticate(s, (username or "").strip(), password or "")
        info = _as_dict(user) if user is not None else None
    if info:
        st.session_state[USER_KEY] = info
        st.session_state[SEEN_KEY] = time.time()
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
    for k in list(st.session_state.keys()):
        del st.session_state[k]
    if message:
        st.session_state["_signin_message"] = message
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def current_user() -> dict[str, Any] | None:
    """The signed-in user (re-validated against the database), or None. Updates the idle clock."""
    user = st.session_state.get(USER_KEY)
    if user is None:
        user = _oidc_user()
        if user is not None:
            st.session_state[USER_KEY] = user
            st.session_state[SEEN_KEY] = time.time()
    if user is None:
        return None
    now = time.time()
    if now - st.session_state.get(SEEN_KEY, now) > idle_timeout_s():
        sign_out("Your session expired after a period of inactivity. Please sign in again.")
        return None
    try:
        with db() as s:
            row = accounts.get_user(s, user["username"])
            fresh = _as_dict(row) if row.active and not row.is_system else None
    except ServiceError:
        fresh = None
    if fresh is None:
        sign_out("Your account is not active any more.")
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
            ok = st.form_submit_button("Sign in", type="primary", width="stretch")
        if ok:
            if sign_in_local(username, password):
                st.rerun()
            st.error("Unknown username or wrong password (or the account is deactivated).")
