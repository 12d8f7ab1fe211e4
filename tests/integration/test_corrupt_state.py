"""Corrupt node-local state contained, named and repairable: maoctl processes against real
Redis and etcd (no worker is needed: the records are written by hand, as a fault would).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from mao_celery.models import RunReport
from tests.fixtures.node import NodeUnderTest
from tests.helpers import TOOL_ARGS, listing, listing_warnings, maoctl

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the node's Redis database, to corrupt it."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as c:
        yield c


def finished_runs(node: NodeUnderTest, tool: str, count: int) -> list[str]:
    """Record `count` ended runs of `tool`; their ids, oldest first."""
    runs = node.runs()
    ids = [f"{tool}-ok-{i}" for i in range(count)]
    for run_id in ids:
        report = RunReport(run_id=run_id, tool=tool, node="node-a")
        runs.begin(report, lock_ttl_s=60)
        runs.save(report.failed("the tool exited with code 1"))
    return ids


def add_tool(node: NodeUnderTest, name: str) -> None:
    result = maoctl(node, "tool", "add", name, *TOOL_ARGS)
    assert result.returncode == 0, result.stderr


def test_a_corrupt_run_record_is_skipped_with_a_warning_and_repaired(
    node: NodeUnderTest, client: redis.Redis
) -> None:
    valid = finished_runs(node, "demo", 2)
    client.set("mao:run:x", "not json")
    client.zadd("mao:runs:demo", {"x": time.time()})
    client.hset("mao:run:y", "status", "running")
    client.zadd("mao:runs:demo", {"y": time.time()})

    table = maoctl(node, "tool", "runs", "demo", env={"COLUMNS": "200"})
    as_json = maoctl(node, "tool", "runs", "demo", "--json")
    shown = maoctl(node, "run", "show", "x")
    shown_hash = maoctl(node, "run", "show", "y")
    found = maoctl(node, "repair", "--json")
    repaired = maoctl(node, "repair", "--yes")
    after = maoctl(node, "tool", "runs", "demo", "--json")
    clean = maoctl(node, "repair")

    assert table.returncode == 0, table.stderr
    assert all(run_id[:8] in table.stdout for run_id in valid)
    warnings = table.stderr.splitlines()
    assert len(warnings) == 2, table.stderr
    assert warnings[0].startswith("warning: skipped invalid state at mao:run:")
    assert "mao:run:x: not a valid run record" in table.stderr
    assert "mao:run:y: a Redis hash where a string belongs" in table.stderr
    assert as_json.returncode == 0
    assert [r["run_id"] for r in listing(as_json.stdout)] == valid[::-1]
    assert sorted(w["key"] for w in listing_warnings(as_json.stdout)) == ["mao:run:x", "mao:run:y"]
    assert as_json.stderr == table.stderr
    assert (shown.returncode, shown_hash.returncode) == (1, 1)
    assert shown.stderr.startswith("error: invalid state at mao:run:x: not a valid run record")
    assert shown_hash.stderr.startswith("error: invalid state at mao:run:y: a Redis hash")
    assert found.returncode == 0
    report = json.loads(found.stdout)
    assert report["deleted"] is False
    assert [r["key"] for r in report["invalid"]] == ["mao:run:x", "mao:run:y"]
    assert repaired.returncode == 0
    assert "deleted 2 invalid record(s)" in repaired.stdout
    assert (after.returncode, after.stderr) == (0, "")
    assert [r["run_id"] for r in listing(after.stdout)] == valid[::-1]
    assert client.zrange("mao:runs:demo", 0, -1) == valid
    assert clean.stdout == "no invalid record on this node\n"


def test_wrong_type_keys_are_invalid_state_exit_1_not_unreachable(
    node: NodeUnderTest, client: redis.Redis
) -> None:
    add_tool(node, "locked")
    add_tool(node, "demo")
    client.set("mao:runs:demo", "not a sorted set")
    client.rpush("mao:lock:locked", "a", "b")
    client.hset("mao:notifications:cursor", "x", "1")
    client.set("mao:member:lease", "not a number")

    listed = maoctl(node, "tool", "runs", "demo")
    started = maoctl(node, "tool", "run", "locked", "--no-wait")
    found = maoctl(node, "repair")
    repaired = maoctl(node, "repair", "--yes", "--json")
    listed_after = maoctl(node, "tool", "runs", "demo", "--json")
    started_after = maoctl(node, "tool", "run", "locked", "--no-wait")

    assert listed.returncode == 1
    assert listed.stderr == (
        "error: invalid state at mao:runs:demo: a Redis string where a zset belongs\n"
    )
    assert started.returncode == 1
    assert started.stderr == (
        "error: invalid state at mao:lock:locked: a Redis list where a string belongs\n"
    )
    assert found.returncode == 0
    assert found.stdout.splitlines()[:4] == [
        "invalid  mao:lock:locked  a Redis list where a string belongs",
        "invalid  mao:member:lease  not a valid value: invalid literal for int() with base 10: "
        "'not a number'",
        "invalid  mao:notifications:cursor  a Redis hash where a string belongs",
        "invalid  mao:runs:demo  a Redis string where a zset belongs",
    ]
    assert "4 invalid record(s); `maoctl repair --yes` deletes them" in found.stdout
    assert json.loads(repaired.stdout)["deleted"] is True
    assert len(json.loads(repaired.stdout)["invalid"]) == 4
    assert listed_after.returncode == 0, listed_after.stderr
    assert listing(listed_after.stdout) == []
    assert started_after.returncode == 0, started_after.stderr


def test_a_lock_held_by_an_unreadable_run_is_invalid_state_and_forget_frees_it(
    node: NodeUnderTest, client: redis.Redis
) -> None:
    add_tool(node, "stuck")
    client.set("mao:run:x", "not json")
    client.zadd("mao:runs:stuck", {"x": time.time()})
    client.set("mao:lock:stuck", "x", px=600_000)

    refused = maoctl(node, "tool", "run", "stuck", "--no-wait")
    forgotten = maoctl(node, "run", "forget", "x")
    again = maoctl(node, "run", "forget", "x")
    accepted = maoctl(node, "tool", "run", "stuck", "--no-wait")

    assert refused.returncode == 1
    assert refused.stderr == (
        "error: invalid state at mao:lock:stuck: held by run x, whose record mao:run:x cannot "
        "be read (maoctl repair, or maoctl run forget x)\n"
    )
    assert (forgotten.returncode, forgotten.stdout) == (0, "run x forgotten\n")
    assert client.exists("mao:run:x") == 0
    assert client.zscore("mao:runs:stuck", "x") is None
    assert again.returncode == 1
    assert "run 'x' is not known on this node" in again.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert client.get("mao:lock:stuck") == accepted.stdout.strip()


def test_forget_refuses_a_run_that_has_not_ended(node: NodeUnderTest) -> None:
    node.runs().begin(RunReport(run_id="busy-run", tool="busy", node="node-a"), lock_ttl_s=60)

    refused = maoctl(node, "run", "forget", "busy-run")

    assert refused.returncode == 1
    assert "run busy-run has not ended (queued)" in refused.stderr
    assert node.runs().holder("busy") == "busy-run"
