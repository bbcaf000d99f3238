"""Human leaderboard: Bradley-Terry on hand-checkable cases, votes from compare labels and rankings, bootstrap
intervals (deterministic with a seed), win rate against the parent, lineage, RM scores, CLI and page."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from db import cli
from db.services import accounts, content, labels, leaderboard, projects, registry, tasks
from db.services.errors import InputError, ServiceError
from db.session import session_scope

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the fit

def test_nine_wins_of_ten_is_log_odds_nine():
    """A beats B 9 of 10: maximum likelihood says P(A beats B) = 0.9, i.e. 400*log10(9) = 381.7 Elo apart,
    around the mean of 1000."""
    a, b = np.zeros(10, int), np.ones(10, int)
    score = np.array([1.0] * 9 + [0.0])
    elo = leaderboard.to_elo(leaderboard.fit_bradley_terry(a, b, score, 2, prior=0.0))
    assert elo[0] - elo[1] == pytest.approx(400 * math.log10(9), abs=1e-6)
    assert elo.mean() == pytest.approx(1000)
    # The prior pulls towards each other, by the amount its first-order condition says: 9 - 10 p = prior * d / 2.
    d = leaderboard.fit_bradley_terry(a, b, score, 2, prior=0.1)
    diff = d[0] - d[1]
    assert 9 - 10 / (1 + math.exp(-diff)) == pytest.approx(0.1 * diff / 2, abs=1e-9)
    assert 0 < diff < math.log(9)


def test_ties_are_half_wins_and_three_players_agree_with_their_odds():
    # 4 ties + 3 wins + 3 losses: as if 5 of 10 each: equal.
    a, b = np.zeros(10, int), np.ones(10, int)
    score = np.array([0.5] * 4 + [1.0] * 3 + [0.0] * 3)
    s = leaderboard.fit_bradley_terry(a, b, score, 2, prior=0.0)
    assert s[0] == pytest.approx(s[1], abs=1e-9)
    # A beats B 2:1 odds, B beats C 2:1 odds, with enough games that the data fit BT exactly: A-C = 4:1 odds.
    rows = [(0, 1, 1.0)] * 20 + [(0, 1, 0.0)] * 10 + [(1, 2, 1.0)] * 20 + [(1, 2, 0.0)] * 10 + \
           [(0, 2, 1.0)] * 24 + [(0, 2, 0.0)] * 6
    a, b, sc = (np.array(x) for x in zip(*rows))
    s = leaderboard.fit_bradley_terry(a, b, sc.astype(float), 3, prior=0.0)
    assert s[0] - s[1] == pytest.approx(math.log(2), abs=1e-6)
    assert s[1] - s[2] == pytest.approx(math.log(2), abs=1e-6)


def test_unbeaten_stays_finite_with_the_prior():
    a, b = np.zeros(10, int), np.ones(10, int)
    s = leaderboard.fit_bradley_terry(a, b, np.ones(10), 2)
    assert np.isfinite(s).all() and s[0] > s[1] and s[0] - s[1] < 20


# ------------------------------------------------------------------------------------------ from labels

def _seed(url: str) -> dict:
    """base-v1 -> sft-v1 -> ppo-v1 (ppo has RM-judged metrics); human votes: sft beats base 9 of 10, ppo beats sft
    7 of 10 plus 2 ties and a both-bad; one ranking ppo > sft = base; a human-written response and a same-version
    pair that must not count."""
    rng = random.Random(0)
    with session_scope(url) as s:
        p = projects.create_project(s, "lb")
        ann = accounts.create_user(s, "ann", "password123")
        base = registry.register_model_version(s, "base-v1", "base", "/m/base")
        sft = registry.register_model_version(s, "sft-v1", "sft", "/m/sft", parent=base.id)
        ppo = registry.register_model_version(s, "ppo-v1", "policy", "/m/ppo", parent=sft.id,
                                              metrics={"eval/score": 1.25, "eval/reference_score": 0.5,
                                                       "eval/win_rate": 0.8})
        n = 0

        def vote(winner, loser, choice: str | None = None) -> None:
            nonlocal n
            n += 1
            pr, _ = content.add_prompt(s, p.id, text=f"prompt {n}")
            rw, _ = content.add_response(s, pr.id, f"w{n}", model_version_id=winner and winner.id)
            rl, _ = content.add_response(s, pr.id, f"l{n}", model_version_id=loser and loser.id)
            t, _ = tasks.create_task(s, p.id, "compare", pr.id, [rw.id, rl.id], rng=rng)
            s.flush()
            labels.submit_preference(s, ann.id, t.id, choice or ("a" if t.response_ids[0] == rw.id else "b"))

        for i in range(10):
            vote(sft, base) if i < 9 else vote(base, sft)
        for i in range(7):
            vote(ppo, sft)
        vote(sft, ppo)
        vote(ppo, sft, "tie")
        vote(ppo, sft, "both_bad")
        vote(ppo, None)  # a human-written response: not a battle between versions
        vote(ppo, ppo)  # one version against itself: neither
        pr, _ = content.add_prompt(s, p.id, text="rank me")
        rids = [content.add_response(s, pr.id, f"r{v.name}", model_version_id=v.id)[0].id for v in (ppo, sft, base)]
        t, _ = tasks.create_task(s, p.id, "rank", pr.id, rids)
        s.flush()
        labels.submit_ranking(s, ann.id, t.id, [[rids[0]], [rids[1], rids[2]]])
    return {"project": "lb"}


def test_leaderboard_from_labels(db_url):
    _seed(db_url)
    with session_scope(db_url) as s:
        df = leaderboard.battles(s, "lb")
        # 10 + 10 compare votes between versions, and the ranking's 3 pairs (ppo>sft, ppo>base, sft=base)
        assert len(df) == 23 and set(df["source"]) == {"compare", "rank"}
        lb = leaderboard.leaderboard(s, "lb", rounds=100, seed=3)
        again = leaderboard.leaderboard(s, "lb", rounds=100, seed=3)
        compare_only = leaderboard.leaderboard(s, "lb", rounds=0, include_rankings=False)
    t = lb.table.set_index("version")
    assert list(lb.table["version"]) == ["ppo-v1", "sft-v1", "base-v1"] and list(lb.table["rank"]) == [1, 2, 3]
    assert lb.battles == 23
    assert ((t["lower"] <= t["score"]) & (t["score"] <= t["upper"])).all()
    assert (t["upper"] > t["lower"]).all()
    assert lb.table.equals(again.table)  # the same seed, the same table
    assert t.loc["sft-v1", "votes"] == 10 + 10 + 2 and t.loc["ppo-v1", "votes"] == 12
    # sft vs its parent: 9 of 10 compare votes, plus the ranking's tie
    assert t.loc["sft-v1", "votes_vs_parent"] == 11
    assert t.loc["sft-v1", "win_rate_vs_parent"] == pytest.approx(9.5 / 11)
    # ppo vs sft: 7 wins, 1 loss, 2 ties (tie, both bad) and the ranking's win
    assert t.loc["ppo-v1", "win_rate_vs_parent"] == pytest.approx((7 + 0.5 + 0.5 + 1) / 11)
    assert pd.isna(t.loc["base-v1", "win_rate_vs_parent"]) and pd.isna(t.loc["base-v1", "parent"])
    assert t.loc["ppo-v1", "lineage"] == "base-v1 → sft-v1 → ppo-v1"
    assert (t.loc["ppo-v1", "rm_score"], t.loc["ppo-v1", "rm_win_rate"]) == (1.25, 0.8)
    assert pd.isna(t.loc["sft-v1", "rm_score"])
    assert abs(lb.table["score"].mean() - 1000) < 1e-6
    h = lb.head_to_head.set_index(["version_a", "version_b"])
    assert h.loc[("base-v1", "sft-v1"), "votes"] == 11
    assert h.loc[("base-v1", "sft-v1"), "a_win_rate"] == pytest.approx(1.5 / 11)
    assert compare_only.battles == 20 and compare_only.table["lower"].isna().all()


def test_leaderboard_empty_and_bad_input(db_url):
    with session_scope(db_url) as s:
        projects.create_project(s, "none")
        lb = leaderboard.leaderboard(s, "none")
        assert lb.battles == 0 and lb.table.empty and list(lb.table.columns) == leaderboard.COLUMNS
        with pytest.raises(InputError, match="rounds"):
            leaderboard.leaderboard(s, rounds=-1)
        with pytest.raises(ServiceError, match="unknown project"):
            leaderboard.leaderboard(s, "missing")


def test_cli(sqlite_url, capsys):
    _seed(sqlite_url)
    assert cli.main(["--url", sqlite_url, "leaderboard", "--project", "lb", "--rounds", "50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in out["versions"]] == ["ppo-v1", "sft-v1", "base-v1"] and out["battles"] == 23
    assert cli.main(["--url", sqlite_url, "leaderboard", "--rounds", "20"]) == 0
    text = capsys.readouterr().out
    assert "23 votes between versions" in text and "base-v1 → sft-v1 → ppo-v1" in text
    assert cli.main(["--url", sqlite_url, "leaderboard", "--project", "nope"]) == 2
    assert "unknown project" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the page

def _page(url: str, monkeypatch, role: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DATABASE_URL", url)
    with session_scope(url) as s:
        u = accounts.create_user(s, f"{role}-x", "password123", role=role)
        uid = u.id
    at = AppTest.from_file(str(ROOT / "labeling_ui" / "app.py"), default_timeout=60)
    at.session_state["user"] = {"id": uid, "username": f"{role}-x", "display_name": "x", "role": role}
    return at.run()


def test_leaderboard_page(sqlite_url, monkeypatch):
    at = _page(sqlite_url, monkeypatch, "admin")
    at.switch_page("views/leaderboard.py").run()
    assert not at.exception
    assert any("No votes between two model versions yet" in i.value for i in at.info)
    _seed(sqlite_url)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("vega_lite_chart")) == 1
    df = at.dataframe[0].value
    assert list(df["version"])[:3] == ["ppo-v1", "sft-v1", "base-v1"]
    at.selectbox(key="lb_project").set_value("lb").run()
    assert not at.exception
    with session_scope(sqlite_url) as s:  # once a reward model judged the responses: its score beside, and a plot
        leaderboard.record_rm_scores(s, "lb", "rm-x", {"ppo-v1": {"score": 2.0, "responses": 14},
                                                       "base-v1": {"score": -1.0, "responses": 11}})
    at.run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 2
    df = at.dataframe[0].value.set_index("version")
    assert (df.loc["ppo-v1", "rm_judged"], df.loc["ppo-v1", "rm_judge"]) == (2.0, "rm-x")


def test_leaderboard_page_refuses_annotators(sqlite_url, monkeypatch):
    _seed(sqlite_url)
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    with session_scope(sqlite_url) as s:
        uid = accounts.get_user(s, "ann").id
    at = AppTest.from_file(str(ROOT / "labeling_ui" / "views" / "leaderboard.py"), default_timeout=60)
    at.session_state["user"] = {"id": uid, "username": "ann", "display_name": "ann", "role": "annotator"}
    at.run()
    assert any("for admins only" in e.value for e in at.error)
    assert not at.dataframe and not at.get("vega_lite_chart")


def test_cli_json_has_nulls_for_missing(sqlite_url, capsys):
    _seed(sqlite_url)
    assert cli.main(["--url", sqlite_url, "leaderboard", "--rounds", "0", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["versions"][-1]
    assert base["version"] == "base-v1" and base["parent"] is None and base["votes_vs_parent"] is None
    assert base["lower"] is None and base["rm_score"] is None


# ------------------------------------------------------------------------------------------ RM-judged scores

def test_rm_judged_scores_sit_beside_the_human_score(db_url):
    _seed(db_url)
    with session_scope(db_url) as s:
        rows = leaderboard.version_responses(s, "lb")
        # every response a version wrote (the human-written one left out): base 10 votes + the ranking, sft 20 + 1,
        # ppo 10 + 1 against a person + 2 against itself + 1
        by = pd.Series([r["version"] for r in rows]).value_counts().to_dict()
        assert by == {"sft-v1": 21, "ppo-v1": 14, "base-v1": 11}
        assert [r["version"] for r in leaderboard.version_responses(s, "lb", ["base-v1"])] == ["base-v1"] * 11
        assert {"w1", "l1"} <= {r["response"] for r in rows} and all("answer" not in r for r in rows)
        leaderboard.record_rm_scores(s, "lb", "rm-x", {"base-v1": {"score": -1.0, "responses": 11},
                                                       "ppo-v1": {"score": 2.0, "responses": 14, "accuracy": 0.5}})
        projects.create_project(s, "other")
        leaderboard.record_rm_scores(s, "other", "rm-y", {"base-v1": {"score": 5.0, "responses": 3}})
        with pytest.raises(InputError, match="numeric score"):
            leaderboard.record_rm_scores(s, "lb", "rm-x", {"sft-v1": {"score": "high", "responses": 1}})
        with pytest.raises(ServiceError):
            leaderboard.record_rm_scores(s, "lb", "rm-x", {"nope": {"score": 1.0, "responses": 1}})
        t = leaderboard.leaderboard(s, "lb", rounds=0).table.set_index("version")
        everywhere = leaderboard.leaderboard(s, rounds=0).table.set_index("version")
        stored = registry.resolve(s, "ppo-v1").metrics[leaderboard.RM_JUDGED]["lb"]
    assert (t.loc["ppo-v1", "rm_judged"], t.loc["ppo-v1", "rm_judge"]) == (2.0, "rm-x")
    assert (t.loc["base-v1", "rm_judged"], t.loc["base-v1", "rm_judge"]) == (-1.0, "rm-x")  # this project's
    assert pd.isna(t.loc["sft-v1", "rm_judged"]) and pd.isna(t.loc["sft-v1", "rm_judge"])
    assert everywhere.loc["base-v1", "rm_judged"] == 5.0  # all projects: its newest entry
    assert (stored["responses"], stored["accuracy"]) == (14, 0.5)
    assert t.loc["ppo-v1", "rm_score"] == 1.25  # PPO's own held-out evaluation is still there
    # another judge for one version: the project's other numbers (another scale) go; other projects' stay
    with session_scope(db_url) as s:
        leaderboard.record_rm_scores(s, "lb", "rm-z", {"ppo-v1": {"score": 7.0, "responses": 14}})
        t = leaderboard.leaderboard(s, "lb", rounds=0).table.set_index("version")
        base_judged = registry.resolve(s, "base-v1").metrics[leaderboard.RM_JUDGED]
    assert (t.loc["ppo-v1", "rm_judged"], t.loc["ppo-v1", "rm_judge"]) == (7.0, "rm-z")
    assert pd.isna(t.loc["base-v1", "rm_judged"])
    assert "lb" not in base_judged and base_judged["other"]["score"] == 5.0


def test_evaluate_responses_scores_every_version_and_records_it(sqlite_url, tmp_path, capsys):
    """`python -m rlhf.evaluate responses`: each version's mean RM score over its stored responses, as
    reward.score gives it, the share correct on verifiable prompts, recorded for the leaderboard."""
    from sqlalchemy import select
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from db.models import Prompt
    from rlhf import evaluate, reward
    from rlhf.formatting import format_sft_row
    from tests import rlhf_helpers as H

    lm = H.build_tiny_lm(tmp_path / "lm", texts=H.corpus(60) + [f"w{i} l{i} prompt {i}" for i in range(40)])
    rm_dir = tmp_path / "rm"  # a random reward head on the tiny LM: any fixed scorer does
    AutoModelForSequenceClassification.from_pretrained(lm, num_labels=1).save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(lm).save_pretrained(rm_dir)
    _seed(sqlite_url)
    with session_scope(sqlite_url) as s:
        registry.register_model_version(s, "rm-t", "reward", str(rm_dir))
        p1 = s.scalars(select(Prompt).where(Prompt.text == "prompt 1")).one()  # sft's w1 against base's l1
        p1.meta = {"answer": "w1"}
    out = tmp_path / "res.json"
    res = evaluate.main(["responses", "--reward", "rm-t", "--project", "lb", "--database_url", sqlite_url,
                         "--batch_size", "5", "--out", str(out)])
    assert json.loads(out.read_text())["versions"] == res["versions"]
    v = res["versions"]
    assert {k: e["responses"] for k, e in v.items()} == {"base-v1": 11, "sft-v1": 21, "ppo-v1": 14}
    assert (v["sft-v1"]["accuracy"], v["base-v1"]["accuracy"]) == (1.0, 0.0) and "accuracy" not in v["ppo-v1"]

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tok = AutoTokenizer.from_pretrained(rm_dir)
    model.config.pad_token_id = tok.pad_token_id
    chat = reward.trained_with_chat(model, tok)
    with session_scope(sqlite_url) as s:
        rows = leaderboard.version_responses(s, "lb", ["sft-v1"])
    f = [format_sft_row({"prompt": r["prompt"], "completion": r["response"]}, chat) for r in rows]
    expect = reward.score(model, tok, [x["prompt"] for x in f], [x["completion"] for x in f])
    assert v["sft-v1"]["score"] == pytest.approx(sum(expect) / len(expect), abs=1e-4)
    assert len({round(x, 4) for x in expect}) > 1  # the scorer tells responses apart: the mean means something
    with session_scope(sqlite_url) as s:
        t = leaderboard.leaderboard(s, "lb", rounds=0).table.set_index("version")
    assert t.loc["sft-v1", "rm_judged"] == pytest.approx(v["sft-v1"]["score"]) and t.loc["sft-v1", "rm_judge"] == "rm-t"

    # --no_record leaves what is recorded; a language model is no judge; a project without model responses
    with session_scope(sqlite_url) as s:
        leaderboard.record_rm_scores(s, "lb", "rm-t", {"sft-v1": {"score": 9.0, "responses": 1}})
    evaluate.main(["responses", "--reward", "rm-t", "--project", "lb", "--database_url", sqlite_url, "--no_record"])
    with session_scope(sqlite_url) as s:
        assert registry.resolve(s, "sft-v1").metrics[leaderboard.RM_JUDGED]["lb"]["score"] == 9.0
        projects.create_project(s, "empty")
    capsys.readouterr()
    for argv, why in ((["--reward", "sft-v1", "--project", "lb"], "not a reward model"),
                      (["--reward", "rm-t", "--project", "empty"], "no responses of model versions")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["responses", *argv, "--database_url", sqlite_url])
        assert e.value.code == 2 and why in capsys.readouterr().err, argv


def _display(df) -> pd.DataFrame:
    """A data grid's cells as the page shows them (the Styler's display values), by row and column."""
    import pyarrow as pa

    shown = pa.ipc.open_stream(df.proto.arrow_data.styler.display_values).read_pandas()
    shown.columns = list(df.value.columns)
    return shown


def test_leaderboard_page_shows_a_dash_for_missing_numbers_and_names_only_its_columns(sqlite_url, monkeypatch):
    at = _page(sqlite_url, monkeypatch, "admin")
    _seed(sqlite_url)
    at.switch_page("views/leaderboard.py").run()
    assert not at.exception
    intro = at.caption[0].value
    assert "eval/score" not in intro and "RM score" not in intro  # the intro names no column the table may lack
    shown = _display(at.dataframe[0]).set_index("version")
    assert (shown.loc["base-v1", "parent"], shown.loc["base-v1", "votes_vs_parent"]) == ("—", "—")
    assert (shown.loc["base-v1", "rm_judged"], shown.loc["base-v1", "rm_judge"]) == ("—", "—")
    assert shown.loc["ppo-v1", "rm_score"] == "1.250" and shown.loc["ppo-v1", "rm_win_rate"] == "80%"
    assert "None" not in shown.to_string()
    assert any("PPO's `eval/score`" in c.value for c in at.caption[1:])  # said under the table, as it has them
    with session_scope(sqlite_url) as s:  # no version with a policy evaluation: neither the columns nor the words
        registry.update_metrics(s, "ppo-v1", {"eval/score": None, "eval/reference_score": None, "eval/win_rate": None})
    at.run()
    assert not at.exception
    assert "rm_score" not in at.dataframe[0].value.columns
    assert not any("eval/score" in c.value for c in at.caption)
