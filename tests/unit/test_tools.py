"""Unit tests of the service layer's pure parts (mao_celery/tools.py): following a run."""

from __future__ import annotations

from collections.abc import Callable

from mao_celery.exceptions import NotFound
from mao_celery.models import RunReport, RunStatus
from mao_celery.tools import follow_run


class FakeRuns:
    """A run store whose one run goes through `statuses`, one per read (the last one stays)."""

    def __init__(self, *statuses: RunStatus) -> None:
        self.statuses = list(statuses)
        self.reads = 0

    def get(self, run_id: str) -> RunReport:
        if run_id != "r1":
            raise NotFound(f"run {run_id!r} not found")
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return RunReport(run_id=run_id, tool="demo", node="a", status=status)

    def wait(
        self, run_id: str, until: Callable[[RunReport], bool], timeout_s: float, poll_s: float
    ) -> RunReport:
        report = self.get(run_id)
        while not until(report) and self.reads < len(self.statuses):
            report = self.get(run_id)
        return report


def test_a_run_is_followed_through_its_stages_to_its_end() -> None:
    runs = FakeRuns(RunStatus.QUEUED, RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED)

    seen = [r.status for r in follow_run(runs, "r1", timeout_s=None)]  # type: ignore[arg-type]

    assert seen == [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED]


def test_a_run_that_ended_already_is_reported_once() -> None:
    runs = FakeRuns(RunStatus.FAILED)

    seen = [r.status for r in follow_run(runs, "r1", timeout_s=None)]  # type: ignore[arg-type]

    assert seen == [RunStatus.FAILED]


def test_following_stops_at_the_timeout_with_the_run_still_under_way() -> None:
    runs = FakeRuns(RunStatus.RUNNING)

    seen = list(follow_run(runs, "r1", timeout_s=1e-9))  # type: ignore[arg-type]

    assert [r.status for r in seen] == [RunStatus.RUNNING]
