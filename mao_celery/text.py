"""Text from outside (registry values, tools, containers, remotes) made safe to show.

Two rules, each written once and used by every listing, `--json`, error and log line:

- `redact_url`: a URL never shows its credentials.
- `printable`: a string shown on a terminal or written to a log line never carries a control
  character (newline, ESC/CSI/OSC sequences, NUL, C1 controls, bidirectional overrides): each is
  shown as its Python escape (`\\n`, `\\x1b`, `\\u202e`), so a value cannot forge a line or drive
  the terminal. Multi-line text (a container's log tail) is split into lines first, each made
  printable.

This module imports nothing of ours: every layer may use it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# C0 controls, DEL, C1 controls; the Unicode bidi overrides/isolates and line/paragraph separators.
_UNSAFE_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
REDACTED = "***"


def printable(value: object) -> str:
    """`str(value)` with every control character replaced by its escape, e.g. `\\x1b`, `\\n`."""
    return _UNSAFE_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def printable_lines(text: str) -> list[str]:
    """`text` split into lines (on any line break), each made `printable`."""
    return [printable(line) for line in text.splitlines()]


def redact_url(url: str) -> str:
    """`url` with its credentials masked: `user:***@` where it holds a password, and `***@` for an
    http(s) user name alone (a token is often given as the user name). Other text is unchanged.
    """
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return url
    if password is None and not (username and parts.scheme in {"http", "https"}):
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    shown = f"{parts.username}:{REDACTED}" if password is not None else REDACTED
    return parts._replace(netloc=f"{shown}@{hostport}").geturl() if userinfo else url
