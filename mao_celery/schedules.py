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
it (beat.py), `list_page` shows it as invalid, `remove` deletes it.

Runs missed while beat was down are not replayed one by one: on restart an overdue entry fires
once, and its next fire counts from then. While beat runs but no worker does, the fired tasks
queue up; those of a daily, weekly or interval schedule expire after one period, so a returning
worker finds at most one (a cron entry's do not expire; the tool's lock makes the extra ones
skip while it runs). `resume` does not make up the fires missed while paused.

At scale (issue 14: 10,000 schedules): a paused entry is parked in RedBeat's index (`PARKED`),
so a beat tick reads only the due entries and the next one; `list_page` reads its entries' fields
in pipelined HMGETs (`READ_BATCH` entries per round trip) and computes each next fire once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, ClassVar, Literal, TypeVar

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
PARKED = -1
"""The index score of a paused entry: RedBeat reads only scores from 0 up to now, so beat does
not read a paused entry on every tick (RedBeat would: it leaves an overdue paused entry due)."""
PARK_IF_PAUSED = f"""
local definition = redis.call('hget', KEYS[1], 'definition')
if definition and cjson.decode(definition).enabled == false then
  redis.call('zadd', KEYS[2], {PARKED}, KEYS[1])
end
"""
"""Park entry KEYS[1] in the index KEYS[2] if it is (still) paused: a resume between beat's
read and this script is not undone."""

FIELDS = ("definition", "meta", SPEC_FIELD, LAST_RUN_ID, LAST_FIRED_AT, LAST_OUTCOME)
"""The fields of an entry a listing reads."""
READ_BATCH = 500
"""Entries read per Redis round trip by a listing."""

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

    check_on_read: ClassVar[bool] = True
    """`from_key` checks that the entry's schedule answers `is_due` (what beat asks first)."""

    @classmethod
    def from_key(cls, key: str, app: Celery | None = None) -> ScheduleEntry:
        """The entry stored at `key` (one Redis read); with `check_on_read`, its schedule must
        answer `is_due`.

        Raises:
            KeyError: there is no entry at `key`.
            InvalidState: the key holds something else than a readable entry.
            redis.RedisError: Redis did not answer.
        """
        try:
            definition, meta = get_redis(app).hmget(key, "definition", "meta")
        except redis.ResponseError as e:
            raise _wrong_type(key, e) from e
        entry = cls.from_fields(key, definition, meta, app)
        if cls.check_on_read:
            _checked(key, entry.is_due)
        return entry

    @classmethod
    def from_fields(
        cls, key: str, definition: str | None, meta: str | None, app: Celery | None
    ) -> ScheduleEntry:
        """The entry of the `definition` and `meta` fields read from `key` (no Redis call).

        Raises:
            KeyError: no definition (no entry at `key`).
            InvalidState: the fields cannot be read.
        """
        if not definition:
            raise KeyError(key)

        def build() -> ScheduleEntry:
            fields = cls.decode_definition(definition)
            stored = cls.decode_meta(meta)
            entry = cls(app=app, **(fields | stored))
            # celery's ScheduleEntry sets last_run_at to now; RedBeat's from_key does the same
            entry.last_run_at = stored["last_run_at"]
            return entry

        return _checked(key, build)


UNREADABLE = (ValueError, TypeError, AttributeError, LookupError, InvalidInput)
"""What stored data that is not a valid entry makes decoding it or asking its schedule raise."""


def _checked(key: str, read: Callable[[], T]) -> T:
    """`read()`, whatever stored data makes it fail (`UNREADABLE`) raised as `InvalidState`
    naming `key`."""
    try:
        return read()
    except UNREADABLE as e:
        raise InvalidState(key, f"{type(e).__name__}: {e}") from e


def _wrong_type(key: str, error: Exception) -> Exception:
    """What an error answered for entry `key` means: `InvalidState` for Redis's WRONGTYPE (the
    key is not a hash), else the error itself."""
    if not isinstance(error, redis.ResponseError) or "WRONGTYPE" not in str(error):
        return error
    return InvalidState(key, "not a hash (wrong Redis type)")


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

    def tools(self) -> list[str]:
        """The names of the tools with a schedule entry, valid or not, sorted; no entry is read.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        return self._call(self._tools)

    def list_page(
        self, runs: RunStore, after: str | None = None, limit: int | None = None
    ) -> tuple[list[ScheduleInfo], str | None]:
        """The tool schedules, by tool name, invalid ones included, each with its newest fire and
        that fire's run in `runs`: those whose tool name sorts after `after` (None: from the
        first), at most `limit` of them (None: all), and the name to pass as `after` for the next
        page (None: no more). Only the entries of the page are read.

        Raises:
            ValueError: `limit` is below 1.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit {limit} is below 1")

        def read() -> tuple[list[ScheduleInfo], str | None]:
            tools = [tool for tool in self._tools() if after is None or tool > after]
            shown = tools if limit is None else tools[:limit]
            more = shown[-1] if len(shown) < len(tools) else None
            return self._infos(shown, runs), more

        return self._call(read)

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
        if entry is None:
            return None
        return str(_spec(self._redis.hget(entry.key, SPEC_FIELD)).get("description"))

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
            if paused:
                pipe.zadd(self._conf.schedule_key, {entry.key: PARKED})
            else:
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
        info = self._info(tool, None)
        if not entry.enabled:
            return info, []
        first = next_run_at(entry, datetime.now(UTC))
        return info, [first, *following(entry.schedule, first, count - 1)]

    def _info(self, tool: str, runs: RunStore | None) -> ScheduleInfo:
        """`tool`'s schedule for people; the last fire's result is read from `runs` if given."""
        (info,) = self._infos([tool], runs)
        return info

    def _infos(self, tools: list[str], runs: RunStore | None) -> list[ScheduleInfo]:
        """`_info` of each of `tools`, their entries read `READ_BATCH` per round trip."""
        now = datetime.now(UTC)
        infos: list[ScheduleInfo] = []
        for first in range(0, len(tools), READ_BATCH):
            batch = tools[first : first + READ_BATCH]
            with self._redis.pipeline(transaction=False) as pipe:
                for tool in batch:
                    pipe.hmget(self.key(tool), *FIELDS)
                answers = pipe.execute(raise_on_error=False)
            infos += [
                self._stored_info(tool, answer, runs, now)
                for tool, answer in zip(batch, answers, strict=True)
            ]
        return infos

    def _stored_info(
        self, tool: str, answer: list[str | None] | Exception, runs: RunStore | None, now: datetime
    ) -> ScheduleInfo:
        """`_info` of `tool` from the `FIELDS` of its entry (`answer`, an HMGET's) at `now`."""
        key = self.key(tool)
        try:
            if isinstance(answer, Exception):
                raise _wrong_type(key, answer)
            definition, meta, spec, run_id, fired_at, outcome = answer
            entry = ScheduleEntry.from_fields(key, definition, meta, self.app)
            next_at = _checked(key, lambda: next_run_at(entry, now)) if entry.enabled else None
        except KeyError:
            return ScheduleInfo(tool=tool, key=key, state="invalid", error="only in the index")
        except InvalidState as e:
            return ScheduleInfo(tool=tool, key=key, state="invalid", error=e.reason)
        user_spec = _spec(spec)
        tz = str(user_spec.get("tz") or getattr(entry.schedule, "tz_name", "UTC"))
        return ScheduleInfo(
            tool=tool,
            key=key,
            state="active" if entry.enabled else "paused",
            schedule=str(user_spec.get("description") or entry.schedule),
            explained=str(user_spec.get("explained") or explain(entry.schedule)),
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


def _spec(raw: str | None) -> dict[str, Any]:
    """The user's spec stored with an entry (`SPEC_FIELD`'s value `raw`); empty for an entry
    made elsewhere or an unreadable spec: the schedule itself is then shown."""
    try:
        spec = json.loads(raw or "{}")
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


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
