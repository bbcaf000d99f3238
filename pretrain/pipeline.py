"""Python API over the whole pretraining pipeline (used by ``make demo`` and by other packages' tests).

- :func:`build_demo_model`: tokenizer -> shards -> train ``tiny`` -> HF export on the demo corpus: the CPython
  docs with short verifiable tasks mixed in (offline; a few minutes on 2 CPU cores, cached). Returns the
  exported HF directory.
- :func:`build_tiny_model`: a tiny tokenizer + GPT exported as an HF directory in seconds (random weights or a
  few training steps), for tests of code that needs *a* causal LM with a chat template.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from pretrain.tasks import FAMILIES

# The demo's corpus: CPython's docs with short verifiable tasks mixed in (pretrain.corpus.demo_corpus).
DEMO_CORPUS = {"task_docs": 60000, "task_noise": 0.25, "docs": "topics", "families": list(FAMILIES), "seed": 0}
# The larger English corpus of the `small` and bigger presets (issue 10): CPython's docs and docstrings plus the
# docs and docstrings of every installed distribution with a permissive licence (~45M characters, ~10M tokens
# with an 8192 vocabulary), and fewer task examples so that prose dominates.
LARGE_CORPUS = {**DEMO_CORPUS, "task_docs": 20000, "docs": "packages"}
# What `--preset P` builds when no flag overrides it: corpus, tokenizer size and training steps. Presets not
# listed (gpt2-124m) take LARGE_CORPUS, 8192 tokens and their own max_steps (pretrain.train.PRESETS).
PIPELINES: dict[str, dict[str, Any]] = {
    "micro": {"corpus": DEMO_CORPUS, "vocab_size": 4096, "steps": 600},
    "tiny": {"corpus": DEMO_CORPUS, "vocab_size": 4096, "steps": 600},
    "small": {"corpus": LARGE_CORPUS, "vocab_size": 8192, "steps": None},
}


def pipeline_defaults(preset: str) -> dict[str, Any]:
    """Corpus, vocabulary size and steps that ``--preset`` builds by default (``steps`` None: the train
    preset's ``max_steps``)."""
    from pretrain.train import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    d = dict(PIPELINES.get(preset, {"corpus": LARGE_CORPUS, "vocab_size": 8192, "steps": None}))
    d["steps"] = d["steps"] or PRESETS[preset]["max_steps"]
    return d


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


class PretrainingInterrupted(KeyboardInterrupt):
    """Training was stopped (Ctrl-C / SIGTERM) before its last step; its checkpoint is kept for a resume."""


def build_demo_model(out_dir: str | Path | None = None, steps: int | None = None, attention: str = "dense",
                     vocab_size: int | None = None, preset: str = "tiny", threads: int | None = None,
                     progress: bool = True, extra_train_args: list[str] | None = None,
                     corpus: dict[str, Any] | None = None) -> Path:
    """Pretrain a GPT of ``preset`` on its corpus; returns the HF export directory ``out_dir/hf``.

    ``steps``, ``vocab_size`` and the corpus default to the preset's (:func:`pipeline_defaults`: tiny 600 steps,
    4096 tokens, :data:`DEMO_CORPUS`; small its train preset's steps, 8192, :data:`LARGE_CORPUS`). ``corpus``
    overrides keys of that corpus (``task_docs``: task examples, ``task_noise``: share answered wrongly,
    ``docs``: packages | all | topics | none, ``families``, ``seed``); the project prompts of those families
    (``pretrain.tasks.reserved``) are never in it. ``out_dir`` defaults to
    ``$INSTRUCTLOOP_HOME/pretrain/demo-<attention>`` for tiny, ``.../<preset>-<attention>`` otherwise. Re-running reuses finished stages (shards, a finished
    training run; a shorter one is continued); a changed corpus or model setting starts that folder afresh.
    """
    from pretrain.corpus import demo_corpus
    from pretrain.data import META
    from pretrain.export import export
    from pretrain.prepare import prepare
    from pretrain.tasks import reserved
    from pretrain.train import train

    defaults = pipeline_defaults(preset)
    steps = defaults["steps"] if steps is None else steps
    vocab_size = vocab_size or defaults["vocab_size"]
    spec = {**defaults["corpus"], **(corpus or {})}
    unknown = sorted(set(spec) - set(DEMO_CORPUS))
    if unknown:
        raise ValueError(f"unknown corpus setting(s) {', '.join(unknown)} (known: {', '.join(DEMO_CORPUS)})")
    spec["families"] = list(spec["families"])
    root = Path(out_dir) if out_dir else Path(os.environ.get("INSTRUCTLOOP_HOME", "runs")) / "pretrain" / \
        (f"demo-{attention}" if preset == "tiny" else f"{preset}-{attention}")
    # What the cached stages were built from: anything else and they are rebuilt.
    key = {"corpus": spec, "vocab_size": vocab_size, "preset": preset, "attention": attention,
           "train_args": list(extra_train_args or [])}
    key_file = root / "build.json"
    if key_file.is_file() and json.loads(key_file.read_text()) != key:
        _say(progress, f"{root}: built with other settings; rebuilding it")
        for part in ("data", "run", "hf"):
            shutil.rmtree(root / part, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(key, indent=2))
    data = root / "data"
    if not (data / META).is_file():
        what = "CPython + installed packages' docs" if spec["docs"] == "packages" else f"CPython docs ({spec['docs']})"
        _say(progress, f"[1/3] corpus: {what} + {spec['task_docs']} task examples "
                       f"({', '.join(spec['families'])}; {spec['task_noise']:.0%} answered wrongly) -> tokenizer "
                       f"({vocab_size}) and token shards in {data}")
        texts = demo_corpus(spec["task_docs"], spec["task_noise"], spec["docs"], spec["seed"],
                            tuple(spec["families"]), reserved(spec["families"]), progress=progress)
        meta = prepare(data, texts, vocab_size=vocab_size)
        _say(progress, f"      {meta['chars']:,} characters -> {meta['train_tokens']:,} training tokens, "
                       f"{meta['val_tokens']:,} validation tokens")
    run = root / "run"
    argv = ["--data", str(data), "--out", str(run), "--preset", preset, "--attention", attention,
            "--max-steps", str(steps), "--eval-interval", str(max(1, steps // 3))]
    if threads:
        argv += ["--threads", str(threads)]
    if not progress:
        argv += ["--no-progress"]
    argv += extra_train_args or []
    ck = run / "ckpt.pt"
    done = torch.load(ck, map_location="cpu", weights_only=False)["step"] if ck.is_file() else None
    if done is None or done < steps:
        _say(progress, f"[2/3] pretraining ({preset}, {steps} steps) in {run}")
        if done is None:
            train(argv)
        else:
            train(["--out", str(run), "--resume", "--max-steps", str(steps)]  # threads: a runtime setting
                  + (["--threads", str(threads)] if threads else []) + (["--no-progress"] if not progress else []))
        # Ctrl-C / SIGTERM make train() checkpoint and return early: a half-trained model must not be
        # exported (and, in make demo, seeded from); the next run resumes from the checkpoint.
        done = torch.load(ck, map_location="cpu", weights_only=False)["step"] if ck.is_file() else 0
        if done < steps:
            raise PretrainingInterrupted(f"pretraining stopped at step {done} of {steps}; nothing was exported. "
                                         f"Run the same command again to resume from {run}")
    _say(progress, f"[3/3] export to {root / 'hf'}")
    return export(run, root / "hf")


def build_tiny_model(out_dir: str | Path, vocab_size: int = 512, attention: str = "dense",
                     train_steps: int = 0, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                     block_size: int = 256, window: int = 32, seed: int = 0,
                     texts: list[str] | None = None) -> Path:
    """Tokenizer + tiny GPT exported to ``out_dir`` (HF format) in seconds; returns ``out_dir``.

    With ``train_steps`` > 0 the model first takes that many AdamW steps on ``texts`` (default: the pydoc
    topic pages) so its output is not pure noise.
    """
    from pretrain.corpus import pydoc_topics
    from pretrain.export import to_hf
    from pretrain.model import GPT, GPTConfig
    from pretrain.tokenizer import train_tokenizer

    out = Path(out_dir)
    texts = texts or list(itertools.islice(pydoc_topics(), 40))
    tok_dir = out / "_tokenizer"
    tok = train_tokenizer(texts, tok_dir, vocab_size=vocab_size, model_max_length=block_size)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=(len(tok) + 63) // 64 * 64, block_size=block_size, n_layer=n_layer,
                    n_head=n_head, n_embd=n_embd, attention=attention, window=window)
    model = GPT(cfg)
    if train_steps > 0:
        ids = torch.tensor([i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]
                            + [tok.eos_token_id]])
        opt = model.configure_optimizer(0.1, 3e-3, (0.9, 0.95), "cpu")
        g = torch.Generator().manual_seed(seed)
        t = min(64, block_size)
        for _ in range(train_steps):
            ix = torch.randint(0, len(ids) - t - 1, (8,), generator=g)
            x = torch.stack([ids[i:i + t] for i in ix])
            y = torch.stack([ids[i + 1:i + t + 1] for i in ix])
            _, loss = model(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    hf = to_hf(model.eval(), {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                              "pad_token_id": tok.pad_token_id})
    hf.generation_config.pad_token_id = tok.pad_token_id
    hf.generation_config.eos_token_id = tok.eos_token_id
    hf.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    from pretrain.train import PRESETS

    ap = argparse.ArgumentParser(prog="python -m pretrain.pipeline",
                                 description="Offline base model: corpus -> tokenizer -> shards -> train -> HF "
                                             "export; prints the exported directory. --preset tiny (the demo's): "
                                             "the CPython documentation with short verifiable tasks mixed in "
                                             "(pretrain.tasks), a few minutes on 2 CPU cores. --preset small: "
                                             "6 layers x 256 wide, 512-token context, on CPython's and the "
                                             "installed packages' docs and docstrings (permissive licences, "
                                             "English, deduplicated); 23 min end to end with --threads 2 on a quiet "
                                             "2-core machine (~2,100 tokens/s; pass --threads 1 on a busy one). "
                                             "Larger presets (gpt2-124m) take the same corpus on a GPU.")
    ap.add_argument("--out", default=None,
                    help="work directory (default $INSTRUCTLOOP_HOME/pretrain/demo-<attention> for tiny, "
                         "<preset>-<attention> for others)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                    help="pretrain.train preset; also picks the corpus, vocabulary and steps (default tiny)")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps (default: the preset's; tiny 600, small 600)")
    ap.add_argument("--attention", choices=["dense", "sparse"], default="dense", help="model attention type")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="tokenizer vocabulary size (default: tiny 4096, small and larger 8192)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = ap.add_argument_group("corpus")
    c.add_argument("--task-docs", type=int, default=None,
                   help=f"task examples mixed into the corpus (default tiny {DEMO_CORPUS['task_docs']}, "
                        f"small {LARGE_CORPUS['task_docs']})")
    c.add_argument("--task-noise", type=float, default=None,
                   help=f"share of them answered wrongly, in the right form (default {DEMO_CORPUS['task_noise']})")
    c.add_argument("--docs", choices=["packages", "all", "topics", "none"], default=None,
                   help="documentation in the corpus: packages (all + the docs and docstrings of installed "
                        "distributions with a permissive licence), all (pydoc topics + stdlib docstrings), "
                        "topics (the pydoc topic pages only) or none (default tiny topics, small packages)")
    c.add_argument("--families", default=None,
                   help=f"comma-separated task families (default {','.join(FAMILIES)})")
    c.add_argument("--corpus-seed", type=int, default=None,
                   help="seed of the task examples and their order (default 0)")
    t = ap.add_argument_group("training (override the preset)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate")
    t.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    t.add_argument("--seed", type=int, default=None, help="seed of model init and batches")
    args = ap.parse_args(argv)
    extra = [x for flag, v in (("--lr", args.lr), ("--batch-size", args.batch_size), ("--seed", args.seed))
             if v is not None for x in (flag, str(v))]
    families = None if args.families is None else [f.strip() for f in args.families.split(",") if f.strip()]
    corpus = {k: v for k, v in (("task_docs", args.task_docs), ("task_noise", args.task_noise), ("docs", args.docs),
                                ("families", families), ("seed", args.corpus_seed)) if v is not None}
    try:
        out = build_demo_model(args.out, args.steps, args.attention, args.vocab_size, args.preset, args.threads,
                               not args.no_progress, extra, corpus)
    except ValueError as e:
        sys.exit(f"error: {e}")
    except PretrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        raise SystemExit(130) from None
    print(out)


if __name__ == "__main__":
    main()
