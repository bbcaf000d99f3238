"""Seed a database with a small labeling project (tests, browser test, benchmark, local demo).

`python -m labeling_ui.seed` seeds DATABASE_URL. Everything goes through db services.
"""
from __future__ import annotations

import argparse
from typing import Any

from db.migrate import create_schema
from db.services import accounts, content, projects, registry, tasks
from db.session import session_scope

XSS_TEXT = ('Here is some HTML: <script>window.__xss = "script"</script> and an image '
            '<img src=x onerror="window.__xss=1"> — both must show as text.')
GUIDELINES = """## How to compare
1. Read the prompt, then both responses.
2. Prefer the response that is **helpful, honest and harmless**.
3. Use *strength* for how sure you are; flag hallucinations and harmful content.
"""
TOPICS = ["sorting a list in Python", "the boiling point of water", "writing a haiku about autumn",
          "explaining recursion", "what a hash map is", "reversing a string", "the capital of France",
          "how photosynthesis works", "git rebase vs merge", "a limerick about a cat"]


def seed(url: str | None = None, *, n_compare: int = 24, n_rank: int = 3, n_demonstrate: int = 3,
         project: str = "demo", password: str = "password123", xss: bool = True,
         create_tables: bool = True) -> dict[str, Any]:
    """Create admin `admin` and annotators `alice`, `bob` (password `password123`), one project with
    compare / rank / demonstrate tasks. The first compare task's response A contains HTML when `xss`."""
    if create_tables:
        create_schema(url)
    with session_scope(url) as s:
        admin = accounts.create_user(s, "admin", password, role="admin", display_name="Ada Admin")
        alice = accounts.create_user(s, "alice", password, display_name="Alice Annotator")
        bob = accounts.create_user(s, "bob", password, display_name="Bob Annotator")
        p = projects.create_project(s, project, guidelines=GUIDELINES, labels_per_task=1)
        mv1 = registry.register_model_version(s, "base-v1", "base", "runs/base-v1")
        mv2 = registry.register_model_version(s, "sft-v1", "sft", "runs/sft-v1", parent="base-v1")
        compare_ids = []
        for i in range(n_compare):
            topic = TOPICS[i % len(TOPICS)]
            if i % 3 == 2:
                msgs = [{"role": "system", "content": "You are a concise assistant."},
                        {"role": "user", "content": f"Tell me about {topic}."},
                        {"role": "assistant", "content": "Sure — short or detailed?"},
                        {"role": "user", "content": f"Short please (#{i})."}]
                pr, _ = content.add_prompt(s, p.id, messages=msgs, source="seed")
            else:
                pr, _ = content.add_prompt(s, p.id, text=f"Question {i + 1}: tell me about {topic}.", source="seed")
            a_text = XSS_TEXT if (xss and i == 0) else (
                f"**Answer {i + 1}A.** About {topic}:\n\n- point one\n- point two\n\n"
                f"```python\nprint('example {i}')\n```")
            b_text = f"Answer {i + 1}B: a plain sentence about {topic}, costing $5 and $10."
            ra, _ = content.add_response(s, pr.id, a_text, model_version_id=mv1.id)
            rb, _ = content.add_response(s, pr.id, b_text, model_version_id=mv2.id)
            t, _ = tasks.create_task(s, p.id, "compare", pr.id, [ra.id, rb.id], shuffle=False, source="seed")
            compare_ids.append(t.id)
        for i in range(n_rank):
            pr, _ = content.add_prompt(s, p.id, text=f"Rank these answers about {TOPICS[i]}.", source="seed")
            rids = [content.add_response(s, pr.id, f"Ranked answer {j + 1} about {TOPICS[i]}.",
                                         model_version_id=mv1.id, sample_index=j)[0].id for j in range(4)]
            tasks.create_task(s, p.id, "rank", pr.id, rids, shuffle=False, source="seed")
        for i in range(n_demonstrate):
            pr, _ = content.add_prompt(s, p.id, text=f"Write an ideal answer: explain {TOPICS[-1 - i]}.",
                                       source="seed")
            tasks.create_task(s, p.id, "demonstrate", pr.id, source="seed")
        return {"project_id": p.id, "admin_id": admin.id, "alice_id": alice.id, "bob_id": bob.id,
                "compare_task_ids": compare_ids, "password": password}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default=None, help="database URL (default DATABASE_URL)")
    ap.add_argument("--compare", type=int, default=24)
    a = ap.parse_args()
    print(seed(a.url, n_compare=a.compare))
