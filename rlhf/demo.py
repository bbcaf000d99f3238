"""`python -m rlhf.demo`: the database `make demo` runs on, built the way a real team would.

Migrates the database, creates `admin` / `annotator` accounts, a `demo` project with prompts shipped in
the package, pretrains a tiny GPT on the documentation inside CPython (no download; cached under
$INSTRUCTLOOP_HOME), registers it as a `base` model version and samples responses with `rlhf.generate`
to create compare, rank and demonstrate tasks. Re-running adds nothing twice.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from db.migrate import upgrade
from db.services import accounts, importers, projects, registry
from db.session import session_scope
from db.settings import database_url

PROMPTS = Path(__file__).resolve().parent.parent / "db" / "demo_prompts.jsonl"
USERS = (("admin", "admin-pass", "admin"), ("annotator", "annotator-pass", "annotator"))
GUIDELINES = """## Comparing responses
1. Read the prompt (all turns of a conversation), then both responses.
2. Prefer the response that is more **helpful**, **honest** and **harmless**.
3. *Strength*: slight when you hesitate, strong when one is clearly better.
4. Flag hallucinations, failures to follow the instruction and anything harmful.
5. The demo model is tiny and was trained for minutes on Python's documentation: expect odd text,
   judge which is *less* bad, and use **both bad** freely.
"""


def bootstrap(url: str | None = None, *, model: str | None = None, steps: int = 300, samples: int = 3,
              quiet: bool = False) -> dict:
    url = url or database_url()
    upgrade(url)
    with session_scope(url) as s:
        for name, pw, role in USERS:
            if not any(u.username == name for u in accounts.list_users(s)):
                accounts.create_user(s, name, pw, role=role)
        projects.ensure_project(s, "demo", guidelines=GUIDELINES, labels_per_task=1,
                                settings={"min_demonstration_chars": 20})
        imp = importers.import_prompts(s, PROMPTS, "demo", filename=PROMPTS.name)
    if not quiet:
        print(imp.summary())
    if model is None:
        from pretrain.pipeline import build_demo_model
        model = str(build_demo_model(steps=steps, progress=not quiet))
    with session_scope(url) as s:
        mv = registry.get_or_register(s, "demo-base", "base", model,
                                      config={"source": "pretrain.pipeline.build_demo_model", "steps": steps})
        name = mv.name
    from rlhf.generate import main as generate
    summary = generate(["--project", "demo", "--models", name, "--num_samples", str(samples),
                        "--tasks", "compare,rank,demonstrate", "--pairs_per_prompt", "1",
                        "--temperature", "0.9", "--top_p", "0.95", "--max_new_tokens", "48",
                        "--database_url", url] + ([] if not quiet else ["--no_progress"]))
    if not quiet:
        print("demo ready: sign in as admin / admin-pass or annotator / annotator-pass")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="database URL (default $DATABASE_URL or sqlite:///data/instructloop.sqlite3)")
    ap.add_argument("--model", help="HF model dir or hub id to sample from (default: pretrain the tiny demo model)")
    ap.add_argument("--steps", type=int, default=300, help="pretraining steps of the demo model (default 300)")
    ap.add_argument("--samples", type=int, default=3, help="responses per prompt (default 3: pairs and rankings)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    a = ap.parse_args(argv)
    bootstrap(a.url, model=a.model, steps=a.steps, samples=a.samples, quiet=a.quiet)


if __name__ == "__main__":
    main()
