"""Short verifiable tasks (GPT-3's in-context-learning kind) for the demo and the end-to-end test.

    12+34=                 -> 46            (add: two-digit addition)
    reverse: sun red cat   -> cat red sun   (reverse: the words in reverse order)
    count: dog sun dog     -> 3             (count: how many words)

:func:`examples` draws them from a seed (each with its ``answer``); :func:`noisy_answer` writes a plausible wrong
answer of the recognisable form. Mixed into the pretraining corpus (``pretrain.corpus.demo_corpus``) with a share
of wrong answers, as text on the web has them, they make a base model that answers in the right form, sometimes
wrongly: something a person can judge at a glance and a tiny model can learn from feedback.
:func:`is_correct` and :func:`distance` are the verifier (a simulated annotator and the evaluations use them).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

FAMILIES = ("add", "reverse", "count")
# Short, common words: each is one token of a tokenizer trained on a corpus that holds them.
WORDS = ("cat", "dog", "sun", "red", "tree", "bird", "fish", "blue", "moon", "star", "book", "cup", "hat", "box",
         "car", "road", "rain", "snow", "hill", "lake", "milk", "bread", "door", "lamp")


@dataclass(frozen=True)
class Example:
    family: str
    prompt: str
    answer: str

    def text(self, answer: str | None = None) -> str:
        """As a pretraining document: the prompt, a newline, the answer (the plain rendering rlhf uses)."""
        return f"{self.prompt}\n{self.answer if answer is None else answer}"


def make(family: str, rng: random.Random) -> Example:
    """One random example of `family`."""
    if family == "add":
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        return Example(family, f"{a}+{b}=", str(a + b))
    if family == "reverse":
        words = rng.sample(WORDS, rng.randint(2, 3))
        return Example(family, "reverse: " + " ".join(words), " ".join(reversed(words)))
    if family == "count":
        n = rng.randint(1, 6)
        return Example(family, "count: " + " ".join(rng.choice(WORDS) for _ in range(n)), str(n))
    raise ValueError(f"unknown task family {family!r} (choose from {', '.join(FAMILIES)})")


def examples(n: int, seed: int = 0, families: Sequence[str] = FAMILIES,
             exclude: set[str] | frozenset[str] = frozenset(), distinct: bool = True) -> list[Example]:
    """`n` examples (distinct prompts unless `distinct` is False), families in turn, none whose prompt is in
    `exclude`."""
    for f in families:
        make(f, random.Random(0))  # unknown families fail here, before any loop
    rng = random.Random(seed)
    out: list[Example] = []
    seen = set(exclude)
    tries = 0
    while len(out) < n:
        ex = make(families[len(out) % len(families)], rng)
        tries += 1
        if ex.prompt in seen:
            if tries > 50 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct examples of {', '.join(families)}")
            continue
        if distinct:
            seen.add(ex.prompt)
        out.append(ex)
    return out


PROJECT_SEED = 2024
RESERVED = 300  # project_prompts(RESERVED): prompts kept out of every pretraining corpus


def project_prompts(n: int, families: Sequence[str] = FAMILIES) -> list[Example]:
    """The prompts of a demo (or test) project: the first `n` of a fixed sequence. The first :data:`RESERVED` of
    them never appear in a corpus built by :func:`documents` with ``exclude=reserved()``, so a model answering
    them has not seen them in pretraining."""
    return examples(n, PROJECT_SEED, families)


def reserved(families: Sequence[str] = FAMILIES) -> frozenset[str]:
    return frozenset(e.prompt for e in project_prompts(RESERVED, families))


def noisy_answer(ex: Example, rng: random.Random) -> str:
    """A wrong answer of the right form (what a careless writer, or an undertrained model, puts there)."""
    if ex.family == "add":
        return str(int(ex.answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    if ex.family == "reverse":
        words = ex.prompt.removeprefix("reverse: ").split()
        return " ".join(words)  # not reversed at all
    if ex.family == "count":
        return str(max(0, int(ex.answer) + rng.choice([-1, 1])))
    raise ValueError(ex.family)


def documents(n: int, seed: int = 0, noise: float = 0.25, families: Sequence[str] = FAMILIES,
              exclude: set[str] | frozenset[str] = frozenset()) -> Iterator[str]:
    """`n` pretraining documents of examples (prompts in `exclude` left out), a `noise` share answered wrongly."""
    if not 0 <= noise <= 1:
        raise ValueError(f"noise must be in [0, 1], not {noise}")
    rng = random.Random(seed + 1)
    for ex in examples(n, seed, families, exclude, distinct=False):
        yield ex.text(noisy_answer(ex, rng) if rng.random() < noise else None)


def first_line(response: str) -> str:
    return response.strip().split("\n", 1)[0].strip()


def is_correct(answer: str, response: str) -> bool:
    """The response's first line is exactly the answer."""
    return first_line(response) == answer.strip()


def _edit(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def distance(answer: str, response: str) -> float:
    """How far a response is from the answer: 0 when correct; numbers by their difference, words by edit
    distance (insertions, deletions, substitutions of words); a response of no recognisable form is far."""
    got, want = first_line(response), answer.strip()
    if got == want:
        return 0.0
    if want.lstrip("-").isdigit():
        return float(abs(int(got) - int(want))) if got.lstrip("-").isdigit() else 1000.0
    return float(_edit(got.split(), want.split())) if got else 1000.0
