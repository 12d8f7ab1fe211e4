"""The output of `tool history` and `tool update-data` (issue 10): the table at 80 columns, the
spike threshold band, the charts, the notes of an empty history, what an update changed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mao_celery import render
from mao_celery.dataplane import HistoryPoint
from mao_celery.exceptions import InvalidInput
from mao_celery.spike import evaluate
from mao_celery.tools import DataUpdate, ToolHistory

AT = datetime(2026, 11, 29, 14, 3, 7, tzinfo=UTC)
VALUES = [10.0, 11.0, 10.5, 30.0, 10.0]


def point(n: int, value: float, spike: bool | None) -> HistoryPoint:
    return HistoryPoint(commit=f"{n:x}" * 40, committed_at=AT + timedelta(minutes=n),
                        run_id=f"{n}" * 8 + "a" * 24, node="node-a", control_value=value,
                        spike=spike, gain_pct=None if spike is None else 5.0)  # fmt: skip


HISTORY = ToolHistory(
    tool="demo",
    points=[point(n, v, None if n < 2 else n == 3) for n, v in reversed(list(enumerate(VALUES)))],
    cloned=True,
    window=2,
    threshold_pct=20.0,
)


def test_the_history_table_fits_80_columns_newest_first_spikes_marked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")

    render.show_history(HISTORY, as_json=False)

    out = capsys.readouterr()
    assert [line.rstrip() for line in out.out.splitlines()] == [
        "Control values of demo (newest first)",
        "committed (UTC)   run       node    value  gain %  spike  commit",
        "─" * 70,
        "2026-11-29 14:07  44444444  node-a  10.0   +5.0    no     444444444444",
        "2026-11-29 14:06  33333333  node-a  30.0   +5.0    YES    333333333333",
        "2026-11-29 14:05  22222222  node-a  10.5   +5.0    no     222222222222",
        "2026-11-29 14:04  11111111  node-a  11.0           ?      111111111111",
        "2026-11-29 14:03  00000000  node-a  10.0           ?      000000000000",
    ]
    assert out.err == ""


@pytest.mark.parametrize(
    ("cloned", "expected"),
    [(False, "has no data clone on this node yet"), (True, "no run commit in its data history")],
)
def test_an_empty_history_is_explained_on_stderr(
    capsys: pytest.CaptureFixture[str], cloned: bool, expected: str
) -> None:
    empty = ToolHistory(tool="demo", points=[], cloned=cloned, window=2, threshold_pct=20.0)

    render.show_history(empty, as_json=True)

    out = capsys.readouterr()
    assert out.out == '{\n  "items": [],\n  "warnings": []\n}\n'
    assert expected in out.err


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(
    values=st.lists(finite, min_size=1, max_size=12),
    window=st.integers(1, 4),
    threshold=st.floats(0.5, 200),
)
def test_the_band_is_the_spike_rule(values: list[float], window: int, threshold: float) -> None:
    bands = render.history_bands(values, window, threshold)

    assert len(bands) == len(values)
    assert all(band is None for band in bands[:window])
    for end, band in enumerate(bands[window:], start=window + 1):
        baseline, _, gain, spike, _ = evaluate(values[:end], window=window,
                                               threshold_pct=threshold)  # fmt: skip
        assert band is not None
        assert band.baseline == baseline
        assert band.low <= band.baseline <= band.high
        if gain is not None and abs(abs(gain) - threshold) > 1e-6:  # not on the edge
            assert spike == (not band.low <= values[end - 1] <= band.high)


def test_the_terminal_chart_draws_the_values_spikes_and_band() -> None:
    drawn = click.unstyle(render.plot_history(render.Chart.of(HISTORY), width=80))

    lines = drawn.splitlines()
    assert len(lines) == 20
    assert "Control values of demo (band: baseline of 2 ± 20 %)" in lines[0]
    assert "run (1 = 2026-11-29 14:03 UTC, 5 = 2026-11-29 14:07 UTC)" in drawn
    assert "x spike" in drawn
    assert "· band" in drawn


def test_the_png_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"

    render.write_history_png(render.Chart.of(HISTORY), path)

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_png_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails

    with pytest.raises(InvalidInput, match=r"^--png needs matplotlib: pip install .*\[charts\]"):
        render.write_history_png(render.Chart.of(HISTORY), tmp_path / "chart.png")

    assert not (tmp_path / "chart.png").exists()


def test_a_png_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot write .*/missing/chart\.png"):
        render.write_history_png(render.Chart.of(HISTORY), tmp_path / "missing" / "chart.png")


PATH = Path("/var/mao/import/demo")


@pytest.mark.parametrize(
    ("done", "expected"),
    [
        (DataUpdate(PATH, None, "a" * 40, cloned=True, url_set=False),
         [f"tool demo: data cloned into {PATH} at {'a' * 12}"]),
        (DataUpdate(PATH, "a" * 40, "a" * 40, cloned=False, url_set=True),
         [f"tool demo: origin of {PATH} set to the registered URL",
          f"tool demo: data in {PATH} already up to date at {'a' * 12}"]),
        (DataUpdate(PATH, "a" * 40, "b" * 40, cloned=False, url_set=False, commits=2, added=1,
                    changed=3, deleted=4),
         [f"tool demo: data in {PATH} updated {'a' * 12} -> {'b' * 12}: 2 new commit(s); "
          "files: 1 added, 3 changed, 4 deleted"]),
    ],
    ids=["cloned", "set-url, up to date", "updated"],
)  # fmt: skip
def test_an_update_says_the_new_head_and_what_changed(
    done: DataUpdate, expected: list[str]
) -> None:
    assert render.data_update_lines("demo", done) == expected
