"""Unit tests of the pure parts of mao_celery.containers: log tail bound, granted network."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery.containers import LOG_TAIL_MAX_CHARS, bound_log_tail, granted_network
from mao_celery.exceptions import RunFailed


@given(text=st.text(), max_chars=st.integers(min_value=0, max_value=64))
def test_the_log_tail_is_the_end_of_the_log_within_the_bound(text: str, max_chars: int) -> None:
    tail = bound_log_tail(text, max_chars)
    assert text.endswith(tail)
    assert len(tail) == min(len(text), max_chars)


def test_the_log_tail_is_bounded_to_16_kib_of_characters_by_default() -> None:
    huge_line = "é" * (LOG_TAIL_MAX_CHARS + 10) + "\n"
    assert LOG_TAIL_MAX_CHARS == 16 * 1024
    assert bound_log_tail(huge_line) == huge_line[-LOG_TAIL_MAX_CHARS:]
    assert bound_log_tail("short\n") == "short\n"


@pytest.mark.parametrize(
    ("asked", "default", "allowed", "expected"),
    [
        (None, "none", ["none"], "none"),
        ("bridge", "none", ["none", "bridge"], "bridge"),
        (None, "bridge", ["none", "bridge"], "bridge"),
    ],
)
def test_a_tool_gets_the_network_it_asks_for_or_the_default_when_allowed(
    asked: str | None, default: str, allowed: list[str], expected: str
) -> None:
    assert granted_network("t", asked, default, allowed) == expected


def test_a_network_the_node_does_not_allow_fails_with_one_clear_line() -> None:
    with pytest.raises(RunFailed) as refused:
        granted_network("scraper", "bridge", "none", ["none"])
    assert str(refused.value) == (
        "tool scraper asks for network 'bridge', which this node does not allow "
        "(MAO_TOOL_NETWORKS_ALLOWED=none); an operator may allow it"
    )


def test_a_default_network_the_node_does_not_allow_is_named_as_the_nodes_setting() -> None:
    with pytest.raises(RunFailed, match=r"^tool t gets MAO_TOOL_NETWORK 'host', which this node"):
        granted_network("t", None, "host", ["none", "bridge"])
