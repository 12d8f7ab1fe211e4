"""How long spike detection takes on a data directory of 100,000 control files, and how large
the run record it gives is (issue 14: < 0.3 s, record small).

Writes the files in a temporary directory, takes the marker a run takes before its container
(`control_marker`), adds the run's file, then times `detect_spike` (median of N) and prints it
next to the target, with the marker's time and the JSON size of a run record holding both.
Usage:

    .venv/bin/python bench/spike_scan.py [--files N] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mao_celery.models import RunReport  # noqa: E402
from mao_celery.spike import control_marker, detect_spike  # noqa: E402

TARGET_S = 0.3


def write_controls(directory: Path, count: int) -> None:
    """`control-0.csv` ... `control-<count - 1>.csv`, values 100 to 106."""
    for value in range(count):
        fd = os.open(directory / f"control-{value}.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, b"%d\n" % (100 + value % 7))
        finally:
            os.close(fd)


def median_s(runs: int, call: object) -> float:
    """The median wall time of `runs` calls of `call`, in seconds."""
    assert callable(call)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Parse the arguments, build the directory, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        write_controls(directory, args.files - 1)
        before = control_marker(directory)
        (directory / f"control-{args.files - 1}.csv").write_text("146\n")
        marker_s = median_s(args.runs, lambda: control_marker(directory))
        detect_s = median_s(
            args.runs, lambda: detect_spike(directory, window=2, threshold_pct=20, before=before)
        )
        result = detect_spike(directory, window=2, threshold_pct=20, before=before)
    report = RunReport(
        run_id="bench", tool="bench", node="bench", control_marker=before, spike=result
    )
    print(f"control files        {args.files}  (median of {args.runs} runs)")
    print(f"detect_spike         {detect_s:.3f} s   target < {TARGET_S} s")
    print(f"control_marker       {marker_s:.3f} s   (prepare step)")
    print(f"run record           {len(report.model_dump_json())} bytes   target < 20000")
    print(
        f"verdict              spike={result.spike}  {result.reason}  new={result.new_file_count}"
    )


if __name__ == "__main__":
    main()
