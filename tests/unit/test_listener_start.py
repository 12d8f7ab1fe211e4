"""Unit tests of the pure parts of the notification listener and alerts: where the listener
starts (periodic.py), `MAO_LISTENER_SINCE` (settings.py) and alert targets (alerts.py)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery import alerts
from mao_celery.exceptions import InvalidInput
from mao_celery.periodic import Start, listener_start, new_node_start
from mao_celery.settings import load_settings, mask_notify_url, since_start

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NEW = Start(7)


@given(cursor=st.integers(0, 10**9), revision=st.integers(0, 10**9))
def test_a_cursor_ahead_of_the_revision_replays_everything(cursor: int, revision: int) -> None:
    start = listener_start(cursor, 1, 1, revision, NEW)

    if cursor > revision:
        assert (start.after, start.start_after) == (0, None)
        assert start.warning is not None
        assert "ahead" in start.warning
    else:
        assert start == Start(cursor)


def test_a_cursor_of_another_cluster_replays_everything() -> None:
    start = listener_start(5, 0xA, 0xB, 100, NEW)

    assert start.after == 0
    assert start.warning == "etcd cluster changed (a -> b)"


def test_a_new_node_starts_where_its_setting_says() -> None:
    def key_at(when: datetime) -> str:
        return when.isoformat()

    assert listener_start(None, None, 1, 100, NEW) is NEW
    assert new_node_start("now", 100, key_at) == Start(100)
    assert new_node_start("all", 100, key_at) == Start(0)
    assert new_node_start("2025-01-31", 100, key_at) == Start(0, "2025-01-31T00:00:00+00:00")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("now", NOW),
        ("all", None),
        ("90s", NOW - timedelta(seconds=90)),
        ("2h", NOW - timedelta(hours=2)),
        ("7d", NOW - timedelta(days=7)),
        ("2025-01-31T10:00:00+01:00", datetime(2025, 1, 31, 9, tzinfo=UTC)),
    ],
)
def test_since_values(value: str, expected: datetime | None) -> None:
    assert since_start(value, NOW) == expected


@pytest.mark.parametrize("value", ["", "yesterday", "2x", "-1d", "2025-13-01"])
def test_a_bad_since_is_refused_naming_it(value: str) -> None:
    with pytest.raises(InvalidInput, match="listener_since"):
        load_settings(listener_since=value)


def test_alert_targets_are_named_by_position_and_urls_are_masked() -> None:
    conf = load_settings(
        notify_urls="json://127.0.0.1:1/ slack://tokenA/tokenB", notify_command="notify --x"
    )

    assert alerts.targets(conf) == ["url:0", "url:1", "command"]
    assert conf.effective_values()["notify_urls"] == ["json://...", "slack://..."]
    assert mask_notify_url("mailto://user:secret@host") == "mailto://..."


@pytest.mark.parametrize(
    ("setting", "value"), [("notify_urls", "not-a-url"), ("notify_command", "'unclosed")]
)
def test_bad_alert_settings_are_refused(setting: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=setting):
        load_settings(**{setting: value})


@given(tool=st.sampled_from(["a", "b"]), followed=st.sets(st.sampled_from(["a", "b", "c"])))
def test_a_node_follows_all_tools_or_those_it_follows(tool: str, followed: set[str]) -> None:
    assert alerts.follows(None, tool)
    assert alerts.follows(frozenset(followed), tool) == (tool in followed)
