"""`make demo`'s seeding (python -m rlhf.demo) on a fresh database, with a tiny local model."""
from __future__ import annotations

from sqlalchemy import func, select

from db.models import Response, Task
from db.services import accounts, projects
from db.session import session_scope


def test_demo_bootstrap_seeds_once(empty_db_url, tmp_path):
    from pretrain.pipeline import build_tiny_model
    from rlhf.demo import bootstrap

    model = build_tiny_model(tmp_path / "tiny", train_steps=2)
    first = bootstrap(empty_db_url, model=str(model), samples=3, quiet=True)
    assert first["tasks"]["compare"]["created"] == first["tasks"]["rank"]["created"] == first["prompts"] > 20
    with session_scope(empty_db_url) as s:
        assert accounts.authenticate(s, "admin", "admin-pass").role == "admin"
        assert accounts.authenticate(s, "annotator", "annotator-pass").role == "annotator"
        pid = projects.get_project(s, "demo").id
        n_tasks = s.scalar(select(func.count()).select_from(Task).where(Task.project_id == pid))
        n_resp = s.scalar(select(func.count()).select_from(Response))
    assert n_tasks == 3 * first["prompts"] and n_resp == 3 * first["prompts"]
    again = bootstrap(empty_db_url, model=str(model), samples=3, quiet=True)  # make demo twice
    assert again["responses"]["generated"] == 0
    with session_scope(empty_db_url) as s:
        assert s.scalar(select(func.count()).select_from(Task)) == n_tasks
