"""Text corpora as iterators of documents.

Default: the documentation that ships inside CPython, so everything works offline:
``pydoc_data.topics.topics`` (~465k characters) plus docstrings of the standard library, read with ``ast``
from the source files (nothing is imported, so no module with side effects runs). The demo's corpus
(:func:`demo_corpus`) mixes short verifiable tasks (``pretrain.tasks``) into it.
Otherwise ``.txt`` files (split into paragraph chunks so a train/validation split is possible), ``.jsonl``
files (one document per line, ``text`` field) or a Hugging Face ``datasets`` name.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# Test suites, the IDLE GUI, vendored packages and demo code are noise (or not docs) for a small LM.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "idlelib",
              "turtledemo", "lib2to3", "ensurepip", "venv", "pydoc_data", "tkinter"}


def pydoc_topics() -> Iterator[str]:
    """The ~80 long topic pages of the language reference that ``help()`` shows."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name].strip() + "\n"


def stdlib_docstrings(stdlib: str | None = None) -> Iterator[str]:
    """One document per stdlib module: module, class and function docstrings with their names."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        parts = []
        doc = ast.get_docstring(tree)
        if doc:
            parts.append(f"Module {mod}\n\n{doc}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("_") and node.name != "__init__":
                    continue
                d = ast.get_docstring(node)
                if d and len(d) > 40:
                    kind = "class" if isinstance(node, ast.ClassDef) else "def"
                    parts.append(f"{kind} {mod}.{node.name}\n\n{d}")
        if parts:
            yield "\n\n".join(parts) + "\n"


def python_docs() -> Iterator[str]:
    """The default corpus: pydoc topics then stdlib docstrings (~1.5M characters)."""
    yield from pydoc_topics()
    yield from stdlib_docstrings()


def demo_corpus(task_docs: int = 60000, noise: float = 0.25, docs: str = "all", seed: int = 0,
                families: tuple[str, ...] | None = None, exclude: frozenset[str] = frozenset()) -> Iterator[str]:
    """The demo's corpus: `task_docs` task examples (``pretrain.tasks``, a `noise` share answered wrongly, prompts
    in `exclude` left out: the demo project's prompts stay unseen) interleaved with the CPython docs (`docs`:
    "all", "topics" for the pydoc topic pages only, or "none")."""
    import random

    from pretrain import tasks

    if docs not in ("all", "topics", "none"):
        raise ValueError(f"docs must be all, topics or none, not {docs!r}")
    text = [] if docs == "none" else list(python_docs() if docs == "all" else pydoc_topics())
    items = text + list(tasks.documents(task_docs, seed=seed, noise=noise, families=families or tasks.FAMILIES,
                                        exclude=exclude))
    random.Random(seed).shuffle(items)  # tasks spread over train and val and over every part of the stream
    yield from items


class Continued(str):
    """A chunk of a document that continues in the next chunk: no end-of-text token after it."""


def _text_chunks(text: str, chunk_chars: int) -> Iterator[str]:
    """Split a long text at blank lines into pieces of about ``chunk_chars`` characters."""
    if chunk_chars <= 0 or len(text) <= chunk_chars:
        yield text
        return
    start = 0
    while start < len(text):
        end = text.find("\n\n", start + chunk_chars)
        end = len(text) if end < 0 else end + 2
        yield text[start:end] if end >= len(text) else Continued(text[start:end])
        start = end


def iter_files(paths: list[str], chunk_chars: int = 0) -> Iterator[str]:
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"corpus file not found: {path}")
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: invalid JSON ({e})") from None
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        msg = f"{path}:{n}: expected an object with a string 'text' field"
                        raise ValueError(msg)  # noqa: TRY004 (bad input data, not a programming error)
                    yield row["text"]
        elif path.suffix in (".txt", ".md", ".text", ""):
            yield from _text_chunks(path.read_text(encoding="utf-8"), chunk_chars)
        else:
            raise ValueError(f"unsupported corpus file type {path.suffix!r} (use .txt or .jsonl): {path}")


def iter_hf_dataset(name: str, split: str = "train", field: str = "text", config: str | None = None,
                    data_files: list[str] | None = None) -> Iterator[str]:
    from datasets import load_dataset

    ds = load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    for row in ds:
        if field not in row:
            raise ValueError(f"dataset {name!r} has no column {field!r} (columns: {sorted(row)})")
        yield row[field]


def add_corpus_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("corpus (default: the CPython documentation, offline)")
    g.add_argument("--input", nargs="+", metavar="FILE",
                   help=".txt files (whole file is text) or .jsonl files (one document per line, 'text' field)")
    g.add_argument("--dataset", metavar="NAME", help="a Hugging Face datasets name, streamed")
    g.add_argument("--dataset-config", default=None, help="datasets configuration name, if any")
    g.add_argument("--dataset-split", default="train", help="datasets split to read (default train)")
    g.add_argument("--dataset-field", default="text", help="datasets column holding the text (default text)")
    g.add_argument("--dataset-files", nargs="+", default=None, metavar="FILE",
                   help="data_files for a builder dataset such as 'json', 'csv', 'parquet' or 'text'")
    g.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")


def iter_corpus_from_args(args: argparse.Namespace, chunk_chars: int = 0) -> Iterator[str]:
    if args.input and args.dataset:
        raise ValueError("give either --input or --dataset, not both")
    if args.input:
        for p in args.input:  # fail early, before any training starts
            if not Path(p).is_file():
                raise FileNotFoundError(f"corpus file not found: {p}")
        it = iter_files(args.input, chunk_chars)
    elif args.dataset:
        it = iter_hf_dataset(args.dataset, args.dataset_split, args.dataset_field, args.dataset_config,
                             args.dataset_files)
    else:
        it = python_docs()
    if args.max_docs is not None:
        it = (d for i, d in zip(range(args.max_docs), it))
    return it
