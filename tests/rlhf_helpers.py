"""Fixtures for the rlhf tests: tiny local models (no hub) and projects seeded through the db services."""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

WORDS = ["the", "cat", "dog", "sun", "moon", "tree", "river", "stone", "bird", "fish", "red", "blue", "green", "small", "large", "quick", "slow", "happy", "sad", "apple", "bread", "water", "fire", "wind", "rain", "snow", "hill", "road", "house", "door", "window", "book", "pen", "cup"]


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]
    texts += [f"{a}+{b}={a + b}" for a in range(10, 40) for b in range(10, 20)]
    texts += ["please thanks yes no hello world question answer"] * 5
    return texts


def build_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 400, chat: bool = True,
                    pad: bool = True) -> Any:
    """The project's byte-level BPE (pretrain.tokenizer) on `texts`; optionally without a pad token or a
    chat template, for the bad-input tests."""
    from pretrain.tokenizer import train_tokenizer

    hf = train_tokenizer(list(texts), out_dir, vocab_size=vocab_size, min_frequency=0, model_max_length=256)
    if not (pad and chat):
        if not pad:
            hf.pad_token = None
        if not chat:
            hf.chat_template = None
        hf.save_pretrained(str(out_dir))
    return hf


def build_tiny_lm(out_dir: str | Path, texts: Sequence[str] | None = None, *, n_layer: int = 2, n_embd: int = 64,
                  n_head: int = 2, vocab_size: int = 400, chat: bool = True, pad: bool = True, seed: int = 0,
                  n_positions: int = 256) -> Path:
    """A random-weight GPT-2 causal LM + tokenizer saved in `out_dir` (built from config: no hub)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    tok = build_tokenizer(out, texts or corpus(), vocab_size=vocab_size, chat=chat, pad=pad)
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(out))
    return out


def build_oasst_quick_base(out_dir: str | Path, trees: str | Path, n_positions: int = 384,
                           vocab_size: int = 4000) -> Path:
    """A quick base for reward models on OpenAssistant trees: the project's tokenizer trained on the trees' text,
    a random 2-layer GPT-2 whose position embeddings are sinusoidal (so how far a response runs is readable from
    the start, as in a pretrained model). Seconds to build; no pretraining."""
    import json

    import torch
    from transformers import GPT2LMHeadModel

    from rlhf import data

    rows = data.preference_rows_from_file(trees).rows
    texts = sorted({r[k] if isinstance(r[k], str) else json.dumps(r[k]) for r in rows
                    for k in ("prompt", "chosen", "rejected")})
    out = Path(out_dir)
    build_tiny_lm(out, texts, vocab_size=vocab_size, n_positions=n_positions, n_layer=2, n_embd=64)
    model = GPT2LMHeadModel.from_pretrained(out)
    d = model.config.n_embd
    pos = torch.arange(n_positions, dtype=torch.float).unsqueeze(1)
    angle = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float) / d)
    pe = torch.zeros(n_positions, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(angle), torch.cos(angle)
    with torch.no_grad():
        model.transformer.wpe.weight.copy_(pe)
    model.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------------- database seeding

def make_project(url: str, name: str = "p", **kw: Any) -> tuple[int, int, int]:
    """Project + an admin and an annotator. Returns (project id, admin id, annotator id)."""
    from db.services import accounts, projects
    from db.session import session_scope

    with session_scope(url) as s:
        p = projects.create_project(s, name, settings={"min_demonstration_chars": 1}, **kw)
        admin = accounts.create_user(s, f"admin-{name}", "password123", role="admin")
        ann = accounts.create_user(s, f"ann-{name}", "password123")
        return p.id, admin.id, ann.id


def add_demonstrations(url: str, project: str, pairs: Sequence[tuple[Any, str]], accept: bool = True) -> list[int]:
    """Prompt (text or chat turns) + demonstration text, submitted by the annotator and (optionally) accepted."""
    from db.services import content, labels, projects, tasks
    from db.session import session_factory

    s = session_factory(url)()
    try:
        proj = projects.get_project(s, project)
        from db.services.accounts import get_user

        ann, admin = get_user(s, f"ann-{project}"), get_user(s, f"admin-{project}")
        ids = []
        for prompt, text in pairs:
            kw = {"messages": prompt} if isinstance(prompt, list) else {"text": prompt}
            p, _ = content.add_prompt(s, proj.id, **kw)
            t, _ = tasks.create_task(s, proj.id, "demonstrate", p.id)
            s.commit()
            d, _ = labels.submit_demonstration(s, ann.id, t.id, text)
            if accept:
                labels.review_demonstration(s, d.id, admin.id, True)
            ids.append(d.id)
        s.commit()
        return ids
    finally:
        s.close()


def add_preferences(url: str, project: str, triples: Sequence[tuple[str, str, str]],
                    strength: str | None = "clear", seed: int = 0) -> list[int]:
    """(prompt, better, worse) → two human responses, a compare task, and the annotator's label."""
    from db.services import content, labels, projects, tasks
    from db.services.accounts import get_user
    from db.session import session_factory

    rng = random.Random(seed)
    s = session_factory(url)()
    try:
        proj = projects.get_project(s, project)
        ann = get_user(s, f"ann-{project}")
        ids = []
        for prompt, good, bad in triples:
            p, _ = content.add_prompt(s, proj.id, text=prompt)
            rg, _ = content.add_response(s, p.id, good)
            rb, _ = content.add_response(s, p.id, bad)
            t, _ = tasks.create_task(s, proj.id, "compare", p.id, [rg.id, rb.id], rng=rng)
            s.commit()
            choice = "a" if t.response_ids[0] == rg.id else "b"
            lab, _ = labels.submit_preference(s, ann.id, t.id, choice, strength=strength)
            ids.append(lab.id)
        s.commit()
        return ids
    finally:
        s.close()


def add_ranking(url: str, project: str, prompt: str, best_first: Sequence[str]) -> int:
    from db.services import content, labels, projects, tasks
    from db.services.accounts import get_user
    from db.session import session_factory

    s = session_factory(url)()
    try:
        proj = projects.get_project(s, project)
        ann = get_user(s, f"ann-{project}")
        p, _ = content.add_prompt(s, proj.id, text=prompt)
        rids = [content.add_response(s, p.id, t)[0].id for t in best_first]
        t, _ = tasks.create_task(s, proj.id, "rank", p.id, rids)
        s.commit()
        r, _ = labels.submit_ranking(s, ann.id, t.id, [[i] for i in rids])
        s.commit()
        return r.id
    finally:
        s.close()


def polite_pairs(n: int, seed: int = 0, shuffle_labels: bool = False) -> list[tuple[str, str, str]]:
    """Programmatic preferences: the reply containing 'please' beats the one without it.

    With shuffle_labels the winner is a coin flip (nothing to learn)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = f"request {i}: " + " ".join(rng.choice(WORDS) for _ in range(3))
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
        bad = " ".join(words)
        good_words = list(words)
        good_words.insert(rng.randint(0, len(words)), "please")
        good = " ".join(good_words)
        if shuffle_labels and rng.random() < 0.5:
            good, bad = bad, good
        out.append((prompt, good, bad))
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    import json

    p = Path(path)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p
