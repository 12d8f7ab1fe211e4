"""Queueing runs quickly (issue 14): `tool run --no-wait A B ...` queues a run of each tool in
one process, and a wait for a run wakes when its record is written (Redis pub/sub), not on a
poll. Real Redis, etcd, Celery worker and Docker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import redis

from mao_celery.models import RunReport, RunStatus
from mao_celery.runs import CHANGED_CHANNEL, RunStore
from tests.fixtures.node import NodeUnderTest
from tests.helpers import RUN_WAIT_S, maoctl, register, wait_for, wait_until

pytestmark = pytest.mark.integration

WRITE_CONTROL = 'echo 1 > "/usr/src/app/data/control-$(date +%s%N).csv"'
NEVER_S = 3600.0
"""A poll interval no test waits for: only a published write can end the wait in time."""


def test_several_tools_are_queued_by_one_command_and_all_run(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    image = tool_image(WRITE_CONTROL)
    for name in ("first", "second", "third"):
        register(node, name, image, make_data_repo(name))

    result = maoctl(node, "tool", "run", "--no-wait", "first", "second", "third")

    assert result.returncode == 0, result.stderr
    run_ids = result.stdout.split()
    assert len(run_ids) == 3
    reports = [wait_for(node, run_id, lambda r: r.status.terminal) for run_id in run_ids]
    assert [r.tool for r in reports] == ["first", "second", "third"]
    assert all(r.status == RunStatus.SUCCEEDED for r in reports), [r.error for r in reports]


def test_a_tool_already_running_is_named_and_the_others_are_queued(
    node: NodeUnderTest, make_data_repo: Callable[..., str]
) -> None:
    for name in ("busy", "free"):
        register(node, name, "mao-demo:latest", make_data_repo(name))
    held = maoctl(node, "tool", "run", "--no-wait", "busy")  # no worker: it stays queued
    assert held.returncode == 0, held.stderr

    result = maoctl(node, "tool", "run", "--no-wait", "busy", "free")

    assert result.returncode == 1
    assert "busy" in result.stderr, result.stderr
    assert "already running" in result.stderr, result.stderr
    (queued,) = result.stdout.split()
    assert node.runs().get(queued).tool == "free"


def test_an_unknown_tool_among_several_queues_none(
    node: NodeUnderTest, make_data_repo: Callable[..., str]
) -> None:
    register(node, "known", "mao-demo:latest", make_data_repo())

    result = maoctl(node, "tool", "run", "--no-wait", "known", "unknown")

    assert result.returncode == 1
    assert "unknown" in result.stderr, result.stderr
    assert result.stdout == ""
    assert node.runs().recent("known") == []


@pytest.mark.parametrize("args", [["a", "b"], ["a", "a"]])
def test_several_tools_without_no_wait_or_twice_the_same_are_usage_errors(
    node: NodeUnderTest, args: list[str]
) -> None:
    result = maoctl(node, "tool", "run", *args)

    assert result.returncode == 2, result.stderr


@pytest.mark.parametrize(
    ("write", "status"), [("save", RunStatus.FAILED), ("cancel", RunStatus.CANCELLED)]
)
def test_a_wait_wakes_when_the_run_is_written(
    redis_url: str, write: str, status: RunStatus
) -> None:
    runs = RunStore.from_url(redis_url)
    report = RunReport(run_id="0123abcd", tool="demo", node="a")
    runs.begin(report, lock_ttl_s=60)
    seen: list[RunReport] = []
    waiting = threading.Thread(
        target=lambda: seen.append(
            runs.wait(report.run_id, lambda r: r.status.terminal, RUN_WAIT_S, poll_s=NEVER_S)
        )
    )
    waiting.start()
    with redis.Redis.from_url(redis_url) as client:
        channel = CHANGED_CHANNEL + report.run_id
        wait_until(
            lambda: dict(client.pubsub_numsub(channel)).get(channel.encode()),
            RUN_WAIT_S,
            what="the wait to subscribe",
        )

    if write == "save":
        runs.save(report.failed("stopped by the test"))
    else:
        runs.cancel(report.run_id, "the test")
    waiting.join(RUN_WAIT_S + 5)

    assert [r.status for r in seen] == [status]
    runs.close()
