"""Admin: users — create, change role, activate/deactivate, reset password."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from db.models import ROLES
from db.services import accounts
from db.services.errors import InputError, ServiceError
from labeling_ui import auth
from labeling_ui.common import db, human_columns, local_times, show_error

me = auth.require_user("admin")
st.subheader("Users")
flash = st.session_state.pop("_flash_users", None)
if flash:
    st.toast(flash, icon=":material/check:")

with db() as s:
    users = [{"username": u.username, "display_name": u.display_name, "role": u.role, "active": u.active,
              "sign-in": "OIDC" if u.external_id else ("password" if u.password_hash else "none"),
              "created": u.created_at} for u in accounts.list_users(s)]
st.dataframe(human_columns(local_times(pd.DataFrame(users), "created")), hide_index=True, width="stretch")

left, right = st.columns(2)
with left:
    st.markdown("#### Create a user")
    # What was typed stays after an error (the form is cleared only once the user exists); the error sits under
    # the field it is about, in words.
    if st.session_state.pop("_new_user_clear", False):
        for k in ("nu_username", "nu_display", "nu_password"):
            st.session_state.pop(k, None)
    with st.form("new_user"):
        username = st.text_input("Username", key="nu_username")
        under = {"username": st.empty()}
        display = st.text_input("Display name", key="nu_display")
        role = st.selectbox("Role", ROLES, index=ROLES.index("annotator"), key="nu_role")
        password = st.text_input("Initial password (at least 8 characters)", type="password", key="nu_password")
        under["password"] = st.empty()
        if st.form_submit_button("Create user", type="primary"):
            try:
                with db() as s:
                    accounts.create_user(s, username.strip(), password, role=role, display_name=display,
                                         actor_id=me["id"])
            except InputError as e:
                where = under.get(e.field or "")
                (where or st).error(e.reason[:1].upper() + e.reason[1:] + ".", icon=":material/error:")
            except ServiceError as e:
                show_error(e)
            else:
                st.session_state["_flash_users"] = f"User {username!r} created"
                st.session_state["_new_user_clear"] = True
                st.rerun()
with right:
    st.markdown("#### Manage a user")
    names = [u["username"] for u in users]
    name = st.selectbox("User", names, key="users_pick")
    u = next(x for x in users if x["username"] == name)
    c1, c2 = st.columns(2)
    new_role = c1.selectbox("Role", ROLES, index=ROLES.index(u["role"]), key=f"role_{name}")
    if c1.button("Change role", key="users_role_btn", disabled=new_role == u["role"]):
        try:
            if name == me["username"] and new_role != "admin":
                raise ServiceError("you cannot remove your own admin role")
            with db() as s:
                accounts.set_role(s, name, new_role, actor_id=me["id"])
        except ServiceError as e:
            show_error(e)
        else:
            st.session_state["_flash_users"] = f"{name} is now {new_role}"
            st.rerun()
    label = "Deactivate" if u["active"] else "Reactivate"
    if c2.button(label, key="users_active_btn", disabled=name == me["username"]):
        try:
            with db() as s:
                accounts.set_active(s, name, not u["active"], actor_id=me["id"])
        except ServiceError as e:
            show_error(e)
        else:
            st.session_state["_flash_users"] = f"{name} {'deactivated' if u['active'] else 'reactivated'}"
            st.rerun()
    with st.form(f"reset_{name}", clear_on_submit=True):
        pw = st.text_input("New password", type="password")
        if st.form_submit_button("Reset password"):
            try:
                with db() as s:
                    accounts.set_password(s, name, pw, keep_token=auth.current_token(), actor_id=me["id"])
            except ServiceError as e:
                show_error(e)
            else:
                st.session_state["_flash_users"] = f"Password of {name} reset"
                st.rerun()
