"""Unit tests of the pure error mappings: Docker state -> failure reason (containers.judge),
etcd member probes -> error (registry.classify_failure), git branch names (models)."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery.containers import judge
from mao_celery.exceptions import ServiceUnavailable
from mao_celery.models import validate_branch
from mao_celery.registry import EtcdUnavailable, MemberProbe, classify_failure

MIB = 1 << 20


def state(code: int, oom: bool = False) -> dict[str, object]:
    return {"ExitCode": code, "OOMKilled": oom}


def test_a_timeout_wins_over_everything() -> None:
    reason = judge(state(137, oom=True), timed_out=True, timeout_s=2, memory_bytes=16 * MIB)
    assert reason == "timeout: the tool ran longer than 2 s, killed"


def test_an_oom_kill_names_the_memory_limit_in_mib() -> None:
    reason = judge(state(137, oom=True), timed_out=False, timeout_s=60, memory_bytes=16 * MIB)
    assert reason == "killed: memory limit of 16 MiB exceeded (exit code 137)"


@given(st.integers(min_value=1, max_value=signal.NSIG - 1))
def test_exit_code_128_plus_n_is_killed_by_signal_n(number: int) -> None:
    reason = judge(state(128 + number), timed_out=False, timeout_s=60, memory_bytes=MIB)
    assert reason is not None
    assert reason.startswith(f"killed by signal {number} (")
    assert f"exit code {128 + number})" in reason


@given(st.integers(min_value=1, max_value=128))
def test_other_codes_are_plain_exit_codes(code: int) -> None:
    reason = judge(state(code), timed_out=False, timeout_s=60, memory_bytes=MIB)
    assert reason == f"the tool exited with code {code}"


def test_exit_0_is_no_failure_even_after_an_oom_event_in_a_child() -> None:
    assert judge(state(0, oom=True), timed_out=False, timeout_s=60, memory_bytes=MIB) is None


ENDPOINTS = ["a:1", "b:2", "c:3"]


def probes(*answers: tuple[bool, bool]) -> list[MemberProbe]:
    return [MemberProbe(e, a, leader) for e, (a, leader) in zip(ENDPOINTS, answers, strict=True)]


def test_no_member_answering_is_unreachable() -> None:
    error = classify_failure(ENDPOINTS, probes((False, False), (False, False), (False, False)), "")
    assert isinstance(error, EtcdUnavailable)
    assert str(error) == "etcd unreachable (no member answers) at a:1,b:2,c:3"


@pytest.mark.parametrize(
    ("answers", "k"),
    [
        (((True, False), (False, False), (False, False)), 1),  # a minority
        (((True, True), (False, False), (False, False)), 1),  # a minority with a stale leader
        (((True, False), (True, False), (False, False)), 2),  # a majority without a leader
    ],
)
def test_too_few_members_or_no_leader_is_no_quorum(
    answers: tuple[tuple[bool, bool], ...], k: int
) -> None:
    error = classify_failure(ENDPOINTS, probes(*answers), "ConnectionTimeoutError")
    assert str(error) == f"etcd cluster has no quorum ({k} of 3 members answer) at a:1,b:2,c:3"
    assert isinstance(error, ServiceUnavailable)


def test_a_healthy_cluster_refusing_keeps_etcds_reason() -> None:
    error = classify_failure(
        ENDPOINTS, probes((True, True), (True, True), (False, False)), "database space exceeded"
    )
    assert not isinstance(error, EtcdUnavailable)
    assert str(error) == "etcd unreachable at a:1,b:2,c:3: database space exceeded"


@pytest.mark.parametrize("name", ["main", "data/v2", "release-1.0", "a_b"])
def test_branch_names_git_accepts_are_accepted(name: str) -> None:
    assert validate_branch(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-x", "a..b", "a b", "x.lock", "a/.b", "a/", "/a", "a.", "@", "a@{1}", "a~1", "a:b"],
)
def test_branch_names_git_refuses_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid branch name"):
        validate_branch(name)


def test_a_sigkill_without_an_oom_record_names_the_memory_limit_as_a_likely_cause() -> None:
    reason = judge(state(137), timed_out=False, timeout_s=60, memory_bytes=16 * MIB)
    assert reason == (
        "killed by signal 9 (SIGKILL, exit code 137): out of memory (limit 16 MiB) unless "
        "killed from outside"
    )
