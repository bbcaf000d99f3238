"""Good/bad ratings of single responses as training rows: TRL's unpaired preference format
``{prompt, completion, label}``, from the database (``--project``: ``db.services.export.iter_rating_rows``, the
iterator ``python -m db export ratings`` writes) or from that JSONL (``--dataset``). Shared by
``rlhf.train_kto`` and the pointwise reward model (``rlhf.train_reward --from_ratings``), with the same
prompt-hash train/eval split as the other jobs (``rlhf.data.split_by_prompt``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from db.services.errors import InputError
from rlhf.data import Rows, file_source, formatted_datasets, read_jsonl, rows_from_db
from rlhf.formatting import format_sft_row, is_chat

RATING_COLUMNS = ("prompt", "completion", "label")


def _check_row(r: dict[str, Any]) -> None:
    missing = [c for c in RATING_COLUMNS if c not in r]
    if missing:
        raise InputError(f"missing column(s) {', '.join(missing)} (expected {', '.join(RATING_COLUMNS)}: TRL's "
                         "unpaired preference format)", field=missing[0])
    for c in ("prompt", "completion"):
        v = r[c]
        if not (isinstance(v, str) and v.strip()) and not (is_chat(v) and v):
            raise InputError("must be non-empty text or chat turns", field=c)
    if not isinstance(r["label"], bool):
        raise InputError(f"must be true or false, not {r['label']!r}", field="label")


def check_rating_rows(rows: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """Every row has a non-empty prompt and completion (text or chat turns) and a boolean label."""
    if not rows:
        raise InputError(f"{where}: no rows")
    for i, r in enumerate(rows, 1):
        try:
            _check_row(r)
        except InputError as e:
            raise InputError(f"{where}: row {i}: {e.reason}", field=e.field) from e
    return rows


def rating_rows_from_db(url: str | None, project: str, aggregate: str = "majority") -> Rows:
    return rows_from_db(url, project, "iter_rating_rows", check_rating_rows,
                        f"project {project!r} has no ratings to train on (aggregate={aggregate}; an even split of "
                        "good and bad is left out under majority): rate responses on the Rate page or "
                        "python -m db import ratings FILE", "ratings", {"aggregate": aggregate})


def rating_rows_from_file(path: str | Path) -> Rows:
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        try:
            _check_row(r)
        except InputError as e:
            raise InputError(e.reason, file=str(path), line=i, field=e.field) from e
    return Rows(rows, file_source(path))


def load_rating_rows(url: str | None, project: str | None, dataset: str | None,
                     aggregate: str = "majority") -> Rows:
    if project:
        return rating_rows_from_db(url, project, aggregate)
    if dataset:
        return rating_rows_from_file(dataset)
    raise InputError("give --project NAME (database) or --dataset FILE.jsonl", field="project")


def format_rating_row(row: dict[str, Any], chat: bool) -> dict[str, Any]:
    """{prompt, completion, label} rendered as the model trains on it (chat turns, or plain text)."""
    return {**format_sft_row(row, chat), "label": bool(row["label"])}


def build_rating_datasets(rows: list[dict[str, Any]], chat: bool, eval_fraction: float,
                          max_rows: int | None = None, eval_rows: list[dict[str, Any]] | None = None):
    """→ (train Dataset, eval Dataset or None) of formatted {prompt, completion, label} rows, split by prompt."""
    return formatted_datasets(rows, format_rating_row, chat, eval_fraction, max_rows, eval_rows)


def label_counts(ds: Any) -> dict[str, int]:
    labels = list(ds["label"]) if ds is not None else []
    return {"good": sum(labels), "bad": len(labels) - sum(labels)}
