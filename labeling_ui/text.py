"""Model and user text on screen exactly as written: the characters, the line breaks, the indentation.

Two renderings, chosen per project (`settings["render"]`, `markdown` by default):

- `markdown`: code fences, code spans, `*emphasis*`/`**bold**` and tables render; everything else Markdown (or
  Streamlit's own extensions) would turn into something else is escaped, so what shows is what the model wrote:
  a `- item` line keeps its `-` (a rendered list shows a bullet glyph instead, and indents), and blank lines
  stay as many as were written (Markdown merges any run of them into one paragraph break). Nothing acts on the page: raw HTML, maths, links, images, colours, icons show as text.
- `plain`: the text as it is (`st.text`), no formatting at all.

Every response also has a "raw" toggle that shows its source in a code block, character for character.
"""
from __future__ import annotations

import itertools
import re
from typing import Any

import streamlit as st

from db.services.projects import RENDERS  # ("markdown", "plain"): the settings check shares them

DEFAULT_RENDER = "markdown"

# A fence closes with at least as many of its characters (CommonMark): ``` ... ```` is one block.
_FENCE = re.compile(r"(^[ \t]*(```+|~~~+).*?(?:^[ \t]*\2[`~]*[ \t]*$|\Z))", re.DOTALL | re.MULTILINE)
_INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)

# Inline: `\` stays a backslash (so `\$` cannot reopen maths); `<` shows tags as text; `$` is no maths; `[` makes
# no link or image; `&` no entity (`&amp;` shows as typed); `~` no strikethrough; `_` no emphasis (`__init__`
# stays `__init__`); `*` between letters or digits no emphasis (`2*3*4`).
_ESCAPE = re.compile(r"([<$\[&~_])")
# (a run of stars between letters or digits, `2**3`; a run closing a word, `**bold** x`, still closes the emphasis)
_INTRAWORD_STAR = re.compile(r"(?<=[0-9A-Za-z])\*+(?=[0-9A-Za-z])")
_DIRECTIVE = re.compile(r":(?=[A-Za-z_])")  # :red[...] colours (a URL's :// is left alone)
_ICON = re.compile(r"(:[A-Za-z_]+)/")  # :material/home: icons (only an escaped slash stops them)

# Streamlit rewrites some text after parsing, where no Markdown escape reaches: ` -> ` becomes an arrow,
# ` -- ` a dash, `:smile:` an emoji. And Markdown drops the spaces at the start and end of a line. A word joiner
# (U+2060, zero width, no glyph) between the characters splits those patterns, and one before a line's
# indentation (or after its trailing spaces) keeps them, so the characters show as typed. A copy from the page
# leaves them out (labeling_ui.style's copy handler); the "raw" toggle shows the text without them.
JOINER = "\u2060"
_TYPOGRAPHIC = re.compile(r"(?<!\S)(<->|->|<-|--|>=|<=|~=)(?!\S)")
_EMOJI = re.compile(r":(?=[\w+-]+:)")

# Block structure at the start of a line: a quote (`>>> code` would lose its `>>>`), a heading (`# comment`), a
# bullet (`- a dash line` would lose its `-` to a bullet glyph; a lone `-` would be an empty bullet), a rule or
# setext underline (`---` vanishes, the line above becomes a heading); ordered lists would be renumbered.
_LINE_START = re.compile(r"^(?:>|#|[-*+](?=[ \t]|$)|[-*_=](?=[-*_= \t]*$))")
_ORDERED = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")
_LEAD_WS = re.compile(r"^[ \t]+")
_TRAIL_WS = re.compile(r"[ \t]+$")


# GitHub-flavoured Markdown turns a bare URL with a dotted domain, "www." or an e-mail address into a link (even
# one inside an escaped `[text](url)` or `<a href=...>`): a joiner after the scheme / before the "@" keeps it text.
_AUTOLINK = re.compile(r"(?i)\b(https?(?=://[\w-]+\.)|ftp(?=://[\w-]+\.)|www(?=\.[\w-]+\.))"
                       r"|(?<=[\w.+-])@(?=[\w-]+\.)")


def _no_autolink(text: str) -> str:
    return _AUTOLINK.sub(lambda m: m.group(1) + JOINER if m.group(1) else JOINER + "@", text)


def _escape_inline(text: str) -> str:
    text = _no_autolink(text)
    text = text.replace("\\", "\\\\")
    text = _ESCAPE.sub(r"\\\1", text)
    text = _INTRAWORD_STAR.sub(lambda m: "\\*" * len(m.group()), text)
    text = _ICON.sub(r"\1\\/", text)
    return _DIRECTIVE.sub(r"\\:", text)


def _escape_line(line: str, at_start: bool, at_end: bool) -> str:
    line = _TYPOGRAPHIC.sub(lambda m: m.group(1)[0] + JOINER + m.group(1)[1:], line)
    line = _EMOJI.sub(":" + JOINER, line)
    lead = trail = ""
    m = _TRAIL_WS.search(line) if at_end else None
    if m and m.start() > 0:
        line, trail = line[:m.start()], m.group(0) + JOINER
    if at_start:
        m = _LEAD_WS.match(line)
        if m:
            lead, line = JOINER + m.group(0), line[m.end():]
        m = _ORDERED.match(line)
        if m:  # escape the marker's dot (a digit cannot be escaped)
            lead, line = lead + m.group(1) + "\\" + m.group(2), line[m.end():]
        elif _LINE_START.match(line):
            lead, line = lead + "\\" + line[0], line[1:]
    return lead + _escape_inline(line) + trail


def _escape_segment(text: str, at_line_start: bool, at_line_end: bool) -> str:
    """Prose outside code, escaped line by line. Its first line starts a line only when `at_line_start`, its last
    ends one only when `at_line_end` (not when a code span follows)."""
    lines = text.split("\n")
    last = len(lines) - 1
    return "\n".join(_escape_line(line, i > 0 or at_line_start, i < last or at_line_end)
                     for i, line in enumerate(lines))


def _keep_blank_lines(text: str) -> str:
    """A blank line between two lines of prose holds a word joiner, so it is a line of the paragraph (shown
    empty, as pre-wrap keeps line breaks) instead of a paragraph break: three line breaks show as three, not
    as one gap. Blank lines at the start or end (next to a code block) stay paragraph breaks, and so do those
    beside a table row (a line with "|"): a table cannot start inside a paragraph, and a filled line after one
    would be read as another row."""
    lines = text.split("\n")
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if len(filled) < 2:
        return text
    for before, after in itertools.pairwise(filled):
        if after - before > 1 and "|" not in lines[before] and "|" not in lines[after]:
            for i in range(before + 1, after):
                lines[i] = JOINER + lines[i]
    return "\n".join(lines)


def _escape_prose(text: str) -> str:
    text = _keep_blank_lines(text)
    out, last = [], 0
    for m in _INLINE_CODE.finditer(text):
        out.append(_escape_segment(text[last:m.start()], last == 0 or text[last - 1] == "\n", False))
        out.append(m.group(0))
        last = m.end()
    out.append(_escape_segment(text[last:], last == 0 or text[last - 1] == "\n", True))
    return "".join(out)


def safe_markdown(text: str) -> str:
    """Markdown source that shows what the model wrote (see the module docstring for what renders).

    Streamlit never renders raw HTML without unsafe_allow_html, but it would silently drop tags such as
    `<script>`; annotators must *see* them (a response full of HTML is a bad response). Code blocks and spans
    render verbatim by Markdown's own rules. Line breaks are kept by the page's CSS (`TEXT_CSS`).
    """
    text = text or ""
    out, last = [], 0
    for m in _FENCE.finditer(text):
        out.append(_escape_prose(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_escape_prose(text[last:]))
    return "".join(out)


# Text containers carry a key starting "mt_" (model text). Inside them a paragraph keeps its line breaks and
# spaces (pre-wrap): a poem, a list without markers or code without a fence keeps its shape. (labeling_ui.style
# puts this on every page.)
TEXT_CSS = """
[class*="st-key-mt_"] [data-testid="stMarkdownContainer"] p,
[class*="st-key-mt_"] [data-testid="stMarkdownContainer"] li:not(:has(> p)),
[class*="st-key-mt_"] [data-testid="stMarkdownContainer"] td,
[class*="st-key-mt_"] [data-testid="stMarkdownContainer"] th { white-space: pre-wrap; }
"""


# Characters that show nothing yet change what a reader sees: zero-width spaces and joiners that hide inside words,
# and bidirectional controls that reorder the text around them ("\u202egnp.exe" reads as "exe.png"). Formatted
# and plain renderings show each as a visible token, so two texts that look alike are alike. (ZWJ/ZWNJ, U+200C/D,
# are left: scripts and emoji sequences need them to render at all.)
INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def mark_invisible(text: str) -> str:
    """`text` with every INVISIBLE character shown as a token like ⟦U+202E⟧."""
    return INVISIBLE.sub(lambda m: f"⟦U+{ord(m.group()):04X}⟧", text)


def render_mode(project: dict[str, Any] | None) -> str:
    """The project's `render` setting (`markdown` | `plain`), markdown when unset or unknown."""
    mode = ((project or {}).get("settings") or {}).get("render", DEFAULT_RENDER)
    return mode if mode in RENDERS else DEFAULT_RENDER


def show_text(text: str, *, key: str, mode: str = DEFAULT_RENDER, raw: bool = False,
              empty_label: str = "(empty response)") -> None:
    """Show model or user text as written: markdown (escaped), plain text, or its raw source (`raw`).

    `key` names the container (unique on the page). Empty or whitespace-only text shows a badge saying so,
    never a blank pane that could pass for a rendering fault.
    """
    text = text or ""
    with st.container(key=f"mt_{key}"):
        if not text.strip():
            st.badge(empty_label if not text else f"{empty_label[:-1]}: only whitespace)", color="gray")
            return
        hidden = INVISIBLE.findall(text)
        if hidden:  # said in every rendering, raw included (its code block keeps the characters themselves)
            st.badge(f"{len(hidden)} invisible character{'s' if len(hidden) > 1 else ''} (zero-width or "
                     "text-direction controls), shown as ⟦U+…⟧", icon=":material/visibility:", color="orange")
        if raw:
            st.code(text, language=None, wrap_lines=True)
        elif mode == "plain":
            st.text(mark_invisible(text))
        else:
            st.markdown(safe_markdown(mark_invisible(text)))
