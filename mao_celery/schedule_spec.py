"""What a user asks of a tool's schedule, checked, and the celery schedule it makes (pure: no
Redis, no Celery app; schedules.py stores the result in RedBeat).

Two steps, each with one job:

- `ScheduleRequest`: the options of `maoctl schedule add` (`period`, `at`, `day`, `tz`,
  `cron`, `every_s`). Making one checks them all, the combinations first ("--day needs
  weekly"), then each value (a time of day, a time zone, a day name, a cron expression); a
  request that exists is valid. The checks raise `InvalidInput` with a message for the person
  who typed them.
- `build_spec`: the `ScheduleSpec` of a valid request. Every schedule but the tests' interval
  is a `cron.CronSchedule` evaluated in the request's zone on each tick (daily at 06:30 is
  "30 6 * * *"), so local times hold across daylight-saving changes. It cannot refuse a
  request; the current time (for daily/weekly without --at) is its one other input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self

from celery.schedules import BaseSchedule, schedule
from pydantic import BaseModel, ConfigDict, model_validator

from mao_celery.cron import CronSchedule, describe, parse_cron, zone
from mao_celery.exceptions import InvalidInput

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in Python's weekday order (Monday = 0)."""
PERIOD_S = {"daily": 24 * 3600.0, "weekly": 7 * 24 * 3600.0}

_AT = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as RedBeat stores it, and as the user gave it.

    Args:
        schedule: the celery schedule: a `CronSchedule` in `tz`, or an interval (tests).
        description: the user's spec for people, e.g. "daily at 06:30 Europe/Paris".
        explained: the schedule in words (cron-descriptor), e.g. "At 06:30".
        tz: the IANA zone of the schedule, in which its times are also shown.
        expires_s: a fired run not started by a worker within this many seconds is dropped
            (one period: the next one is due by then); None keeps it until a worker takes it.
    """

    schedule: BaseSchedule
    description: str
    explained: str
    tz: str
    expires_s: float | None


class ScheduleRequest(BaseModel):
    """The schedule a user asks for with `maoctl schedule add`; valid once made.

    - `period` "daily"/"weekly": each day, or on `day` each week, at `at` "HH:MM" (default: the
      current time of day in `tz`; `day` defaults to today's).
    - `cron`: a cron expression (see `cron.parse_cron`).
    - `every_s`: every that many seconds (for tests).
    - `tz`: the IANA zone of the times (default UTC), for every kind.

    Raises:
        InvalidInput: not exactly one of period, cron and every_s; `at` or `day` where they do
            not apply; or an invalid value (checked in that order).
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
        if self.day is not None:
            day_index(self.day)
        zone(self.tz_name)
        return self

    @property
    def tz_name(self) -> str:
        """The time zone of the schedule (UTC when not given)."""
        return self.tz or "UTC"


def build_spec(request: ScheduleRequest, now: datetime | None = None) -> ScheduleSpec:
    """The schedule `request` describes. Daily/weekly without `at` (or weekly without `day`)
    take the time of day (the weekday) of `now` (default: the current time) in its zone."""
    tz = request.tz_name
    if request.every_s is not None:
        every_s = request.every_s
        described = f"every {every_s:g} s"
        return ScheduleSpec(schedule(timedelta(seconds=every_s)), described, described, tz, every_s)
    if request.cron is not None:
        expr = parse_cron(request.cron)
        return ScheduleSpec(CronSchedule(expr, tz), f"cron {expr} {tz}", describe(expr), tz, None)
    assert request.period is not None  # exactly one of the three (ScheduleRequest)
    local_now = (now or datetime.now(UTC)).astimezone(zone(tz))
    hour, minute = parse_at(request.at) if request.at else (local_now.hour, local_now.minute)
    at = f"{hour:02d}:{minute:02d} {tz}"
    if request.period == "daily":
        expr, description = f"{minute} {hour} * * *", f"daily at {at}"
    else:
        day = DAYS[day_index(request.day) if request.day else local_now.weekday()]
        expr, description = f"{minute} {hour} * * {day}", f"weekly on {day} at {at}"
    return ScheduleSpec(
        CronSchedule(expr, tz), description, describe(expr), tz, PERIOD_S[request.period]
    )


def parse_at(text: str) -> tuple[int, int]:
    """The (hour, minute) of a time of day written "HH:MM" (24 h clock, "6:30" accepted).

    Raises:
        InvalidInput: not a time of day.
    """
    match = _AT.fullmatch(text.strip())
    if match is None:
        raise InvalidInput(f"time of day {text!r} is not HH:MM (00:00 to 23:59)")
    return int(match[1]), int(match[2])


def day_index(day: str) -> int:
    """Monday = 0 ... Sunday = 6 for a day name "mon".."sun" (any case).

    Raises:
        InvalidInput: not a day name.
    """
    try:
        return DAYS.index(day.lower())
    except ValueError as e:
        raise InvalidInput(f"day {day!r} is not one of {', '.join(DAYS)}") from e
