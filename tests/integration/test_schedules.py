"""Tool schedules end to end: maoctl, real `celery beat` (RedBeat) and worker processes, Redis
(restarted with its append-only file), etcd and Docker.

Beat logs "Scheduler: Sending due task tool:<name>" each time it fires an entry; counting those
lines counts firings, and `node.runs()` counts the runs they started.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from mao_celery.models import RunReport, RunStatus
from tests.fixtures.node import NodeUnderTest, Worker
from tests.fixtures.services import EtcdServer, RedisServer, free_ports
from tests.helpers import WIDE, listing, register, wait_until

pytestmark = pytest.mark.integration

SPIKING_TOOL = (
    "echo 100 > /usr/src/app/data/control-1.csv; echo 100 > /usr/src/app/data/control-2.csv; "
    "echo 200 > /usr/src/app/data/control-3.csv"
)
REDIS_AWAY = "beat: Redis unavailable"  # mao_celery/beat.py, each tick while Redis is away
READS_SCHEDULE = "beat: Selecting tasks"  # RedBeat, at debug level, each time it reads due entries


@pytest.fixture
def spiking_image(tool_image: Callable[[str], str]) -> str:
    return tool_image(SPIKING_TOOL)


def schedule(node: NodeUnderTest, tool: str, *how: str) -> str:
    result = node.maoctl("tool", "schedule", tool, *how)
    assert result.returncode == 0, result.stderr
    return result.stdout


def fired(node: NodeUnderTest, tool: str, beats: list[Worker] | None = None) -> int:
    """How many times the beats (default: every beat of the node) fired `tool`'s entry."""
    line = f"Sending due task tool:{tool} ("
    chosen = beats if beats is not None else [w for w in node.workers if w.role == "beat"]
    return sum(beat.log().count(line) for beat in chosen)


def firing_times(beat: Worker, tool: str) -> list[datetime]:
    """When `beat` fired `tool`'s entry, from the timestamps of its log lines."""
    line = re.compile(
        rf"^\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}): INFO/MainProcess\] "
        rf"Scheduler: Sending due task tool:{re.escape(tool)} \(",
        re.MULTILINE,
    )
    return [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f") for t in line.findall(beat.log())]


def run_count(node: NodeUnderTest, tool: str) -> int:
    return len(node.runs().recent(tool, 100))


def log_tail(worker: Worker) -> Callable[[], str]:
    """The end of `worker`'s log, for a failure message."""
    return lambda: f"{worker.role} log:\n{worker.log()[-4000:]}"


def seconds_until(
    predicate: Callable[[], object], timeout_s: float, what: str, beat: Worker | None = None
) -> float:
    """`wait_until` that returns the seconds it took; fails with the end of `beat`'s log."""
    started = time.monotonic()
    wait_until(predicate, timeout_s, what=what, details=log_tail(beat) if beat else None)
    return time.monotonic() - started


def listed(node: NodeUnderTest) -> list[dict[str, Any]]:
    result = node.maoctl("schedule", "list", "--json")
    assert result.returncode == 0, result.stderr
    return listing(result.stdout)


def test_schedules_are_created_replaced_listed_and_removed_by_maoctl(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    register(node, "collector", spiking_image, make_data_repo("data"))

    unregistered = node.maoctl("tool", "schedule", "ghost", "daily")
    first = node.maoctl(
        "tool", "schedule", "collector", "daily", "--at", "06:30", "--tz", "Asia/Kolkata"
    )
    second = node.maoctl("tool", "schedule", "collector", "--cron", "0 6 * * 1-5")
    entries = listed(node)
    table = node.maoctl("schedule", "list", env=WIDE)

    assert (unregistered.returncode, unregistered.stderr.splitlines()[-1]) == (
        1, "error: tool 'ghost' is not registered",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "scheduled daily at 06:30 Asia/Kolkata (At 06:30); next run" in first.stdout
    assert "IST)" in first.stdout
    assert second.stdout.splitlines()[0] == ("tool collector: replaced daily at 06:30 Asia/Kolkata")
    now = datetime.now(UTC)
    next_6am = now.replace(hour=6, minute=0, second=0, microsecond=0)
    while next_6am <= now or next_6am.weekday() >= 5:
        next_6am += timedelta(days=1)
    (entry,) = entries
    assert {k: entry[k] for k in ("tool", "state", "schedule", "explained", "tz")} == {
        "tool": "collector",
        "state": "active",
        "schedule": "cron 0 6 * * 1-5 UTC",
        "explained": "At 06:00, Monday through Friday",
        "tz": "UTC",
    }
    assert entry["next_run_at"] == next_6am.isoformat().replace("+00:00", "Z")
    assert (entry["last_fired_at"], entry["last_run_id"], entry["last_result"]) == (
        None, None, None,
    )  # fmt: skip
    assert "collector" in table.stdout
    assert "never fired" in table.stdout

    removed = node.maoctl("schedule", "remove", "collector")
    removed_again = node.maoctl("schedule", "remove", "collector")

    assert (removed.returncode, removed.stdout) == (0, "schedule of tool collector removed\n")
    assert removed_again.returncode == 1
    assert removed_again.stderr.splitlines()[-1] == (
        "error: tool 'collector' has no schedule on this node"
    )
    assert listed(node) == []


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        (["daily", "--at", "06:30", "--tz", "Mars/Olympus"], "time zone 'Mars/Olympus' is unknown"),
        (["--cron", "0 6 * *"], "cron expression '0 6 * *' has 4 fields, needs 5"),
        (["--cron", "0 25 * * *"], "cron field hour '25' is invalid"),
        (["daily", "--cron", "0 6 * * *"], "give exactly one of daily, weekly or --cron"),
        ([], "give exactly one of daily, weekly or --cron"),
        (["weekly", "--at", "25:00"], "time of day '25:00' is not HH:MM"),
    ],
    ids=["bad zone", "4 fields", "bad hour", "two kinds", "none", "bad time"],
)
def test_an_invalid_schedule_exits_1_with_the_reason(
    node: NodeUnderTest, how: list[str], reason: str
) -> None:
    result = node.maoctl("tool", "schedule", "anything", *how)

    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"error: {reason}"), result.stderr


def test_removing_a_tool_removes_its_schedule(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    register(node, "scheduled", spiking_image, make_data_repo("one"))
    register(node, "unscheduled", spiking_image, make_data_repo("two"))
    schedule(node, "scheduled", "weekly")

    removed = node.maoctl("tool", "remove", "scheduled")
    removed_unscheduled = node.maoctl("tool", "remove", "unscheduled")

    assert (removed.returncode, removed.stdout) == (
        0, "tool scheduled removed; its schedule on this node removed too\n",
    )  # fmt: skip
    assert (removed_unscheduled.returncode, removed_unscheduled.stdout) == (
        0, "tool unscheduled removed; it had no schedule\n",
    )  # fmt: skip
    assert listed(node) == []


def test_schedule_list_exits_3_when_redis_is_unreachable(node: NodeUnderTest) -> None:
    (port,) = free_ports(1)
    url = f"redis://127.0.0.1:{port}/0"

    result = node.maoctl("schedule", "list", env={"MAO_REDIS_URL": url})

    assert result.returncode == 3
    assert result.stderr.splitlines()[-1].startswith(f"error: Redis unreachable at {url}")


@pytest.mark.slow
def test_schedules_fire_and_survive_a_redis_outage_and_a_killed_beat(
    node: NodeUnderTest,
    redis_server: RedisServer,
    spiking_image: str,
    make_data_repo: Callable[..., str],
) -> None:
    worker = node.start_worker()
    # A killed beat's lock goes stale after MAO_BEAT_LOCK_TIMEOUT_S: 6 s here (default 30 s;
    # it must exceed the 5-s tick of a node's beat).
    short_lock = {"MAO_BEAT_LOCK_TIMEOUT_S": "6"}
    beat = node.start_beat(env=short_lock)
    register(node, "often", spiking_image, make_data_repo("often"))
    assert "scheduled every 3 s" in schedule(node, "often", "--every-s", "3")

    seconds_until(lambda: run_count(node, "often") >= 2, 15, "2 runs of an every-3-s schedule")

    # The worker is stopped across the restart: a worker whose Redis restarts under it may
    # crash (kombu: "Unrecoverable error: AttributeError ... 'hostname'"), which is not what
    # this test is about. Beat rides through the restart.
    worker.stop()
    outages = beat.log().count(REDIS_AWAY)
    redis_server.stop()
    seconds_until(
        lambda: beat.log().count(REDIS_AWAY) > outages, 15, "beat to tick without Redis", beat
    )
    redis_server.start()
    node.start_worker()
    after_restart = fired(node, "often")
    waited = seconds_until(
        lambda: fired(node, "often") > after_restart, 20, "a firing after a Redis outage", beat
    )
    print(f"\nfirst firing {waited:.1f} s after a Redis outage and a worker started")
    assert beat.process is not None
    assert beat.process.poll() is None, beat.log()

    beat.kill(signal.SIGKILL)
    killed = fired(node, "often")
    node.start_beat(env=short_lock)
    waited = seconds_until(
        lambda: fired(node, "often") > killed,
        30,
        "a firing by a beat started after one was killed (stale lock: 6 s)",
    )
    print(f"first firing {waited:.1f} s after a beat replaced a killed one")


@pytest.mark.slow
def test_a_cron_schedule_fires_within_70_s(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    node.start_beat()
    register(node, "minutely", spiking_image, make_data_repo("minutely"))
    scheduled_at = datetime.now(UTC)
    assert "scheduled cron * * * * * UTC (Every minute)" in schedule(
        node, "minutely", "--cron", "* * * * *"
    )

    waited = seconds_until(
        lambda: run_count(node, "minutely") >= 1, 70, "a run of a * * * * * schedule"
    )
    print(f"\nfirst run of a * * * * * schedule {waited:.1f} s after it was made")
    first = node.runs().recent("minutely", 100)[-1]
    # It fired at the minute boundary, not at some tick later.
    assert first.queued_at > scheduled_at
    assert first.queued_at.second < 5, first.queued_at
    done = node.runs().wait(first.run_id, lambda r: r.status.terminal, timeout_s=30)
    assert done.status == RunStatus.SUCCEEDED, done.error
    shown = listing(node.maoctl("tool", "runs", "minutely", "--json").stdout)
    assert first.run_id in [r["run_id"] for r in shown]
    (info,) = [i for i in listed(node) if i["tool"] == "minutely"]
    assert info["last_result"] == "succeeded (spike)"
    assert info["last_run_id"] == first.run_id
    assert info["last_fired_at"] is not None


@pytest.mark.slow
def test_two_beats_on_one_redis_fire_each_due_run_once(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    beats = [node.start_beat(), node.start_beat()]
    register(node, "shared", spiking_image, make_data_repo("data"))
    period_s, firings = 2.0, 4
    schedule(node, "shared", "--every-s", f"{period_s:g}")

    # Each due time fired once: `firings` firings take `firings` periods; fired twice, half that.
    started = time.monotonic()
    wait_until(
        lambda: fired(node, "shared", beats) >= firings,
        firings * period_s + 15,
        what=f"{firings} firings",
    )
    count = fired(node, "shared", beats)
    elapsed = time.monotonic() - started

    per_beat = [fired(node, "shared", [beat]) for beat in beats]
    expected = int(elapsed // period_s)
    print(f"\n{elapsed:.1f} s, every {period_s:g} s: fired {per_beat} (expected {expected})")
    assert abs(count - expected) <= 1
    assert sorted(per_beat)[0] == 0
    assert run_count(node, "shared") <= count


def test_a_removed_schedule_fires_no_more(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    beat = node.start_beat()
    register(node, "stopped", spiking_image, make_data_repo("data"))
    period_s = 2.0
    schedule(node, "stopped", "--every-s", f"{period_s:g}")
    wait_until(lambda: fired(node, "stopped") >= 1, 10, what="a firing")

    assert node.maoctl("schedule", "remove", "stopped").returncode == 0
    # A tick under way at the removal may still fire; the next one reads the schedule anew.
    reads = beat.log().count(READS_SCHEDULE)
    wait_until(
        lambda: beat.log().count(READS_SCHEDULE) > reads,
        15,
        what="beat to read its schedule after the removal",
        details=log_tail(beat),
    )
    after_remove = fired(node, "stopped")
    # Beat reads its schedule on every tick (at most `period_s` apart while the entry was due):
    # three more reads without a firing are three ticks at which the removed entry was not due.
    reads = beat.log().count(READS_SCHEDULE)
    wait_until(
        lambda: beat.log().count(READS_SCHEDULE) >= reads + 3,
        30,
        what="three more beat ticks after the removal",
        details=log_tail(beat),
    )

    assert fired(node, "stopped") == after_remove


@pytest.mark.slow
def test_a_node_down_for_several_periods_makes_one_catch_up_run_not_a_burst(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    period_s, down_s = 3.0, 10.0
    worker = node.start_worker()
    beat = node.start_beat()
    register(node, "patient", spiking_image, make_data_repo("data"))
    schedule(node, "patient", "--every-s", f"{period_s:g}")
    wait_until(lambda: run_count(node, "patient") >= 1, 15, what="a first run")

    beat.stop()
    worker.stop()
    runs_before = run_count(node, "patient")
    (entry,) = [i for i in listed(node) if i["tool"] == "patient"]
    last_fired = datetime.fromisoformat(entry["last_fired_at"])
    # The node stays down until the entry is more than three periods overdue.
    wait_until(
        lambda: (datetime.now(UTC) - last_fired).total_seconds() >= down_s,
        down_s + 10,
        what=f"the schedule to be {down_s:g} s past its last firing",
        poll_s=0.5,
    )
    node.start_worker()
    restarted = node.start_beat()
    wait_until(
        lambda: len(firing_times(restarted, "patient")) >= 2,
        2 * period_s + 10,
        what="a catch-up firing and the next regular one",
        details=log_tail(restarted),
    )
    wait_until(
        lambda: run_count(node, "patient") > runs_before,
        30,
        what="the catch-up run",
    )

    catch_up, regular = firing_times(restarted, "patient")[:2]
    gap_s = (regular - catch_up).total_seconds()
    print(
        f"\ndown {down_s:g} s ({down_s / period_s:.1f} periods of {period_s:g} s): one catch-up "
        f"firing, the next regular one {gap_s:.1f} s after it"
    )
    assert gap_s >= period_s - 1


INDEX = "mao:beat::schedule"  # RedBeat's schedule index (key prefix "mao:beat:")
SKIPPED = "beat: skipped the invalid schedule entry {}"  # mao_celery/beat.py, once per entry


@pytest.mark.slow
def test_invalid_entries_are_skipped_by_beat_listed_and_removed(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    beat = node.start_beat()
    register(node, "healthy", spiking_image, make_data_repo("data"))
    schedule(node, "healthy", "--every-s", "2")
    wait_until(lambda: fired(node, "healthy") >= 1, 15, what="a firing")
    bad = {
        "garbage": "mao:beat:tool:garbage",
        "range": "mao:beat:tool:range",
        "wrongtype": "mao:beat:tool:wrongtype",
    }
    with redis.Redis.from_url(node.settings().redis_url, decode_responses=True) as client:
        client.hset(bad["garbage"], "definition", "garbage")
        definition = {
            "name": "tool:range", "task": "mao.scheduled_run", "args": ["range"],
            "kwargs": {}, "options": {}, "enabled": True,
            "schedule": {"__type__": "mao_cron", "expr": "99 * * * *", "tz": "UTC"},
        }  # fmt: skip
        client.hset(bad["range"], "definition", json.dumps(definition))
        client.set(bad["wrongtype"], "not a hash")
        client.zadd(INDEX, {key: time.time() for key in bad.values()})

    before = fired(node, "healthy")
    wait_until(
        lambda: fired(node, "healthy") >= before + 3,
        20,
        what="3 more firings of the healthy schedule",
        details=log_tail(beat),
    )
    assert beat.process is not None
    assert beat.process.poll() is None, beat.log()[-3000:]
    for key in bad.values():
        assert beat.log().count(SKIPPED.format(key)) == 1, beat.log()[-3000:]

    result = node.maoctl("schedule", "list", "--json")
    table = node.maoctl("schedule", "list", env=WIDE)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + table.stderr
    states = {i["tool"]: (i["state"], i["key"]) for i in listing(result.stdout)}
    assert states == {
        "healthy": ("active", "mao:beat:tool:healthy"),
        **{tool: ("invalid", key) for tool, key in bad.items()},
    }
    assert all(f"warning: invalid schedule entry {key}" in table.stderr for key in bad.values())
    assert "mao:beat:tool:garbage" in table.stdout
    assert node.maoctl("schedule", "pause", "garbage").returncode == 1

    for tool in bad:
        removed = node.maoctl("schedule", "remove", tool)
        assert (removed.returncode, removed.stderr) == (0, ""), removed.stderr
    assert [i["tool"] for i in listed(node)] == ["healthy"]


@pytest.mark.slow
def test_pause_and_resume_over_a_tick_boundary(
    node: NodeUnderTest, spiking_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    beat = node.start_beat()
    register(node, "pausable", spiking_image, make_data_repo("data"))
    schedule(node, "pausable", "--every-s", "2")
    wait_until(lambda: fired(node, "pausable") >= 1, 15, what="a firing")

    paused = node.maoctl("schedule", "pause", "pausable")
    assert (paused.returncode, paused.stdout) == (0, "schedule of tool pausable paused\n")
    reads = beat.log().count(READS_SCHEDULE)
    wait_until(
        lambda: beat.log().count(READS_SCHEDULE) > reads,
        15,
        what="beat to read its schedule after the pause",
        details=log_tail(beat),
    )
    after_pause = fired(node, "pausable")
    reads = beat.log().count(READS_SCHEDULE)
    wait_until(
        lambda: beat.log().count(READS_SCHEDULE) >= reads + 3,
        30,
        what="3 more ticks of beat while paused",
        details=log_tail(beat),
    )
    (info,) = listed(node)
    shown = node.maoctl("schedule", "next", "pausable", "--json")

    assert fired(node, "pausable") == after_pause
    assert (info["state"], info["next_run_at"]) == ("paused", None)
    assert json.loads(shown.stdout)["fires"] == []

    resumed_at = datetime.now()
    resumed = node.maoctl("schedule", "resume", "pausable")
    assert resumed.returncode == 0, resumed.stderr
    wait_until(lambda: fired(node, "pausable") > after_pause, 15, what="a firing after the resume")
    first_after = firing_times(beat, "pausable")[after_pause]
    assert (first_after - resumed_at).total_seconds() >= 1.0  # the next period, no replay
    (info,) = listed(node)
    assert info["state"] == "active"
    upcoming = json.loads(node.maoctl("schedule", "next", "pausable", "--count", "3",
                                      "--json").stdout)["fires"]  # fmt: skip
    assert len(upcoming) == 3


def ended(node: NodeUnderTest, run_id: str) -> RunReport | None:
    """Run `run_id`'s report once it has ended (None before)."""
    report = node.runs().find(run_id)
    return report if report is not None and report.status.terminal else None


@pytest.mark.slow
def test_a_fire_during_an_etcd_outage_is_retried_then_recorded_as_a_failed_run(
    node: NodeUnderTest,
    etcd_server: EtcdServer,
    spiking_image: str,
    make_data_repo: Callable[..., str],
) -> None:
    # Retries after 0.5, 1, 2, 2 s (MAO_SCHEDULED_RETRY_BACKOFF_S; by default 4, 8, 16, 16 s).
    worker = node.start_worker(env={"MAO_SCHEDULED_RETRY_BACKOFF_S": "0.25"})
    node.start_beat()
    register(node, "outage", spiking_image, make_data_repo("data"))
    schedule(node, "outage", "--every-s", "5")
    etcd_server.stop()
    try:
        fire = wait_until(
            lambda: listed(node)[0]["last_run_id"], 20, what="a fire during the outage"
        )
        assert node.maoctl("schedule", "pause", "outage").returncode == 0
        fire = listed(node)[0]["last_run_id"]
        failed = wait_until(
            lambda: ended(node, fire),
            120,
            what="the fire recorded as a failed run",
            details=log_tail(worker),
        )
    finally:
        etcd_server.start()

    assert failed is not None
    assert failed.status == RunStatus.FAILED
    assert failed.error is not None
    assert failed.error.startswith("scheduled run not started after 5 attempts: etcd"), failed.error
    assert worker.log().count("scheduled run of outage not started (attempt") >= 4
    runs = listing(node.maoctl("tool", "runs", "outage", "--json").stdout)
    assert fire in [r["run_id"] for r in runs]
    (info,) = listed(node)
    assert (info["last_run_id"], info["last_result"]) == (fire, f"failed: {failed.error}")
    assert info["last_fired_at"] is not None
