"""Unit tests of the pure parts of mao_celery.containers: log tail bound, granted network,
remaining time, timeout classification, container names and spec validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery.containers import (
    LOG_TAIL_MAX_CHARS,
    ContainerSpec,
    bound_log_tail,
    container_name,
    granted_network,
    ran_out_of_time,
    remaining_s,
)
from mao_celery.exceptions import InvalidInput, RunFailed

# For specs whose image is never looked at.
ANY_IMAGE = "mao-busybox:latest"
TOOL = "demo"
TOOL_USER = "10001:10001"
START = datetime(2024, 5, 7, 10, 0, tzinfo=UTC)


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


@given(
    timeout_s=st.floats(min_value=0.001, max_value=1e6),
    elapsed_s=st.floats(min_value=-1e6, max_value=2e6),
)
def test_remaining_time_stays_within_the_budget(timeout_s: float, elapsed_s: float) -> None:
    left = remaining_s(timeout_s, START, START + timedelta(seconds=elapsed_s))
    assert 0.0 <= left <= timeout_s
    if 0 <= elapsed_s <= timeout_s:
        assert left == pytest.approx(timeout_s - elapsed_s, abs=1e-5)


@pytest.mark.parametrize(
    ("finished_at", "expected"),
    [
        ("2024-05-07T10:00:09.999999999Z", False),
        ("2024-05-07T10:00:10.000000001Z", True),
        ("2024-05-07T11:00:00Z", True),
    ],
)
def test_ran_out_of_time_compares_docker_start_and_finish(finished_at: str, expected: bool) -> None:
    state = {"StartedAt": "2024-05-07T10:00:00.000000001Z", "FinishedAt": finished_at}
    assert ran_out_of_time(state, 10) is expected


@pytest.mark.parametrize("run_id", ["", "-x", "a b", "a/b", "x" * 129])
def test_run_id_unfit_for_a_container_name_is_invalid(run_id: str) -> None:
    with pytest.raises(InvalidInput, match="invalid run id"):
        container_name(run_id)


@pytest.mark.parametrize(
    "limits",
    [
        {"timeout_s": 0},
        {"timeout_s": float("nan")},
        {"memory_bytes": 0},
        {"log_tail_lines": -1},
        {"nano_cpus": 0},
        {"user": ""},
        {"user": "root"},
        {"user": "0:0"},
        {"user": "10001:0"},
        {"user": "0:10001"},
    ],
)
def test_spec_with_unusable_limits_or_user_is_invalid(
    limits: dict[str, Any], tmp_path: Path
) -> None:
    fields = {"user": TOOL_USER} | limits
    with pytest.raises(InvalidInput):
        ContainerSpec(run_id="r1", tool=TOOL, image=ANY_IMAGE, data_dir=tmp_path, **fields)
