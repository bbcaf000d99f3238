"""The simulated annotator of the end-to-end loop (rlhf/simulate.py): its judgements, and that it labels through
the labeling services (next_task, submit_*, review) on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import Demonstration, PreferenceLabel
from db.services import content, importers, tasks
from db.session import session_scope
from rlhf.simulate import SimulatedAnnotator, accept_demonstrations, judge
from tests import rlhf_helpers as H


def test_judge_prefers_the_correct_then_the_closer_answer():
    assert judge("46", "46", "47") == ("a", "strong")
    assert judge("46", "50\nmore", "46\nmore") == ("b", "strong")  # the first line counts
    assert judge("46", "46", " 46 ") == ("tie", None)
    assert judge("46", "461", "46") == ("b", "strong")  # starting with the answer is not answering it
    assert judge("46", "45", "56") == ("a", "slight")
    assert judge("c b a", "a b c", "c b x") == ("b", "slight")
    assert judge("46", "44", "48") == ("both_bad", None)
    assert judge("46", "words", "more words") == ("both_bad", None)


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_annotator_labels_through_the_services(db_url, noise):
    H.make_project(db_url, "v")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in ((10, 20), (11, 22), (13, 31), (14, 41))]
    with session_scope(db_url) as s:
        importers.import_prompts(s, "".join(f'{{"prompt": "{r["prompt"]}", "answer": "{r["answer"]}"}}\n'
                                            for r in rows).encode(), "v", filename="p.jsonl")
        right = {}
        from db.services import projects

        pid = projects.get_project(s, "v").id
        for p in content.list_prompts(s, pid):
            good, _ = content.add_response(s, p.id, p.meta["answer"])
            bad, _ = content.add_response(s, p.id, str(int(p.meta["answer"]) + 1))
            t, _ = tasks.create_task(s, pid, "compare", p.id, [good.id, bad.id])
            right[t.id] = "a" if t.response_ids[0] == good.id else "b"
            tasks.create_task(s, pid, "demonstrate", p.id)
        s.commit()
    ann = SimulatedAnnotator(db_url, "ann-v", "v", noise=noise, seed=1)
    assert ann.label("compare") == 4 and ann.label("demonstrate") == 4
    assert ann.label("compare") == 0  # nothing left for this annotator
    assert accept_demonstrations(db_url, "v", "admin-v") == 4
    with session_scope(db_url) as s:
        got = {lab.task_id: lab.choice for lab in s.scalars(select(PreferenceLabel))}
        demos = list(s.scalars(select(Demonstration)))
    if noise == 0:
        assert got == right
    else:
        assert ann.counts["noisy"] == 4
    assert sorted(d.text for d in demos) == sorted(r["answer"] for r in rows)
    assert {d.status for d in demos} == {"accepted"}
