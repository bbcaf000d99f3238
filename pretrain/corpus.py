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
import contextlib
import json
import os
import re
import sysconfig
from collections.abc import Collection, Iterator
from pathlib import Path

# Test suites, the IDLE GUI, vendored packages and demo code are noise (or not docs) for a small LM.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "idlelib",
              "turtledemo", "lib2to3", "ensurepip", "venv", "pydoc_data", "tkinter"}


def pydoc_topics() -> Iterator[str]:
    """The ~80 long topic pages of the language reference that ``help()`` shows."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name].strip() + "\n"


def _docstrings(path: Path, mod: str) -> list[str]:
    """Module, class and public function docstrings of one source file, read with ``ast`` (nothing runs)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
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
    return parts


def stdlib_docstrings(stdlib: str | None = None) -> Iterator[str]:
    """One document per stdlib module: module, class and function docstrings with their names."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    for path in files:
        mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        parts = _docstrings(path, mod)
        if parts:
            yield "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- installed packages (issue 10's larger corpus)
# Licences whose text may be redistributed inside a model's training data without conditions on the model.
_PERMISSIVE = re.compile(r"\b(MIT|BSD|Apache|PSF|Python Software Foundation|ISC|MPL|Mozilla|Unlicense|CC0|"
                         r"Zlib|HPND|Public Domain|0BSD)\b", re.IGNORECASE)
_COPYLEFT = re.compile(r"\b(A?GPL|LGPL|GNU)\b", re.IGNORECASE)
_COMMON = frozenset(["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "with", "as", "be", "this", "are", "by", "or", "on", "an", "from", "not"])
_NOT_DOCS = re.compile(r"(licen[cs]e|copying|notice|authors|contributors|requirements|top_level|entry_points|"
                       r"record|wheel|installer|direct_url)", re.IGNORECASE)


def licence_of(meta) -> str:
    """A distribution's declared licence: License-Expression, else the License field, else its classifiers."""
    expr = meta.get("License-Expression") or ""
    if expr:
        return expr
    lic = (meta.get("License") or "").strip()
    if lic and len(lic) < 200 and "\n" not in lic:
        return lic
    cls = [c.split("::")[-1].strip() for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
    return "; ".join(cls) or (lic.splitlines()[0][:80] if lic else "")


def is_permissive(licence: str) -> bool:
    """MIT/BSD/Apache/PSF-style; copyleft only when a permissive alternative is offered (``A OR B``)."""
    if not _PERMISSIVE.search(licence):
        return False
    return not _COPYLEFT.search(licence) or " OR " in licence.upper() or "DUAL" in licence.upper()


def is_english(text: str) -> bool:
    """Mostly ASCII and with English function words: keeps prose and docs, drops other languages, tables and
    data blobs."""
    if not text:
        return False
    ascii_share = sum(c < "\x80" for c in text) / len(text)
    words = re.findall(r"[a-z]+", text.lower())
    return ascii_share >= 0.97 and len(words) >= 8 and sum(w in _COMMON for w in words) >= 0.08 * len(words)


def _key(text: str) -> int:
    return hash(" ".join(text.split()))  # whitespace-insensitive; a set of ints keeps memory flat-ish


def package_docs(stats: dict | None = None, exclude: tuple[str, ...] = ("instructloop",),
                 max_file_bytes: int = 2_000_000, path: list[str] | None = None,
                 include: Collection[str] | None = None) -> Iterator[str]:
    """The documentation and docstrings of the installed distributions with a permissive licence, English only,
    deduplicated (a docstring or page seen before, e.g. transformers' copied model docstrings, is dropped).

    Per distribution, in name order: its long description (the README on PyPI), the ``.md``/``.rst``/``.txt``
    pages it ships, then one document per module of docstrings. ``stats`` (when given) receives
    ``distributions`` (name -> licence of those used), ``skipped_licence`` (name -> licence), ``docs``,
    ``chars`` and ``duplicates`` (parts dropped as already seen). ``path`` searches other folders than
    ``sys.path``; ``include`` keeps only those distribution names.
    """
    import importlib.metadata as md

    st = stats if stats is not None else {}
    st.update({"distributions": {}, "skipped_licence": {}, "docs": 0, "chars": 0, "duplicates": 0})
    seen: set[int] = set()

    def fresh(parts: list[str], headed: bool = False) -> list[str]:
        out = []
        for p in parts:
            # a docstring's key leaves out its "def module.name" header: copies in other modules are dropped
            k = _key(p.split("\n\n", 1)[-1] if headed else p)
            if k in seen:
                st["duplicates"] += 1
                continue
            seen.add(k)
            if is_english(p):
                out.append(p)
        return out

    dists = {}
    for d in md.distributions(**({"path": path} if path is not None else {})):
        name = (d.metadata.get("Name") or "").lower().replace("_", "-")
        if name and name not in dists and name not in exclude and (include is None or name in include):
            dists[name] = d
    for name in sorted(dists):
        d = dists[name]
        lic = licence_of(d.metadata)
        if not is_permissive(lic):
            st["skipped_licence"][name] = lic
            continue
        st["distributions"][name] = lic
        docs: list[str] = []
        body = d.metadata.get_payload() if hasattr(d.metadata, "get_payload") else None
        body = body or d.metadata.get("Description") or ""
        docs += fresh([body.strip() + "\n"] if len(body) > 200 else [])
        sources: list[tuple[Path, str]] = []
        for f in sorted(d.files or [], key=str):
            parts = f.parts
            if any(p in _SKIP_DIRS or p.startswith("_vendor") or p == "vendor" for p in parts[:-1]):
                continue
            if f.suffix in (".md", ".rst", ".txt") and not _NOT_DOCS.search(f.name):
                path = Path(d.locate_file(f))
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    if path.stat().st_size <= max_file_bytes:
                        docs += fresh([path.read_text(encoding="utf-8").strip() + "\n"])
            elif f.suffix == ".py" and not parts[0].endswith((".dist-info", ".egg-info")):
                mod = ".".join(Path(*parts).with_suffix("").parts).removesuffix(".__init__")
                sources.append((Path(d.locate_file(f)), mod))
        for text in docs:
            if len(text) > 200:
                st["docs"] += 1
                st["chars"] += len(text)
                yield text
        for path, mod in sources:
            with contextlib.suppress(OSError):
                if path.stat().st_size > max_file_bytes:
                    continue
            parts = fresh(_docstrings(path, mod), headed=True)
            if parts:
                text = "\n\n".join(parts) + "\n"
                st["docs"] += 1
                st["chars"] += len(text)
                yield text


def python_docs() -> Iterator[str]:
    """The default corpus: pydoc topics then stdlib docstrings (~1.5M characters)."""
    yield from pydoc_topics()
    yield from stdlib_docstrings()


def english_docs(stats: dict | None = None, progress: bool = False) -> Iterator[str]:
    """The larger offline English corpus (issue 10): :func:`python_docs` then :func:`package_docs`, every part
    deduplicated against all before it."""
    import sys

    st = stats if stats is not None else {}
    own = list(python_docs())
    yield from own
    seen = {_key(p) for d in own for p in d.split("\n\n")}
    for i, doc in enumerate(package_docs(st)):
        kept = [p for p in doc.split("\n\n") if _key(p) not in seen]
        if kept:
            yield "\n\n".join(kept)
        if progress and i % 1000 == 999:
            print(f"      corpus: {i + 1:,} package documents, {st['chars']:,} characters", file=sys.stderr,
                  flush=True)
    st["chars"] = st.get("chars", 0) + sum(map(len, own))


def demo_corpus(task_docs: int = 60000, noise: float = 0.25, docs: str = "all", seed: int = 0,
                families: tuple[str, ...] | None = None, exclude: frozenset[str] = frozenset(),
                progress: bool = False) -> Iterator[str]:
    """The demo's corpus: `task_docs` task examples (``pretrain.tasks``, a `noise` share answered wrongly, prompts
    in `exclude` left out: the demo project's prompts stay unseen) interleaved with the documentation (`docs`:
    "packages" for :func:`english_docs`, "all" for the CPython docs, "topics" for the pydoc topic pages only, or
    "none")."""
    import random

    from pretrain import tasks

    if docs not in ("packages", "all", "topics", "none"):
        raise ValueError(f"docs must be packages, all, topics or none, not {docs!r}")
    text = ([] if docs == "none" else list(english_docs(progress=progress)) if docs == "packages"
            else list(python_docs() if docs == "all" else pydoc_topics()))
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.corpus",
                                 description="Size of the offline English corpus (pretrain.pipeline --preset small "
                                             "uses it): characters, documents, distributions used and those left "
                                             "out for their licence, as JSON.")
    ap.add_argument("--packages", nargs="+", default=None, metavar="NAME",
                    help="only these installed distributions (default: all, plus CPython's docs)")
    args = ap.parse_args(argv)
    st: dict = {}
    docs = package_docs(st, include=set(args.packages)) if args.packages else english_docs(st, progress=True)
    n = sum(1 for _ in docs)
    print(json.dumps({"documents": n, **st}, indent=2))


if __name__ == "__main__":
    main()
