"""What a user asks of a tool's schedule, checked, and the celery schedule it makes (pure: no
Redis, no Celery app; schedules.py stores the result in RedBeat).

Two steps, each with one job:

- `ScheduleRequest`: the options of `maoctl tool schedule` (`period`, `at`, `day`, `tz`, `cron`,
  `every_s`). Making one checks them all, the combinations first ("--day needs weekly"), then
  each value (a time of day, a time zone, a day name, a cron expression); a request that exists
  is valid. The checks raise `InvalidInput` with a message for the person who typed them.
- `build_spec`: the `ScheduleSpec` of a valid request (the celery schedule, its description,
  when a fired run expires). It cannot refuse a request; the date of a local time's conversion
  to UTC is its one other input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import BaseSchedule, ParseException, crontab, schedule
from pydantic import BaseModel, ConfigDict, model_validator

from mao_celery.exceptions import InvalidInput

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


class ScheduleRequest(BaseModel):
    """The schedule a user asks for with `maoctl tool schedule`; valid once made.

    - `period` "daily"/"weekly" alone: every 24 h / 7 days, counted from now (as the original
      MAO did).
    - with `at` "HH:MM": at that time each day, or on `day` (default "mon") each week, in `tz`
      (default UTC).
    - `cron`: a 5-field cron expression in UTC (see `parse_cron`).
    - `every_s`: every that many seconds (for tests).

    Raises:
        InvalidInput: not exactly one of period, cron and every_s; `at`, `day` or `tz` where
            they do not apply; or an invalid value (checked in that order).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    period: str | None = None
    at: str | None = None
    day: str | None = None
    tz: str | None = None
    cron: str | None = None
    every_s: float | None = None

    @model_validator(mode="after")
    def _options_fit(self) -> Self:
        """The combination rules of the options."""
        given = [v for v in (self.period, self.cron, self.every_s) if v is not None]
        if len(given) != 1:
            raise InvalidInput("give exactly one of daily, weekly or --cron")
        if self.at is None and (self.day is not None or self.tz is not None):
            raise InvalidInput("--day and --tz need --at HH:MM")
        if self.at is not None and self.period is None:
            raise InvalidInput("--at needs daily or weekly")
        if self.day is not None and self.period != "weekly":
            raise InvalidInput("--day needs weekly")
        return self

    @model_validator(mode="after")
    def _values_valid(self) -> Self:
        """Each given value, once the combination is known to fit."""
        if self.every_s is not None and not self.every_s > 0:
            raise InvalidInput(f"interval {self.every_s} s must be positive")
        if self.cron is not None:
            parse_cron(self.cron)
        if self.period is not None and self.period not in PERIOD_S:
            raise InvalidInput(f"period {self.period!r} is not daily or weekly")
        if self.at is not None:
            parse_at(self.at)
            zone(self.tz_name)
            if self.weekday is not None:
                day_index(self.weekday)
        return self

    @property
    def tz_name(self) -> str:
        """The time zone of `at` (UTC when not given)."""
        return self.tz or "UTC"

    @property
    def weekday(self) -> str | None:
        """The day of a weekly schedule at a time of day, lower case ("mon" when not given);
        None for any other schedule."""
        if self.at is None or self.period != "weekly":
            return None
        return (self.day or "mon").lower()


def build_spec(request: ScheduleRequest, on: date | None = None) -> ScheduleSpec:
    """The schedule `request` describes. A local `at` time is converted to UTC as of `on`
    (default: today in its zone; see `to_utc`)."""
    if request.every_s is not None:
        every_s = request.every_s
        return ScheduleSpec(schedule(timedelta(seconds=every_s)), f"every {every_s:g} s", every_s)
    if request.cron is not None:
        cron = request.cron
        return ScheduleSpec(parse_cron(cron), f"cron {' '.join(cron.split())} (UTC)", None)
    assert request.period is not None  # exactly one of the three (ScheduleRequest)
    period, period_s = request.period, PERIOD_S[request.period]
    if request.at is None:
        every = "24 h" if period == "daily" else "7 days"
        return ScheduleSpec(
            schedule(timedelta(seconds=period_s)), f"{period}, every {every}", period_s
        )
    hour, minute = parse_at(request.at)
    tz_name, weekday = request.tz_name, request.weekday
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
