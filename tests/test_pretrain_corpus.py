"""Issue 10's larger offline corpus (installed packages' docs and docstrings) and the `small` preset plumbing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

DOC = ("Return the running total of the values given, in the order given. It is a plain helper that the rest "
       "of the package calls when it needs a sum of all the items in a list.")


def _dist(site: Path, name: str, licence: str, files: dict[str, str]) -> None:
    """A minimal installed distribution: dist-info with METADATA/RECORD, and its files."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    readme = (f"{name} is a small package for the tests. It shows how the corpus builder reads the long "
              "description of a distribution, which is the README that a package index shows on its page, and "
              "how it keeps only the text that is in English and has not been seen before.")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nLicense: {licence}\n\n"
                                   f"{readme}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/METADATA"]))


def test_package_docs_english_deduplicated_permissive_with_size(tmp_path):
    from pretrain.corpus import package_docs

    site = tmp_path / "site"
    func = f'def total(xs):\n    """{DOC}"""\n'
    _dist(site, "goodpkg", "MIT", {
        "goodpkg/__init__.py": '"""The goodpkg package: helpers that add up lists of numbers for the tests."""\n',
        "goodpkg/a.py": func,
        "goodpkg/b.py": func,  # the same docstring copied into another module: kept once
        "goodpkg/zh.py": 'def f():\n    """这是一个中文的文档字符串，它不应该出现在英文语料中，因为它不是英文的文本内容。"""\n',
        "goodpkg/tests/test_a.py": 'def test_x():\n    """A test docstring that is noise for a language model, so it is skipped."""\n',
        "goodpkg/GUIDE.md": "# Guide\n\n" + DOC.replace("Return", "This guide explains") + "\n" * 3 + "x" * 150,
    })
    _dist(site, "gplpkg", "GPL-3.0-only", {"gplpkg/__init__.py": f'"""{DOC} (from a copyleft package)"""\n'})
    st: dict = {}
    docs = list(package_docs(st, path=[str(site)]))
    text = "\n".join(docs)
    assert text.count(DOC) == 1 and "def goodpkg.a.total" in text and "goodpkg.b.total" not in text
    assert "中文" not in text and "test docstring" not in text and "copyleft" not in text
    assert "is a small package for the tests" in text and "This guide explains" in text
    assert st["distributions"] == {"goodpkg": "MIT"} and st["skipped_licence"] == {"gplpkg": "GPL-3.0-only"}
    assert st["duplicates"] >= 1 and st["docs"] == len(docs) and st["chars"] == sum(map(len, docs))


def test_installed_package_docs_and_licence_rules():
    from pretrain.corpus import is_english, is_permissive, package_docs

    st: dict = {}
    docs = list(package_docs(st, include={"pluggy"}))  # a small, MIT-licensed dependency of pytest
    assert st["distributions"] == {"pluggy": "MIT"} and st["chars"] > 5000
    assert all(is_english(d) for d in docs) and len({d for d in docs}) == len(docs)
    assert "PluginManager" in "".join(docs)
    assert is_permissive("Apache-2.0 OR BSD-2-Clause") and is_permissive("BSD License")
    assert not is_permissive("LGPL-3.0-only") and not is_permissive("") and not is_permissive("Proprietary")


def test_small_preset_is_what_the_docs_say():
    from pretrain.model import GPT, GPTConfig
    from pretrain.pipeline import DEMO_CORPUS, LARGE_CORPUS, pipeline_defaults
    from pretrain.train import PRESETS

    s = PRESETS["small"]
    assert (s["n_layer"], s["n_embd"], s["n_head"], s["block_size"]) == (6, 256, 4, 512)
    d = pipeline_defaults("small")
    assert d == {"corpus": LARGE_CORPUS, "vocab_size": 8192, "steps": s["max_steps"]}
    assert LARGE_CORPUS["docs"] == "packages"
    # the demo's path is unchanged: same corpus, vocabulary and steps as before the small preset existed
    assert pipeline_defaults("tiny") == {"corpus": DEMO_CORPUS, "vocab_size": 4096, "steps": 600}
    assert DEMO_CORPUS["docs"] == "topics" and DEMO_CORPUS["task_docs"] == 60000
    big = pipeline_defaults("gpt2-124m")  # a GPU preset takes the large corpus and its own schedule
    assert big["corpus"] == LARGE_CORPUS and big["steps"] == PRESETS["gpt2-124m"]["max_steps"]
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        pipeline_defaults("huge")
    with torch.device("meta"):  # shapes only
        m = GPT(GPTConfig(vocab_size=8192, **{k: s[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}))
    assert 4.5e6 < m.num_params() - m.wte.weight.numel() < 5e6  # "4.7M non-embedding params"


def test_pipeline_cli_preset_plumbing(tmp_path, capsys):
    from pretrain import pipeline

    out = tmp_path / "m"
    pipeline.main(["--preset", "micro", "--steps", "2", "--vocab-size", "300", "--task-docs", "300",
                   "--docs", "none", "--out", str(out), "--threads", "1", "--no-progress"])
    assert capsys.readouterr().out.strip() == str(out / "hf")
    key = json.loads((out / "build.json").read_text())
    assert key["preset"] == "micro" and key["vocab_size"] == 300
    # flags given override the preset's corpus; the others keep its defaults
    assert key["corpus"] == {**pipeline.DEMO_CORPUS, "task_docs": 300, "docs": "none"}
    cfg = json.loads((out / "run" / "config.json").read_text())
    assert cfg["model_config"]["n_layer"] == 2 and cfg["train_config"]["max_steps"] == 2
    assert json.loads((out / "hf" / "config.json").read_text())["n_positions"] == 64
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--preset", "huge"])
    assert e.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
