"""pretrain.prepare: the train/val split of a document depends only on (seed, its text)."""
from __future__ import annotations

import numpy as np

from pretrain.data import load_split, read_meta
from pretrain.prepare import prepare, split_of

DOCS = [f"Document number {i}: the quick brown fox {'jumps ' * (i % 5)}over the lazy dog." for i in range(60)]


def _docs_by_split(d) -> dict[str, set[tuple[int, ...]]]:
    eos = read_meta(d)["eos_token_id"]
    out = {}
    for split in ("train", "val"):
        ids = np.asarray(load_split(d, split)).tolist()
        docs, cur = set(), []
        for t in ids:
            if t == eos:
                docs.add(tuple(cur))
                cur = []
            else:
                cur.append(t)
        assert not cur
        out[split] = docs
    return out


def test_inserting_a_document_does_not_move_the_others(tmp_path):
    base = prepare(tmp_path / "a", DOCS, vocab_size=300, val_fraction=0.3, seed=7)
    tok = tmp_path / "a" / "tokenizer"
    extra = ["An extra document inserted at the front.", "And another one."]
    prepare(tmp_path / "b", extra + DOCS, tokenizer_dir=tok, val_fraction=0.3, seed=7)
    prepare(tmp_path / "c", DOCS[:10] + extra + DOCS[10:], tokenizer_dir=tok, val_fraction=0.3, seed=7)
    a = _docs_by_split(tmp_path / "a")
    assert 5 < base["docs"]["val"] < 40 and len(a["val"]) == base["docs"]["val"]  # all distinct, both splits used
    from pretrain.tokenizer import load_tokenizer

    t = load_tokenizer(tok)
    extra_ids = {tuple(t(x, add_special_tokens=False)["input_ids"]) for x in extra}
    for other in ("b", "c"):
        o = _docs_by_split(tmp_path / other)
        for split in ("train", "val"):
            assert o[split] - extra_ids == a[split], (other, split)


def test_split_of_is_a_function_of_seed_and_text():
    assert [split_of(d, 7, 0.3) for d in DOCS] == [split_of(d, 7, 0.3) for d in DOCS]
    assert [split_of(d, 7, 0.3) for d in DOCS] != [split_of(d, 8, 0.3) for d in DOCS]
    assert {split_of(d, 7, 0.0) for d in DOCS} == {"train"}
    share = sum(split_of(f"doc {i}", 1, 0.25) == "val" for i in range(4000)) / 4000
    assert 0.22 < share < 0.28
