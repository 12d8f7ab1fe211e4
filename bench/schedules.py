"""10,000 tool schedules: one beat tick and `maoctl schedule list`.

Starts a throw-away Redis server (the node's Redis is not touched), writes N tool schedules
through `ScheduleStore.add` (a mix of daily, weekly and cron schedules in several zones and
hourly intervals; every 10th then paused, as long ago), then times, each R times (median, min, max):

- one tick of the node's beat scheduler (`beat.RedBeatScheduler.tick()`, in this process, on the
  app configured for that Redis, holding RedBeat's lock) with no entry due, and with 100 entries
  made due (their last fire set two days back) — each of those ticks sends 100 tasks;
- `maoctl schedule list` and `maoctl schedule list --json` as whole processes.

The figures are printed next to the targets of issue 14. Usage:

    .venv/bin/python bench/schedules.py [--runs R] [--schedules N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from run_overhead import REPO_ROOT, own_redis, timed

from mao_celery.beat import RedBeatScheduler
from mao_celery.node import Node
from mao_celery.schedule_spec import ScheduleRequest, build_spec
from mao_celery.schedules import ScheduleJSONEncoder, ScheduleStore
from mao_celery.settings import load_settings

DUE = 100
PAUSED_EVERY = 10
"""Every 10th schedule is paused (1,000 of 10,000)."""
TARGETS_S = {
    "beat tick, none due": 0.2,
    f"beat tick, {DUE} due": 0.2,
    "schedule list": 2.0,
    "schedule list --json": 2.0,
}
ZONES = ("UTC", "Europe/Zurich", "America/New_York", "Asia/Kolkata")
EVERY_S = 3600.0
LOCK_TIMEOUT_S = 3600.0
"""RedBeat's lock outlives the `maoctl schedule list` runs between two timed ticks."""


def request(i: int) -> ScheduleRequest:
    """The `i`-th schedule of the mix: daily, weekly, cron (every 15 min, weekdays at 06:xx)
    and hourly intervals, in turn, across `ZONES`."""
    tz = ZONES[i % len(ZONES)]
    at = f"{i % 24:02d}:{i % 60:02d}"
    kinds: list[dict[str, object]] = [
        {"period": "daily", "at": at},
        {"period": "weekly", "at": at, "day": "mon"},
        {"cron": "*/15 * * * *"},
        {"cron": f"{i % 60} 6 * * 1-5"},
        {"every_s": EVERY_S},
    ]
    return ScheduleRequest(tz=tz, **kinds[i % len(kinds)])


def write_schedules(store: ScheduleStore, count: int) -> float:
    """Schedule tools tool-00000... through `store`; returns the seconds taken."""
    started = time.perf_counter()
    for i in range(count):
        store.add(f"tool-{i:05d}", build_spec(request(i)))
    return time.perf_counter() - started


def pause_some(store: ScheduleStore, count: int) -> list[str]:
    """Pause every `PAUSED_EVERY`-th tool (from tool-00005), as paused long ago: an entry still
    in the index's due range (older versions left a paused entry there) gets an overdue score,
    as once its fire time has passed; a parked one (score below 0) stays parked. Returns them."""
    paused = [f"tool-{i:05d}" for i in range(5, count, PAUSED_EVERY)]
    for tool in paused:
        store.set_paused(tool, paused=True)
    index = store._conf.schedule_key
    client = store._redis
    for tool in paused:
        if client.zscore(index, store.key(tool)) >= 0:
            client.zadd(index, {store.key(tool): time.time() - 60})
    return paused


def make_due(store: ScheduleStore, tools: list[str]) -> None:
    """Make `tools`' entries due now: their last fire two days back, their index score now."""
    client = store._redis
    back = datetime.now(UTC) - timedelta(days=2)
    meta = json.dumps({"last_run_at": back, "total_run_count": 0}, cls=ScheduleJSONEncoder)
    with client.pipeline(transaction=False) as pipe:
        for tool in tools:
            pipe.hset(store.key(tool), "meta", meta)
            pipe.zadd(store._conf.schedule_key, {store.key(tool): time.time() - 1})
        pipe.execute()


def timed_tick(scheduler: RedBeatScheduler, before: Callable[[], None] | None = None) -> float:
    """Seconds one `scheduler.tick()` takes (after `before()`, untimed)."""
    if before is not None:
        before()
    started = time.perf_counter()
    scheduler.tick()
    return time.perf_counter() - started


def row(label: str, times: list[float]) -> str:
    """One line of the table: median, min, max, target and median/target."""
    median = statistics.median(times)
    target = TARGETS_S[label]
    return (
        f"{label:24}{median:10.3f}{min(times):10.3f}{max(times):10.3f}"
        f"{target:10.2f}{median / target:8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each measure (default 5)")
    parser.add_argument("--schedules", type=int, default=10_000, help="schedules (default 10000)")
    args = parser.parse_args()
    maoctl = [sys.executable, str(REPO_ROOT / "cli.py")]
    with tempfile.TemporaryDirectory() as tmp, own_redis(Path(tmp)) as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAO_", "CELERY_"))}
        env |= {"MAO_REDIS_URL": redis_url, "PYTHONPATH": str(REPO_ROOT)}
        settings = load_settings(
            redis_url=redis_url,
            importdir=Path(tmp) / "importdir",
            beat_lock_timeout_s=LOCK_TIMEOUT_S,
        )
        with Node(settings) as node:
            store = node.schedules
            written_s = write_schedules(store, args.schedules)
            paused = pause_some(store, args.schedules)
            scheduler = RedBeatScheduler(app=node.app)
            scheduler.tick()  # takes the lock, fires the node's own periodic entries once
            due = [f"tool-{i:05d}" for i in range(0, args.schedules, args.schedules // DUE)][:DUE]
            measured: dict[str, list[float]] = {label: [] for label in TARGETS_S}
            for _ in range(args.runs):  # interleaved, so that a busy moment hits them all
                measured["beat tick, none due"].append(timed_tick(scheduler))
                measured[f"beat tick, {DUE} due"].append(
                    timed_tick(scheduler, lambda: make_due(store, due))
                )
                measured["schedule list"].append(timed([*maoctl, "schedule", "list"], env))
                measured["schedule list --json"].append(
                    timed([*maoctl, "schedule", "list", "--json"], env)
                )
            scheduler.close()
    print(
        f"schedules: {args.schedules} ({len(paused)} paused), written in {written_s:.1f} s; "
        f"runs: {args.runs}"
    )
    print(f"{'':24}{'median s':>10}{'min s':>10}{'max s':>10}{'target s':>10}{'ratio':>8}")
    for label, times in measured.items():
        print(row(label, times))


if __name__ == "__main__":
    main()
