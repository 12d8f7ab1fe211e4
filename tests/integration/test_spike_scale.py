"""Spike detection at scale: 100,000 control files give the verdict of the small case, and the
run record stays small (issue 14). The timing is in bench/spike_scan.py, not here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mao_celery.models import ControlMarker, RunReport, SpikeResult
from mao_celery.spike import control_marker, detect_spike

pytestmark = pytest.mark.integration

SCALE = 100_000
RECORD_MAX_BYTES = 20_000
# the newest files: one invalid among them, the latest written by the run
NEWEST = {str(SCALE - 4): "100", str(SCALE - 3): "abc", str(SCALE - 2): "102"}
RUN_WRITES = {str(SCALE - 1): "146\n"}


def write_controls(directory: Path, contents: dict[str, str]) -> None:
    """Write `control-<value>.csv` files straight to disk (no Path objects: 100,000 of them)."""
    for value, content in contents.items():
        fd = os.open(directory / f"control-{value}.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def run_detection(directory: Path, older: dict[str, str]) -> tuple[ControlMarker, SpikeResult]:
    """What a run does: the marker before the tool, the tool's new file, then detection."""
    write_controls(directory, older | NEWEST)
    before = control_marker(directory)
    write_controls(directory, RUN_WRITES)
    return before, detect_spike(directory, window=2, threshold_pct=20, before=before)


def verdict(result: SpikeResult) -> tuple[object, ...]:
    return (
        result.files,
        result.values,
        result.invalid,
        result.new_files,
        result.new_file_count,
        result.baseline,
        result.gain_pct,
        result.spike,
        result.reason,
        result.compliance_warning,
    )


def test_100000_control_files_give_the_small_verdict_in_a_small_record(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    older = {str(value): str(90 + value % 7) for value in range(SCALE - len(NEWEST) - 1)}
    _, small = run_detection(tmp_path_factory.mktemp("small"), {})
    before, large = run_detection(tmp_path_factory.mktemp("large"), older)

    assert verdict(large) == verdict(small)
    assert (large.spike, large.new_files, large.new_file_count) == (
        True,
        [f"control-{SCALE - 1}.csv"],
        1,
    )
    assert (small.control_files, large.control_files) == (len(NEWEST) + 1, SCALE)
    report = RunReport(
        run_id="scale",
        tool="scale",
        node="node-a",
        control_marker=before,
        spike=large,
    )
    assert len(report.model_dump_json()) < RECORD_MAX_BYTES
