"""Preference export: ranking pairs grouped by task (per ranking under --aggregate all), every vote under
--aggregate all in its own direction, tie rows as documented."""
from __future__ import annotations

from collections import Counter, defaultdict

from db.models import Response, Task
from db.services import assignment, content, export, labels, projects, tasks
from tests.db_helpers import make_compare_project, make_users


def _pairs_by_group(rows):
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(frozenset((r["chosen"], r["rejected"])))
    return groups


def _rank_all(session, users, pid, order):
    """Each user ranks every rank task it is given; `order(view)` gives the ordering."""
    for u in users:
        while (v := assignment.next_task(session, u, pid)) is not None:
            labels.submit_ranking(session, u, v.task_id, order(v))


def test_two_rank_tasks_of_one_prompt_are_two_groups_without_duplicate_pairs(session):
    (u,) = make_users(session, 1)
    p = projects.create_project(session, "r")
    pr, _ = content.add_prompt(session, p.id, text="Name a colour.")
    r = [content.add_response(session, pr.id, f"colour {i}")[0].id for i in range(4)]
    t1, _ = tasks.create_task(session, p.id, "rank", pr.id, r[:3])
    t2, _ = tasks.create_task(session, p.id, "rank", pr.id, [r[0], r[1], r[3]])  # shares pairs with t1
    session.commit()
    _rank_all(session, [u], p.id, lambda v: [[x["id"]] for x in sorted(v.responses, key=lambda x: x["id"])])
    groups = _pairs_by_group(export.iter_preference_rows(session, project="r", conversational="never"))
    assert set(groups) == {f"task-{t1.id}", f"task-{t2.id}"}
    for pairs in groups.values():
        assert len(pairs) == 3 and len(set(pairs)) == 3  # C(3,2) pairs, none twice


def test_rankings_of_several_annotators_group_per_task_or_per_ranking_under_all(session):
    users = make_users(session, 2)
    p = projects.create_project(session, "r", labels_per_task=2)
    pr, _ = content.add_prompt(session, p.id, text="Name a colour.")
    r = [content.add_response(session, pr.id, f"colour {i}")[0].id for i in range(3)]
    t, _ = tasks.create_task(session, p.id, "rank", pr.id, r)
    session.commit()
    _rank_all(session, users, p.id, lambda v: [[r[0]], [r[1]], [r[2]]])
    maj = _pairs_by_group(export.iter_preference_rows(session, project="r", conversational="never"))
    assert {g: len(x) for g, x in maj.items()} == {f"task-{t.id}": 3}
    every = _pairs_by_group(export.iter_preference_rows(session, project="r", aggregate="all",
                                                        conversational="never"))
    assert len(every) == 2 and all(g.startswith(f"task-{t.id}-ranking-") for g in every)
    assert all(len(set(pairs)) == len(pairs) == 3 for pairs in every.values())


def test_aggregate_all_gives_every_vote_and_the_dissent_reversed(session):
    u = make_users(session, 3)
    pid, (tid,) = make_compare_project(session, n_tasks=1, overlap=3)
    for uid, choice, strength in zip(u, ["a", "a", "b"], ["clear", "strong", "slight"]):
        assignment.next_task(session, uid, pid)
        labels.submit_preference(session, uid, tid, choice, strength=strength)
    a, b = (session.get(Response, i).text for i in session.get(Task, tid).response_ids)
    rows = list(export.iter_preference_rows(session, project="p", aggregate="all", conversational="never"))
    assert Counter((x["chosen"], x["rejected"], x["margin"]) for x in rows) == Counter(
        {(a, b, 1.0): 1, (a, b, 2.0): 1, (b, a, 0.5): 1})
    (maj,) = export.iter_preference_rows(session, project="p", conversational="never")
    assert (maj["chosen"], maj["rejected"], maj["margin"]) == (a, b, 1.5)  # mean margin of the majority


def test_tie_rows_carry_which_kind_of_tie(session):
    u = make_users(session, 2)
    pid, (t1, t2) = make_compare_project(session, n_tasks=2)
    for uid, tid, choice in ((u[0], t1, "tie"), (u[1], t2, "both_bad")):
        assignment.next_task(session, uid, pid)
        labels.submit_preference(session, uid, tid, choice)
    rows = list(export.iter_preference_rows(session, project="p", include_ties=True))
    assert sorted(x["tie"] for x in rows) == ["both_bad", "tie"]
    assert all(x["margin"] == 0.0 for x in rows)


def _two_annotators_three_labels(session):
    u1, u2 = make_users(session, 2)
    pid, _ = make_compare_project(session, n_tasks=3, overlap=1)
    for uid in (u1, u1, u2):
        v = assignment.next_task(session, uid, pid)
        labels.submit_preference(session, uid, v.task_id, "a")
    session.commit()


def test_raw_export_pseudonymises_annotators_with_a_salt_per_export(session):
    import hashlib

    _two_annotators_three_labels(session)
    first = [r["annotator"] for r in export.iter_raw_rows(session, project="p")]
    second = [r["annotator"] for r in export.iter_raw_rows(session, project="p")]
    assert first[0] == first[1] != first[2]  # one name per annotator within an export
    assert not {"ann0", "ann1"} & set(first)
    assert set(first).isdisjoint(second)  # two exports cannot be linked by the names
    # Not the plain hash of the user id (anyone could rebuild that table from small ids).
    assert not {"ann-" + hashlib.sha256(f"instructloop:{i}".encode()).hexdigest()[:10] for i in range(1, 4)} & set(first)
    salted = [[r["annotator"] for r in export.iter_raw_rows(session, project="p", salt="s1")] for _ in range(2)]
    assert salted[0] == salted[1] != [r["annotator"] for r in export.iter_raw_rows(session, project="p", salt="s2")]
    named = [r["annotator"] for r in export.iter_raw_rows(session, project="p", with_usernames=True)]
    assert named == ["ann0", "ann0", "ann1"]


def test_raw_export_cli_salt_reruns_to_the_same_file_and_never_writes_the_salt(db_url, tmp_path):
    import json

    from db.cli import main
    from db.session import session_factory

    with session_factory(db_url)() as s:
        _two_annotators_three_labels(s)
    out = tmp_path / "raw.jsonl"
    runs = []
    for _ in range(2):
        assert main(["--url", db_url, "export", "raw", "--project", "p", "--salt", "secret-salt", "-o", str(out)]) == 0
        runs.append(out.read_bytes())
    assert runs[0] == runs[1] and b"ann0" not in runs[0]
    manifest = out.with_name(out.name + ".manifest.json").read_text()
    assert "secret-salt" not in manifest and json.loads(manifest)["filters"]["annotators"] == "pseudonyms, given salt"
    assert main(["--url", db_url, "export", "raw", "--project", "p", "--with-usernames", "-o", str(out)]) == 0
    assert [json.loads(x)["annotator"] for x in out.read_text().splitlines()] == ["ann0", "ann0", "ann1"]


def test_export_file_is_json_dumps_of_the_rows_in_task_order(session, tmp_path, monkeypatch):
    """The file's template-written lines are byte for byte json.dumps(row, ensure_ascii=False) of the rows
    iter_preference_rows gives (what rlhf trains on), for every format; compare and rank tasks interleave in
    task id order, and small fetches make the rank queries run while the compare stream is open."""
    import json

    monkeypatch.setattr(export, "STREAM_ROWS", 2)
    monkeypatch.setattr(export, "CHUNK", 2)
    users = make_users(session, 2)
    p = projects.create_project(session, "mix", labels_per_task=2)
    odd = "caf\u00e9 \u2028\u2029 \x01\x1f \"q\" \\ \t\n \U0001f600 \x7f"
    for i in range(6):
        if i % 2:
            pr, _ = content.add_prompt(session, p.id, messages=[{"role": "system", "content": f"sys {odd}"},
                                                                 {"role": "user", "content": f"chat {i}"}])
        else:
            pr, _ = content.add_prompt(session, p.id, text=f"text {i} {odd}")
        r = [content.add_response(session, pr.id, f"reply {k} of {i} {odd}")[0].id for k in range(3)]
        if i % 3 == 2:
            tasks.create_task(session, p.id, "rank", pr.id, r)
        else:
            tasks.create_task(session, p.id, "compare", pr.id, r[:2])
    session.commit()
    choices = iter(["a", "tie", "b", "b", "both_bad", "a", "a", "b"])
    for u in users:
        while (v := assignment.next_task(session, u, p.id)) is not None:
            if v.kind == "rank":
                ids = sorted(x["id"] for x in v.responses)
                labels.submit_ranking(session, u, v.task_id, [[ids[1]], [ids[0], ids[2]]])
            else:
                labels.submit_preference(session, u, v.task_id, next(choices), strength="strong")
    session.commit()
    for options in ({}, {"fmt": "hh"}, {"conversational": "always"}, {"conversational": "never"},
                    {"aggregate": "all", "include_ties": True}, {"aggregate": "unanimous", "include_ties": True}):
        rows = list(export.iter_preference_rows(session, project="mix", **options))
        out = tmp_path / "mix.jsonl"
        m = export.export_file(session, "preferences", out, project="mix", **options)
        assert out.read_text(encoding="utf-8") == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert m["rows"] == len(rows) > 0
    everything = list(export.iter_preference_rows(session, project="mix", aggregate="all", include_ties=True,
                                                  conversational="never"))
    prompt_no = [int(r["chosen"].split(" of ")[1].split()[0]) for r in everything]
    assert prompt_no == sorted(prompt_no) and set(prompt_no) == set(range(6))  # by task id, both kinds
    assert sum("group" in r for r in everything) == 2 * 2 * 3  # two rank tasks, two rankings, C(3,2) pairs
    # Each label counted once, though a ranking gives three rows.
    m = export.export_file(session, "preferences", tmp_path / "all.jsonl", project="mix", aggregate="all",
                           include_ties=True)
    assert m["labels"] == {"preference_labels": {"count": 8, "max_id": 8}, "rankings": {"count": 4, "max_id": 4}}
