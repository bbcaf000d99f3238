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


def test_chunks_split_across_train_and_val_never_run_into_another_document(tmp_path, monkeypatch):
    """A long file's chunks carry no EOS between them; when the next chunk went to the other split, the open
    chunk is closed before an unrelated document follows it."""
    from pretrain import prepare as P
    from pretrain.corpus import Continued

    place = {"file part one": "train", "file part two": "val", "file part three": "train",
             "a separate note": "train", "another note": "val"}
    monkeypatch.setattr(P, "split_of", lambda doc, seed, frac: place[str(doc)])
    docs = [Continued("file part one"), Continued("file part two"), "file part three", "a separate note"]
    P.prepare(tmp_path / "d", docs, vocab_size=300, val_fraction=0.5)
    from pretrain.tokenizer import load_tokenizer

    tok = load_tokenizer(tmp_path / "d" / "tokenizer")
    eos = read_meta(tmp_path / "d")["eos_token_id"]
    text = {s: tok.decode(np.asarray(load_split(tmp_path / "d", s)).tolist()) for s in ("train", "val")}
    end = tok.decode([eos])
    # train: part one is open; part three (not adjacent: part two went to val) must start a new document
    assert text["train"] == f"file part one{end}file part three{end}a separate note{end}"
    assert text["val"] == "file part two"  # open at the end of the split: nothing follows it
    P.prepare(tmp_path / "e", ["a separate note", Continued("file part two"), "another note"],
              tokenizer_dir=tmp_path / "d" / "tokenizer", val_fraction=0.5)
    val = tok.decode(np.asarray(load_split(tmp_path / "e", "val")).tolist())
    assert val == f"file part twoanother note{end}"  # adjacent in the stream: a chunk and its continuation


def test_empty_val_split_loads_and_the_last_window_is_sampled(tmp_path):
    from pretrain.data import get_batch

    prepare(tmp_path / "d", DOCS, vocab_size=300, val_fraction=0.0)
    val = load_split(tmp_path / "d", "val")
    assert len(val) == 0  # an empty file maps to an empty array instead of numpy's mmap error
    data = np.arange(11, dtype=np.uint16)
    x, y = get_batch(data, 4, 10, np.random.default_rng(0))  # exactly block_size + 1 tokens: one window
    assert x.tolist() == [list(range(10))] * 4 and y.tolist() == [list(range(1, 11))] * 4
    starts = {int(get_batch(np.arange(20, dtype=np.uint16), 64, 10, np.random.default_rng(s))[0][:, 0].max())
              for s in range(5)}
    assert max(starts) == 9  # the last start (len - block_size - 1) is drawn
