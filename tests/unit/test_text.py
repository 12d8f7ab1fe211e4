"""Unit tests of mao_celery.text: `printable`, `printable_lines`, `redact_url`, `redact_urls`."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mao_celery.text import (
    REDACTED,
    SHOWN_MAX,
    printable,
    printable_lines,
    redact_url,
    redact_urls,
)

INJECTIONS = {
    "newline": ("a\nb", "a\\nb"),
    "carriage return": ("a\rb", "a\\rb"),
    "ESC CSI": ("\x1b[2J", "\\x1b[2J"),
    "OSC title": ("\x1b]0;x\x07", "\\x1b]0;x\\x07"),
    "NUL": ("a\x00b", "a\\x00b"),
    "DEL": ("\x7f", "\\x7f"),
    "C1 CSI": ("\x9b2J", "\\x9b2J"),
    "bidi override": ("a\u202eb", "a\\u202eb"),
    "line separator": ("a\u2028b", "a\\u2028b"),
}
# Characters a terminal or a line-oriented reader may act on: Unicode's control (Cc) category,
# plus the line/paragraph separators and the bidirectional formatting characters.
UNSAFE_EXTRA = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e") | {
    chr(c) for c in range(0x2066, 0x206A)
}


def unsafe(char: str) -> bool:
    return unicodedata.category(char) == "Cc" or char in UNSAFE_EXTRA


@pytest.mark.parametrize(("raw", "shown"), INJECTIONS.values(), ids=INJECTIONS.keys())
def test_printable_escapes_each_control_character(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize("text", ["plain text", "é ü 日本", "tab-less \\n already escaped", ""])
def test_printable_leaves_printable_text_as_it_is(text: str) -> None:
    assert printable(text) == text


@given(st.text())
def test_printable_output_has_no_control_character_and_is_one_line(text: str) -> None:
    shown = printable(text)

    assert not any(unsafe(char) for char in shown)
    assert shown.splitlines() in ([shown], [])
    assert printable(shown) == shown


def test_printable_shows_any_object_through_str() -> None:
    assert printable(ValueError("bad\nline")) == "bad\\nline"


def test_printable_lines_splits_on_every_line_break_then_escapes() -> None:
    assert printable_lines("one\r\ntwo\x1b[31m\rthree\u2028four\n") == [
        "one",
        "two\\x1b[31m",
        "three",
        "four",
    ]


@given(st.text())
def test_printable_lines_output_has_no_control_character(text: str) -> None:
    assert not any(unsafe(char) for line in printable_lines(text) for char in line)


REDACTIONS = {
    "http password": ("http://alice:S3cret@host/d.git", "http://***@host/d.git"),
    "https token as user": ("https://ghp_T0ken@host/d.git", "https://***@host/d.git"),
    "https token:x-oauth-basic": ("https://T0k:x-oauth-basic@h/r", "https://***@h/r"),
    "ssh password": ("ssh://git:S3cret@host/x", "ssh://git:***@host/x"),
    "redis password": ("redis://:S3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    "@ in password": ("https://a:S3c@ret@host/x", "https://***@host/x"),
    "unparsable": ("https://a:S3cret@[x/r", "https://***@[x/r"),
    "scp-like with a password": ("alice:S3cret@h:/x.git", "alice:***@h:/x.git"),
    "a slash missing": ("https:/alice:S3cret@h/x.git", "https:/alice:***@h/x.git"),
    "user:password@ in a query": ("https://host/x?u=a:b@c", "https://host/x?u=a:***@c"),
}


@pytest.mark.parametrize(("url", "shown"), REDACTIONS.values(), ids=REDACTIONS.keys())
def test_redact_url_masks_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["ssh://git@host/x", "git@host:x", "/srv/d.git", "https://host/x?u=a", "redis://h:6379/0"],
)
def test_redact_url_leaves_a_url_without_credentials_as_it_is(url: str) -> None:
    assert redact_url(url) == url


USERINFO_CHARS = "abcXYZ019-._~!$&'()*+,;=%"  # RFC 3986 §3.2.1 userinfo, without ":"


@given(
    st.sampled_from(["http", "https", "ssh", "git", "file", "redis", "ftp"]),
    st.text(st.sampled_from(USERINFO_CHARS), max_size=12),
    st.text(st.sampled_from(USERINFO_CHARS + ":@"), min_size=4, max_size=24),
    st.sampled_from(["host.example", "[::1]", "[x", "h:99999"]),
    st.sampled_from(["", "/", "/o/r.git", "?q=1", "#f"]),
)
def test_redact_url_never_shows_a_password(
    scheme: str, user: str, password: str, host: str, rest: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}{rest}"
    assume(password not in url.replace(f":{password}@", ":@"))  # e.g. not the user name too

    shown = redact_url(url)

    assert password not in shown
    assert f"{REDACTED}@" in shown


def test_redact_urls_masks_each_url_in_a_text() -> None:
    text = "invalid git URL 'https://a:S3cret@h/r': see ssh://git:Pw@h/x, git@h:x"

    assert redact_urls(text) == "invalid git URL 'https://***@h/r': see ssh://git:***@h/x, git@h:x"


def test_a_huge_value_is_shown_cut_and_redacted_in_bounded_time() -> None:
    hostile = "https://u:secret@h/" + "a:" * 500_000  # quadratic for a naive password regex

    shown = redact_url(hostile)
    in_text = redact_urls(f"fatal: {hostile}")

    assert len(shown) <= SHOWN_MAX + 3
    assert shown.endswith("...")
    assert "secret" not in shown
    assert "secret" not in in_text
