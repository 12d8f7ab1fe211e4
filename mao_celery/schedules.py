"""Tool schedules: one RedBeat entry per scheduled tool, in this node's Redis (design.md §5).

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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import redis
from celery import Celery
from celery.schedules import BaseSchedule, ParseException, crontab, schedule
from pydantic import BaseModel
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import ensure_conf, get_redis

from mao_celery.exceptions import InvalidInput, NotFound, ServiceUnavailable
from mao_celery.models import RunReport, RunStatus
from mao_celery.runs import RunStore
from mao_celery.text import redact_url

TASK = "mao.scheduled_run"
ENTRY_PREFIX = "tool:"
SPEC_FIELD = "mao_spec"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in Python's weekday order (Monday = 0); celery's crontab accepts them as they are."""
PERIOD_S = {"daily": 24 * 3600.0, "weekly": 7 * 24 * 3600.0}
CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

_AT = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as RedBeat stores it, and as the user gave it.

    Args:
        schedule: the celery schedule: an interval, or crontab fields in UTC.
        description: the user's spec for people, e.g. "daily at 06:30 Europe/Paris (04:30 UTC)".
        expires_s: a fired run not started by a worker within this many seconds is dropped
            (one period: the next one is due by then); None keeps it until a worker takes it.
    """

    schedule: BaseSchedule
    description: str
    expires_s: float | None


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
    """What `add` did: the entry saved, and the description of the schedule it replaced."""

    entry: RedBeatSchedulerEntry
    replaced: str | None


# ---- parsing (pure) --------------------------------------------------------------------------


def parse_at(text: str) -> tuple[int, int]:
    """The (hour, minute) of a time of day written "HH:MM" (24 h clock, "6:30" accepted).

    Raises:
        InvalidInput: not a time of day.
    """
    match = _AT.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"time of day {text!r} is not HH:MM (00:00 to 23:59)")
    return int(match[1]), int(match[2])


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, e.g. "Europe/Paris".

    Raises:
        InvalidInput: no such time zone in the system's zoneinfo database.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidInput(f"time zone {name!r} is unknown: use an Area/City name") from e


def to_utc(
    hour: int, minute: int, tz: str, day: str | None = None, on: date | None = None
) -> tuple[int, int, str | None]:
    """The UTC (hour, minute, day) of `hour:minute` on weekday `day` (None: every day) in `tz`.

    The UTC offset is the one in force on the first such day on or after `on` (default: today
    in `tz`), so the result does not follow later daylight-saving changes. The day moves when
    the conversion crosses midnight (00:30 Monday in Paris is 23:30 Sunday UTC).

    Raises:
        InvalidInput: unknown time zone or day name.
    """
    zone_info = zone(tz)
    start = on or datetime.now(zone_info).date()
    if day is not None:
        start += timedelta(days=(day_index(day) - start.weekday()) % 7)
    local = datetime.combine(start, time(hour, minute), zone_info)
    utc = local.astimezone(UTC)
    if day is None:
        return utc.hour, utc.minute, None
    shift = (utc.date() - local.date()).days
    return utc.hour, utc.minute, DAYS[(day_index(day) + shift) % 7]


def day_index(day: str) -> int:
    """Monday = 0 ... Sunday = 6 for a day name "mon".."sun" (any case).

    Raises:
        InvalidInput: not a day name.
    """
    try:
        return DAYS.index(day.lower())
    except ValueError as e:
        raise InvalidInput(f"day {day!r} is not one of {', '.join(DAYS)}") from e


def parse_cron(expr: str) -> crontab:
    """The crontab of a 5-field cron expression "minute hour day-of-month month day-of-week",
    in UTC, checked by celery's crontab parser (day of week 0-6 with Sunday = 0, or names).

    Raises:
        InvalidInput: not 5 fields, a field celery rejects, or days that never occur.
    """
    fields = expr.split()
    if len(fields) != len(CRON_FIELDS):
        raise InvalidInput(
            f"cron expression {expr!r} has {len(fields)} fields, needs 5: "
            '"minute hour day-of-month month day-of-week"'
        )
    values = dict(zip(CRON_FIELDS, fields, strict=True))
    for name, value in values.items():
        _crontab(f"cron field {name.replace('_', '-')} {value!r}", **{name: value})
    return _crontab(f"cron expression {expr!r}", **values)


def _crontab(what: str, **fields: str) -> crontab:
    try:
        return crontab(**fields)
    except (ValueError, ParseException) as e:
        raise InvalidInput(f"{what} is invalid: {e}") from e


def make_spec(
    period: str | None = None,
    *,
    at: str | None = None,
    day: str | None = None,
    tz: str | None = None,
    cron: str | None = None,
    every_s: float | None = None,
    on: date | None = None,
) -> ScheduleSpec:
    """The schedule `maoctl tool schedule` options describe.

    - `period` "daily"/"weekly" alone: every 24 h / 7 days, counted from now (as the original
      MAO did).
    - with `at` "HH:MM": at that time each day, or on `day` (default "mon") each week, in `tz`
      (default UTC), converted to UTC as of `on` (see `to_utc`).
    - `cron`: a 5-field cron expression in UTC (see `parse_cron`).
    - `every_s`: every that many seconds (for tests).

    Raises:
        InvalidInput: not exactly one of period, cron and every_s; `at`, `day` or `tz` where
            they do not apply; or an invalid value.
    """
    given = [v for v in (period, cron, every_s) if v is not None]
    if len(given) != 1:
        raise InvalidInput("give exactly one of daily, weekly or --cron")
    if at is None and (day is not None or tz is not None):
        raise InvalidInput("--day and --tz need --at HH:MM")
    if at is not None and period is None:
        raise InvalidInput("--at needs daily or weekly")
    if day is not None and period != "weekly":
        raise InvalidInput("--day needs weekly")
    if every_s is not None:
        if not every_s > 0:
            raise InvalidInput(f"interval {every_s} s must be positive")
        return ScheduleSpec(schedule(timedelta(seconds=every_s)), f"every {every_s:g} s", every_s)
    if cron is not None:
        return ScheduleSpec(parse_cron(cron), f"cron {' '.join(cron.split())} (UTC)", None)
    if period not in PERIOD_S:
        raise InvalidInput(f"period {period!r} is not daily or weekly")
    period_s = PERIOD_S[period]
    if at is None:
        every = "24 h" if period == "daily" else "7 days"
        return ScheduleSpec(
            schedule(timedelta(seconds=period_s)), f"{period}, every {every}", period_s
        )
    hour, minute = parse_at(at)
    tz_name = tz or "UTC"
    weekday = (day or "mon").lower() if period == "weekly" else None
    utc_hour, utc_minute, utc_day = to_utc(hour, minute, tz_name, weekday, on)
    local = f"{hour:02d}:{minute:02d} {tz_name}"
    utc = f"{utc_hour:02d}:{utc_minute:02d} UTC"
    if weekday is None:
        description = f"daily at {local}"
    else:
        description = f"weekly on {weekday} at {local}"
        utc = f"{utc_day} {utc}"
    if tz_name != "UTC":
        description += f" ({utc})"
    crontab_ = crontab(minute=utc_minute, hour=utc_hour, day_of_week=utc_day or "*")
    return ScheduleSpec(crontab_, description, period_s)


def describe_result(report: RunReport) -> str:
    """A run's outcome in a few words: "succeeded (spike)", "failed: <reason>", "running"."""
    if report.status == RunStatus.FAILED:
        return f"failed: {report.error}"
    if report.status == RunStatus.SUCCEEDED and report.spike is not None and report.spike.spike:
        return "succeeded (spike)"
    return str(report.status)


# ---- entries in Redis ------------------------------------------------------------------------


def entry_name(tool: str) -> str:
    """The RedBeat entry name of `tool`'s schedule."""
    return ENTRY_PREFIX + tool


def add(app: Celery, tool: str, spec: ScheduleSpec) -> Scheduled:
    """Schedule runs of `tool` on this node (the app's RedBeat Redis), replacing any schedule
    it had. The first run is due one period from now (crontab: its next matching minute).

    The caller checks that the tool is registered.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    options = {} if spec.expires_s is None else {"expires": spec.expires_s}
    entry = RedBeatSchedulerEntry(
        name=entry_name(tool),
        task=TASK,
        schedule=spec.schedule,
        args=[tool],
        options=options,
        last_run_at=app.now(),
        app=app,
    )
    replaced = None
    with _redis_errors(app):
        previous = _load(app, tool)
        if previous is not None:
            replaced = _description(app, previous)
            previous.delete()
        entry.save()
        get_redis(app).hset(entry.key, SPEC_FIELD, json.dumps({"description": spec.description}))
    return Scheduled(entry, replaced)


def remove(app: Celery, tool: str) -> None:
    """Delete `tool`'s schedule on this node; a run under way goes on.

    Raises:
        NotFound: the tool has no schedule here.
        ServiceUnavailable: Redis did not answer.
    """
    with _redis_errors(app):
        entry = _load(app, tool)
        if entry is None:
            raise NotFound(f"tool {tool!r} has no schedule on this node")
        entry.delete()


def list_schedules(app: Celery, runs: RunStore) -> list[ScheduleInfo]:
    """This node's tool schedules, by tool name, with each tool's newest run from `runs`.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    conf = ensure_conf(app)
    prefix = _key(app, "")
    infos = []
    with _redis_errors(app):
        keys = get_redis(app).zrange(conf.schedule_key, 0, -1)
        for tool in sorted(k.removeprefix(prefix) for k in keys if k.startswith(prefix)):
            entry = _load(app, tool)
            if entry is None:
                continue
            newest = runs.recent(tool, 1)
            infos.append(
                ScheduleInfo(
                    tool=tool,
                    schedule=_description(app, entry),
                    next_run_at=next_run_at(entry),
                    last_run_at=entry.last_run_at if entry.total_run_count else None,
                    last_result=describe_result(newest[0]) if newest else None,
                )
            )
    return infos


def next_run_at(entry: RedBeatSchedulerEntry) -> datetime:
    """When `entry` is next due (UTC, to the second; now when it is overdue).

    RedBeat's own `due_at` adds the time remaining *now* to the last run, which is early by
    the time elapsed since that run for a crontab; this adds it to now.
    """
    now: datetime = entry.app.now()
    remaining: timedelta = entry.schedule.remaining_estimate(entry.last_run_at)
    due = now + max(remaining, timedelta(0)) + timedelta(seconds=0.5)
    return due.replace(microsecond=0)


def _key(app: Celery, tool: str) -> str:
    """The Redis key of `tool`'s entry (RedBeat's key prefix + entry name)."""
    return str(ensure_conf(app).key_prefix) + entry_name(tool)


def _load(app: Celery, tool: str) -> RedBeatSchedulerEntry | None:
    """`tool`'s entry, or None when it has none."""
    try:
        return RedBeatSchedulerEntry.from_key(_key(app, tool), app=app)
    except KeyError:
        return None


def _description(app: Celery, entry: RedBeatSchedulerEntry) -> str:
    """The user's spec stored with `entry`, or celery's own text for an entry made elsewhere."""
    raw = get_redis(app).hget(entry.key, SPEC_FIELD)
    return str(json.loads(raw)["description"]) if raw else str(entry.schedule)


@contextmanager
def _redis_errors(app: Celery) -> Iterator[None]:
    """Turn Redis connection errors into ServiceUnavailable naming the app's RedBeat Redis."""
    try:
        yield
    except redis.RedisError as e:
        url = redact_url(str(app.conf.redbeat_redis_url))
        raise ServiceUnavailable("Redis", url, str(e).splitlines()[0]) from e
