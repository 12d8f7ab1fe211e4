"""The Celery tasks of a tool run, and the chain that makes one (design.md §4).

A run is `prepare_dataset | run_container | detect_spike | publish_notification`. Each task
takes the run's report (a `RunReport` dumped to JSON), does its part and returns it. A step that
fails marks the report failed; the steps after it pass a failed report on untouched, so the chain
ends, the report says why, and the tool's lock is released. The one exception is a Redis that
stays unreachable through a step's retries: nothing can be recorded then, and the tool's lock
expires after `enqueue.lock_ttl_s`.

All steps of a run are taken on one worker machine: each step sends the rest of its chain to
its machine's queues (`route_rest`: the container step to its containers queue, taken by the
machine's thread-pool worker, the others to its host queue), and a step's retries go to its own
queue there. The first step is sent to the node's shared queue, so the machine that takes it
binds the run (celery_app.py).

A container worker runs its steps in threads of one process: they share that process's `node()`
(built once, under a lock). Its clients are safe to share: redis-py's connection pool and gRPC's
channel (etcd) are thread-safe, and the Docker client's HTTP connection pool is sized for
`MAO_CONTAINER_SLOTS` steps each holding two connections (its wait and its log stream; node.py).

Every step is idempotent on the run id: a task delivered again (its worker died, or the broker's
visibility timeout passed) finds its work recorded in the run's stored report and returns that,
and the container step adopts the run's container instead of starting a second one.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import task_revoked
from celery.utils.time import get_exponential_backoff_interval

from mao_celery import cancel, run_steps
from mao_celery.celery_app import app
from mao_celery.enqueue import (
    DETECT_SPIKE,
    PREPARE_DATASET,
    PUBLISH_NOTIFICATION,
    RUN_CONTAINER,
    RUN_STEPS,
    step_queue,
)
from mao_celery.exceptions import MaoError, ServiceUnavailable
from mao_celery.models import TERMINAL_STATUSES, RunReport, RunStatus, StepTaker
from mao_celery.node import Node
from mao_celery.settings import load_settings

log = logging.getLogger(__name__)

STEP_RETRIES = 5
"""Retries of a step whose service (etcd, Docker, Redis) did not answer, 2, 4, 8, ... s apart."""
RETRY_BACKOFF_S = 1
RETRY_BACKOFF_MAX_S = 60
"""Celery's exponential backoff of those retries: 1 x 2^n seconds (n = 1, 2, ...), at most 60."""


_NODE_LOCK = threading.Lock()


def node() -> Node:
    """The clients of this worker process, from the node's settings; built on first use, i.e.
    after the pool has forked (one set per worker process, shared by its threads).

    Raises:
        InvalidInput: a setting is invalid.
    """
    with _NODE_LOCK:
        return _node()


@functools.cache
def _node() -> Node:
    return Node(load_settings())


# ---- the steps -------------------------------------------------------------------------------


def taker(task: Task, host: str) -> StepTaker:
    """The worker process running `task` now: its worker's host name, its machine `host`
    (`MAO_WORKER_HOST`), its pid, the task."""
    return StepTaker(
        hostname=str(task.request.hostname),
        host=host,
        pid=os.getpid(),
        task_id=task.request.id,
        step=task.name,
    )


def route_rest(task: Task, host: str) -> None:
    """Send the steps after `task` in its chain to their queues on worker machine `host`
    (`enqueue.step_queue`). Celery keeps them in `task.request.chain` (signature dicts, the next
    step last) and, when the task returns, sends the next one with the rest of the list: an
    option set on each is kept down the chain."""
    for signature in task.request.chain or ():
        queue = step_queue(str(signature["task"]), host)
        signature.setdefault("options", {})["queue"] = queue


Work = Callable[[Node, RunReport], RunReport]


def step(task: Task, state: dict[str, Any], status: RunStatus, work: Work) -> dict[str, Any]:
    """Run one step of a run on this worker machine, and route the rest of the chain to its
    queues (`route_rest`): skip it when the run has failed or the step is already done,
    record the new status and the worker process taking the step (recovery.py resumes the step
    if that process dies), do `work`, record the result. A task whose step recovery has resumed
    under another task (its message delivered again: a late redelivery, or a requeue after its
    pool process died) is ignored (`celery.exceptions.Ignore`: acknowledged, its chain ends).
    A run found cancelled (`maoctl run cancel`, a Celery revoke), before the step or after it,
    stays so: the step does nothing, or its result is not recorded, and the cancelled report is
    passed on.

    A service that does not answer is retried on this machine (a Celery retry sent to its host
    queue, 2, 4, 8, ... s apart) up to `STEP_RETRIES` times (the steps' `max_retries`), then
    fails the run; any other error fails the run at once. (A retry goes to the step's own
    queue on this machine: the containers queue for the container step.)
    """
    report = RunReport.model_validate(state)
    if report.status in TERMINAL_STATUSES:
        return state
    ctx = node()
    queue = step_queue(task.name, ctx.settings.worker_host)
    route_rest(task, ctx.settings.worker_host)
    try:
        stored = ctx.runs.get(report.run_id)
        if task.name in stored.steps_done or stored.status in TERMINAL_STATUSES:
            return stored.model_dump(mode="json")
        if ctx.runs.was_resumed(task.request.id):
            log.warning("run %s: %s was resumed by another task; ignored", report.run_id, task.name)
            raise Ignore()  # the resumed task's chain carries the run on; this one ends here
        took = taker(task, ctx.settings.worker_host)
        report = report.updated(
            status=status, taken_by=took, takers=[*report.takers, took], host_lost_at=None
        )
        if not ctx.runs.save(report):  # cancelled since it was read
            return ctx.runs.get(report.run_id).model_dump(mode="json")
        report = work(ctx, report)
    except ServiceUnavailable as e:
        if task.request.retries < STEP_RETRIES:
            countdown = get_exponential_backoff_interval(
                RETRY_BACKOFF_S, task.request.retries + 1, RETRY_BACKOFF_MAX_S, full_jitter=False
            )
            raise task.retry(exc=e, countdown=countdown, queue=queue) from e
        report = report.failed(str(e))
    except MaoError as e:
        report = report.failed(str(e))
    except Ignore:
        raise
    except Exception as e:
        log.exception("run %s: step %s crashed", report.run_id, task.name)
        report = report.failed(f"internal error in {task.name}: {type(e).__name__}: {e}")
    if task.name not in report.steps_done:
        report = report.updated(steps_done=[*report.steps_done, task.name])
    if not ctx.runs.save(report):  # cancelled while the step worked: that is the outcome
        report = ctx.runs.get(report.run_id)
    return report.model_dump(mode="json")


@app.task(bind=True, name=PREPARE_DATASET, max_retries=STEP_RETRIES)
def prepare_dataset(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 1: the tool's data directory, cloned on first use."""
    return step(self, state, RunStatus.PREPARING, run_steps.prepare)


@app.task(bind=True, name=RUN_CONTAINER, max_retries=STEP_RETRIES)
def run_container(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 2: the tool's container, run to its end or its timeout."""
    return step(self, state, RunStatus.RUNNING, run_steps.run)


@app.task(bind=True, name=DETECT_SPIKE, max_retries=STEP_RETRIES)
def detect_spike(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 3: spike detection on the control files."""
    return step(self, state, RunStatus.DETECTING, run_steps.detect)


@app.task(bind=True, name=PUBLISH_NOTIFICATION, max_retries=STEP_RETRIES)
def publish_notification(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 4: the notification of a spike; the run ends."""
    return step(self, state, RunStatus.PUBLISHING, run_steps.publish)


# ---- cancel through Celery -------------------------------------------------------------------


@task_revoked.connect
def cancel_revoked_run(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    """A step of a run revoked through Celery (`control.revoke`, e.g. from Flower; with
    `terminate` its pool process is killed): cancel the run as `maoctl run cancel` does (its
    tool freed, its container stopped and removed), in a thread of the worker's main process
    (stopping a container takes up to `containers.CANCEL_STOP_S` seconds). Other tasks are
    left alone."""
    name = getattr(sender, "name", None)
    args = getattr(request, "args", None) or ()
    if name not in RUN_STEPS or not args or not isinstance(args[0], dict):
        return
    run_id = str(args[0].get("run_id", ""))
    how = ", terminated" if terminated else ", expired" if expired else ""
    by = f"celery revoke of {name} (task {getattr(request, 'id', '?')}{how})"
    threading.Thread(target=_cancel, args=(run_id, by), daemon=True, name="mao-cancel").start()


def _cancel(run_id: str, by: str) -> None:
    """Cancel run `run_id` for `by` with clients of its own (the worker's main process keeps
    none: its pool processes are forked from it); failures are logged."""
    try:
        with Node(load_settings()) as ctx:
            done = cancel.cancel_run(ctx, run_id, by)
    except MaoError as e:
        log.error("run %s: revoked, but could not be cancelled: %s", run_id, e)
        return
    if done.cancelled:
        log.warning("run %s cancelled by %s", run_id, by)
