"""Tool schedules: one RedBeat entry per scheduled tool, in this node's Redis (design.md §5).

`ScheduleStore` keeps them; what a user asks for is checked and turned into a celery schedule
by schedule_spec.py (pure), before it reaches the store.

An entry named `tool:<name>` fires the task `mao.scheduled_run` with args `[name]`, which starts
a run as `maoctl tool run` does (and skips it while the tool runs or after it was removed).

RedBeat keeps each entry in a Redis hash (fields `definition` and `meta`); we add the field
`mao_spec` holding the schedule as the user gave it, so `schedule list` can show
"daily at 06:30 Europe/Paris" although RedBeat stores only UTC crontab fields. Deleting the
entry deletes the hash, and the spec with it.

Runs missed while beat was down are not replayed one by one: on restart an overdue entry fires
once, and its next run counts from then (measured: every 3 s, node down 12 s -> 1 run at once,
the next 3 s later). While beat runs but no worker does, the fired tasks queue up; those of a
daily, weekly or interval schedule expire after one period, so a returning worker finds at most
one (a cron entry's do not expire; the tool's lock makes the extra ones skip while it runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, TypeVar

from celery import Celery
from pydantic import BaseModel
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import RedBeatConfig, ensure_conf, get_redis

from mao_celery.exceptions import NotFound
from mao_celery.models import RunReport, RunStatus
from mao_celery.redis_calls import redis_call
from mao_celery.runs import RunStore
from mao_celery.schedule_spec import ScheduleSpec

T = TypeVar("T")

TASK = "mao.scheduled_run"
ENTRY_PREFIX = "tool:"
SPEC_FIELD = "mao_spec"


class ScheduleInfo(BaseModel):
    """One tool's schedule for `schedule list`. Times are UTC.

    `last_run_at` is when beat last fired it (None: never yet); `last_result` describes the
    tool's newest run on this node, scheduled or not (None: it has none).
    """

    tool: str
    schedule: str
    next_run_at: datetime
    last_run_at: datetime | None
    last_result: str | None


@dataclass(frozen=True)
class Scheduled:
    """What `ScheduleStore.add` did: the entry saved, when it is first due (UTC, see
    `next_run_at`), and the description of the schedule it replaced (None: there was none)."""

    entry: RedBeatSchedulerEntry
    next_run_at: datetime
    replaced: str | None


class ScheduleStore:
    """This node's tool schedules: RedBeat entries in the Redis of `app`'s `redbeat_*` settings
    (`Node.app`), through RedBeat's own client of that Redis (built on first use).

    Making a store connects nowhere. Every method may raise ServiceUnavailable when Redis does
    not answer. The caller checks that a tool is registered before scheduling it.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    def add(self, tool: str, spec: ScheduleSpec) -> Scheduled:
        """Schedule runs of `tool`, replacing any schedule it had. The first run is due one
        period from now (crontab: its next matching minute)."""
        return self._call(lambda: self._add(tool, spec))

    def remove(self, tool: str) -> None:
        """Delete `tool`'s schedule; a run under way goes on.

        Raises:
            NotFound: the tool has no schedule here.
        """
        self._call(lambda: self._remove(tool))

    def list_all(self, runs: RunStore) -> list[ScheduleInfo]:
        """The tool schedules, by tool name, with each tool's newest run from `runs`."""
        return self._call(lambda: self._list_all(runs))

    def key(self, tool: str) -> str:
        """The Redis key of `tool`'s entry (RedBeat's key prefix + entry name)."""
        return str(self._conf.key_prefix) + entry_name(tool)

    # ---- the calls, run under `_call` ----

    def _add(self, tool: str, spec: ScheduleSpec) -> Scheduled:
        options = {} if spec.expires_s is None else {"expires": spec.expires_s}
        entry = RedBeatSchedulerEntry(
            name=entry_name(tool),
            task=TASK,
            schedule=spec.schedule,
            args=[tool],
            options=options,
            last_run_at=self.app.now(),
            app=self.app,
        )
        previous = self._load(tool)
        replaced = None
        if previous is not None:
            replaced = self._description(previous)
            previous.delete()
        entry.save()
        self._redis.hset(entry.key, SPEC_FIELD, json.dumps({"description": spec.description}))
        return Scheduled(entry, next_run_at(entry), replaced)

    def _remove(self, tool: str) -> None:
        entry = self._load(tool)
        if entry is None:
            raise NotFound(f"tool {tool!r} has no schedule on this node")
        entry.delete()

    def _list_all(self, runs: RunStore) -> list[ScheduleInfo]:
        infos = []
        for tool in self._tools():
            entry = self._load(tool)
            if entry is None:
                continue
            newest = runs.recent(tool, 1)
            infos.append(
                ScheduleInfo(
                    tool=tool,
                    schedule=self._description(entry),
                    next_run_at=next_run_at(entry),
                    last_run_at=entry.last_run_at if entry.total_run_count else None,
                    last_result=describe_result(newest[0]) if newest else None,
                )
            )
        return infos

    def _tools(self) -> list[str]:
        """The tools with an entry in RedBeat's schedule, sorted."""
        prefix = self.key("")
        keys: list[str] = self._redis.zrange(self._conf.schedule_key, 0, -1)
        return sorted(k.removeprefix(prefix) for k in keys if k.startswith(prefix))

    def _load(self, tool: str) -> RedBeatSchedulerEntry | None:
        """`tool`'s entry, or None when it has none."""
        try:
            return RedBeatSchedulerEntry.from_key(self.key(tool), app=self.app)
        except KeyError:
            return None

    def _description(self, entry: RedBeatSchedulerEntry) -> str:
        """The user's spec stored with `entry`, or celery's own text for an entry made elsewhere."""
        raw = self._redis.hget(entry.key, SPEC_FIELD)
        return str(json.loads(raw)["description"]) if raw else str(entry.schedule)

    @cached_property
    def _conf(self) -> RedBeatConfig:
        """RedBeat's settings of the app (its key prefix and schedule key)."""
        return ensure_conf(self.app)

    @property
    def _redis(self) -> Any:
        """RedBeat's Redis client of the app (one per app, shared with RedBeat's entries)."""
        return get_redis(self.app)

    def _call(self, operation: Callable[[], T]) -> T:
        """`operation()`, a Redis error turned into ServiceUnavailable naming RedBeat's Redis."""
        return redis_call(str(self.app.conf.redbeat_redis_url), operation)


def entry_name(tool: str) -> str:
    """The RedBeat entry name of `tool`'s schedule."""
    return ENTRY_PREFIX + tool


def next_run_at(entry: RedBeatSchedulerEntry) -> datetime:
    """When `entry` is next due (UTC, to the second; now when it is overdue).

    RedBeat's own `due_at` adds the time remaining *now* to the last run, which is early by
    the time elapsed since that run for a crontab; this adds it to now.
    """
    now: datetime = entry.app.now()
    remaining: timedelta = entry.schedule.remaining_estimate(entry.last_run_at)
    due = now + max(remaining, timedelta(0)) + timedelta(seconds=0.5)
    return due.replace(microsecond=0)


def describe_result(report: RunReport) -> str:
    """A run's outcome in a few words: "succeeded (spike)", "failed: <reason>", "running"."""
    if report.status == RunStatus.FAILED:
        return f"failed: {report.error}"
    if report.status == RunStatus.SUCCEEDED and report.spike is not None and report.spike.spike:
        return "succeeded (spike)"
    return str(report.status)
