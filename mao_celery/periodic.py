"""The node's periodic tasks (beat_schedule.py) and its scheduled tool runs (schedules.py):
the notification listener, the member heartbeat, the sweep of lost runs, and leaving the
federation on a clean worker shutdown.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_shutdown

from mao_celery import members
from mao_celery.celery_app import app
from mao_celery.enqueue import lock_ttl_s, start_run
from mao_celery.exceptions import AlreadyRunning, MaoError, NotFound
from mao_celery.node_state import NodeState
from mao_celery.registry import Registry
from mao_celery.tasks import node
from mao_celery.text import format_gain_pct

log = logging.getLogger(__name__)

# ---- notifications ---------------------------------------------------------------------------

CURSOR_KEY = "notifications:cursor"


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


@app.task(name="mao.fail_lost_runs")
def fail_lost_runs() -> list[str]:
    """Periodic: end the runs that nothing will end any more (see `RunStore.fail_lost`), once
    they are older than a tool lock's lifetime (`enqueue.lock_ttl_s`)."""
    ctx = node()
    lost = ctx.runs.fail_lost(lock_ttl_s(ctx.settings))
    if lost:
        log.warning("runs lost (worker and task gone), marked failed: %s", ", ".join(lost))
    return lost


# ---- schedules and membership ----------------------------------------------------------------


@app.task(bind=True, name="mao.scheduled_run")
def scheduled_run(self: Task, tool: str) -> str | None:
    """Periodic (one RedBeat entry per scheduled tool): start a run of `tool` as `tool run` does.

    The run id is this task's id, so a redelivered firing does not start a second run.
    Returns the run id, or None when the run was skipped (the tool is running or was removed).
    """
    ctx = node()
    run_id = str(self.request.id).replace("-", "")
    try:
        return start_run(
            app, tool, conf=ctx.settings, registry=ctx.registry, runs=ctx.runs, run_id=run_id
        ).run_id
    except (AlreadyRunning, NotFound) as e:
        log.warning("scheduled run of %s skipped: %s", tool, e)
        return None


@app.task(name="mao.heartbeat")
def heartbeat() -> str:
    """Periodic: refresh this node's member record in etcd (see `members.heartbeat`)."""
    ctx = node()
    return members.heartbeat(ctx.registry, ctx.state, ctx.settings.node_id).model_dump_json()


@worker_shutdown.connect
def leave_federation(**_: Any) -> None:
    """On a clean worker shutdown, remove this node's member record at once."""
    ctx = node()
    try:
        members.leave(ctx.registry, ctx.state)
    except MaoError as e:
        log.warning("could not remove this node's member record: %s", e)
