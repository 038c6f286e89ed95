"""Text the other party chose (a task spec, an error detail, a selector) made safe to show.

Every string a prover (or, on the server, a client) supplies is untrusted: it may carry ANSI
escapes that redraw the terminal, newlines that forge a second ``verdict:`` line for scripts,
bidirectional overrides, or megabytes that flood a log. ``printable`` is the one place such text
is neutralised before it reaches a terminal, a log or a reason; ``markdown_text`` before a
Markdown report.
"""

from __future__ import annotations

import unicodedata

#: Longest piece of untrusted text quoted inside a message.
QUOTE_LIMIT = 200
#: Longest reason a verification result carries.
REASON_LIMIT = 4_000
# control, format (bidi overrides), surrogate, private-use, unassigned; line/paragraph separators
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_MARKDOWN_SPECIALS = "\\`*_[]#|!"


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, limit: int | None = REASON_LIMIT) -> str:
    """One line with no control, format or separator characters (each shown as ``\\xNN`` /
    ``\\uNNNN``), at most ``limit`` characters of the original followed by a count of what was
    cut. Idempotent: printable(printable(s)) == printable(s) when nothing was cut."""
    s = str(text)
    cut = 0
    if limit is not None and len(s) > limit:
        s, cut = s[:limit], len(s) - limit
    out = "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in s)
    return out + (f"… [{cut} more characters]" if cut else "")


def quote(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``printable`` text in quotes, for embedding a short untrusted string in a message."""
    return "'" + printable(text, limit) + "'"


def markdown_text(text: object, limit: int | None = REASON_LIMIT) -> str:
    """``printable`` text with Markdown and HTML specials escaped, so it renders as plain text."""
    s = printable(text, limit)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join("\\" + ch if ch in _MARKDOWN_SPECIALS else ch for ch in s)
