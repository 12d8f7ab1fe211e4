"""Tool schedules: one RedBeat entry per scheduled tool, in this node's Redis (design.md §5).

`ScheduleStore` keeps them; what a user asks for is checked and turned into a celery schedule
by schedule_spec.py (pure), before it reaches the store.

An entry named `tool:<name>` fires the task `mao.scheduled_run` with args `[name]`, which starts
a run as `maoctl tool run` does (periodic.py). RedBeat keeps each entry in a Redis hash; fields:

- `definition`, `meta`: RedBeat's (a `cron.CronSchedule` is stored as its `as_json()` form,
  `enabled` false while paused; `meta` holds beat's last fire);
- `mao_spec`: JSON `{"description", "explained", "tz"}`, the schedule as the user gave it;
- `mao_last_run_id`, `mao_last_fired_at`, `mao_last_outcome`: the newest fire, written by
  `scheduled_run` (`record_fire`): its run id, when a worker first took it, and what became of
  it while it has no run record (retrying, skipped).

Every write of an entry is one Redis transaction (`MULTI`) or script. Entries written by older
versions (a UTC celery `crontab`) are read as a `CronSchedule` in UTC with standard cron
semantics (`ScheduleJSONDecoder`). An entry that cannot be read is `InvalidState`: beat skips
it (beat.py), `list_all` shows it as invalid, `remove` deletes it.

Runs missed while beat was down are not replayed one by one: on restart an overdue entry fires
once, and its next fire counts from then. While beat runs but no worker does, the fired tasks
queue up; those of a daily, weekly or interval schedule expire after one period, so a returning
worker finds at most one (a cron entry's do not expire; the tool's lock makes the extra ones
skip while it runs). `resume` does not make up the fires missed while paused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal, TypeVar

import redis
from celery import Celery
from celery.schedules import BaseSchedule, crontab, schedule
from pydantic import BaseModel
from redbeat import RedBeatSchedulerEntry
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedulers import RedBeatConfig, ensure_conf, get_redis

from mao_celery.cron import JSON_TYPE, CronSchedule, aware, describe, zone
from mao_celery.exceptions import InvalidInput, InvalidState, NotFound
from mao_celery.models import RunReport, RunStatus
from mao_celery.redis_calls import redis_call
from mao_celery.runs import RunStore
from mao_celery.schedule_spec import ScheduleSpec

T = TypeVar("T")

TASK = "mao.scheduled_run"
ENTRY_PREFIX = "tool:"
SPEC_FIELD = "mao_spec"
LAST_RUN_ID, LAST_FIRED_AT, LAST_OUTCOME = (
    "mao_last_run_id",
    "mao_last_fired_at",
    "mao_last_outcome",
)

_RECORD_FIRE = f"""
if redis.call('type', KEYS[1]).ok ~= 'hash' then return 0 end
if redis.call('hget', KEYS[1], '{LAST_RUN_ID}') ~= ARGV[1] then
  redis.call('hset', KEYS[1], '{LAST_RUN_ID}', ARGV[1], '{LAST_FIRED_AT}', ARGV[2])
end
redis.call('hset', KEYS[1], '{LAST_OUTCOME}', ARGV[3])
return 1
"""
"""Record a fire on an existing entry only (a removed schedule stays removed); the first
attempt's time is kept across retries of the same fire."""

State = Literal["active", "paused", "invalid"]


class ScheduleJSONEncoder(RedBeatJSONEncoder):  # type: ignore[misc]
    """RedBeat's JSON encoder, plus `CronSchedule`."""

    def default(self, o: Any) -> Any:
        """`o` as JSON data."""
        if isinstance(o, CronSchedule):
            return o.as_json()
        return super().default(o)


class ScheduleJSONDecoder(RedBeatJSONDecoder):  # type: ignore[misc]
    """RedBeat's JSON decoder, plus `CronSchedule`; a celery `crontab` (written by older
    versions, in UTC) is read as the `CronSchedule` of its fields in UTC."""

    def dict_to_object(self, d: dict[str, Any]) -> Any:
        """The object of a JSON object with a `__type__`.

        Raises:
            InvalidInput: an invalid cron expression or time zone.
            KeyError: a field is missing.
        """
        kind = d.get("__type__")
        if kind == JSON_TYPE:
            return CronSchedule.from_json(d)
        if kind == "crontab":
            fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
            return CronSchedule(" ".join(str(d[f]) for f in fields), "UTC")
        return super().dict_to_object(d)


class ScheduleEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """RedBeat's entry, read with `ScheduleJSONDecoder`; an entry that cannot be read raises
    `InvalidState` (naming its key) instead of whatever the data made fail."""

    @staticmethod
    def decode_definition(definition: str) -> Any:
        """The definition's JSON, decoded."""
        return json.loads(definition, cls=ScheduleJSONDecoder)

    @classmethod
    def from_key(cls, key: str, app: Celery | None = None) -> ScheduleEntry:
        """The entry stored at `key`.

        Raises:
            KeyError: there is no entry at `key`.
            InvalidState: the key holds something else than a readable entry.
            redis.RedisError: Redis did not answer.
        """
        try:
            entry: ScheduleEntry = super().from_key(key, app=app)
            entry.is_due()  # what beat calls first: a schedule that cannot answer is invalid
        except KeyError:
            raise
        except redis.ResponseError as e:
            if "WRONGTYPE" not in str(e):
                raise
            raise InvalidState(key, "not a hash (wrong Redis type)") from e
        except (ValueError, TypeError, AttributeError, LookupError, InvalidInput) as e:
            raise InvalidState(key, f"{type(e).__name__}: {e}") from e
        return entry


class ScheduleInfo(BaseModel):
    """One tool's schedule for `schedule list`. Times are aware; `*_at` in UTC.

    `state` "invalid": the entry at `key` cannot be read (`error` says why); the other fields
    but `tool` and `key` are then empty. `next_run_at` is None while paused; `next_run_local`
    is the same instant in the schedule's zone `tz`. `last_fired_at`, `last_run_id` and
    `last_result` describe the same, newest fire (None: never fired).
    """

    tool: str
    key: str
    state: State
    schedule: str | None = None
    explained: str | None = None
    tz: str | None = None
    next_run_at: datetime | None = None
    next_run_local: datetime | None = None
    last_fired_at: datetime | None = None
    last_run_id: str | None = None
    last_result: str | None = None
    error: str | None = None


class Scheduled(BaseModel):
    """What `ScheduleStore.add` did: the schedule saved, when it first fires, and the
    description of the schedule it replaced (None: there was none)."""

    tool: str
    schedule: str
    explained: str
    tz: str
    next_run_at: datetime
    next_run_local: datetime
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
        """Schedule runs of `tool`, replacing any schedule it had (valid or not), in one
        transaction. The first run is due at the schedule's first fire time after now."""
        return self._call(lambda: self._add(tool, spec))

    def remove(self, tool: str) -> None:
        """Delete `tool`'s schedule, invalid or not; a run under way goes on.

        Raises:
            NotFound: the tool has no schedule here.
        """
        self._call(lambda: self._remove(tool))

    def set_paused(self, tool: str, paused: bool) -> ScheduleInfo:
        """Pause `tool`'s schedule (it is not fired), or resume it: its next fire is then the
        first fire time after now (fires missed while paused are not made up). Returns the
        schedule as it is now.

        Raises:
            NotFound: the tool has no schedule here.
            InvalidState: its entry cannot be read (remove it).
        """
        return self._call(lambda: self._set_paused(tool, paused))

    def upcoming(self, tool: str, count: int) -> tuple[ScheduleInfo, list[datetime]]:
        """`tool`'s schedule and its next `count` fire times (UTC), the first one now when it
        is overdue; none while paused.

        Raises:
            NotFound: the tool has no schedule here.
            InvalidState: its entry cannot be read (remove it).
        """
        return self._call(lambda: self._upcoming(tool, count))

    def list_all(self, runs: RunStore) -> list[ScheduleInfo]:
        """The tool schedules, by tool name, invalid ones included, each with its newest fire
        and that fire's run in `runs`."""
        return self._call(lambda: [self._info(tool, runs) for tool in self._tools()])

    def record_fire(self, tool: str, run_id: str, outcome: str) -> None:
        """Note on `tool`'s entry (if it still has one) that the fire `run_id` is being handled:
        `outcome` says how while it has no run record ("starting", "skipped: ...")."""
        now = datetime.now(UTC).isoformat()
        script = self._redis.register_script(_RECORD_FIRE)
        self._call(lambda: script(keys=[self.key(tool)], args=[run_id, now, outcome]))

    def key(self, tool: str) -> str:
        """The Redis key of `tool`'s entry (RedBeat's key prefix + entry name)."""
        return str(self._conf.key_prefix) + entry_name(tool)

    # ---- the calls, run under `_call` ----

    def _add(self, tool: str, spec: ScheduleSpec) -> Scheduled:
        replaced = self._replaced(tool)
        now = datetime.now(UTC)
        entry = ScheduleEntry(
            name=entry_name(tool),
            task=TASK,
            schedule=spec.schedule,
            args=[tool],
            options={} if spec.expires_s is None else {"expires": spec.expires_s},
            last_run_at=now,
            app=self.app,
        )
        first = next_run_at(entry, now)
        meta = {"last_run_at": now, "total_run_count": 0}
        user_spec = {"description": spec.description, "explained": spec.explained, "tz": spec.tz}
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(entry.key)
            fields = {
                "definition": _definition(entry),
                "meta": json.dumps(meta, cls=ScheduleJSONEncoder),
                SPEC_FIELD: json.dumps(user_spec),
            }
            pipe.hset(entry.key, mapping=fields)
            pipe.zadd(self._conf.schedule_key, {entry.key: first.timestamp()})
            pipe.execute()
        return Scheduled(
            tool=tool,
            schedule=spec.description,
            explained=spec.explained,
            tz=spec.tz,
            next_run_at=first,
            next_run_local=first.astimezone(zone(spec.tz)),
            replaced=replaced,
        )

    def _replaced(self, tool: str) -> str | None:
        """The description of `tool`'s current schedule, "an invalid entry", or None."""
        try:
            entry = self._load(tool)
        except InvalidState:
            return "an invalid entry"
        return None if entry is None else str(self._spec(entry.key).get("description"))

    def _remove(self, tool: str) -> None:
        key = self.key(tool)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self._conf.schedule_key, key)
            pipe.delete(key)
            in_index, existed = pipe.execute()
        if not (in_index or existed):
            raise NotFound(f"tool {tool!r} has no schedule on this node")

    def _set_paused(self, tool: str, paused: bool) -> ScheduleInfo:
        entry = self._existing(tool)
        definition = json.loads(self._redis.hget(entry.key, "definition"))
        definition["enabled"] = not paused
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(entry.key, "definition", json.dumps(definition))
            if not paused:
                now = datetime.now(UTC)
                entry.last_run_at = now
                meta = {"last_run_at": now, "total_run_count": entry.total_run_count}
                pipe.hset(entry.key, "meta", json.dumps(meta, cls=ScheduleJSONEncoder))
                score = next_run_at(entry, now).timestamp()
                pipe.zadd(self._conf.schedule_key, {entry.key: score})
            pipe.execute()
        return self._info(tool, None)

    def _upcoming(self, tool: str, count: int) -> tuple[ScheduleInfo, list[datetime]]:
        entry = self._existing(tool)
        info = self._describe(tool, entry, None)
        if not entry.enabled:
            return info, []
        first = next_run_at(entry, datetime.now(UTC))
        return info, [first, *following(entry.schedule, first, count - 1)]

    def _info(self, tool: str, runs: RunStore | None) -> ScheduleInfo:
        """`tool`'s schedule for people; the last fire's result is read from `runs` if given."""
        key = self.key(tool)
        try:
            entry = self._load(tool)
        except InvalidState as e:
            return ScheduleInfo(tool=tool, key=key, state="invalid", error=e.reason)
        if entry is None:
            return ScheduleInfo(tool=tool, key=key, state="invalid", error="only in the index")
        return self._describe(tool, entry, runs)

    def _describe(self, tool: str, entry: ScheduleEntry, runs: RunStore | None) -> ScheduleInfo:
        """`_info` of `tool`'s entry `entry`, already loaded."""
        key = self.key(tool)
        spec = self._spec(key)
        tz = str(spec.get("tz") or getattr(entry.schedule, "tz_name", "UTC"))
        next_at = next_run_at(entry, datetime.now(UTC)) if entry.enabled else None
        last = self._redis.hmget(key, LAST_RUN_ID, LAST_FIRED_AT, LAST_OUTCOME)
        run_id, fired_at, outcome = last
        return ScheduleInfo(
            tool=tool,
            key=key,
            state="active" if entry.enabled else "paused",
            schedule=str(spec.get("description") or entry.schedule),
            explained=str(spec.get("explained") or explain(entry.schedule)),
            tz=tz,
            next_run_at=next_at,
            next_run_local=next_at.astimezone(zone(tz)) if next_at else None,
            last_fired_at=datetime.fromisoformat(fired_at) if fired_at else None,
            last_run_id=run_id,
            last_result=self._result(runs, run_id, outcome) if runs and run_id else None,
        )

    @staticmethod
    def _result(runs: RunStore, run_id: str, outcome: str | None) -> str:
        """What became of fire `run_id`: its run's result, or `outcome` while it has no run."""
        try:
            report = runs.find(run_id)
        except InvalidState as e:
            return f"run record unreadable: {e.reason}"
        return describe_result(report) if report is not None else str(outcome or "starting")

    def _tools(self) -> list[str]:
        """The tools with an entry: in RedBeat's schedule index or as a key (an entry beat took
        out of its index for being invalid), sorted."""
        prefix = self.key("")
        indexed: list[str] = self._redis.zrange(self._conf.schedule_key, 0, -1)
        keys = {*indexed, *self._redis.scan_iter(match=prefix + "*", count=500)}
        return sorted(k.removeprefix(prefix) for k in keys if k.startswith(prefix))

    def _load(self, tool: str) -> ScheduleEntry | None:
        """`tool`'s entry, or None when it has none.

        Raises:
            InvalidState: the entry cannot be read.
        """
        try:
            return ScheduleEntry.from_key(self.key(tool), app=self.app)
        except KeyError:
            return None

    def _existing(self, tool: str) -> ScheduleEntry:
        """`tool`'s entry.

        Raises:
            NotFound: the tool has no schedule here.
            InvalidState: the entry cannot be read.
        """
        entry = self._load(tool)
        if entry is None:
            raise NotFound(f"tool {tool!r} has no schedule on this node")
        return entry

    def _spec(self, key: str) -> dict[str, Any]:
        """The user's spec stored with the entry at `key` (empty for an entry made elsewhere
        or an unreadable spec: the schedule itself is then shown)."""
        try:
            spec = json.loads(self._redis.hget(key, SPEC_FIELD) or "{}")
        except ValueError:
            return {}
        return spec if isinstance(spec, dict) else {}

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


def _definition(entry: ScheduleEntry) -> str:
    """RedBeat's `definition` field of `entry` (as `RedBeatSchedulerEntry.save` writes it)."""
    fields = ("name", "task", "args", "kwargs", "options", "schedule", "enabled")
    return json.dumps({f: getattr(entry, f) for f in fields}, cls=ScheduleJSONEncoder)


def next_run_at(entry: RedBeatSchedulerEntry, now: datetime) -> datetime:
    """When `entry` next fires (UTC, to the second; `now` when it is overdue).

    RedBeat's own `due_at` adds the time remaining *now* to the last run, which is early by
    the time elapsed since that run; this asks the schedule at `now`.
    """
    last = entry.last_run_at or now
    sched = entry.schedule
    if isinstance(sched, CronSchedule):
        due = sched.fire_since(last, now)
    else:
        due = aware(last) + sched.run_every
    return max(due, now).astimezone(UTC).replace(microsecond=0)


def following(sched: BaseSchedule, after: datetime, count: int) -> list[datetime]:
    """The `count` fire times of `sched` after `after` (UTC)."""
    if isinstance(sched, CronSchedule):
        return sched.next_fires(after, count)
    every: timedelta = sched.run_every
    return [after + every * (i + 1) for i in range(count)]


def explain(sched: BaseSchedule) -> str:
    """A schedule in words: "At 06:00", "every 3 s"."""
    if isinstance(sched, CronSchedule):
        return describe(sched.expr)
    if isinstance(sched, schedule) and not isinstance(sched, crontab):
        return f"every {sched.run_every.total_seconds():g} s"
    return str(sched)


def describe_result(report: RunReport) -> str:
    """A run's outcome in a few words: "succeeded (spike)", "failed: <reason>", "running"."""
    if report.status == RunStatus.FAILED:
        return f"failed: {report.error}"
    if report.status == RunStatus.SUCCEEDED and report.spike is not None and report.spike.spike:
        return "succeeded (spike)"
    return str(report.status)
