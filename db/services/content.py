"""Prompts and responses: content hashing, adding, rendering chats as text."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import settings
from db.models import Prompt, Response
from db.services import summary
from db.services.errors import InputError

CHAT_ROLES = ("system", "user", "assistant")


def text_length(value: Any) -> int:
    """Characters of text in a string, a list of chat turns or a nested JSON value (keys not counted)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_length(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(text_length(v) for v in value)
    return 0


def check_size(what: str, value: Any, *, field: str | None = None) -> None:
    """Refuse `value` when its text is over the configured limit for `what` (db.settings.SIZE_LIMITS: prompt,
    response, demonstration, comment), naming the limit and the variable that sets it."""
    n = text_length(value)
    limit = settings.size_limit(what)
    if n > limit:
        env = settings.SIZE_LIMITS[what][0]
        raise InputError(f"the {what} has {n:,} characters, over the limit of {limit:,} (set by {env})",
                         field=field or what)


def sha(obj: Any) -> str:
    data = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    # surrogatepass: text that cannot be stored still hashes (the same bytes for all other text); the write
    # itself refuses it (db.session), with a message
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def validate_messages(messages: Any, *, field: str = "messages") -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise InputError("must be a non-empty list of {role, content} turns", field=field)
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError("each turn needs 'role' and 'content'", field=f"{field}[{i}]")
        if m["role"] not in CHAT_ROLES:
            raise InputError(f"role must be one of {', '.join(CHAT_ROLES)}, not {m['role']!r}",
                             field=f"{field}[{i}].role")
        if not isinstance(m["content"], str):
            raise InputError("content must be a string", field=f"{field}[{i}].content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def prompt_hash(text: str | None, messages: list[dict[str, str]] | None) -> str:
    return sha({"messages": messages}) if messages else sha({"text": text})


def add_prompt(session: Session, project_id: int, *, text: str | None = None,
               messages: list[dict[str, str]] | None = None, source: str = "",
               meta: dict[str, Any] | None = None) -> tuple[Prompt, bool]:
    """Insert a prompt unless the same content exists in the project. Returns (prompt, created)."""
    if messages:
        messages = validate_messages(messages)
        # A one-turn chat is a plain prompt: store it as text so exports stay simple.
        if len(messages) == 1 and messages[0]["role"] == "user":
            text, messages = messages[0]["content"], None
    if not messages and not (text or "").strip():
        raise InputError("prompt is empty", field="prompt")
    check_size("prompt", messages or text, field="prompt")
    h = prompt_hash(text, messages)
    existing = session.scalar(select(Prompt).where(Prompt.project_id == project_id, Prompt.content_hash == h))
    if existing is not None:
        return existing, False
    p = Prompt(project_id=project_id, text=text if not messages else None, messages=messages or None,
               source=source, meta=meta or {}, content_hash=h)
    session.add(p)
    session.flush()
    summary.count_change(session, project_id, "prompt", None, "")  # the Dashboard's counts
    return p, True


def prompt_messages(prompt: Prompt) -> list[dict[str, str]]:
    """The prompt as chat turns (a text prompt is one user turn)."""
    return list(prompt.messages) if prompt.messages else [{"role": "user", "content": prompt.text or ""}]


def prompt_as_text(prompt: Prompt) -> str:
    if not prompt.messages:
        return prompt.text or ""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt.messages)


def add_response(session: Session, prompt_id: int, text: str, *, model_version_id: int | None = None,
                 params: dict[str, Any] | None = None, sample_index: int = 0) -> tuple[Response, bool]:
    """Insert a response unless the same (prompt, model, text, sample) exists. Returns (response, created)."""
    check_size("response", text, field="response")
    h = sha(text)
    existing = session.scalar(select(Response).where(
        Response.prompt_id == prompt_id, Response.content_hash == h, Response.sample_index == sample_index,
        Response.model_version_id.is_(None) if model_version_id is None
        else Response.model_version_id == model_version_id))
    if existing is not None:
        return existing, False
    r = Response(prompt_id=prompt_id, model_version_id=model_version_id, text=text, params=params or {},
                 sample_index=sample_index, content_hash=h)
    session.add(r)
    session.flush()
    return r, True


def list_prompts(session: Session, project_id: int) -> list[Prompt]:
    return list(session.scalars(select(Prompt).where(Prompt.project_id == project_id).order_by(Prompt.id)))


def responses_for_prompt(session: Session, prompt_id: int) -> list[Response]:
    return list(session.scalars(select(Response).where(Response.prompt_id == prompt_id).order_by(Response.id)))


def responses_for_prompts(session: Session, prompt_ids: list[int], *, model_version_id: int | None = None
                          ) -> dict[int, list[Response]]:
    """Responses of many prompts in a few queries (optionally of one model version), by id."""
    out: dict[int, list[Response]] = {pid: [] for pid in prompt_ids}
    for lo in range(0, len(prompt_ids), 1000):
        q = select(Response).where(Response.prompt_id.in_(prompt_ids[lo:lo + 1000]))
        if model_version_id is not None:
            q = q.where(Response.model_version_id == model_version_id)
        for r in session.scalars(q.order_by(Response.id)):
            out[r.prompt_id].append(r)
    return out
