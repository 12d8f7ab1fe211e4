"""Unit tests of maoctl's output (mao_celery/render.py) and the one gain format (text.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mao_celery.models import InvalidControlFile, Notification, RunReport, RunStatus, SpikeResult
from mao_celery.render import (
    STAGES,
    age,
    interrupted_line,
    notification_row,
    removed_tool_line,
    report_lines,
    run_row,
    stage_line,
)
from mao_celery.text import format_gain_pct

SPIKE = SpikeResult(
    window=2,
    threshold_pct=20.0,
    files=["control-1.csv", "control-2.csv", "control-3.csv"],
    new_files=["control-3.csv"],
    latest=150.0,
    baseline=100.0,
    difference=50.0,
    gain_pct=50.0,
    spike=True,
    reason="|gain| 50.00% > 20.0%",
)


@pytest.mark.parametrize(
    ("gain", "options", "shown"),
    [
        (12.345, {}, "+12.3%"),
        (-3.0, {}, "-3.0%"),
        (0.0, {}, "+0.0%"),
        (None, {}, "undefined"),
        (12.345, {"digits": 2}, "+12.35%"),
        (12.345, {"unit": ""}, "+12.3"),
        (None, {"unit": "", "undefined": ""}, ""),
    ],
)
def test_a_gain_is_written_signed_in_percent(
    gain: float | None, options: dict[str, object], shown: str
) -> None:
    assert format_gain_pct(gain, **options) == shown  # type: ignore[arg-type]


def test_a_succeeded_run_with_a_spike_is_reported_line_by_line() -> None:
    report = RunReport(
        run_id="0123abcd",
        tool="demo",
        node="node-a",
        status=RunStatus.SUCCEEDED,
        image="mao-demo:latest",
        data_dir="/data/demo",
        exit_code=0,
        spike=SPIKE,
        notification_key="/mao/notifications/1",
        log_tail="not shown for a run that succeeded",
    )

    assert report_lines(report) == [
        "run        0123abcd",
        "tool       demo  (node node-a)",
        "status     succeeded",
        "image      mao-demo:latest",
        "data dir   /data/demo",
        "exit code  0",
        "snapshots  3 valid control files (1 new)",
        "baseline   100.0",
        "current    150.0",
        "difference 50.0",
        "gain       +50.00%",
        "spike      YES  (|gain| 50.00% > 20.0%)",
        "notified   /mao/notifications/1",
    ]


def test_a_failed_run_shows_what_was_skipped_its_error_and_its_log_tail_escaped() -> None:
    spike = SpikeResult(
        window=2,
        threshold_pct=20.0,
        files=["control-1.csv"],
        invalid=[InvalidControlFile(name="control-x.csv", reason="not a number")],
        ignored=["notes.txt"],
        reason="too few values",
        compliance_warning="no new control file",
    )
    report = RunReport(
        run_id="0123abcd",
        tool="demo",
        node="node-a",
        status=RunStatus.FAILED,
        spike=spike,
        error="exit code 1",
        log_tail="first\x1b[2J\r\nsecond",
    )

    assert report_lines(report)[3:] == [
        "image      n/a",
        "data dir   n/a",
        "snapshots  1 valid control file (0 new)",
        "baseline   n/a",
        "current    n/a",
        "difference n/a",
        "gain       undefined",
        "spike      no  (too few values)",
        "invalid    control-x.csv: not a number",
        "ignored    notes.txt",
        "warning    no new control file",
        "error      exit code 1",
        "log tail:",
        "  first\\x1b[2J",
        "  second",
    ]


def test_each_stage_of_a_run_has_its_text_and_the_others_show_their_status() -> None:
    assert stage_line("ab12", RunStatus.QUEUED) == f"run ab12: {STAGES['queued']}"
    assert stage_line("ab12", RunStatus.RUNNING) == "run ab12: running the container"
    assert stage_line("ab12", RunStatus.SUCCEEDED) == "run ab12: succeeded"
    assert set(STAGES) == {s.value for s in RunStatus if not s.terminal}


def test_runs_and_notifications_show_the_gain_under_a_percent_column() -> None:
    finished = datetime(2024, 5, 1, 6, 30, 5, tzinfo=UTC)
    with_spike = RunReport(
        run_id="r1",
        tool="demo",
        node="a",
        status=RunStatus.SUCCEEDED,
        queued_at=finished,
        finished_at=finished,
        exit_code=0,
        spike=SPIKE,
    )
    queued = RunReport(run_id="r2", tool="demo", node="a", queued_at=finished)
    notification = Notification(tool="demo", node="a", run_id="r1", control_value=150.0,
                                baseline=100.0, gain_pct=None, threshold_pct=20.0,
                                detected_at=finished)  # fmt: skip

    assert run_row(with_spike) == (
        "r1", RunStatus.SUCCEEDED, "2024-05-01 06:30", "06:30:05", 0, "yes", "+50.0", None,
    )  # fmt: skip
    queued_row = ("r2", RunStatus.QUEUED, "2024-05-01 06:30", "", None, "", "", None)
    assert run_row(queued) == queued_row
    assert notification_row(notification) == (
        "2024-05-01 06:30", "demo", "a", "150.0", "100.0", "undefined", "r1",
    )  # fmt: skip


def test_interrupted_runs_are_told_in_one_line() -> None:
    assert interrupted_line([]) == "shutdown: no run of this node had a running container"
    assert interrupted_line(["r1", "r2"]) == (
        "shutdown: interrupted 2 run(s), their containers stopped: r1 r2"
    )


def test_a_removed_tool_is_told_with_its_schedule_and_the_data_directory_kept() -> None:
    assert removed_tool_line("demo", False, None) == "tool demo removed; it had no schedule"
    assert removed_tool_line("demo", True, Path("/srv/mao/demo")) == (
        "tool demo removed; its schedule on this node removed too; "
        "its data directory /srv/mao/demo is kept"
    )


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s ago"), (119, "119s ago"), (120, "2m ago"), (7199, "119m ago"), (7200, "2h ago"),
     (172799, "47h ago"), (172800, "2d ago"), (-5, "0s ago")],
)  # fmt: skip
def test_an_age_is_shown_in_its_largest_whole_unit(seconds: int, shown: str) -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)

    assert age(now - timedelta(seconds=seconds), now) == shown
