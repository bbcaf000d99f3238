"""`python -m rlhf.demo`: the database `make demo` runs on, built the way a real team would.

Migrates the database, creates `admin` / `annotator` accounts and a `demo` project of short verifiable prompts
(two-digit addition, word reversal, counting: ``pretrain.tasks``, shipped as db/demo_prompts.jsonl, each with
its `answer` in the prompt's metadata). Pretrains a tiny GPT with our own ``pretrain/`` on CPython's
documentation with such tasks mixed in, a quarter of them answered wrongly (no download; cached under
$INSTRUCTLOOP_HOME), so the base model answers the demo prompts in recognisable form, sometimes wrongly. It is
registered as the `demo-base` model version, and ``rlhf.generate`` samples its responses into compare and
demonstrate tasks. Re-running adds nothing twice.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from db.migrate import upgrade
from db.services import accounts, importers, projects, registry
from db.session import session_scope
from db.settings import database_url

PROMPTS = Path(__file__).resolve().parent.parent / "db" / "demo_prompts.jsonl"
N_PROMPTS = 60
USERS = (("admin", "admin-pass", "admin"), ("annotator", "annotator-pass", "annotator"))
GUIDELINES = """## The tasks
Every prompt has one right answer:
- `12+34=` — the sum (`46`);
- `reverse: sun red cat` — the same words in reverse order (`cat red sun`);
- `count: dog sun dog` — how many words follow `count:` (`3`).

## Comparing two responses
1. Only the first line of a response counts.
2. Prefer the **correct** response; **strong** when one is right and the other wrong.
3. Both wrong: prefer the one **closer** to the answer (a nearer number, fewer words out of place), *slight*;
   **both bad** when neither is closer.
4. Both right: **tie**.

## Writing a demonstration
Write just the answer, on one line, as above.

The demo model is tiny and learnt these tasks from a corpus where a quarter of the answers were wrong:
expect right answers, wrong answers and the odd piece of Python documentation.
"""
SAMPLING = ["--temperature", "1.0", "--max_new_tokens", "16"]


def prompt_rows(n: int = N_PROMPTS) -> list[dict[str, str]]:
    """The demo project's prompts (db/demo_prompts.jsonl) from the generator the corpus keeps them out of."""
    from pretrain.tasks import project_prompts

    return [{"prompt": e.prompt, "answer": e.answer, "task": e.family} for e in project_prompts(n)]


def write_prompts(path: Path = PROMPTS, n: int = N_PROMPTS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(n)), encoding="utf-8")
    return path


def bootstrap(url: str | None = None, *, model: str | None = None, steps: int = 800, samples: int = 2,
              quiet: bool = False) -> dict:
    url = url or database_url()
    upgrade(url)
    with session_scope(url) as s:
        for name, pw, role in USERS:
            if not any(u.username == name for u in accounts.list_users(s)):
                accounts.create_user(s, name, pw, role=role)
        projects.ensure_project(s, "demo", guidelines=GUIDELINES, labels_per_task=1,
                                settings={"min_demonstration_chars": 1, "render": "plain"})
        imp = importers.import_prompts(s, PROMPTS, "demo", filename=PROMPTS.name)
    if not quiet:
        print(imp.summary())
    config: dict = {"path": model}
    if model is None:
        from pretrain.pipeline import DEMO_CORPUS, build_demo_model

        model = str(build_demo_model(steps=steps, vocab_size=2048, progress=not quiet))
        config = {"source": "pretrain.pipeline.build_demo_model", "steps": steps, "vocab_size": 2048,
                  "corpus": DEMO_CORPUS}
    with session_scope(url) as s:
        mv = registry.get_or_register(s, "demo-base", "base", model, config=config)
        name = mv.name
    from trl import TrlParser

    from rlhf.generate import GenerateArgs, run
    from rlhf.runs import setup_logging

    # generate's run(), not its main(): main prints the summary as JSON after run() has logged it, and this
    # prints it once more in words below (make demo showed it three times).
    setup_logging()
    (args,) = TrlParser((GenerateArgs,)).parse_args_and_config(args=[
        "--project", "demo", "--models", name, "--num_samples", str(samples), "--tasks", "compare,demonstrate",
        "--pairs_per_prompt", "1", *SAMPLING, "--database_url", url] + ([] if not quiet else ["--no_progress"]))
    summary = run(args)
    if not quiet:
        print(f"demo data ready: project 'demo', {summary['prompts']} prompts, "
              f"{summary['tasks']['compare']['created']} new compare tasks, model version {name!r}")
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlhf.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="database URL (default $DATABASE_URL or sqlite:///data/instructloop.sqlite3)")
    ap.add_argument("--model", help="HF model dir or hub id to sample from (default: pretrain the tiny demo model)")
    ap.add_argument("--steps", type=int, default=800, help="pretraining steps of the demo model (default 800)")
    ap.add_argument("--samples", type=int, default=2, help="responses per prompt (default 2: one compare pair)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--write-prompts", action="store_true",
                    help=f"rewrite {PROMPTS.name} from pretrain.tasks (the first {N_PROMPTS} project prompts) and exit")
    a = ap.parse_args(argv)
    if a.write_prompts:
        print(write_prompts())
        return
    from pretrain.pipeline import PretrainingInterrupted

    try:
        bootstrap(a.url, model=a.model, steps=a.steps, samples=a.samples, quiet=a.quiet)
    except PretrainingInterrupted as e:  # stopped mid-pretraining: seed nothing from a half-trained model
        print(f"demo stopped: {e}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
