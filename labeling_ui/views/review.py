"""Admin: review demonstrations (accept / reject with a note)."""
from __future__ import annotations

import streamlit as st

from db.services import labels
from db.services.content import prompt_messages
from db.services.errors import ServiceError
from labeling_ui import auth
from labeling_ui.common import db, local_time, project_picker, render_mode, show_error, show_text

user = auth.require_user("admin")
st.subheader("Review demonstrations")
project = project_picker(st)
if project is None:
    st.info("No projects yet.")
    st.stop()
status = st.segmented_control("Show", ["submitted", "accepted", "rejected"], default="submitted",
                              key="review_status") or "submitted"
flash = st.session_state.pop("_flash_review", None)
if flash:
    st.toast(flash, icon=":material/check:")
with db() as s:
    demos = [{"id": d.id, "text": d.text, "user": d.user.username, "status": d.status, "note": d.review_note,
              "messages": prompt_messages(d.prompt), "created": d.created_at}
             for d in labels.list_demonstrations(s, project["id"], status=status)]
if not demos:
    st.info(f"No {status} demonstrations.")
    st.stop()
st.caption(f"{len(demos)} {status}")
mode = render_mode(project)
for d in demos[:50]:
    with st.container(border=True):
        st.markdown(f"**#{d['id']}** by **{d['user']}** · {local_time(d['created'])}")
        c1, c2 = st.columns(2)
        with c1:
            st.caption("PROMPT")
            for i, turn in enumerate(d["messages"]):
                with st.chat_message(turn["role"] if turn["role"] in ("user", "assistant") else "ai"):
                    show_text(turn["content"], key=f"rev_prompt_{d['id']}_{i}", mode=mode,
                              empty_label="(empty message)")
        with c2:
            st.caption("DEMONSTRATION")
            show_text(d["text"], key=f"rev_demo_{d['id']}", mode=mode, empty_label="(empty demonstration)")
        if d["note"]:
            st.caption(f"Note: {d['note']}")
        a, b, c = st.columns([4, 1, 1], vertical_alignment="bottom")
        note = a.text_input("Note (optional)", key=f"note_{d['id']}")
        for col, accept, label in ((b, True, "Accept"), (c, False, "Reject")):
            if col.button(label, key=f"{label.lower()}_{d['id']}", type="primary" if accept else "secondary",
                          width="stretch"):
                try:
                    with db() as s:
                        labels.review_demonstration(s, d["id"], user["id"], accept, note)
                except ServiceError as e:
                    show_error(e)
                else:
                    st.session_state["_flash_review"] = f"Demonstration #{d['id']} {label.lower()}ed"
                    st.rerun()
