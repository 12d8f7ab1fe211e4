"""Reading schedule entries from their stored fields without Redis (`ScheduleEntry.from_fields`,
what `ScheduleStore.list_page` decodes from its pipelined HMGETs), and the page of a registry
listing as `maoctl tool get` / `dataset get` print it (`render.show_page`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st

from mao_celery import render
from mao_celery.exceptions import InvalidState
from mao_celery.models import Dataset
from mao_celery.registry import EntryPage, InvalidEntry
from mao_celery.schedule_spec import ScheduleRequest, build_spec
from mao_celery.schedules import ScheduleEntry, ScheduleJSONEncoder, _definition

KEY = "mao:beat:tool:demo"
NOW = datetime(2026, 11, 29, 10, 17, 42, tzinfo=UTC)
APP = Celery("unit", set_as_current=False)
APP.conf.update(redbeat_key_prefix="mao:beat:", redbeat_redis_url="redis://127.0.0.1:1/0")
"""An app with RedBeat's settings; nothing here connects to its Redis."""


def stored(request: ScheduleRequest, enabled: bool = True) -> tuple[str, str]:
    """The `definition` and `meta` fields `ScheduleStore.add` writes for `request`."""
    spec = build_spec(request, NOW)
    entry = ScheduleEntry(
        name="tool:demo", task="mao.scheduled_run", schedule=spec.schedule, args=["demo"],
        enabled=enabled, last_run_at=NOW, app=APP,
    )  # fmt: skip
    meta = json.dumps({"last_run_at": NOW, "total_run_count": 3}, cls=ScheduleJSONEncoder)
    return _definition(entry), meta


@given(
    st.sampled_from(["0 6 * * 1-5", "*/15 * * * *", "@daily", "30 2 * * 7"]),
    st.sampled_from(["UTC", "Europe/Zurich", "America/New_York"]),
    st.booleans(),
)
def test_an_entry_is_read_back_from_its_fields(expr: str, tz: str, enabled: bool) -> None:
    request = ScheduleRequest(cron=expr, tz=tz)
    definition, meta = stored(request, enabled)

    entry = ScheduleEntry.from_fields(KEY, definition, meta, APP)

    assert entry.schedule == build_spec(request, NOW).schedule
    assert (entry.args, entry.enabled, entry.total_run_count) == (["demo"], enabled, 3)
    assert entry.last_run_at == NOW


def test_an_interval_entry_is_read_back_from_its_fields() -> None:
    entry = ScheduleEntry.from_fields(KEY, *stored(ScheduleRequest(every_s=90.0)), APP)

    assert entry.schedule.run_every.total_seconds() == 90.0


def test_an_entry_without_definition_is_missing() -> None:
    with pytest.raises(KeyError):
        ScheduleEntry.from_fields(KEY, None, None, APP)


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ("garbage", "JSONDecodeError"),
        (json.dumps({"name": "tool:demo", "schedule": {"__type__": "mao_cron", "expr": "99 * * * *",
                                                       "tz": "UTC"}}), "InvalidInput"),
        (json.dumps({"name": "tool:demo", "schedule": {"__type__": "mao_cron", "expr": "0 6 * * *",
                                                       "tz": "Mars/Olympus"}}), "InvalidInput"),
        (json.dumps({"name": "tool:demo", "schedule": {"__type__": "mao_cron"}}), "KeyError"),
        (json.dumps(["not", "an", "object"]), "TypeError"),
    ],
    ids=["not json", "bad minute", "bad zone", "no expr", "a list"],
)  # fmt: skip
def test_an_unreadable_entry_is_invalid_naming_its_key(definition: str, reason: str) -> None:
    with pytest.raises(InvalidState) as raised:
        ScheduleEntry.from_fields(KEY, definition, None, APP)

    assert raised.value.key == KEY
    assert raised.value.reason.startswith(reason)


def page(names: list[str], next_after: str | None) -> EntryPage[Dataset]:
    items = [Dataset(name=n, url=f"/srv/git/{n}.git") for n in names]
    return EntryPage(items, [InvalidEntry("/p/datasets/bad", "bad: not JSON")], next_after)


def test_a_table_page_ends_with_the_command_for_the_next(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.show_page("dataset", page(["a", "b"], "b"), as_json=False, limit=None)
    render.show_page("dataset", page(["c"], "c"), as_json=False, limit=1)
    render.show_page("dataset", page(["d"], None), as_json=False, limit=None)

    more = [line for line in capsys.readouterr().out.splitlines() if "more:" in line]
    assert more == [
        "... more: maoctl dataset get --after b",
        "... more: maoctl dataset get --after c --limit 1",
    ]


@pytest.mark.parametrize(("limit", "keys"), [(None, {"items", "warnings"}),
                                             (2, {"items", "warnings", "next_after"})])  # fmt: skip
def test_a_json_page_has_next_after_only_with_limit(
    capsys: pytest.CaptureFixture[str], limit: int | None, keys: set[str]
) -> None:
    render.show_page("dataset", page(["a", "b"], "b"), as_json=True, limit=limit)

    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == keys
    assert [d["name"] for d in shown["items"]] == ["a", "b"]
    assert shown["warnings"] == [{"key": "/p/datasets/bad", "reason": "bad: not JSON"}]
    assert shown.get("next_after", "b") == "b"
