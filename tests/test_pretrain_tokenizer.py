"""Tokenizer and token shards: exact round trips, special tokens, chat template, input errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pretrain.data import load_split, read_meta
from pretrain.prepare import prepare
from pretrain.tokenizer import EOS, PAD, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    "Hello, world! Ünïcödé: naïve café, 東京, Ελληνικά, emoji 🤖🎉👩‍👩‍👧 and\ttabs\n",
    "  leading spaces, trailing spaces   \n\n\nblank lines",
    "def f(x):\n    return x ** 2  # Python code\n",
    "Zero-width joiner\u200d and combining e\u0301 and RTL \u05e9\u05dc\u05d5\u05dd.",
] * 20


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(DOCS, d, vocab_size=400)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))


def test_round_trip_unicode(tok):
    for s in DOCS[:4] + ["", " ", "🤖", "a\r\nb", "\x00\x7f控制"]:
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s
    # unseen characters still encode (byte fallback of byte-level BPE): no <unk>
    assert tok.decode(tok.encode("𝔘𝔫𝔰𝔢𝔢𝔫 ꙮ", add_special_tokens=False)) == "𝔘𝔫𝔰𝔢𝔢𝔫 ꙮ"


def test_special_tokens_and_chat_template(tok):
    assert tok.eos_token == tok.bos_token == EOS
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    msgs = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = [i for i, m in zip(ids, mask) if m]
    # exactly the assistant content plus its EOS is trainable
    assert tok.decode(assistant) == "hello" + EOS
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_shards_decode_back(tmp_path, tok):
    docs = [f"document {i}: " + DOCS[i % 4] for i in range(60)]
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    out = tmp_path / "data"
    meta = prepare(out, [json.loads(line)["text"] for line in src.read_text().splitlines()], tok_dir,
                   val_fraction=0.3, seed=3)
    assert meta["dtype"] == "uint16" and read_meta(out)["vocab_size"] == len(tok)
    decoded = []
    for split in ("train", "val"):
        arr = load_split(out, split)
        assert arr.dtype == np.uint16 and len(arr) == meta[f"{split}_tokens"]
        text = tok.decode(arr.tolist())
        parts = text.split(EOS)
        assert parts[-1] == ""  # every document ends with EOS
        decoded += parts[:-1]
    assert 0 < meta["docs"]["val"] < 60
    assert sorted(decoded) == sorted(docs)  # nothing lost, nothing changed


def test_txt_chunks_join_without_eos(tmp_path, tok):
    from pretrain.corpus import iter_files

    text = "\n\n".join(f"paragraph {i} " + "word " * 30 for i in range(40))
    f = tmp_path / "a.txt"
    f.write_text(text)
    tok_dir = tmp_path / "tok"
    tok.save_pretrained(str(tok_dir))
    prepare(tmp_path / "d", iter_files([str(f)], chunk_chars=300), tok_dir, val_fraction=0.0)
    assert tok.decode(load_split(tmp_path / "d", "train").tolist()) == text + EOS


def test_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pretrain.prepare", "--out", str(tmp_path / "x"),
                        "--input", str(tmp_path / "missing.txt")], check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "corpus file not found" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    r = subprocess.run([sys.executable, "-m", "pretrain.tokenizer", "--out", str(tmp_path / "t"),
                        "--input", str(bad)], check=False, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "bad.jsonl:2" in r.stderr
