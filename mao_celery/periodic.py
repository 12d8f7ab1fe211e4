"""The node's periodic tasks (beat_schedule.py) and its scheduled tool runs (schedules.py):
the notification listener, the member heartbeat, the recovery of runs whose worker died (also
when a worker starts), and leaving the federation on a clean worker shutdown.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from celery.utils.time import get_exponential_backoff_interval

from mao_celery import members, recovery, worker_info
from mao_celery.celery_app import app
from mao_celery.enqueue import lock_ttl_s, start_run
from mao_celery.exceptions import AlreadyRunning, MaoError, NotFound, ServiceUnavailable
from mao_celery.models import RunReport
from mao_celery.node import Node
from mao_celery.node_state import CURSOR_KEY, NodeState
from mao_celery.registry import Registry
from mao_celery.schedules import TASK as SCHEDULED_RUN
from mao_celery.schedules import ScheduleStore
from mao_celery.tasks import node
from mao_celery.text import format_gain_pct

log = logging.getLogger(__name__)

RECOVER_RUNS = "mao.recover_runs"

# ---- notifications ---------------------------------------------------------------------------


def log_new_notifications(registry: Registry, state: NodeState) -> list[str]:
    """Log the notifications published since the last call and advance the cursor (the etcd
    revision last read, kept in the node's state). Returns the keys logged."""
    cursor = int(state.get(CURSOR_KEY) or 0)
    found, invalid, revision = registry.notifications(after_revision=cursor)
    for key, n in found:
        log.warning(
            "spike: tool %s on node %s: control value %s, baseline %s, gain %s (run %s, %s)",
            n.tool,
            n.node,
            n.control_value,
            n.baseline,
            format_gain_pct(n.gain_pct),
            n.run_id,
            key,
        )
    for entry in invalid:
        log.error("skipped %s", entry.reason)
    state.set(CURSOR_KEY, str(revision))
    return [key for key, _ in found]


@app.task(name="mao.listen_notifications")
def listen_notifications() -> list[str]:
    """Periodic: log the federation's new spike notifications (see `log_new_notifications`)."""
    ctx = node()
    return log_new_notifications(ctx.registry, ctx.state)


@app.task(name=RECOVER_RUNS)
def recover_runs() -> dict[str, list[str]]:
    """Periodic, and once when a worker starts: resume the runs whose worker process died, fail
    those that cannot be resumed or that nothing will end (see `recovery.recover`; a run is stale
    once older than a tool lock's lifetime, `enqueue.lock_ttl_s`). Returns the run ids by
    outcome and the keys of the records skipped.

    Raises:
        ServiceUnavailable: Redis, the broker or Docker did not answer (the next sweep retries).
    """
    ctx = node()
    done = recovery.recover(ctx, lock_ttl_s(ctx.settings))
    if done.lost or done.stale:
        log.warning("runs failed as lost: %s", ", ".join(done.lost + done.stale))
    return done.summary()


@worker_ready.connect
def publish_settings(sender: Any, **_: Any) -> None:
    """When a worker is ready, publish the settings it runs with in the node's Redis (for
    `maoctl config --effective`; see worker_info.py). A Redis outage only loses the entry."""
    conf = node().settings
    try:
        worker_info.publish(conf, str(sender.hostname))
    except ServiceUnavailable as e:
        log.warning("could not publish this worker's settings: %s", e)


@worker_shutdown.connect
def withdraw_settings(sender: Any, **_: Any) -> None:
    """On a clean worker shutdown, delete the settings it published."""
    try:
        worker_info.withdraw(node().settings, str(sender.hostname))
    except ServiceUnavailable as e:
        log.warning("could not delete this worker's published settings: %s", e)


@worker_ready.connect
def recover_on_start(sender: Any, **_: Any) -> None:
    """When a worker is ready, send `recover_runs` at once: the runs of a worker that was
    killed resume as soon as it is back, not at the next sweep."""
    sender.app.send_task(RECOVER_RUNS)


# ---- schedules and membership ----------------------------------------------------------------


SCHEDULED_RUN_RETRIES = 4
"""Retries of a fire whose run cannot be started because etcd or Redis does not answer."""
SCHEDULED_RETRY_BACKOFF_S, SCHEDULED_RETRY_BACKOFF_MAX_S = 2, 16
"""Celery's exponential backoff of those retries: 2, 4, 8, 16 s, so a fire is given up (and
recorded as a failed run) about 30 s after it."""


@app.task(bind=True, name=SCHEDULED_RUN, max_retries=SCHEDULED_RUN_RETRIES)
def scheduled_run(self: Task, tool: str) -> str | None:
    """Periodic (one RedBeat entry per scheduled tool): start a run of `tool` as `tool run` does.

    The run id is this task's id, so a redelivered or retried fire does not start a second run.
    The fire is noted on the schedule's entry (`ScheduleStore.record_fire`). While etcd or Redis
    does not answer, the fire is retried with backoff (`SCHEDULED_RUN_RETRIES`); then it is
    recorded as a failed run with the reason (or, with Redis away, logged as an error).
    Returns the run id, or None when the run was skipped (the tool is running or was removed)
    or could not be started.
    """
    ctx = node()
    run_id = str(self.request.id).replace("-", "")
    note = functools.partial(_note_fire, ctx.schedules, tool, run_id)
    try:
        note("starting")
        return start_run(
            app, tool, conf=ctx.settings, registry=ctx.registry, runs=ctx.runs, run_id=run_id
        ).run_id
    except (AlreadyRunning, NotFound) as e:
        log.warning("scheduled run of %s skipped: %s", tool, e)
        note(f"skipped: {e}")
        return None
    except ServiceUnavailable as e:
        attempts = self.request.retries + 1
        if self.request.retries < SCHEDULED_RUN_RETRIES:
            log.warning("scheduled run of %s not started (attempt %d): %s", tool, attempts, e)
            note(f"retrying: {e}")
            countdown = get_exponential_backoff_interval(
                SCHEDULED_RETRY_BACKOFF_S,
                attempts,
                SCHEDULED_RETRY_BACKOFF_MAX_S,
                full_jitter=False,
            )
            # A retry outlives the fire's `expires` (one period): the window is bounded by
            # the retries, and an expired retry would drop the fire without a trace.
            raise self.retry(exc=e, countdown=countdown, expires=None) from e
        _fail_fire(ctx, tool, run_id, f"scheduled run not started after {attempts} attempts: {e}")
        return None


def _note_fire(schedules: ScheduleStore, tool: str, run_id: str, outcome: str) -> None:
    """Note fire `run_id` on `tool`'s schedule; a Redis outage only loses the note."""
    try:
        schedules.record_fire(tool, run_id, outcome)
    except ServiceUnavailable as e:
        log.warning("could not note the scheduled run %s of %s: %s", run_id, tool, e)


def _fail_fire(ctx: Node, tool: str, run_id: str, reason: str) -> None:
    """Record fire `run_id` of `tool` as a failed run with `reason` (in `tool runs` and
    `schedule list`); log it as an error when even that is impossible."""
    report = RunReport(run_id=run_id, tool=tool, node=ctx.settings.node_id)
    try:
        ctx.runs.begin(report, lock_ttl_s(ctx.settings))
        ctx.runs.save(report.failed(reason))
    except AlreadyRunning as e:
        log.warning("scheduled run of %s skipped: %s", tool, e)
    except ServiceUnavailable as e:
        log.error("scheduled run %s of %s dropped: %s; not recorded: %s", run_id, tool, reason, e)
    else:
        log.error("scheduled run %s of %s failed: %s", run_id, tool, reason)


@app.task(name="mao.heartbeat")
def heartbeat() -> str:
    """Periodic: refresh this node's member record in etcd (see `members.heartbeat`)."""
    ctx = node()
    conf = ctx.settings
    member = members.heartbeat(ctx.registry, ctx.state, conf.node_id, conf.member_ttl_s)
    return member.model_dump_json()


@worker_shutdown.connect
def leave_federation(**_: Any) -> None:
    """On a clean worker shutdown, remove this node's member record at once."""
    ctx = node()
    try:
        members.leave(ctx.registry, ctx.state)
    except MaoError as e:
        log.warning("could not remove this node's member record: %s", e)
