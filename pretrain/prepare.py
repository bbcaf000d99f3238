"""Tokenize a corpus into memory-mapped train/val token shards.

    python -m pretrain.prepare --out runs/data/pydocs                    # CPython docs, trains a tokenizer
    python -m pretrain.prepare --out runs/data/shak --input shakespeare.txt --tokenizer runs/tok

Every document is followed by ``<|endoftext|>``. Each document goes to the validation split with probability
``--val-fraction``, decided by a fixed hash of the seed and the document's text (:func:`split_of`): the split is
reproducible, adding or removing documents never moves the others, and duplicates share a split; long .txt files are
first cut at blank lines into chunks of ``--chunk-chars`` characters so they can be split too (chunks of one
file are not separated by EOS). Writes train.bin, val.bin, meta.json and (unless --tokenizer is given) a
freshly trained tokenizer/ directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from pretrain.corpus import Continued, add_corpus_args, iter_corpus_from_args
from pretrain.data import META, ShardWriter, dtype_for_vocab


def split_of(doc: str, seed: int, val_fraction: float) -> str:
    """'val' or 'train' for one document: a hash of (seed, text) mapped to [0, 1) and compared to val_fraction."""
    h = hashlib.blake2b(str(doc).encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return "val" if int.from_bytes(h.digest(), "big") / 2.0**64 < val_fraction else "train"


def prepare(out_dir: str | Path, texts, tokenizer_dir: str | Path | None = None, vocab_size: int = 4096,
            val_fraction: float = 0.05, seed: int = 1337, docs_for_tokenizer: list[str] | None = None
            ) -> dict:
    """Write shards for ``texts`` (an iterable of documents); returns the meta dict.

    Without ``tokenizer_dir`` a tokenizer is trained on the documents first (they are held in memory).
    """
    from pretrain.tokenizer import load_tokenizer, train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_out = out / "tokenizer"
    if tokenizer_dir is None:
        texts = list(texts)
        if not texts:
            raise ValueError("the corpus is empty")
        tok = train_tokenizer(texts, tok_out, vocab_size=vocab_size)
    else:
        tok = load_tokenizer(tokenizer_dir)
        if Path(tokenizer_dir).resolve() != tok_out.resolve():
            tok.save_pretrained(str(tok_out))  # keep a copy next to the shards: the data dir is self-contained
    eos = tok.eos_token_id
    if eos is None:
        raise ValueError("tokenizer has no eos token")
    n_vocab = len(tok)
    dtype = dtype_for_vocab(n_vocab)
    writers = {s: ShardWriter(out / f"{s}.bin", dtype) for s in ("train", "val")}
    n_docs = {"train": 0, "val": 0}
    open_chunk: dict[str, int | None] = {"train": None, "val": None}  # stream position of an EOS-less chunk
    position = [0]
    n_chars = 0
    batch: list[str] = []

    def flush() -> None:
        # The Rust tokenizer's batch encode uses its threads and skips the max-length warnings.
        enc = tok.backend_tokenizer.encode_batch([str(d) for d in batch], add_special_tokens=False)
        for doc, e in zip(batch, enc):
            ids = list(e.ids)
            split = split_of(doc, seed, val_fraction)
            # A chunk of a long file carries no EOS so that it runs on into the file's next chunk. If that next
            # chunk went to the other split, close the open chunk here before an unrelated document follows.
            if open_chunk[split] is not None and open_chunk[split] != position[0] - 1:
                ids.insert(0, eos)
            open_chunk[split] = position[0] if isinstance(doc, Continued) else None
            if not isinstance(doc, Continued):
                ids.append(eos)
            writers[split].write(ids)
            n_docs[split] += 1
            position[0] += 1
        batch.clear()

    for doc in texts:
        if not doc:
            continue
        n_chars += len(doc)
        batch.append(doc)
        if len(batch) >= 512:
            flush()
    if batch:
        flush()
    for w in writers.values():
        w.close()
    if writers["train"].n == 0:
        raise ValueError("no training tokens were written (empty corpus or val_fraction=1)")
    meta = {
        "dtype": dtype.name, "vocab_size": n_vocab, "eos_token_id": eos, "pad_token_id": tok.pad_token_id,
        "train_tokens": writers["train"].n, "val_tokens": writers["val"].n, "chars": n_chars,
        "docs": n_docs, "val_fraction": val_fraction, "seed": seed, "tokenizer": "tokenizer",
    }
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output data directory (train.bin, val.bin, meta.json)")
    ap.add_argument("--tokenizer", default=None,
                    help="existing tokenizer directory; default: train a new one into OUT/tokenizer")
    ap.add_argument("--vocab-size", type=int, default=4096,
                    help="vocabulary size when a tokenizer is trained here (default 4096)")
    ap.add_argument("--val-fraction", type=float, default=0.05,
                    help="probability that a document goes to val.bin (default 0.05)")
    ap.add_argument("--chunk-chars", type=int, default=2000,
                    help="cut .txt files at blank lines into chunks of about this many characters so they can "
                         "be split into train/val; 0 keeps each file whole (default 2000)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the per-document train/val hash (default 1337)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing OUT directory")
    add_corpus_args(ap)
    args = ap.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        sys.exit("error: --val-fraction must be in [0, 1)")
    out = Path(args.out)
    if (out / META).exists():
        if not args.overwrite:
            sys.exit(f"error: {out} already holds prepared data (use --overwrite)")
        shutil.rmtree(out)
    try:
        texts = iter_corpus_from_args(args, chunk_chars=args.chunk_chars)
        meta = prepare(out, texts, args.tokenizer, args.vocab_size, args.val_fraction, args.seed)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
