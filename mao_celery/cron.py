"""Standard cron in a time zone, as a celery schedule (pure: no Redis, no Celery app needed).

`CronSchedule(expr, tz)` fires at the times of a 5-field cron expression ("minute hour
day-of-month month day-of-week", names such as `mon`/`jan`, `7` = Sunday, day-of-month OR
day-of-week when both are restricted) or of a macro (`@hourly`, `@daily`, `@weekly`, ...),
evaluated by croniter in the wall-clock time of zone `tz` on every call: 06:00 Europe/Zurich
stays 06:00 local across daylight-saving changes.

Daylight saving, as Kubernetes CronJob's `timeZone` and Vixie cron do:

- a wall time that does not exist (the skipped hour) fires once, at the first instant after the
  gap (02:30 America/New_York on the spring-forward day fires at 03:00 EDT); several skipped
  times collapse into that one fire;
- a wall time that occurs twice (the repeated hour) fires once, at its first occurrence, unless
  the hour field is a wildcard (`*`, `*/2`): such schedules follow elapsed time and fire in both
  passes, so "every 15 minutes" keeps firing every 15 minutes.

The JSON form RedBeat stores is `as_json()` (read back with `CronSchedule.from_json`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, schedstate
from croniter import CroniterError, croniter

from mao_celery.exceptions import InvalidInput

JSON_TYPE = "mao_cron"
"""The `__type__` of a `CronSchedule` in RedBeat's JSON."""
CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
"""The macros croniter accepts, with the 5 fields each stands for."""
MAX_SHIFT = timedelta(hours=3)
"""More than any daylight-saving shift: how far fire times in wall time and in UTC can differ in
order."""
STEADY_SPAN = timedelta(days=7)
"""Shorter than the time between two changes of a zone's UTC offset (daylight saving: months
apart): a span this short with the same offset at both ends has no change inside."""
CATCH_UP_LIMIT = timedelta(days=400)
"""An overdue schedule fires once (the catch-up) however long ago its last fire was; fire times
are searched from at most this far back (more than a year: a yearly schedule is caught up)."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, e.g. "Europe/Paris".

    Raises:
        InvalidInput: no such time zone in the system's zoneinfo database.
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise InvalidInput(f"time zone {name!r} is unknown: use an Area/City name") from e


@lru_cache(maxsize=4096)
def parse_cron(expr: str) -> str:
    """The cron expression `expr` with its blanks normalised, once croniter accepts it and it
    fires at all (remembered: every entry beat or a listing reads is checked on decoding).

    Raises:
        InvalidInput: not 5 fields or a macro, a field croniter rejects (named), or days that
            never occur ("0 6 30 2 *").
    """
    fields = expr.split()
    normal = " ".join(fields)
    if len(fields) == 1 and fields[0].lower() in MACROS:
        return normal.lower()
    if len(fields) != len(CRON_FIELDS):
        raise InvalidInput(
            f"cron expression {expr!r} has {len(fields)} fields, needs 5: "
            f'"minute hour day-of-month month day-of-week" (or @hourly, @daily, @weekly, ...)'
        )
    for index, (name, value) in enumerate(zip(CRON_FIELDS, fields, strict=True)):
        probe = ["*"] * len(CRON_FIELDS)
        probe[index] = value
        _check(f"cron field {name} {value!r}", " ".join(probe))
    _check(f"cron expression {normal!r}", normal)
    return normal


@lru_cache(maxsize=4096)
def describe(expr: str) -> str:
    """`expr` (valid, see `parse_cron`) in words, by cron-descriptor: "At 06:00, only on
    Monday"."""
    from cron_descriptor import ExpressionDescriptor, Options

    options = Options()
    options.use_24hour_time_format = True
    return str(ExpressionDescriptor(MACROS.get(expr, expr), options).get_description())


@lru_cache(maxsize=4096)
def _parsed(expr: str) -> croniter:
    """A croniter of `expr` (valid): what it parsed, to be copied (`_cron`)."""
    return croniter(expr, datetime(2000, 1, 1))


def _cron(expr: str, start: datetime) -> croniter:
    """A croniter of `expr` (valid) from `start` (naive wall time): a copy of the one that
    parsed `expr` (parsing is most of the cost of a croniter), set to `start`."""
    candidates = copy.copy(_parsed(expr))
    candidates.set_current(start, force=True)
    return candidates


def _check(what: str, expr: str) -> None:
    """Refuse `expr` unless croniter finds a fire time for it."""
    try:
        croniter(expr, datetime(2000, 1, 1)).get_next(datetime)
    except (CroniterError, ValueError) as e:
        raise InvalidInput(f"{what} is invalid: {e}") from e


class CronSchedule(BaseSchedule):  # type: ignore[misc]
    """A cron expression evaluated in a time zone (see the module's docstring).

    Args:
        expr: a cron expression (see `parse_cron`).
        tz: an IANA time zone name (default UTC).
        nowfun: returns the current time (aware); default: the Celery app's clock. Tests give
            a fixed clock.

    Raises:
        InvalidInput: an invalid expression or time zone.
    """

    def __init__(
        self, expr: str, tz: str = "UTC", nowfun: Callable[[], datetime] | None = None
    ) -> None:
        self.expr = parse_cron(expr)
        self.tz_name = tz
        self.zone = zone(tz)
        self._wildcard_hour = MACROS.get(self.expr, self.expr).split()[1].startswith("*")
        super().__init__(nowfun=nowfun)

    # ---- fire times ----

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after `after` (aware), in UTC."""
        wall_after = self._wall(after)
        steady = self._steady_next(after, wall_after)
        if steady is not None:
            return steady
        candidates = _cron(self.expr, wall_after - MAX_SHIFT)
        best: datetime | None = None
        while True:
            wall: datetime = candidates.get_next(datetime)
            if best is not None and wall > self._wall(best) + MAX_SHIFT:
                return best
            for instant in self._instants(wall):
                if instant > after and (best is None or instant < best):
                    best = instant

    def _steady_next(self, after: datetime, wall_after: datetime) -> datetime | None:
        """`next_fire(after)` when the zone's UTC offset stays the same from `MAX_SHIFT` before
        `after` to `MAX_SHIFT` after the next wall time (`STEADY_SPAN` at most): then wall and
        UTC times map one to one, in order, and the next wall time is the answer (one croniter
        step, where a daylight-saving change needs the search of `next_fire`). None otherwise.
        """
        wall: datetime = _cron(self.expr, wall_after).get_next(datetime)
        instant = wall.replace(tzinfo=self.zone).astimezone(UTC)
        start, end = after - MAX_SHIFT, instant + MAX_SHIFT
        if end - start > STEADY_SPAN:
            return None
        if start.astimezone(self.zone).utcoffset() != end.astimezone(self.zone).utcoffset():
            return None
        return instant

    def fire_since(self, last_run_at: datetime, now: datetime) -> datetime:
        """The first fire time after `last_run_at` (naive: UTC), searched from at most
        `CATCH_UP_LIMIT` before `now`: at or before `now` when the schedule is overdue."""
        return self.next_fire(max(aware(last_run_at), now - CATCH_UP_LIMIT))

    def next_fires(self, after: datetime, count: int) -> list[datetime]:
        """The `count` fire times after `after` (aware), in UTC, in order."""
        fires: list[datetime] = []
        for _ in range(count):
            after = self.next_fire(after)
            fires.append(after)
        return fires

    def _wall(self, instant: datetime) -> datetime:
        """The naive wall-clock time of `instant` in the zone."""
        return instant.astimezone(self.zone).replace(tzinfo=None)

    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants that fire for wall time `wall` (see the module's docstring)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if first == second:
            return [first]
        if self._wall(first) != wall:  # in a gap: the first wall time after it
            later = wall
            while self._wall(later.replace(tzinfo=self.zone).astimezone(UTC)) != later:
                later += timedelta(minutes=1)
            return [later.replace(tzinfo=self.zone).astimezone(UTC)]
        return [first, second] if self._wildcard_hour else [first]

    # ---- celery's schedule interface ----

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        return aware(super().now()).astimezone(UTC)

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Whether a fire time has passed since `last_run_at` (then it fires once, however many
        passed), and the seconds until the next check (the next fire time)."""
        now = self.now()
        first = self.fire_since(last_run_at, now)
        due = first <= now
        following = self.next_fire(now) if due else first
        return schedstate(due, (following - now).total_seconds())

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """The time from now until the first fire time after `last_run_at` (negative: overdue)."""
        now = self.now()
        return self.fire_since(last_run_at, now) - now

    # ---- identity and storage ----

    def as_json(self) -> dict[str, str]:
        """The JSON form stored in a RedBeat entry's definition."""
        return {"__type__": JSON_TYPE, "expr": self.expr, "tz": self.tz_name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CronSchedule:
        """The schedule of `as_json()`'s form (without its `__type__`).

        Raises:
            InvalidInput: an invalid expression or time zone.
            KeyError: a field is missing.
        """
        return cls(str(data["expr"]), str(data["tz"]))

    def __repr__(self) -> str:
        return f"<cron {self.expr} {self.tz_name}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CronSchedule):
            return (self.expr, self.tz_name) == (other.expr, other.tz_name)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.expr, self.tz_name))

    def __reduce__(self) -> tuple[type[CronSchedule], tuple[str, str]]:
        return self.__class__, (self.expr, self.tz_name)


def aware(moment: datetime) -> datetime:
    """`moment` made aware (a naive time is UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
