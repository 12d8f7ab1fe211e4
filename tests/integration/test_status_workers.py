"""A truthful `maoctl status` (the node's workers and beat besides its services), `tool run`
telling at once that no worker answers, and `config --effective` showing the settings the
workers run with. Real Redis, etcd, Docker, Celery workers and a RedBeat beat.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.fixtures.node import NodeUnderTest
from tests.helpers import listing, maoctl, register, wait_until

pytestmark = pytest.mark.integration

BEAT_TICK_WITHIN_S = 30.0
"""How long a started beat may take to hold the RedBeat lock and tick."""
NO_WORKER_ANSWER_WITHIN_S = 10.0
"""`tool run` must say that no worker answers within this (a ping lasts 1 s; maoctl starts)."""


def checks(stdout: str) -> dict[str, dict[str, Any]]:
    """`status --json` by check name."""
    return {check["name"]: check for check in json.loads(stdout)}


def test_status_with_no_worker_exits_3_naming_the_worker_and_the_beat(node: NodeUnderTest) -> None:
    result = maoctl(node, "status", "--json")
    people = maoctl(node, "status")

    assert result.returncode == 3, result.stdout
    found = checks(result.stdout)
    assert [(name, c["ok"]) for name, c in found.items()] == [
        ("etcd", True), ("Redis", True), ("Docker", True), ("importdir", True),
        ("workers", False), ("beat", False),
    ]  # fmt: skip
    assert found["workers"]["detail"].startswith("no worker answers on this node's broker redis://")
    assert found["workers"]["workers"] == []
    assert found["beat"]["detail"] == (
        "no beat holds the RedBeat lock mao:beat::lock: start one with `worker.sh beat`"
    )
    assert people.returncode == 3
    assert "workers    FAIL  no worker answers" in people.stdout, people.stdout


def test_status_shows_the_workers_their_concurrency_and_the_beat_lock_holder(
    node: NodeUnderTest,
) -> None:
    worker = node.start_worker(concurrency=2)
    node.start_beat()

    def healthy() -> subprocess.CompletedProcess[str] | None:
        result = maoctl(node, "status", "--json")
        return result if result.returncode == 0 else None

    result = wait_until(
        healthy,
        BEAT_TICK_WITHIN_S,
        what="maoctl status to exit 0 with a worker and a beat",
        details=lambda: maoctl(node, "status").stdout,
    )

    assert result is not None
    found = checks(result.stdout)
    (shown,) = found["workers"]["workers"]
    assert shown["hostname"].startswith(worker.name.removesuffix("%h"))
    assert (shown["concurrency"], shown["active_tasks"], shown["active_runs"]) == (2, 0, [])
    assert found["workers"]["detail"].startswith("1: ")
    assert found["beat"]["holder"]
    assert found["beat"]["last_tick_s_ago"] <= 15


def test_tool_run_says_at_once_that_no_worker_answers_and_queues_nothing(
    node: NodeUnderTest,
) -> None:
    register(node, "demo", "mao-demo:latest", "https://example.org/d.git")

    started = time.monotonic()
    refused = maoctl(node, "tool", "run", "demo")
    took_s = time.monotonic() - started
    queued = maoctl(node, "tool", "run", "demo", "--no-wait")

    assert refused.returncode == 3
    assert took_s < NO_WORKER_ANSWER_WITHIN_S
    assert refused.stderr.startswith("error: no worker answers on this node's broker"), (
        refused.stderr
    )
    assert "start one with `worker.sh worker`, or pass --wait-for-worker" in refused.stderr
    assert queued.returncode == 0, queued.stderr
    assert "warning: no worker answers" in queued.stderr
    runs = listing(maoctl(node, "tool", "runs", "demo", "--json").stdout)
    assert [r["run_id"] for r in runs] == [queued.stdout.strip()]


def test_config_effective_shows_the_workers_settings_next_to_the_local_ones(
    node: NodeUnderTest,
) -> None:
    worker = node.start_worker(env={"MAO_RUN_TIMEOUT_S": "5"})

    result = maoctl(node, "config", "--effective", "--json")
    people = maoctl(node, "config", "--effective")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    (published,) = shown["workers"]
    assert published["hostname"].startswith(worker.name.removesuffix("%h"))
    assert published["answering"] is True
    assert published["settings"]["run_timeout_s"] == 5
    assert published["settings"]["broker_visibility_timeout_s"] == 605
    assert shown["local"]["run_timeout_s"] == 3600
    assert shown["local"]["broker_visibility_timeout_s"] == 4200
    assert shown["differences"]["run_timeout_s"]["local"] == 3600
    timeout_line = next(line for line in people.stdout.splitlines() if "run_timeout_s " in line)
    assert timeout_line.split()[1:] == ["3600.0", "|", "5.0", "*"], people.stdout
