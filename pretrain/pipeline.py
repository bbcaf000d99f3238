"""Python API over the whole pretraining pipeline (used by ``make demo`` and by other packages' tests).

- :func:`build_demo_model`: tokenizer -> shards -> train ``tiny`` -> HF export on the CPython docs corpus
  (offline; about 1-3 minutes on 2 CPU cores). Returns the exported HF directory.
- :func:`build_tiny_model`: a tiny tokenizer + GPT exported as an HF directory in seconds (random weights or a
  few training steps), for tests of code that needs *a* causal LM with a chat template.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch


def build_demo_model(out_dir: str | Path | None = None, steps: int = 300, attention: str = "dense",
                     vocab_size: int = 4096, preset: str = "tiny", threads: int | None = None,
                     progress: bool = True, extra_train_args: list[str] | None = None) -> Path:
    """Pretrain a small GPT on the CPython documentation; returns the HF export directory ``out_dir/hf``.

    ``out_dir`` defaults to ``$INSTRUCTLOOP_HOME/pretrain/demo-<attention>``. Re-running resumes or reuses
    finished stages (the shards are reused, a finished training run is exported again).
    """
    from pretrain.corpus import python_docs
    from pretrain.data import META
    from pretrain.export import export
    from pretrain.prepare import prepare
    from pretrain.train import train

    root = Path(out_dir) if out_dir else Path(os.environ.get("INSTRUCTLOOP_HOME", "runs")) / "pretrain" / \
        f"demo-{attention}"
    data = root / "data"
    if not (data / META).is_file():
        prepare(data, python_docs(), vocab_size=vocab_size)
    run = root / "run"
    argv = ["--data", str(data), "--out", str(run), "--preset", preset, "--attention", attention,
            "--max-steps", str(steps), "--eval-interval", str(max(1, steps // 3))]
    if threads:
        argv += ["--threads", str(threads)]
    if not progress:
        argv += ["--no-progress"]
    argv += extra_train_args or []
    ck = run / "ckpt.pt"
    if ck.is_file():
        done = torch.load(ck, map_location="cpu", weights_only=False)["step"]
        if done < steps:
            train(["--out", str(run), "--resume", "--max-steps", str(steps)]
                  + (["--no-progress"] if not progress else []))
    else:
        train(argv)
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

    ap = argparse.ArgumentParser(prog="python -m pretrain.pipeline",
                                 description="Offline demo: tokenizer -> shards -> train -> HF export on the "
                                             "CPython documentation; prints the exported directory.")
    ap.add_argument("--out", default=None,
                    help="work directory (default $INSTRUCTLOOP_HOME/pretrain/demo-<attention>)")
    ap.add_argument("--steps", type=int, default=300, help="training steps (default 300, ~1-3 min on 2 cores)")
    ap.add_argument("--attention", choices=["dense", "sparse"], default="dense", help="model attention type")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size (default 4096)")
    ap.add_argument("--preset", default="tiny", help="pretrain.train preset (default tiny)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = build_demo_model(args.out, args.steps, args.attention, args.vocab_size, args.preset, args.threads,
                           not args.no_progress)
    print(out)


if __name__ == "__main__":
    main()
