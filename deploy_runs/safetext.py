"""Text from repositories and servers (commit messages, build output, container logs, error
messages) made safe to show. In a terminal it must not recolour, move the cursor, retitle the
window, clear the screen or overwrite what is shown; as Markdown it must not become markup.

Pure and linear in the input: every pattern here is possessive or stops at the next control
character, so a hostile line (a megabyte of unterminated escapes) costs one pass.
"""

from __future__ import annotations

import re
import string

# ECMA-48 sequences, removed whole. A control string (OSC, DCS, SOS, PM, APC) runs to its
# terminator (BEL or ST); one cut short by another control character or the end of the text is
# not a sequence: its introducer is removed by the last branch (or shown, for the 8-bit forms)
# and its text shown.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*+[\x20-\x2f]*+[\x40-\x7e]"  # CSI: colours, cursor, clear screen
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])"  # OSC (window title, hyperlink), DCS, SOS, PM, APC
    r"[^\x00-\x08\x0a-\x1f\x7f-\x9f]*+(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[\x20-\x2f]*+[\x30-\x7e]"  # the others: ESC c (reset), ESC 7/8, ESC ( B, ESC M, ST
)
# What is left that a terminal would act on: C0 but tab, DEL, C1; bidirectional overrides and
# isolates (they make a line display in another order than it reads); lone surrogates (they
# cannot be encoded for output). Shown by str.translate: one C pass, however many there are.
_CONTROL_CODES = [*range(0x00, 0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0),
                  *range(0x202a, 0x202f), *range(0x2066, 0x206a), *range(0xd800, 0xe000)]
_NAMED = {0x0a: "\\n", 0x0d: "\\r"}
_SHOWN = {code: _NAMED.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
          for code in _CONTROL_CODES}
_SHOWN_BUT_NEWLINE = {code: shown for code, shown in _SHOWN.items() if code != 0x0a}


def safe_terminal(text: str, keep_newlines: bool = False) -> str:
    """`text` as it can be printed: escape sequences removed, other control characters shown as
    `\\x07`, `\\r`, `\\n` (so `safe\\rEVIL` shows both parts), everything else kept (é, ✔, CJK,
    emoji). A CR that only ends a line (CRLF output) is dropped. Newlines are shown as `\\n`
    unless `keep_newlines`: one value, one line, so it cannot forge a line of its own."""
    text = _SEQUENCE.sub("", text).replace("\r\n", "\n").rstrip("\r")
    return text.translate(_SHOWN_BUT_NEWLINE if keep_newlines else _SHOWN)


# All of ASCII's punctuation, the backslash first (the escapes add backslashes). One str.replace
# a character: C speed even when every character is one of them.
_MARKDOWN_SPECIAL = "\\" + string.punctuation.replace("\\", "")


def markdown_text(text: str) -> str:
    """Untrusted text as inline Markdown that renders as exactly that text: safe for a terminal
    too, on one line (no block can start), every ASCII punctuation character backslash-escaped
    (CommonMark allows it for all of them), so no emphasis, link, image, HTML, entity, autolink
    or table cell break can form. Leading blanks go: four would start a code block."""
    text = safe_terminal(text).strip()
    for char in _MARKDOWN_SPECIAL:
        if char in text:
            text = text.replace(char, f"\\{char}")
    return text


def _backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def markdown_code(text: str) -> str:
    """Untrusted text as a Markdown code span: delimited by more backticks than any run in it
    (CommonMark: the span ends only at a run of the same length), padded with a space where
    its own backticks or spaces would touch the delimiter. Mid-line only (three backticks that
    open a line start a fence), and not in table cells (`|` in a span still splits a GFM row)."""
    text = safe_terminal(text)
    fence = "`" * (_backtick_run(text) + 1)
    if not text:
        text = " "  # `` is no code span
    elif text.strip(" ") and (text[0] == "`" or text[-1] == "`" or text[0] == text[-1] == " "):
        text = f" {text} "  # CommonMark takes one space off each end of such a span
    return f"{fence}{text}{fence}"


def markdown_code_block(lines: list[str], width: int | None = None) -> list[str]:
    """Untrusted lines as a fenced code block (its own Markdown lines): the fence is longer than
    any backtick run in them, so no line can close it early."""
    shown = [safe_terminal(line)[:width] for line in lines]
    fence = "`" * max(3, max((_backtick_run(line) for line in shown), default=0) + 1)
    return [fence, *shown, fence]
