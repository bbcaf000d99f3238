"""Labels shown to annotators for the stored values."""
from __future__ import annotations

CHOICES = [("a", "A is better", "1"), ("b", "B is better", "2"), ("tie", "Tie", "3"),
           ("both_bad", "Both bad", "4")]
CHOICE_NAMES = {c: n for c, n, _ in CHOICES}
STRENGTH_KEYS = {"slight": "Q", "clear": "W", "strong": "E"}
FLAG_NAMES = {"hallucination": "Hallucination", "fails_instruction": "Fails the instruction",
              "harmful": "Harmful", "inappropriate": "Inappropriate", "other": "Other"}
SKIP_REASONS = ["I can't judge this (outside my knowledge)", "Responses are broken or empty",
                "Prompt is unclear", "Other"]
RATE_SKIP_REASONS = [SKIP_REASONS[0], "The response is broken or empty", *SKIP_REASONS[2:]]  # Rate shows one


def skip_reasons(kind: str) -> list[str]:
    """The skip reasons offered on the page of task `kind` (Rate has one response, the others several)."""
    return RATE_SKIP_REASONS if kind == "rate" else SKIP_REASONS


KIND_NAMES = {"compare": "Compare", "rank": "Rank", "demonstrate": "Demonstrate", "rate": "Rate"}
# Rate: (stored value, button, shortcut, icon); the optional score is InstructGPT's 1-7 Likert scale.
RATINGS = [(True, "Good", "1", ":material/thumb_up:"), (False, "Bad", "2", ":material/thumb_down:")]
RATING_NAMES = {True: "Good", False: "Bad"}
LIKERT_HELP = "Overall quality, 1 (very bad) to 7 (excellent). Optional: leave it empty if unsure."


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ... 11th, 12th: ranks that never read like response numbers."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 line", "2 lines", "0 lines" ("1 rate task", "3 rate tasks"); `many` for an irregular plural."""
    return f"{n} {word if n == 1 else many or word + 's'}"
