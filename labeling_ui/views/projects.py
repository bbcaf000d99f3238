"""Admin: projects — create, edit guidelines, labels per task and settings."""
from __future__ import annotations

import streamlit as st

from db.services import projects, stats, tasks
from db.services.errors import ServiceError
from db.settings import size_limit
from labeling_ui import auth
from labeling_ui.common import db, human_columns, render_mode, show_error
from labeling_ui.text import RENDERS

RENDER_NAMES = {"markdown": "Formatted (safe Markdown)", "plain": "Plain text"}

user = auth.require_user("admin")
st.subheader("Projects")
flash = st.session_state.pop("_flash_proj", None)
if flash:
    st.toast(flash, icon=":material/check:")

with db() as s:
    table = stats.per_project(s)
    plist = [{"id": p.id, "name": p.name, "guidelines": p.guidelines or "", "labels_per_task": p.labels_per_task,
              "settings": dict(p.settings or {})} for p in projects.list_projects(s)]
if len(table):
    st.dataframe(human_columns(table), hide_index=True, width="stretch")
else:
    st.info("No projects yet — create the first one below.")

# What was typed stays after an error (the form is cleared once the project exists); the error, in words, sits
# under the field it is about.
if st.session_state.pop("_new_project_clear", False):
    for k in ("np_name", "np_lpt", "np_guide"):
        st.session_state.pop(k, None)
with st.expander("Create a project", expanded=not plist, icon=":material/add:"), st.form("new_project"):
    name = st.text_input("Name", key="np_name")
    under = {"name": st.empty()}
    lpt = st.number_input("Labels per task (annotators per task)", min_value=1, value=1, key="np_lpt")
    under["labels_per_task"] = st.empty()
    guide = st.text_area("Guidelines (Markdown)", height=150, key="np_guide")
    if st.form_submit_button("Create project", type="primary"):
        try:
            with db() as s:
                projects.create_project(s, name.strip(), guidelines=guide, labels_per_task=int(lpt),
                                        actor_id=user["id"])
        except ServiceError as e:
            # the one error without a field is a taken name
            show_error(e, under.get(getattr(e, "field", None) or "name"))
        else:
            st.session_state["_flash_proj"] = f"Project {name.strip()!r} created"
            st.session_state["_new_project_clear"] = True
            st.rerun()

if plist:
    st.markdown("#### Edit a project")
    by_id = {p["id"]: p for p in plist}
    pid = st.selectbox("Project", list(by_id), format_func=lambda i: by_id[i]["name"], key="proj_edit_pick")
    p = by_id[pid]
    left, right = st.columns(2)
    with left, st.form(f"edit_project_{pid}"):
        guide = st.text_area("Guidelines (Markdown)", value=p["guidelines"], height=300)
        lpt = st.number_input("Labels per task", min_value=1, value=int(p["labels_per_task"]))
        c1, c2 = st.columns(2)
        min_chars = c1.number_input("Minimum demonstration length (characters)", min_value=1,
                                    max_value=size_limit("demonstration"),
                                    value=min(int(p["settings"].get("min_demonstration_chars", 20)),
                                              size_limit("demonstration")))
        window = c2.number_input("Revision window (hours)", min_value=0.0,
                                 value=float(p["settings"].get("revision_window_hours", 24)))
        render = st.radio("Show model text", RENDERS, index=RENDERS.index(render_mode(p)), horizontal=True,
                          format_func=RENDER_NAMES.get, key=f"proj_render_{pid}",
                          help="Formatted: code blocks, bold/italic and bullet lists render; every other character "
                               "shows as written. Plain: no formatting at all. Annotators can always switch a "
                               "response to its raw text.")
        if st.form_submit_button("Save", type="primary"):
            try:
                with db() as s:
                    projects.update_project(s, p["name"], guidelines=guide, labels_per_task=int(lpt),
                                            settings={"min_demonstration_chars": int(min_chars),
                                                      "revision_window_hours": window, "render": render},
                                            actor_id=user["id"])
            except ServiceError as e:
                show_error(e)
            else:
                st.session_state["_flash_proj"] = "Project saved"
                st.rerun()
    with right:
        st.caption("Guidelines preview")
        with st.container(border=True, height=380):
            st.markdown(p["guidelines"] or "_(empty)_")
    if st.button("Queue a demonstrate task for every prompt without a demonstration", key="proj_demo_tasks"):
        try:
            with db() as s:
                n = tasks.create_demonstrate_tasks(s, pid, source="ui", actor_id=user["id"])
        except ServiceError as e:
            show_error(e)
        else:
            st.session_state["_flash_proj"] = f"{n} demonstrate tasks queued"
            st.rerun()
