"""Small view helpers shared by the pages: database scope, project picker, safe text, progress."""
from __future__ import annotations

import contextlib
import datetime as dt
import shlex
import time
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import streamlit as st
from sqlalchemy.orm import Session

from db.services import assignment, projects, stats
from db.services.errors import DatabaseUnavailable, InputError, ServiceError
from db.session import session_scope

# re-exported: model text is shown through common.show_text on every page
from labeling_ui.text import render_mode, safe_markdown, show_text  # noqa: F401
from labeling_ui.vocab import plural

PROJECT_KEY = "project_id"


@contextlib.contextmanager
def db() -> Iterator[Session]:
    """One unit of work against DATABASE_URL (read at call time), committed on success.

    Every page reaches the database through here, so this is the one place a database that is not answering
    (DatabaseUnavailable: PostgreSQL restarting, the network cut) is caught: the page stops with a retry
    message instead of a traceback, and what the user typed stays on screen for the retry."""
    try:
        with session_scope() as s:
            yield s
    except DatabaseUnavailable:
        database_unavailable()


def database_unavailable() -> None:
    """Say the database is away and stop this run. st.stop() ends the run early, and Streamlit keeps every
    field's value after an early stop (it drops a field's value only after a complete run that did not draw
    it), so a demonstration or comment being written is still there on Retry."""
    st.warning("**The database is not answering** (it may be restarting). Nothing you typed is lost: it stays "
               "on this page. Press **Retry** in a moment — submitting twice never saves twice.",
               icon=":material/cloud_off:")
    st.button("Retry", key=f"db_retry_{time.time_ns()}", icon=":material/refresh:", type="primary")
    st.stop()


def render_prompt(view: Any, mode: str = "markdown", key: str = "prompt") -> None:
    """The prompt as a conversation (one st.chat_message per turn)."""
    avatars = {"user": ":material/person:", "assistant": ":material/smart_toy:", "system": ":material/settings:"}
    for i, turn in enumerate(view.messages):
        role = turn.get("role", "user")
        with st.chat_message(role if role in ("user", "assistant") else "ai", avatar=avatars.get(role)):
            if role == "system":
                st.caption("System")
            show_text(turn.get("content", ""), key=f"{key}_{view.task_id}_{i}", mode=mode,
                      empty_label="(empty message)")


def local_time(when: dt.datetime | None) -> str:
    """A stored time (UTC) in the viewer's own time zone (the browser's, from st.context), without an offset;
    "… UTC" when the browser did not say."""
    if when is None:
        return ""
    try:
        tz = ZoneInfo(st.context.timezone) if isinstance(st.context.timezone, str) else None
    except Exception:  # noqa: BLE001 - no request context, or a zone name this system does not know
        tz = None
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(tz or dt.UTC).strftime("%Y-%m-%d %H:%M") + ("" if tz else " UTC")


def local_times(df: Any, *columns: str) -> Any:
    """A copy of a DataFrame whose time columns (UTC) read as local_time does: "2026-12-02 04:10", no offset."""
    import pandas as pd

    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = [local_time(pd.Timestamp(v).to_pydatetime()) if v is not None and not pd.isna(v) else ""
                      for v in out[c]]
    return out


def human_columns(df: Any, names: dict[str, str] | None = None) -> Any:
    """A DataFrame with column names a person reads ("median s / task", not `median_seconds`): `names` first,
    then COLUMN_WORDS, else the name with spaces for underscores."""
    words = {**COLUMN_WORDS, **(names or {})}
    return df.rename(columns={c: words.get(c, str(c).replace("_", " ")) for c in df.columns})


COLUMN_WORDS = {"median_seconds": "median s / task", "p90_seconds": "p90 s / task", "labels_per_task": "labels per task",
                "labels_today": "labels today", "task_id": "task", "annotator_a": "annotator", "annotator_b":
                "other annotator", "shared_tasks": "shared items", "percent_agreement": "agreement",
                "cohen_kappa": "Cohen's kappa", "agrees_with_majority": "agrees with majority", "first": "first label",
                "last": "last label", "fails_instruction": "fails the instruction"}


# ------------------------------------------------------------------ projects, guidelines, progress
def project_picker(where: Any = None) -> dict[str, Any] | None:
    """A project selector (sidebar by default); returns {"id", "name", "guidelines", ...} or None."""
    with db() as s:
        rows = [{"id": p.id, "name": p.name, "guidelines": p.guidelines or "",
                 "labels_per_task": p.labels_per_task, "settings": dict(p.settings or {})}
                for p in projects.list_projects(s)]
    if not rows:
        return None
    by_id = {r["id"]: r for r in rows}
    # The widget's own key is cleared by Streamlit on pages that do not show it (Users, Models...); the
    # choice is kept under a second key so that coming back to a labeling page keeps the project.
    chosen = st.session_state.get(PROJECT_KEY, st.session_state.get(PROJECT_KEY + ":kept"))
    st.session_state[PROJECT_KEY] = chosen if chosen in by_id else rows[0]["id"]
    container = where if where is not None else st.sidebar
    container.selectbox("Project", list(by_id), format_func=lambda i: by_id[i]["name"], key=PROJECT_KEY)
    st.session_state[PROJECT_KEY + ":kept"] = st.session_state[PROJECT_KEY]
    return by_id[st.session_state[PROJECT_KEY]]


@st.dialog("Guidelines", width="large")
def guidelines_dialog(project: dict[str, Any]) -> None:
    st.markdown(f"**{project['name']}**")
    if project["guidelines"].strip():
        st.markdown(project["guidelines"])
    else:
        st.info("This project has no guidelines yet.")


def guidelines_button(project: dict[str, Any], where: Any = None) -> None:
    container = where if where is not None else st.sidebar
    if container.button("Guidelines", icon=":material/menu_book:", key="guidelines_btn",
                        shortcut="G", width="stretch"):
        guidelines_dialog(project)


def labeling_page() -> tuple[dict[str, Any], dict[str, Any]]:
    """What every labeling page starts with: a signed-in user, a chosen project, the guidelines button."""
    from labeling_ui import auth  # auth imports this module

    user = auth.require_user()
    project = project_picker()
    if project is None:
        st.info("No projects yet. An admin creates one on the Projects page.")
        st.stop()
    guidelines_button(project)
    return user, project


def progress_line(user_id: int, project_id: int, kind: str | None = None) -> None:
    with db() as s:
        mine = stats.label_counts(s, project_id, user_id=user_id, kind=kind)  # this page's kind only
        left = assignment.tasks_left(s, user_id, project_id, kind=kind)
    what = plural(left, f"{kind} task" if kind else "task").split(" ", 1)[1]
    st.caption(f":material/check_circle: **{mine['today']}** done today · **{mine['total']}** in total · "
               f"**{left}** {what} left")


# ------------------------------------------------------------------ current task per page
def held_key(kind: str, project_id: int) -> str:
    return f"task:{kind}:{project_id}"


def current_task(user_id: int, project_id: int, kind: str, notify: Any = None) -> Any | None:
    """The task on screen for this page (leased through next_task), with the time it was first shown.
    `notify(message, icon)` says why the task changed when it did without this page's doing."""
    key = held_key(kind, project_id)
    view = st.session_state.get(key)
    if view is not None:
        with db() as s:
            still = assignment.holds(s, user_id, view.task_id)
        if not still:  # labelled or skipped in another tab (same user): show the next task, and say why
            (notify or (lambda m, i: st.toast(m, icon=i)))(
                f"Task #{view.task_id} was already finished (in another tab?); here is the next one.",
                ":material/tab:")
            st.session_state.pop(key, None)
            view = None
    if view is None:
        with db() as s:
            view = assignment.next_task(s, user_id, project_id, kind=kind)
        if view is None:
            st.session_state.pop(key, None)
            return None
        st.session_state[key] = view
        st.session_state[key + ":shown"] = time.time()
    return view


def seconds_on(kind: str, project_id: int) -> float:
    return round(time.time() - st.session_state.get(held_key(kind, project_id) + ":shown", time.time()), 2)


def done_with(kind: str, project_id: int) -> None:
    st.session_state.pop(held_key(kind, project_id), None)
    st.session_state.pop(held_key(kind, project_id) + ":shown", None)


def release_held_tasks(user_id: int) -> None:
    """Give back leases held by this browser session (sign-out), so others can take them at once."""
    for k, v in list(st.session_state.items()):
        if isinstance(k, str) and k.startswith("task:") and not k.endswith(":shown") and v is not None:
            try:
                with db() as s:
                    assignment.release_task(s, user_id, v.task_id)
            except ServiceError:
                pass


def empty_state(message: str) -> None:
    st.success(message, icon=":material/celebration:")


# Where tasks of each kind come from: in words for annotators (they cannot add tasks), the action for admins.
_ADMIN_HOW = {
    "compare": "Generate them from a model version: a **Generate responses and tasks** job on the Jobs page (tasks: compare, 2 responses "
               "per prompt), or `python -m rlhf.generate --project {p} --models MODEL --num_samples 2 --tasks compare`.",
    "rank": "Generate them from a model version: a **Generate responses and tasks** job on the Jobs page (tasks: rank, 4 responses per "
            "prompt), or `python -m rlhf.generate --project {p} --models MODEL --num_samples 4 --tasks rank`; "
            "ranked conversations (OASST) imported on the Import page make rank tasks too.",
    # importing ratings makes rate tasks that already have their rating (for reward training), not work to do
    "rate": "Generate them from a model version: a **Generate responses and tasks** job on the Jobs page (tasks: rate), or "
            "`python -m rlhf.generate --project {p} --models MODEL --tasks rate`.",
    "demonstrate": "Queue them on the Projects page, when importing prompts on the Import page, or with "
                   "`python -m rlhf.generate --project {p} --tasks demonstrate`.",
}


def no_tasks_state(user: dict[str, Any], project: dict[str, Any], kind: str) -> None:
    """Nothing to label: the project has no such tasks (say who adds them: words for an annotator, the action
    for an admin), none of them needs this user (all labelled, e.g. imported with their labels), or this user
    labelled or skipped them all."""
    from db.services import skips, tasks

    with db() as s:
        total = tasks.count_tasks(s, project["id"], kind)
        mine = stats.label_counts(s, project["id"], user_id=user["id"], kind=kind)["total"] if total else 0
        skipped = (sum(1 for t in skips.skipped_tasks(s, user["id"], project_id=project["id"], limit=500)
                       if t["kind"] == kind) if total and not mine else 0)
    admin = user.get("role") == "admin"
    if total == 0:
        how = (_ADMIN_HOW[kind].format(p=shlex.quote(project["name"])) if admin
               else f"An admin adds them: ask one to create {kind} tasks for this project.")
        st.info(f"No {kind} tasks in **{project['name']}** yet. " + how,
                icon=":material/hourglass_empty:")
    elif not mine and not skipped:
        st.info(f"No {kind} tasks in **{project['name']}** need a label from you: "
                + ("the only one has the labels it needs" if total == 1 else f"all {total} have the labels they need")
                + " (imported tasks come with theirs), or other annotators hold them now. "
                + ("More come from a generate job on the Jobs page." if admin
                   else f"Ask an admin for new {kind} tasks."), icon=":material/hourglass_empty:")
    else:
        empty_state(f"No {kind} tasks left for you in this project — thanks! Your labels and skips are in My "
                    "history.")


# Field names as a person says them (the services name fields as the code does).
FIELD_WORDS = {"labels_per_task": "labels per task", "text": "the text", "prompt": "the prompt",
               "messages": "the conversation", "model_version": "the model version", "num_samples": "responses "
               "per prompt", "response_ids": "the responses", "max_new_tokens": "max new tokens"}


def field_words(field: str) -> str:
    """`labels_per_task` -> "labels per task"; `messages[2].role` -> "messages turn 3, role"."""
    import re

    if field in FIELD_WORDS:
        return FIELD_WORDS[field]
    m = re.fullmatch(r"(\w+)\[(\d+)\](?:\.(\w+))?", field)
    if m:
        return f"{field_words(m[1])}, turn {int(m[2]) + 1}" + (f", {m[3]}" if m[3] else "")
    return field.replace("_", " ")


def in_words(e: Exception) -> str:
    """A service error as a sentence: no `file:line, field 'x':` prefix, no snake_case names. A file's line
    is said as "Line 3 of prompts.jsonl"; a field's name is put in words where the reason does not say it."""
    if not isinstance(e, InputError):
        text = str(e)
    else:
        reason = e.reason
        if e.field:
            # a file's own keys are quoted as they are written in it; a form's fields are said in words
            said = f"the “{e.field}” field" if (e.file or e.line is not None) else field_words(e.field)
            if reason == "missing field":
                reason = f"{said} is missing"
            elif reason.startswith("the "):  # a whole sentence already ("the demonstration has 3 characters")
                pass
            elif e.field in reason and not (e.file or e.line is not None):  # "labels_per_task must be >= 1" -> "labels per task must be >= 1"
                reason = reason.replace(e.field, said)
            elif said.removeprefix("the ") not in reason.lower() and f"'{e.field}'" not in reason:
                first = reason.split(" ", 1)[0]
                # "is set by the worker" reads on from the name; anything else gets the name in front
                reason = (f"{said} {reason}" if first in ("is", "must", "holds", "needs", "has", "a")
                          else f"{said}: {reason}")
        where = ""
        if e.line is not None:
            where = f"Line {e.line}" + (f" of {e.file}" if e.file else "") + ": "
        elif e.file:
            where = f"{e.file}: "
        text = where + reason
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?", ")")) else text + "."


def show_error(e: Exception, where: Any = None) -> None:
    """The error in words (in_words) at `where` (a placeholder under the field it is about), else here."""
    (where or st).error(in_words(e), icon=":material/error:")


def ordering_from_ranks(ranks: dict[int, int]) -> list[list[int]]:
    """{response_id: rank} (1 = best, equal ranks tie) -> [[best ids], [next ids], ...]."""
    groups: dict[int, list[int]] = {}
    for rid, r in ranks.items():
        groups.setdefault(int(r), []).append(rid)
    return [sorted(groups[r]) for r in sorted(groups)]


def rerun_fragment() -> None:
    """Rerun just the enclosing fragment (fast path), or the whole page when not in a fragment rerun
    (e.g. when the fragment ran as part of a full run, which is also what AppTest does)."""
    from streamlit.errors import StreamlitAPIException
    try:
        st.rerun(scope="fragment")
    except StreamlitAPIException:
        st.rerun()


# ------------------------------------------------------------------ shared labeling flow
def _flash_key(kind: str) -> str:
    return f"_flash:{kind}"


def task_header(kind: str, project: dict[str, Any], title: str) -> tuple[dict[str, Any], Any] | None:
    """Top of a labeling fragment: the last action's toast, title, progress, and the task on screen.

    Returns (user, task view), or None (after an empty state) when the queue is empty for this user.
    """
    from labeling_ui import auth  # auth imports this module

    user = auth.require_user()
    flash = st.session_state.pop(_flash_key(kind), None)
    top = st.columns([3, 2], vertical_alignment="bottom")
    top[0].subheader(f"{title} · {project['name']}")
    with top[1]:
        progress_line(user["id"], project["id"], kind)
        note = st.empty()
    # The last action's outcome sits in the header, where it covers nothing (a toast hid Response B).
    if flash:
        _note(note, *flash)
        scroll_to_top(f"{kind}:{time.time()}")
    view = current_task(user["id"], project["id"], kind, notify=lambda m, i: _note(note, m, i))
    if view is None:
        no_tasks_state(user, project, kind)
        return None
    return user, view


def _note(where: Any, message: str, icon: str) -> None:
    colour = "orange" if icon == ":material/warning:" else "green"
    where.markdown(f":{colour}[{icon} {message}]")


def scroll_to_top(nonce: str) -> None:
    """Scroll the page back to its top (the next task starts there, not where the last Submit was).
    `nonce` makes the script new, so the browser runs it again for each task."""
    st.html(f"<script>/* {nonce} */ for (const el of [document.scrollingElement, "
            "document.querySelector('[data-testid=\"stMain\"]'), "
            "document.querySelector('[data-testid=\"stAppViewContainer\"]')]) { if (el) el.scrollTop = 0; }"
            "</script>", unsafe_allow_javascript=True)


def task_action(kind: str, project_id: int, action: Any, flash: tuple[str, str] | Any,
                on_error: Any = None) -> None:
    """One user action on the task on screen: the service call in one transaction, then a toast and the
    next task. `flash` is (message, icon) or a function of the action's result returning one."""
    try:
        with db() as s:
            result = action(s)
    except ServiceError as e:
        (on_error or show_error)(e)
        return
    st.session_state[_flash_key(kind)] = flash(result) if callable(flash) else flash
    done_with(kind, project_id)
    rerun_fragment()


def _skip_key(prefix: str, task_id: int) -> str:
    return f"{prefix}_skipping_{task_id}"


def skipping(prefix: str, task_id: int) -> bool:
    """Whether the skip panel is open for this task: the page's own number keys stand down meanwhile (1-4 then
    choose a skip reason)."""
    return bool(st.session_state.get(_skip_key(prefix, task_id)))


def _set_state(key: str, value: Any) -> None:
    st.session_state[key] = value


def submit_skip_row(prefix: str, task_id: int, submit_label: str = "Submit", keys: bool = True,
                    middle: Any = None) -> tuple[bool, str | None]:
    """The Submit / Skip row under a task (Enter and S when `keys`): (submit pressed, skip reason or None).

    Skipping takes two steps: Skip (S) opens a panel, and only choosing a reason there (a click, or 1-4)
    skips; "Other" asks for the reason in words. Back (Esc) closes the panel. Keys end in the task id, so a
    click meant for a task no longer on screen does nothing. `middle()`, when given, draws between the two
    buttons (the comment field: one row less).
    """
    from labeling_ui.vocab import skip_reasons

    reasons = skip_reasons(prefix)  # Rate's name one response
    state, sk, ok = st.session_state, _skip_key(prefix, task_id), f"{prefix}_skip_other_open_{task_id}"
    if not state.get(sk):
        row = st.columns([2, 2, 1] if middle else [3, 1], vertical_alignment="bottom")
        submit = row[0].button(submit_label, key=f"{prefix}_submit_{task_id}", type="primary",
                               icon=":material/send:", shortcut="Enter" if keys else None, width="stretch")
        if middle:
            with row[1]:
                middle()
        row[-1].button("Skip…", key=f"{prefix}_skip_{task_id}", shortcut="S" if keys else None, width="stretch",
                      on_click=_set_state, args=(sk, True), help="Asks why first: nothing is skipped until you "
                                                                  "choose a reason")
        return submit, None
    chosen = None
    if middle:
        middle()
    with st.container(border=True, key=f"skip_panel_{prefix}"):
        st.markdown("**Skip this task?** Say why" + (" (press 1–4), or go back (Esc)." if keys else "."))
        cols = st.columns(len(reasons) + 1)
        for i, (col, reason) in enumerate(zip(cols, reasons)):
            other = reason == "Other"
            pressed = col.button(reason + ("…" if other else ""), key=f"{prefix}_skipwhy_{i}_{task_id}",
                                 shortcut=str(i + 1) if keys else None, width="stretch",
                                 type="primary" if other and state.get(ok) else "secondary",
                                 on_click=_set_state if other else None, args=(ok, True) if other else None)
            if pressed and not other:
                chosen = reason
        cols[-1].button("Back", key=f"{prefix}_skipback_{task_id}", shortcut="Escape" if keys else None,
                        width="stretch", icon=":material/undo:", on_click=_set_state, args=(sk, False))
        if state.get(ok):
            row = st.columns([3, 1], vertical_alignment="bottom")
            why = row[0].text_input("Why are you skipping it?", key=f"{prefix}_skip_other_{task_id}",
                                    placeholder="e.g. the prompt is in a language I do not read")
            if row[1].button("Skip task", key=f"{prefix}_skipgo_{task_id}", type="primary", width="stretch"):
                if (why or "").strip():
                    chosen = f"Other: {why.strip()}"
                else:
                    st.warning("Say in a few words why you are skipping it.")
    return False, chosen


def saved_message(created: bool, unchanged: bool, saved: str, what: str) -> tuple[str, str]:
    """The toast after a submit: saved; a repeat of the same answer; or a *different* answer for a task that
    was already labelled (e.g. in another tab), which was not saved."""
    if created:
        return saved, ":material/check:"
    if unchanged:
        return "Already saved — nothing changed", ":material/check:"
    return (f"Already labelled (another tab?): this {what} was NOT saved; change it in My history",
            ":material/warning:")


def skip_action(kind: str, project_id: int, user_id: int, task_id: int, reason: str) -> None:
    task_action(kind, project_id, lambda s: assignment.skip_task(s, user_id, task_id, reason),
                (f"Task #{task_id} skipped. Changed your mind? Undo it in My history.",
                 ":material/skip_next:"))


def raw_toggle(title: str, key: str, compact: bool = False) -> bool:
    """A response's heading with its "Raw" switch (show the exact characters, no formatting); `compact` for
    narrow panes (a bold title, no heading)."""
    head = st.columns([1, 1] if compact else [2, 1], vertical_alignment="center")
    head[0].markdown(f":small[**{title}**]" if compact else f"#### {title}")
    return head[1].toggle("Raw", key=key, help=None if compact else "Show exactly the characters the model "
                                                                     "wrote, unformatted")
