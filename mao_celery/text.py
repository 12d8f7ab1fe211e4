"""Text from outside (registry values, tools, containers, remotes) made safe to show.

Two rules, each written once and used by every listing, `--json`, error and log line:

- `redact_url`: a URL never shows its credentials.
- `printable`: a string shown on a terminal or written to a log line never carries a control
  character (newline, ESC/CSI/OSC sequences, NUL, C1 controls, bidirectional overrides): each is
  shown as its Python escape (`\\n`, `\\x1b`, `\\u202e`), so a value cannot forge a line or drive
  the terminal. Multi-line text (a container's log tail) is split into lines first, each made
  printable.

It also writes a spike's gain the one way every listing, report and log line shows it
(`format_gain_pct`). This module imports nothing of ours: every layer may use it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# C0 controls, DEL, C1 controls; the Unicode bidi overrides/isolates and line/paragraph separators.
_UNSAFE_RE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
REDACTED = "***"
SHOWN_MAX = 4096
"""The most characters of a URL or message `redact_url`/`redact_urls` return."""
# RFC 3986 §3.2: the authority follows "//" and ends at the first "/", "?" or "#"; user info is
# what precedes its last "@".
_AUTHORITY_USERINFO_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_URL_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
# `user:password@` anywhere (scp-like `alice:pw@host:path`, a URL missing a slash): the password
# is what follows the user's ":" up to the "@", without "/", "@" or white space.
_PASSWORD_RE = re.compile(r"(?P<user>[^\s:/@'\"]*):[^\s/@'\"]+@")


def printable(value: object) -> str:
    """`str(value)` with every control character replaced by its escape, e.g. `\\x1b`, `\\n`."""
    return _UNSAFE_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def printable_lines(text: str) -> list[str]:
    """`text` split into lines (on any line break), each made `printable`."""
    return [printable(line) for line in text.splitlines()]


def redact_url(url: str) -> str:
    """`url` with its credentials masked: all user info of an http(s) URL (`https://***@host/`: a
    token is often given as the user name, e.g. GitHub's `TOKEN:x-oauth-basic@`), the password
    of any other URL (`ssh://git:***@host/`). Other text is unchanged (`ssh://git@host/`).

    A URL that `urllib.parse.urlsplit` cannot parse (e.g. `https://u:p@[x/`) has everything
    between `scheme://` and the last `@` of its authority masked: `https://***@[x/`. Any
    `user:password@` left (scp-like `alice:pw@host:path`, `https:/u:pw@host`) shows `user:***@`.
    """
    return _PASSWORD_RE.sub(rf"\g<user>:{REDACTED}@", _redact_authority(_bounded(url)))


def _bounded(text: str) -> str:
    """`text` cut to `SHOWN_MAX` characters (marked with "..."): what is shown of a value
    another member or a remote wrote; it also bounds the cost of the regular expressions."""
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX] + "..."


def _redact_authority(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return _AUTHORITY_USERINFO_RE.sub(rf"\g<scheme>{REDACTED}@", url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if userinfo and parts.scheme in {"http", "https"}:
        shown = REDACTED
    elif password is not None:
        shown = f"{parts.username}:{REDACTED}"
    else:
        return url
    return parts._replace(netloc=f"{shown}@{hostport}").geturl()


def redact_urls(text: str) -> str:
    """`text` with `redact_url` applied to every `scheme://...` word in it (a word ends at white
    space or a quote), e.g. an error message quoting a URL, and every `user:password@` masked."""
    masked = _URL_WORD_RE.sub(lambda m: redact_url(m.group()), _bounded(text))
    return _PASSWORD_RE.sub(rf"\g<user>:{REDACTED}@", masked)


def format_gain_pct(
    gain_pct: float | None, *, digits: int = 1, unit: str = "%", undefined: str = "undefined"
) -> str:
    """A gain in percent for people, signed: `+12.5%` (`unit=""` under a "gain %" column
    header); `undefined` when it is None (zero baseline, too few values)."""
    return undefined if gain_pct is None else f"{gain_pct:+.{digits}f}{unit}"
