"""The Celery tasks of a tool run, and the chain that makes one (design.md §4).

A run is `prepare_dataset | run_container | detect_spike | publish_notification`. Each task
takes the run's report (a `RunReport` dumped to JSON), does its part and returns it. A step that
fails marks the report failed; the steps after it pass a failed report on untouched, so the chain
ends, the report says why, and the tool's lock is released. The one exception is a Redis that
stays unreachable through a step's retries: nothing can be recorded then, and the tool's lock
expires after `enqueue.lock_ttl_s`.

Every step is idempotent on the run id: a task delivered again (its worker died, or the broker's
visibility timeout passed) finds its work recorded in the run's stored report and returns that,
and the container step adopts the run's container instead of starting a second one.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import docker
from celery import Task
from celery.signals import worker_shutdown

from mao_celery import containers, datasets, members, spike
from mao_celery.celery_app import app, settings
from mao_celery.enqueue import (
    DETECT_SPIKE,
    PREPARE_DATASET,
    PUBLISH_NOTIFICATION,
    RUN_CONTAINER,
    lock_ttl_s,
    start_run,
)
from mao_celery.exceptions import AlreadyRunning, MaoError, NotFound, ServiceUnavailable
from mao_celery.models import TERMINAL_STATUSES, Notification, RunReport, RunStatus, utcnow
from mao_celery.registry import Registry, connect
from mao_celery.runs import RunStore
from mao_celery.settings import Settings

log = logging.getLogger(__name__)

STEP_RETRIES = 5
"""Retries of a step whose service (etcd, Docker, Redis) did not answer, 2, 4, 8, ... s apart."""

ADOPTION_WAIT_S = 60.0
"""How long a twin task waits for the outcome recorded by the task whose container it adopted."""


@dataclass
class Node:
    """This worker process's clients, built on first use (after the pool has forked)."""

    settings: Settings

    @cached_property
    def registry(self) -> Registry:
        return connect(self.settings)

    @cached_property
    def runs(self) -> RunStore:
        return RunStore.from_url(self.settings.redis_url, self.settings.run_history)

    @cached_property
    def docker(self) -> docker.DockerClient:
        return containers.connect()


@functools.cache
def node() -> Node:
    """The clients of this process (one set per worker process)."""
    return Node(settings)


# ---- the steps -------------------------------------------------------------------------------

Work = Callable[[Node, RunReport], RunReport]


def step(task: Task, state: dict[str, Any], status: RunStatus, work: Work) -> dict[str, Any]:
    """Run one step of a run: skip it when the run has failed or the step is already done,
    record the new status, do `work`, record the result.

    A service that does not answer is retried (Celery retry, 2, 4, 8, ... s apart) up to
    `STEP_RETRIES` times (the steps' `max_retries`), then fails the run; any other error fails
    the run at once.
    """
    report = RunReport.model_validate(state)
    if report.status in TERMINAL_STATUSES:
        return state
    ctx = node()
    try:
        stored = ctx.runs.get(report.run_id)
        if task.name in stored.steps_done or stored.status in TERMINAL_STATUSES:
            return stored.model_dump(mode="json")
        report.status = status
        ctx.runs.save(report)
        report = work(ctx, report)
    except ServiceUnavailable as e:
        if task.request.retries < STEP_RETRIES:
            raise task.retry(exc=e, countdown=2 ** (task.request.retries + 1)) from e
        report = report.failed(str(e))
    except MaoError as e:
        report = report.failed(str(e))
    except Exception as e:
        log.exception("run %s: step %s crashed", report.run_id, task.name)
        report = report.failed(f"internal error in {task.name}: {type(e).__name__}: {e}")
    if task.name not in report.steps_done:
        report.steps_done.append(task.name)
    ctx.runs.save(report)
    return report.model_dump(mode="json")


def prepare(ctx: Node, report: RunReport) -> RunReport:
    """Read the tool from the registry, clone its data repository on first use and hand the data
    directory to the tool's user."""
    tool = ctx.registry.tools.get(report.tool)
    conf = ctx.settings
    data_dir = datasets.local_path(conf.importdir, tool.name)
    datasets.ensure_clone(tool.data_repo, data_dir, credentials=conf.git_credentials_file)
    datasets.hand_over(data_dir, *conf.tool_uid_gid)
    return report.model_copy(
        update={
            "started_at": utcnow(),
            "timeout_s": conf.run_timeout_s,
            "image": tool.image,
            "data_dir": str(data_dir),
            "spike_window": tool.spike_window or conf.spike_window,
            "spike_threshold_pct": tool.spike_threshold_pct or conf.spike_threshold_pct,
            "control_files_before": spike.list_control_names(data_dir),
        }
    )


def tool_box(ctx: Node, name: str) -> tuple[str | None, bool]:
    """What tool `name` asks of its container: (network or None for the node's default,
    read-only root file system). A tool removed since its run was prepared gets the strictest
    box, (None, True), so that a redelivered run step still adopts and ends the run's container.

    Raises:
        ServiceUnavailable: etcd did not answer.
        InvalidInput: the tool's registry entry is not valid.
    """
    try:
        tool = ctx.registry.tools.get(name)
    except NotFound:
        return None, True
    return tool.network, tool.read_only_rootfs


def run(ctx: Node, report: RunReport) -> RunReport:
    """Run the tool's container on the data directory (or adopt the run's container), as the
    node's `tool_user`, on the network the tool asks for if the node allows it, with the root file
    system the tool asks for (see `tool_box`); the report records the user and network.

    Raises:
        RunFailed: the node does not allow the tool's network (no container is started).
    """
    conf = ctx.settings
    asked, read_only_rootfs = tool_box(ctx, report.tool)
    network = containers.granted_network(
        report.tool, asked, conf.tool_network, conf.tool_networks_allowed
    )
    report = report.model_copy(update={"user": conf.tool_user, "network": network})
    spec = containers.ContainerSpec(
        run_id=report.run_id,
        tool=report.tool,
        image=report.image,
        data_dir=Path(report.data_dir),
        user=report.user,
        timeout_s=report.timeout_s,
        memory_bytes=conf.run_memory_bytes,
        nano_cpus=int(conf.run_cpus * 1e9) if conf.run_cpus else None,
        network_mode=network,
        read_only_rootfs=read_only_rootfs,
    )
    try:
        outcome = containers.run_container(ctx.docker, spec)
    except containers.ContainerGone:
        return adopted_outcome(ctx, report)
    stored = ctx.runs.get(report.run_id)
    if stored.status == RunStatus.INTERRUPTED:
        return stored
    report = report.model_copy(
        update={
            "container_name": outcome.container_name,
            "exit_code": outcome.exit_code,
            "log_tail": outcome.log_tail,
        }
    )
    if outcome.timed_out:
        return report.failed(f"timeout: the tool ran longer than {report.timeout_s:g} s, killed")
    if outcome.exit_code != 0:
        return report.failed(f"the tool exited with code {outcome.exit_code}")
    return report


def adopted_outcome(ctx: Node, report: RunReport) -> RunReport:
    """The report recorded by the twin task that finished and removed this run's container."""

    def recorded(r: RunReport) -> bool:
        return run_container.name in r.steps_done or r.status in TERMINAL_STATUSES

    done = ctx.runs.wait(report.run_id, recorded, ADOPTION_WAIT_S)
    if not recorded(done):
        return report.failed("the run's container vanished before its outcome was recorded")
    return done


def detect(ctx: Node, report: RunReport) -> RunReport:
    """Read the control files and apply the spike rule; fail the run when the tool, though it
    exited 0, wrote no new control file (most often: it cannot write its data directory)."""
    result = spike.detect_spike(
        Path(report.data_dir),
        window=report.spike_window,
        threshold_pct=report.spike_threshold_pct,
        seen_before=report.control_files_before,
    )
    report = report.model_copy(update={"spike": result})
    if not result.new_files:
        return report.failed(
            f"the tool wrote no new control file in {containers.DATA_MOUNT} (it runs as uid:gid "
            f"{report.user}; the data directory must be writable by that user, and the image must "
            "write control-<value>.csv there)"
        )
    return report


def publish(ctx: Node, report: RunReport) -> RunReport:
    """On a spike, publish the run's notification to etcd (once per run); end the run."""
    result = report.spike
    key = None
    if result is not None and result.spike and result.latest is not None:
        notification = Notification(
            tool=report.tool,
            node=report.node,
            run_id=report.run_id,
            control_value=result.latest,
            baseline=result.baseline,
            gain_pct=result.gain_pct,
            threshold_pct=result.threshold_pct,
            detected_at=utcnow(),
        )
        key, _ = ctx.registry.publish_notification(
            notification,
            report.started_at or report.queued_at,
            ctx.settings.notification_retention_s,
        )
    return report.model_copy(
        update={"notification_key": key, "status": RunStatus.SUCCEEDED, "finished_at": utcnow()}
    )


@app.task(bind=True, name=PREPARE_DATASET, max_retries=STEP_RETRIES)
def prepare_dataset(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 1: the tool's data directory, cloned on first use."""
    return step(self, state, RunStatus.PREPARING, prepare)


@app.task(bind=True, name=RUN_CONTAINER, max_retries=STEP_RETRIES)
def run_container(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 2: the tool's container, run to its end or its timeout."""
    return step(self, state, RunStatus.RUNNING, run)


@app.task(bind=True, name=DETECT_SPIKE, max_retries=STEP_RETRIES)
def detect_spike(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 3: spike detection on the control files."""
    return step(self, state, RunStatus.DETECTING, detect)


@app.task(bind=True, name=PUBLISH_NOTIFICATION, max_retries=STEP_RETRIES)
def publish_notification(self: Task, state: dict[str, Any]) -> dict[str, Any]:
    """Step 4: the notification of a spike; the run ends."""
    return step(self, state, RunStatus.PUBLISHING, publish)


# ---- notifications ---------------------------------------------------------------------------

CURSOR_KEY = "notifications:cursor"


def log_new_notifications(registry: Registry, runs: RunStore) -> list[str]:
    """Log the notifications published since the last call and advance the cursor (the etcd
    revision last read, kept in this node's Redis). Returns the keys logged."""
    cursor = int(runs.get_value(CURSOR_KEY) or 0)
    found, invalid, revision = registry.notifications(after_revision=cursor)
    for key, n in found:
        gain = "undefined" if n.gain_pct is None else f"{n.gain_pct:+.1f}%"
        log.warning(
            "spike: tool %s on node %s: control value %s, baseline %s, gain %s (run %s, %s)",
            n.tool,
            n.node,
            n.control_value,
            n.baseline,
            gain,
            n.run_id,
            key,
        )
    for entry in invalid:
        log.error("skipped %s", entry.reason)
    runs.set_value(CURSOR_KEY, str(revision))
    return [key for key, _ in found]


@app.task(name="mao.listen_notifications")
def listen_notifications() -> list[str]:
    """Periodic: log the federation's new spike notifications (see `log_new_notifications`)."""
    ctx = node()
    return log_new_notifications(ctx.registry, ctx.runs)


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
    return members.heartbeat(ctx.registry, ctx.runs, ctx.settings.node_id).model_dump_json()


@worker_shutdown.connect
def leave_federation(**_: Any) -> None:
    """On a clean worker shutdown, remove this node's member record at once."""
    ctx = node()
    try:
        members.leave(ctx.registry, ctx.runs)
    except MaoError as e:
        log.warning("could not remove this node's member record: %s", e)
