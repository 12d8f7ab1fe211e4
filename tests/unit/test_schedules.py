"""The pure parts of tool schedules: cron expressions in a time zone (cron.py: croniter's fire
times, standard cron semantics, daylight saving), the option rules of a request and the spec
it builds (schedule_spec.py), the JSON form RedBeat stores and how schedules.py describes a
run. Fire times are computed with a given `now`, never the wall clock."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import schedule
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from mao_celery.cron import CronSchedule, describe, parse_cron
from mao_celery.exceptions import InvalidInput
from mao_celery.models import RunReport, RunStatus, SpikeResult
from mao_celery.schedule_spec import ScheduleRequest, ScheduleSpec, build_spec, parse_at
from mao_celery.schedules import ScheduleJSONDecoder, ScheduleJSONEncoder, describe_result

NOW = datetime(2026, 11, 29, 10, 17, 42, tzinfo=UTC)  # a Sunday
ZURICH, NEW_YORK = ZoneInfo("Europe/Zurich"), ZoneInfo("America/New_York")


def spec(period: str | None = None, **options: str | float) -> ScheduleSpec:
    return build_spec(ScheduleRequest(period=period, **options), NOW)


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo | None = None
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz or UTC)


def fires(expr: str, tz: str, after: datetime, count: int) -> list[datetime]:
    return CronSchedule(expr, tz).next_fires(after, count)


def frozen(expr: str, tz: str, now: datetime) -> CronSchedule:
    """A schedule whose clock is stopped at `now`."""
    return CronSchedule(expr, tz, nowfun=lambda: now)


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


# ---- standard cron semantics, checked against the values standard cron gives ----------------

# (expression, after (UTC), the next fire time standard cron (Vixie/cronie) gives)
STANDARD = [
    ("0 12 1 * 1", at(2026, 11, 29), at(2026, 11, 30, 12)),  # day-of-month OR day-of-week
    ("0 0 13 * 5", at(2026, 11, 29), at(2026, 12, 4)),  # Friday, not only Friday the 13th
    ("0 0 13 * 5", at(2026, 12, 5), at(2026, 12, 11)),
    ("0 0 13 * 5", at(2026, 12, 12), at(2026, 12, 13)),
    ("0 6 * * 7", at(2026, 11, 30), at(2026, 12, 6, 6)),  # 7 = Sunday
    ("0 6 * * 0", at(2026, 11, 30), at(2026, 12, 6, 6)),
    ("0 6 * * sun", at(2026, 11, 30), at(2026, 12, 6, 6)),
    ("0 6 * * SUN", at(2026, 11, 30), at(2026, 12, 6, 6)),
    ("0 6 * * 5-7", at(2026, 11, 30), at(2026, 12, 4, 6)),
    ("0 6 * jan mon", at(2026, 11, 29), at(2027, 1, 4, 6)),
    ("0 6 1 jan *", at(2026, 11, 29), at(2027, 1, 1, 6)),
    ("0 6 * feb-mar *", at(2026, 11, 29), at(2027, 2, 1, 6)),
    ("@daily", at(2026, 11, 29, 10), at(2026, 11, 30)),
    ("@midnight", at(2026, 11, 29, 10), at(2026, 11, 30)),
    ("@hourly", at(2026, 11, 29, 10, 5), at(2026, 11, 29, 11)),
    ("@weekly", at(2026, 11, 29, 10), at(2026, 12, 6)),
    ("@monthly", at(2026, 11, 29), at(2026, 12, 1)),
    ("@yearly", at(2026, 11, 29), at(2027, 1, 1)),
    ("@annually", at(2026, 11, 29), at(2027, 1, 1)),
    ("* * * * *", at(2026, 11, 29, 10, 17), at(2026, 11, 29, 10, 18)),
    ("*/15 * * * *", at(2026, 11, 29, 10, 17), at(2026, 11, 29, 10, 30)),
    ("5,35 * * * *", at(2026, 11, 29, 10, 17), at(2026, 11, 29, 10, 35)),
    ("0 */6 * * *", at(2026, 11, 29, 10), at(2026, 11, 29, 12)),
    ("30 2-4 * * *", at(2026, 11, 29, 3, 30), at(2026, 11, 29, 4, 30)),
    ("0 9-17/4 * * mon-fri", at(2026, 11, 27, 18), at(2026, 11, 30, 9)),
    ("0 0 29 2 *", at(2026, 11, 29), at(2028, 2, 29)),  # the next leap day
    ("0 0 31 * *", at(2026, 11, 29), at(2026, 12, 31)),  # November has no 31st
    ("0 0 1,15 * 3", at(2026, 12, 1, 1), at(2026, 12, 2)),  # Wednesday before the 15th
    ("0 0 * * 1,3,5", at(2026, 11, 29), at(2026, 11, 30)),
    ("0 0 1-7 * 1", at(2026, 11, 29), at(2026, 11, 30)),  # OR: any Monday, not the first one
    ("0 0 */10 * *", at(2026, 11, 29), at(2026, 12, 1)),
    ("59 23 31 12 *", at(2026, 11, 29), at(2026, 12, 31, 23, 59)),
    ("0 0 * 12 7", at(2026, 11, 29), at(2026, 12, 6)),
]


@pytest.mark.parametrize(("expr", "after", "expected"), STANDARD, ids=[e for e, _, _ in STANDARD])
def test_fire_times_are_those_of_standard_cron(
    expr: str, after: datetime, expected: datetime
) -> None:
    assert CronSchedule(expr).next_fire(after) == expected


def test_the_table_checks_at_least_30_expressions() -> None:
    assert len({expr for expr, _, _ in STANDARD}) >= 30


@given(
    st.sampled_from([e for e, _, _ in STANDARD]),
    st.datetimes(datetime(2000, 1, 1), datetime(2037, 1, 1)),
)
def test_in_utc_fire_times_are_croniters(expr: str, after: datetime) -> None:
    aware = after.replace(tzinfo=UTC)

    expected = croniter(expr, after).get_next(datetime).replace(tzinfo=UTC)

    assert CronSchedule(expr).next_fire(aware) == expected


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("* * * *", "has 4 fields, needs 5"),
        ("0 6 * * * *", "has 6 fields, needs 5"),
        ("", "has 0 fields, needs 5"),
        ("@sometimes", "has 1 fields, needs 5"),
        ("61 * * * *", "cron field minute '61' is invalid"),
        ("0 24 * * *", "cron field hour '24' is invalid"),
        ("0 6 * * 8", "cron field day-of-week '8' is invalid"),
        ("0 6 0 * *", "cron field day-of-month '0' is invalid"),
        ("0 6 * 13 *", "cron field month '13' is invalid"),
        ("*/0 * * * *", "cron field minute '*/0' is invalid"),
        ("0 x * * *", "cron field hour 'x' is invalid"),
        ("0 6 30 2 *", "cron expression '0 6 30 2 *' is invalid"),
    ],
)
def test_parse_cron_names_the_bad_field(expr: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(reason)):
        parse_cron(expr)


def test_parse_cron_keeps_the_expression_with_blanks_normalised() -> None:
    assert parse_cron(" 0  6 * *   1-5 ") == "0 6 * * 1-5"
    assert parse_cron("@Daily") == "@daily"


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 12 1 * 1", "At 12:00, on day 1 of the month, or on Monday"),
        ("0 6 * * 7", "At 06:00, only on Sunday"),
        ("@daily", "At 00:00"),
    ],
)
def test_describe_says_the_schedule_in_words(expr: str, words: str) -> None:
    assert describe(expr) == words


# ---- time zones and daylight saving ----------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "first_day"),
    [((27, 28, 29), 27), ((24, 25, 26), 24)],
    ids=["spring 2027-03-28", "autumn 2026-10-25"],
)
def test_daily_0600_zurich_stays_0600_local_across_both_changes(
    days: tuple[int, ...], first_day: int
) -> None:
    month = 3 if first_day == 27 else 10
    year = 2027 if month == 3 else 2026
    start = at(year, month, first_day, 0, 0, ZURICH)

    found = fires("0 6 * * *", "Europe/Zurich", start, 3)

    assert [(f.astimezone(ZURICH).day, f.astimezone(ZURICH).hour) for f in found] == [
        (d, 6) for d in days
    ]
    offsets = [f.astimezone(ZURICH).utcoffset() for f in found]
    assert offsets[0] != offsets[2]  # the same local time, another UTC time


def test_0230_new_york_on_the_spring_forward_day_fires_once_at_the_end_of_the_gap() -> None:
    found = fires("30 2 * * *", "America/New_York", at(2027, 3, 13, 12), 3)

    assert [f.astimezone(NEW_YORK).isoformat() for f in found] == [
        "2027-03-14T03:00:00-04:00",  # 02:30 does not exist that day
        "2027-03-15T02:30:00-04:00",
        "2027-03-16T02:30:00-04:00",
    ]


def test_0230_new_york_on_the_fall_back_day_fires_once() -> None:
    found = fires("30 2 * * *", "America/New_York", at(2026, 10, 31, 12), 3)

    assert [f.astimezone(NEW_YORK).isoformat() for f in found] == [
        "2026-11-01T02:30:00-05:00",
        "2026-11-02T02:30:00-05:00",
        "2026-11-03T02:30:00-05:00",
    ]


@pytest.mark.parametrize(
    ("expr", "tz", "day_start", "expected"),
    [
        ("30 1 * * *", "America/New_York", at(2026, 11, 1, 0, 0, NEW_YORK), 1),
        ("30 2 * * *", "Europe/Zurich", at(2026, 10, 25, 0, 0, ZURICH), 1),
        ("*/15 2 * * *", "America/New_York", at(2027, 3, 14, 0, 0, NEW_YORK), 1),
        ("*/30 * * * *", "America/New_York", at(2026, 11, 1, 0, 0, NEW_YORK), 50),
        ("*/30 * * * *", "America/New_York", at(2027, 3, 14, 0, 0, NEW_YORK), 46),
    ],
    ids=["repeated 01:30", "repeated 02:30", "skipped hour", "25 h day", "23 h day"],
)
def test_a_changed_day_fires_each_fixed_time_once_and_wildcard_hours_by_elapsed_time(
    expr: str, tz: str, day_start: datetime, expected: int
) -> None:
    day_end = day_start + timedelta(days=1, hours=1)  # a day of 23, 24 or 25 hours, and more
    local_day = day_start.date()

    found = [
        f
        for f in fires(expr, tz, day_start - timedelta(seconds=1), 60)
        if f < day_end and f.astimezone(ZoneInfo(tz)).date() == local_day
    ]

    assert len(found) == expected
    assert found == sorted(set(found))


SATURDAY_0600_CET = at(2027, 3, 27, 5, 0)
SUNDAY_0600_CEST = at(2027, 3, 28, 4, 0)


@pytest.mark.parametrize(
    ("last_fire", "now", "due", "next_check_s"),
    [
        (SATURDAY_0600_CET, at(2027, 3, 28, 3, 59), False, 60),  # 05:59 CEST
        (SATURDAY_0600_CET, SUNDAY_0600_CEST, True, 86400),  # 06:00 CEST: due, then Monday
        (SATURDAY_0600_CET, at(2027, 3, 28, 5, 0), True, 82800),  # missed: one catch-up
        (SUNDAY_0600_CEST, at(2027, 3, 28, 5, 0), False, 82800),  # 05:00 UTC is 07:00 now
    ],
    ids=["a minute before", "at 06:00 CEST", "overdue", "not again at the old UTC time"],
)
def test_is_due_with_a_given_now_across_the_spring_change(
    last_fire: datetime, now: datetime, due: bool, next_check_s: float
) -> None:
    state = frozen("0 6 * * *", "Europe/Zurich", now).is_due(last_fire)

    assert (state.is_due, state.next) == (due, next_check_s)


def test_remaining_estimate_counts_from_now() -> None:
    schedule_ = frozen("0 6 * * *", "Europe/Zurich", at(2027, 3, 28, 3, 0))

    assert schedule_.remaining_estimate(SATURDAY_0600_CET) == timedelta(hours=1)


@given(
    st.sampled_from(["0 6 * * *", "30 2 * * *", "*/20 * * * *", "0 0 1 * 1", "15 1 * * sun"]),
    st.sampled_from(["UTC", "Europe/Zurich", "America/New_York", "Australia/Lord_Howe"]),
    st.datetimes(datetime(2020, 1, 1), datetime(2035, 1, 1), timezones=st.just(UTC)),
)
def test_fire_times_increase_and_fall_on_the_expression_or_the_end_of_a_gap(
    expr: str, tz: str, after: datetime
) -> None:
    zone_ = ZoneInfo(tz)
    found = fires(expr, tz, after, 4)

    assert after < found[0] < found[1] < found[2] < found[3]
    for fire in found:
        wall = fire.astimezone(zone_).replace(tzinfo=None)
        just_before = (fire - timedelta(minutes=1)).astimezone(zone_).replace(tzinfo=None)
        on_expression = croniter.match(expr, wall)
        after_a_gap = wall - just_before > timedelta(minutes=1)
        assert on_expression or after_a_gap, (fire, wall)


# ---- requests and the specs they build -------------------------------------------------------


def test_daily_and_weekly_alone_fire_at_the_current_time_of_day_in_the_zone() -> None:
    daily = spec("daily", tz="Europe/Zurich")
    weekly = spec("weekly")

    assert daily.schedule == CronSchedule("17 11 * * *", "Europe/Zurich")  # 10:17 UTC
    assert weekly.schedule == CronSchedule("17 10 * * sun", "UTC")
    assert (daily.description, weekly.description) == (
        "daily at 11:17 Europe/Zurich", "weekly on sun at 10:17 UTC",
    )  # fmt: skip
    assert (daily.expires_s, weekly.expires_s) == (86400, 604800)


def test_daily_at_a_local_time_is_a_cron_in_that_zone() -> None:
    daily = spec("daily", at="06:30", tz="Europe/Paris")

    assert daily.schedule == CronSchedule("30 6 * * *", "Europe/Paris")
    assert (daily.description, daily.explained, daily.tz) == (
        "daily at 06:30 Europe/Paris", "At 06:30", "Europe/Paris",
    )  # fmt: skip


def test_weekly_at_a_day_in_a_zone() -> None:
    weekly = spec("weekly", at="00:30", day="Mon", tz="Europe/Paris")

    assert weekly.schedule == CronSchedule("30 0 * * mon", "Europe/Paris")
    assert weekly.description == "weekly on mon at 00:30 Europe/Paris"


def test_cron_takes_a_zone_and_keeps_the_expression() -> None:
    cron = spec(cron=" 0  6 * * 1-5", tz="America/New_York")
    every = spec(every_s=3)

    assert cron.schedule == CronSchedule("0 6 * * 1-5", "America/New_York")
    assert (cron.description, cron.explained) == (
        "cron 0 6 * * 1-5 America/New_York", "At 06:00, Monday through Friday",
    )  # fmt: skip
    assert cron.expires_s is None
    assert isinstance(every.schedule, schedule)
    assert every.schedule.run_every == timedelta(seconds=3)
    assert (every.description, every.expires_s) == ("every 3 s", 3)


@pytest.mark.parametrize(
    ("period", "options", "reason"),
    [
        (None, {}, "exactly one of daily, weekly or --cron"),
        ("daily", {"cron": "* * * * *"}, "exactly one of daily, weekly or --cron"),
        (None, {"cron": "* * * * *", "every_s": 3.0}, "exactly one of daily, weekly or --cron"),
        (None, {"cron": "* * * * *", "at": "06:00"}, "--at needs daily or weekly"),
        ("daily", {"at": "06:00", "day": "tue"}, "--day needs weekly"),
        ("weekly", {"at": "06:00", "day": "someday"}, "day 'someday' is not one of mon, tue"),
        ("daily", {"at": "06:00", "tz": "Nowhere/City"}, "time zone 'Nowhere/City' is unknown"),
        (None, {"cron": "* * * * *", "tz": "Europe/"}, "time zone 'Europe/' is unknown"),
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
    st.sampled_from([None, "* * * * *", "0 6 * * 1-5", "0 24 * * *", "@weekly"]),
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

    built = build_spec(request, NOW)

    assert built.description
    assert built.tz == (tz or "UTC")
    assert (built.expires_s is None) == (cron is not None)


# ---- the JSON form in RedBeat ----------------------------------------------------------------


def test_a_cron_schedule_round_trips_through_redbeats_json() -> None:
    original = CronSchedule("0 12 1 * 1", "Europe/Zurich")

    stored = json.dumps({"schedule": original}, cls=ScheduleJSONEncoder)
    read = json.loads(stored, cls=ScheduleJSONDecoder)["schedule"]

    assert json.loads(stored)["schedule"] == {
        "__type__": "mao_cron", "expr": "0 12 1 * 1", "tz": "Europe/Zurich",
    }  # fmt: skip
    assert read == original
    assert read.next_fire(NOW) == original.next_fire(NOW)


def test_a_crontab_written_by_older_versions_is_read_as_standard_cron_in_utc() -> None:
    old = (
        '{"__type__": "crontab", "minute": "0", "hour": 12, "day_of_week": "1", '
        '"day_of_month": "1", "month_of_year": "*"}'
    )

    read = json.loads(old, cls=ScheduleJSONDecoder)

    assert read == CronSchedule("0 12 1 * 1", "UTC")
    assert read.next_fire(NOW) == at(2026, 11, 30, 12)  # celery's crontab said 2027-02-01


@pytest.mark.parametrize(
    "stored",
    [
        '{"__type__": "mao_cron", "expr": "0 99 * * *", "tz": "UTC"}',
        '{"__type__": "mao_cron", "expr": "0 6 * * *", "tz": "Mars/Base"}',
        '{"__type__": "mao_cron", "expr": "0 6 * * *"}',
        '{"__type__": "crontab", "minute": "99", "hour": "*", "day_of_week": "*", '
        '"day_of_month": "*", "month_of_year": "*"}',
    ],
    ids=["field out of range", "unknown zone", "missing zone", "old crontab out of range"],
)
def test_an_invalid_stored_schedule_fails_to_decode(stored: str) -> None:
    with pytest.raises((InvalidInput, KeyError)):
        json.loads(stored, cls=ScheduleJSONDecoder)


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
