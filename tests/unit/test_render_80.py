"""maoctl's tables at 80 columns (COLUMNS=80 snapshots), numbers for display, the one JSON shape
of listings, JSON errors, complete help summaries and click's shell completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

import cli
from mao_celery import render
from mao_celery.models import Member, Notification, RunReport, RunStatus, SpikeResult, Tool
from mao_celery.records import InvalidRecord
from mao_celery.schedules import ScheduleInfo

AT = datetime(2026, 11, 29, 14, 3, 7, tzinfo=UTC)
SPIKE = SpikeResult(window=2, threshold_pct=20.0, files=["c-1.csv", "c-2.csv", "c-3.csv"],
                    new_files=["c-3.csv"], latest=146.0, baseline=101.0,
                    difference=0.10000000000000009, gain_pct=44.554455445544555, spike=True,
                    reason="|gain| 44.55% > 20.0%")  # fmt: skip
RUNS = [
    RunReport(run_id="c32e0f50" + "a" * 24, tool="demo", node="node-a",
              status=RunStatus.SUCCEEDED, queued_at=AT, finished_at=AT, exit_code=0, spike=SPIKE),
    RunReport(run_id="9f1b2c3d" + "b" * 24, tool="demo", node="node-a", status=RunStatus.FAILED,
              queued_at=AT, finished_at=AT, exit_code=137,
              error="killed: memory limit of 16 MiB exceeded"),
]  # fmt: skip
TOOL = Tool(name="weather-station-collector", author="Jane Example <jane@example.org>",
            image="registry.example.org/research/weather-station-collector:2026.11",
            data_repo="https://git.example.org/research/weather-station-data.git",
            code_repo="https://git.example.org/research/weather-station-collector.git",
            artefact="csv", description="Hourly readings of the federation's weather stations",
            created_at=AT)  # fmt: skip


@pytest.fixture
def columns_80(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def shown(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines printed on stdout, trailing blanks dropped (rich pads cells)."""
    return [line.rstrip() for line in capsys.readouterr().out.splitlines()]


@pytest.mark.usefixtures("columns_80")
def test_the_runs_table_fits_80_columns_with_short_ids_and_compact_dates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.show_runs("demo", RUNS, as_json=False)

    assert shown(capsys) == [
        "Runs of demo",
        "run       status     queued            finished  exit  spike  gain %  error",
        "─" * 80,
        "c32e0f50  succeeded  2026-11-29 14:03  14:03:07  0     yes    +44.6",
        "9f1b2c3d  failed     2026-11-29 14:03  14:03:07  137                  killed:",
        "                                                                      memory",
        "                                                                      limit of",
        "                                                                      16 MiB",
        "                                                                      exceeded",
    ]


@pytest.mark.usefixtures("columns_80")
def test_the_tools_table_folds_long_fields_within_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.TOOLS.show([TOOL], as_json=False)

    assert shown(capsys) == [
        "Tools",
        "                                                                      descriptio",
        "name                       author     image      data repo  artefact  n",
        "─" * 80,
        "weather-station-collector  Jane       registry.  https://g  csv       Hourly",
        "                           Example    example.o  it.exampl            readings",
        "                           <jane@exa  rg/resear  e.org/res            of the",
        "                           mple.org>  ch/weathe  earch/wea            federation",
        "                                      r-station  ther-stat            's weather",
        "                                      -collecto  ion-data.            stations",
        "                                      r:2026.11  git",
    ]


@pytest.mark.usefixtures("columns_80")
def test_notifications_members_and_schedules_fit_80_columns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    notification = Notification(tool="demo", node="node-a", run_id=RUNS[0].run_id,
                                control_value=146.00000000000003, baseline=101.0,
                                gain_pct=44.554455445544555, threshold_pct=20.0,
                                detected_at=AT)  # fmt: skip
    member = Member(node_id="node-a", hostname="host-a.example.org", version="0.9.0",
                    started_at=AT, last_seen=AT)  # fmt: skip

    render.show_notifications([("/mao/notifications/x", notification)], as_json=False)
    render.MEMBERS.show([member], as_json=False)

    lines = shown(capsys)
    assert all(len(line) <= 80 for line in lines), lines
    assert "2026-11-29 14:03  demo  node-a  146.0  101.0     +44.6   c32e0f50" in lines
    member_line = next(line for line in lines if line.startswith("node-a"))
    assert member_line.split() == [
        "node-a", "host-a.example.org", "0.9.0", "2026-11-29", "14:03",
        *render.age(AT).split(), "?", "-",
    ]  # fmt: skip


@pytest.mark.usefixtures("columns_80")
def test_the_schedule_table_fits_80_columns_with_names_and_times_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fired = ScheduleInfo(tool="weather-station", key="mao:beat:tool:weather-station",
                         state="active", schedule="cron 0 6 * * 1-5 Europe/Zurich",
                         explained="At 06:00, Monday through Friday", tz="Europe/Zurich",
                         next_run_at=AT, last_fired_at=AT, last_run_id=RUNS[0].run_id,
                         last_result="succeeded (spike)")  # fmt: skip
    broken = ScheduleInfo(tool="broken", key="mao:beat:tool:broken", state="invalid",
                          error="not JSON")  # fmt: skip

    render.SCHEDULES.show([fired, broken], as_json=False)

    lines = shown(capsys)
    assert all(len(line) <= 80 for line in lines), lines
    row = next(line for line in lines if line.startswith("weather-station"))
    assert "active" in row
    assert row.count("2026-11-29 14:03") == 2
    assert any(line.split()[:2] == ["broken", "invalid"] for line in lines), lines


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.10000000000000009, "0.1"), (101.0, "101.0"), (146.00000000000003, "146.0"),
     (1234567.891, "1234567.891"), (None, "n/a")],
)  # fmt: skip
def test_numbers_are_rounded_for_display(value: float | None, text: str) -> None:
    assert render.number(value) == text


def test_a_report_shows_the_difference_rounded_and_json_keeps_it_whole(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render.show_report(RUNS[0], as_json=False)
    lines = capsys.readouterr().out
    render.show_report(RUNS[0], as_json=True)

    assert "difference 0.1\n" in lines
    assert json.loads(capsys.readouterr().out)["spike"]["difference"] == 0.10000000000000009


def test_every_listing_has_one_json_shape_with_its_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    skipped = InvalidRecord("mao:run:x", "not a valid run record")

    render.show_runs("demo", RUNS[:1], as_json=True, warnings=[skipped])
    render.show_notifications([], as_json=True)

    first, second = capsys.readouterr().out.split("\n}\n", 1)
    runs = json.loads(first + "\n}")
    assert set(runs) == {"items", "warnings"}
    assert [r["run_id"] for r in runs["items"]] == [RUNS[0].run_id]
    assert runs["warnings"] == [{"key": "mao:run:x", "reason": "not a valid run record"}]
    assert json.loads(second) == {"items": [], "warnings": []}


def test_errors_under_json_are_json_objects_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    render.error("run 'x' is not known on this node", kind="not_found", as_json=True)
    render.error("plain\x1b[2J", kind="not_found")

    err = capsys.readouterr().err.splitlines()
    assert json.loads(err[0]) == {
        "error": {"kind": "not_found", "message": "run 'x' is not known on this node"}
    }
    assert err[1] == "error: plain\\x1b[2J"


def test_the_detail_view_shows_every_field_of_the_model() -> None:
    lines = render.detail_lines(TOOL)

    assert [line.split()[0] for line in lines] == list(Tool.model_fields)
    assert "code_repo" in lines[5]
    assert lines[5].endswith("https://git.example.org/research/weather-station-collector.git")
    assert lines[[f for f in Tool.model_fields].index("network")].split() == ["network", "-"]


@pytest.mark.parametrize("group", [[], ["tool"], ["run"], ["schedule"], ["dataset"]])
def test_help_summaries_are_never_cut(group: list[str]) -> None:
    result = CliRunner().invoke(cli.main, [*group, "--help"], env={"COLUMNS": "80"})

    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:\n", 1)[1]
    assert "..." not in commands
    assert all(len(line) <= 80 for line in result.output.splitlines())


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "_maoctl_completion()"), ("zsh", "#compdef maoctl"), ("fish", "complete")],
)
def test_completion_prints_clicks_script_for_the_shell(shell: str, marker: str) -> None:
    result = CliRunner().invoke(cli.main, ["completion", shell])

    assert result.exit_code == 0, result.output
    assert marker in result.output
    assert "_MAOCTL_COMPLETE" in result.output


def test_the_completion_script_completes_through_clicks_own_mechanism() -> None:
    env = {"_MAOCTL_COMPLETE": "bash_complete", "COMP_WORDS": "maoctl ru", "COMP_CWORD": "1"}

    result = CliRunner().invoke(cli.main, [], prog_name="maoctl", env=env)

    assert result.output.split() == ["plain,run"]


def test_completion_refuses_another_shell() -> None:
    result = CliRunner().invoke(cli.main, ["completion", "tcsh"])

    assert result.exit_code == 2
