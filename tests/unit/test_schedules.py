"""The pure parts of tool schedules (schedule_spec.py, and how schedules.py describes a run):
times of day, time zones, cron expressions, the option rules of a request, the spec it builds."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest
from celery.schedules import crontab, schedule
from hypothesis import assume, given
from hypothesis import strategies as st

from mao_celery.exceptions import InvalidInput
from mao_celery.models import RunReport, RunStatus, SpikeResult
from mao_celery.schedule_spec import (
    DAYS,
    ScheduleRequest,
    ScheduleSpec,
    build_spec,
    parse_at,
    parse_cron,
    to_utc,
)
from mao_celery.schedules import describe_result

WINTER = date(2025, 1, 15)
SUMMER = date(2025, 7, 15)
ZONES = sorted(available_timezones() - {"Factory", "localtime"})


def spec(period: str | None = None, on: date | None = None, **options: str | float) -> ScheduleSpec:
    return build_spec(ScheduleRequest(period=period, **options), on)


@given(st.integers(0, 23), st.integers(0, 59), st.booleans())
def test_parse_at_reads_every_time_of_day(hour: int, minute: int, padded: bool) -> None:
    text = f"{hour:02d}:{minute:02d}" if padded else f"{hour}:{minute:02d}"

    assert parse_at(text) == (hour, minute)


@pytest.mark.parametrize(
    "text", ["24:00", "12:60", "6:5", "0630", "06:30:00", "", "ab:cd", "-1:00"]
)
def test_parse_at_rejects_what_is_not_hh_mm(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not HH:MM"):
        parse_at(text)


@pytest.mark.parametrize(
    ("hour", "minute", "tz", "day", "on", "expected"),
    [
        (6, 30, "Europe/Paris", None, WINTER, (5, 30, None)),
        (6, 30, "Europe/Paris", None, SUMMER, (4, 30, None)),
        (0, 30, "Europe/Paris", "mon", WINTER, (23, 30, "sun")),
        (22, 0, "America/New_York", "sun", WINTER, (3, 0, "mon")),
        (3, 0, "Asia/Kolkata", None, WINTER, (21, 30, None)),
        (0, 15, "Pacific/Kiritimati", "mon", WINTER, (10, 15, "sun")),
        (23, 0, "Pacific/Pago_Pago", "sun", WINTER, (10, 0, "mon")),
    ],
)
def test_to_utc_converts_with_the_offset_of_the_date_and_moves_the_day(
    hour: int,
    minute: int,
    tz: str,
    day: str | None,
    on: date,
    expected: tuple[int, int, str | None],
) -> None:
    assert to_utc(hour, minute, tz, day, on) == expected


@given(
    st.integers(0, 23),
    st.integers(0, 59),
    st.sampled_from(ZONES),
    st.sampled_from(DAYS),
    st.dates(date(2000, 1, 1), date(2037, 12, 31)),
)
def test_to_utc_gives_the_same_instant_as_the_local_time(
    hour: int, minute: int, tz: str, day: str, on: date
) -> None:
    local_day = on + timedelta(days=(DAYS.index(day) - on.weekday()) % 7)
    local = datetime.combine(local_day, time(hour, minute), ZoneInfo(tz))
    assume(local.astimezone(UTC).astimezone(local.tzinfo).time() == local.time())  # no DST gap

    utc_hour, utc_minute, utc_day = to_utc(hour, minute, tz, day, on)

    # Of the day before, the day and the day after, the UTC day is the one named `utc_day`.
    (utc_date,) = [
        d
        for d in (local_day - timedelta(days=1), local_day, local_day + timedelta(days=1))
        if DAYS[d.weekday()] == utc_day
    ]
    back = datetime.combine(utc_date, time(utc_hour, utc_minute), UTC).astimezone(ZoneInfo(tz))
    assert (back.date(), back.hour, back.minute) == (local_day, hour, minute)


@given(st.integers(0, 23), st.integers(0, 59), st.sampled_from([*DAYS, None]))
def test_to_utc_keeps_utc_times(hour: int, minute: int, day: str | None) -> None:
    assert to_utc(hour, minute, "UTC", day, WINTER) == (hour, minute, day)


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "Europe/", "../etc/passwd", ""])
def test_to_utc_rejects_an_unknown_time_zone(tz: str) -> None:
    with pytest.raises(InvalidInput, match=r"time zone .* is unknown"):
        to_utc(6, 30, tz)


@pytest.mark.parametrize(
    ("expr", "minutes", "hours", "days_of_week"),
    [
        ("* * * * *", set(range(60)), set(range(24)), set(range(7))),
        ("0 6 * * 1-5", {0}, {6}, {1, 2, 3, 4, 5}),
        ("*/15  2,14 * * sun", {0, 15, 30, 45}, {2, 14}, {0}),
    ],
)
def test_parse_cron_reads_five_fields(
    expr: str, minutes: set[int], hours: set[int], days_of_week: set[int]
) -> None:
    parsed = parse_cron(expr)

    assert isinstance(parsed, crontab)
    assert (parsed.minute, parsed.hour, parsed.day_of_week) == (minutes, hours, days_of_week)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("* * * *", "has 4 fields, needs 5"),
        ("0 6 * * * *", "has 6 fields, needs 5"),
        ("", "has 0 fields, needs 5"),
        ("61 * * * *", "cron field minute '61' is invalid: Invalid end range: 61 > 59"),
        ("0 24 * * *", "cron field hour '24' is invalid"),
        ("0 6 * * 7", "cron field day-of-week '7' is invalid"),
        ("0 6 0 * *", "cron field day-of-month '0' is invalid"),
        ("0 6 * 13 *", "cron field month-of-year '13' is invalid"),
        ("*/0 * * * *", "cron field minute '*/0' is invalid"),
        ("0 x * * *", "cron field hour 'x' is invalid"),
        ("0 6 30 2 *", "cron expression '0 6 30 2 *' is invalid: Invalid crontab"),
    ],
)
def test_parse_cron_names_the_bad_field(expr: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        parse_cron(expr)


def test_daily_and_weekly_alone_are_intervals_from_now() -> None:
    daily = spec("daily")
    weekly = spec("weekly")

    assert isinstance(daily.schedule, schedule)
    assert not isinstance(daily.schedule, crontab)
    assert daily.schedule.run_every == timedelta(days=1)
    assert weekly.schedule.run_every == timedelta(days=7)
    assert (daily.description, weekly.description) == ("daily, every 24 h", "weekly, every 7 days")
    assert (daily.expires_s, weekly.expires_s) == (86400, 604800)


def test_daily_at_a_local_time_is_a_utc_crontab_that_says_both() -> None:
    daily = spec("daily", at="06:30", tz="Europe/Paris", on=SUMMER)

    assert isinstance(daily.schedule, crontab)
    assert (daily.schedule.hour, daily.schedule.minute) == ({4}, {30})
    assert daily.schedule.day_of_week == set(range(7))
    assert daily.description == "daily at 06:30 Europe/Paris (04:30 UTC)"
    assert daily.expires_s == 86400


def test_weekly_at_defaults_to_monday_in_utc() -> None:
    weekly = spec("weekly", at="7:05")

    assert isinstance(weekly.schedule, crontab)
    assert (weekly.schedule.hour, weekly.schedule.minute, weekly.schedule.day_of_week) == (
        {7}, {5}, {1},
    )  # fmt: skip
    assert weekly.description == "weekly on mon at 07:05 UTC"


def test_weekly_on_a_day_in_a_zone_may_move_to_the_day_before_in_utc() -> None:
    weekly = spec("weekly", at="00:30", day="Mon", tz="Europe/Paris", on=WINTER)

    assert isinstance(weekly.schedule, crontab)
    assert weekly.schedule.day_of_week == {0}
    assert weekly.description == "weekly on mon at 00:30 Europe/Paris (sun 23:30 UTC)"


def test_cron_and_every_s_specs() -> None:
    cron = spec(cron=" 0  6 * * 1-5")
    every = spec(every_s=3)

    assert cron.description == "cron 0 6 * * 1-5 (UTC)"
    assert cron.expires_s is None
    assert every.schedule.run_every == timedelta(seconds=3)
    assert (every.description, every.expires_s) == ("every 3 s", 3)


@pytest.mark.parametrize(
    ("period", "options", "reason"),
    [
        (None, {}, "exactly one of daily, weekly or --cron"),
        ("daily", {"cron": "* * * * *"}, "exactly one of daily, weekly or --cron"),
        (None, {"cron": "* * * * *", "every_s": 3.0}, "exactly one of daily, weekly or --cron"),
        ("daily", {"tz": "Europe/Paris"}, "--day and --tz need --at"),
        ("weekly", {"day": "tue"}, "--day and --tz need --at"),
        (None, {"cron": "* * * * *", "at": "06:00"}, "--at needs daily or weekly"),
        ("daily", {"at": "06:00", "day": "tue"}, "--day needs weekly"),
        ("weekly", {"at": "06:00", "day": "someday"}, "day 'someday' is not one of mon, tue"),
        ("daily", {"at": "06:00", "tz": "Nowhere/City"}, "time zone 'Nowhere/City' is unknown"),
        ("monthly", {}, "period 'monthly' is not daily or weekly"),
        (None, {"every_s": 0.0}, "must be positive"),
    ],
)
def test_a_request_refuses_options_that_do_not_fit(
    period: str | None, options: dict[str, str | float], reason: str
) -> None:
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        ScheduleRequest(period=period, **options)


@given(
    st.sampled_from([None, "daily", "weekly", "monthly"]),
    st.sampled_from([None, "06:30", "0:05", "24:00"]),
    st.sampled_from([None, "tue", "SUN", "someday"]),
    st.sampled_from([None, "UTC", "Europe/Paris", "Nowhere/City"]),
    st.sampled_from([None, "* * * * *", "0 6 * * 1-5", "0 24 * * *"]),
    st.sampled_from([None, 3.0, 0.0]),
)
def test_every_request_that_is_made_builds(
    period: str | None,
    at: str | None,
    day: str | None,
    tz: str | None,
    cron: str | None,
    every_s: float | None,
) -> None:
    try:
        request = ScheduleRequest(period=period, at=at, day=day, tz=tz, cron=cron, every_s=every_s)
    except InvalidInput:
        return

    built = build_spec(request, WINTER)

    assert built.description
    assert (built.expires_s is None) == (cron is not None)


@pytest.mark.parametrize(
    ("status", "error", "spike", "expected"),
    [
        (RunStatus.SUCCEEDED, None, True, "succeeded (spike)"),
        (RunStatus.SUCCEEDED, None, False, "succeeded"),
        (
            RunStatus.FAILED,
            "the tool exited with code 3",
            None,
            "failed: the tool exited with code 3",
        ),
        (RunStatus.RUNNING, None, None, "running"),
    ],
)
def test_describe_result(
    status: RunStatus, error: str | None, spike: bool | None, expected: str
) -> None:
    result = None if spike is None else SpikeResult(window=2, threshold_pct=20.0, spike=spike)
    report = RunReport(run_id="r1", tool="t", node="n", status=status, error=error, spike=result)

    assert describe_result(report) == expected
