"""10,000 tool schedules on one node: `maoctl schedule list` lists them all, and a real beat
(RedBeat, `beat.RedBeatScheduler`) and worker fire the one that is due among them. Correctness
only: the timings live in bench/schedules.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from mao_celery.registry import Registry
from tests.fixtures.node import REPO_ROOT, NodeUnderTest
from tests.helpers import listing, register, wait_until

pytestmark = pytest.mark.integration

COUNT = 10_000
WRITE_SCHEDULES = """
import sys
from mao_celery.node import Node
from mao_celery.schedule_spec import ScheduleRequest, build_spec
from mao_celery.settings import load_settings

daily = build_spec(ScheduleRequest(period="daily", at="06:30", tz="Europe/Zurich"))
hourly = build_spec(ScheduleRequest(every_s=3600.0))
with Node(load_settings()) as node:
    for i in range(int(sys.argv[1])):
        node.schedules.add(f"tool-{i:05d}", daily if i % 2 else hourly)
"""
"""Writes tool-00000... through `ScheduleStore.add`, cron and interval in turn, in a process of
the node's settings (RedBeat keeps its Redis settings per Celery app: one node per process)."""


@pytest.mark.slow
def test_ten_thousand_schedules_are_listed_and_the_due_one_fires(
    node: NodeUnderTest,
    registry: Registry,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
) -> None:
    written = subprocess.run(
        [sys.executable, "-c", WRITE_SCHEDULES, str(COUNT)],
        env=node.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert written.returncode == 0, written.stderr
    register(node, "due", tool_image("echo 1 > /usr/src/app/data/control-1.csv"),
             make_data_repo("due"))  # fmt: skip
    scheduled = node.maoctl("tool", "schedule", "due", "--every-s", "2")
    assert scheduled.returncode == 0, scheduled.stderr

    result = node.maoctl("schedule", "list", "--json")

    assert result.returncode == 0, result.stderr
    entries = listing(result.stdout)
    expected = ["due", *(f"tool-{i:05d}" for i in range(COUNT))]
    assert [e["tool"] for e in entries] == expected
    assert {e["state"] for e in entries} == {"active"}
    assert {e["schedule"] for e in entries} == {
        "every 2 s", "every 3600 s", "daily at 06:30 Europe/Zurich",
    }  # fmt: skip

    node.start_worker()
    beat = node.start_beat()
    wait_until(
        lambda: node.runs().recent("due", 1),
        60,
        what="a run of the due schedule among 10,000",
        details=lambda: f"beat log:\n{beat.log()[-4000:]}",
    )
    assert node.runs().recent("tool-00000", 1) == []
    member = wait_until(
        lambda: next((m for m in registry.members()[0] if m.node_id == "node-a"), None),
        30,
        what="the node's member record, written by the beat's heartbeat",
    )
    assert member is not None
    assert list(member.tools) == expected
