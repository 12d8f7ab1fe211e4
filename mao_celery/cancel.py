"""Cancelling a run: `maoctl run cancel RUN_ID`, and a Celery revoke of one of its tasks (e.g.
from Flower), which ends the same way through Celery's `task_revoked` signal (tasks.py).

The run's record is marked cancelled first (atomically, unless it has ended: `RunStore.cancel`),
which releases the tool's lock at once; then its container, if it has one, is stopped (SIGTERM,
SIGKILL after a grace) and removed. Whatever is still under way for the run stops there: a step
that starts finds the run ended and does nothing, a step whose container was stopped keeps the
cancelled record (a cancelled record is never overwritten), the recovery never resumes it, and a
container step that was creating the container at that moment stops it as soon as it runs
(`containers.run_container`'s `cancelled`).
"""

from __future__ import annotations

from dataclasses import dataclass

from mao_celery import containers
from mao_celery.models import RunReport, RunStatus
from mao_celery.node import Node


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: the run's report, whether this call cancelled it (False: it had
    ended already, `report.status` says how), whether a container was stopped and removed."""

    report: RunReport
    cancelled: bool
    container_removed: bool


def cancel_run(
    ctx: Node, run_id: str, by: str, grace_s: float = containers.CANCEL_STOP_S
) -> Cancelled:
    """Cancel run `run_id` on behalf of `by` (who asks, recorded in the report): mark it
    cancelled unless it has ended, which frees its tool; then stop its container (SIGTERM,
    SIGKILL after `grace_s` seconds) and remove it. Idempotent: a run already cancelled has its
    container removed if one is left; any other ended run is left as it is.

    Raises:
        NotFound: no such run.
        InvalidState: its record cannot be read.
        ServiceUnavailable: Redis or the Docker daemon did not answer.
    """
    report, cancelled = ctx.runs.cancel(run_id, by)
    removed = False
    if report.status == RunStatus.CANCELLED:
        removed = containers.end_run_container(ctx.docker, run_id, grace_s)
    return Cancelled(report, cancelled, removed)
