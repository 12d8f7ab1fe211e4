"""Recovery of runs whose worker died: in seconds, not after the broker's visibility timeout.

Each step records the worker process that took it (`RunReport.taken_by`: the Celery worker's
host name, the pool process's pid, the task id). When a worker starts (`worker_ready`) and every
`beat_schedule.RECOVERY_INTERVAL_S` seconds, `recover` asks the live workers (Celery's
`inspect().stats()` for their pool processes and `inspect().query_task()` for the tasks they
hold) whether the process of each run's step is still there. A step whose process is gone is
resumed once (`RunStore.claim_resume`): the rest of the run's chain is sent again from that step.
Steps are idempotent on the run id, so the resumed container step adopts the run's container by
name, and the old message, redelivered by Redis after the visibility timeout, finds the run
ended and does nothing. A container step whose container is gone cannot be resumed (its outcome
was lost with the worker): the run is failed as "lost" with its last known state.

A run is resumed on its machine (`RunReport.host`): its steps use that machine's importdir and
Docker daemon; a resumed container step goes to that machine's containers queue, so a dead
container worker's (threads) steps are all resumed there, each adopting its run's container.
The sweep resumes the runs of its own machine; those of another machine with a
live worker (one consuming its host queue, `inspect().active_queues()`) get a sweep sent to that
host queue. A run whose machine has no live worker waits for it: the first sweep that finds it so
records when (`RunReport.host_lost_at`), and once the machine has been without a live worker for
`MAO_HOST_LOST_AFTER_S` seconds the run is failed as lost, naming the machine (its container, if
any, is left on that machine's Docker daemon).

Runs that nothing will end (queued more than a tool lock's lifetime ago, e.g. their message was
lost) are failed as "lost" too. Records that cannot be read are logged and skipped.

A cancelled run has ended: it is never resumed nor failed. A run cancelled while a sweep looks
at it is read again before it is resumed, and a cancelled record is never overwritten
(`RunStore.save`), so a sweep racing a cancel leaves it cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import docker
import requests
from celery import Celery

from mao_celery import containers
from mao_celery.celery_app import host_of_queue, host_queue
from mao_celery.enqueue import RUN_CONTAINER, run_chain
from mao_celery.exceptions import ServiceUnavailable
from mao_celery.models import RunReport, StepTaker, utcnow
from mao_celery.node import Node
from mao_celery.records import InvalidRecord
from mao_celery.runs import log_invalid

log = logging.getLogger(__name__)

INSPECT_TIMEOUT_S = 2.0
"""How long the workers' answers to `inspect` are awaited, in seconds."""


@dataclass(frozen=True)
class LiveWorkers:
    """What the workers that answered said: each one's processes (main and pool pids) by host
    name, and the ids of the tasks they hold (active, reserved or waiting for a retry)."""

    processes: dict[str, frozenset[int]]
    tasks: frozenset[str]

    def alive(self, taker: StepTaker) -> bool:
        """Whether the process that took a step may still be doing it: a worker holds its task,
        or the worker it belongs to answered and still has that process."""
        if taker.task_id in self.tasks:
            return True
        return taker.pid in self.processes.get(taker.hostname, frozenset())


def live_workers(app: Celery, task_ids: Sequence[str], timeout_s: float) -> LiveWorkers:
    """Ask every worker (a broadcast, answers awaited `timeout_s` seconds) for its processes and
    which of `task_ids` it holds."""
    inspector = app.control.inspect(timeout=timeout_s)
    stats: dict[str, Any] = inspector.stats() or {}
    held: dict[str, dict[str, Any]] = inspector.query_task(*task_ids) or {}
    processes = {host: _pids(info) for host, info in stats.items()}
    tasks = frozenset(task_id for found in held.values() for task_id in found)
    return LiveWorkers(processes, tasks)


def live_hosts(app: Celery, timeout_s: float) -> frozenset[str]:
    """The worker machines with a live worker: those whose host queue a worker consumes, by
    the answers to a broadcast (`inspect().active_queues()`, awaited `timeout_s` seconds)."""
    answers: dict[str, list[dict[str, Any]]] = (
        app.control.inspect(timeout=timeout_s).active_queues() or {}
    )
    names = (str(queue.get("name", "")) for queues in answers.values() for queue in queues)
    return frozenset(host for name in names if (host := host_of_queue(name)) is not None)


def _pids(info: dict[str, Any]) -> frozenset[int]:
    """The main process and pool processes of a worker's `stats` answer."""
    pool = info.get("pool") or {}
    return frozenset([*pool.get("processes", []), info.get("pid", 0)])


@dataclass
class Recovery:
    """What `recover` did: run ids resumed, failed as lost (worker and container gone), failed
    as stale (not ended a tool lock's lifetime after being queued); records skipped."""

    resumed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    invalid: list[InvalidRecord] = field(default_factory=list)

    def summary(self) -> dict[str, list[str]]:
        """The run ids by outcome and the keys skipped, as JSON data (the task's result)."""
        return {
            "resumed": self.resumed,
            "lost": self.lost,
            "stale": self.stale,
            "invalid": [record.key for record in self.invalid],
        }


def recover(ctx: Node, stale_after_s: float, timeout_s: float = INSPECT_TIMEOUT_S) -> Recovery:
    """Resume or end this node's unfinished runs whose worker process died (on their machine,
    or failed as lost once it has had no live worker for `MAO_HOST_LOST_AFTER_S` seconds), and
    fail those queued more than `stale_after_s` seconds ago (see the module's description).

    Raises:
        ServiceUnavailable: Redis or the broker did not answer.
    """
    reports, invalid = ctx.runs.unfinished()
    log_invalid(invalid)
    done = Recovery(invalid=invalid)
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    fresh = [report for report in reports if not _fail_stale(ctx, report, cutoff, done)]
    held = [report for report in fresh if report.held_step is not None]
    if not held:
        return done
    workers = live_workers(ctx.app, [_taker(r).task_id for r in held], timeout_s)
    dead = orphans(held, workers)
    if not dead:
        return done
    hosts = live_hosts(ctx.app, timeout_s)
    here = ctx.settings.worker_host
    elsewhere: set[str] = set()
    for report in dead:
        host = report.host or here  # "": a step recorded before runs were bound to a machine
        if host not in hosts:
            _wait_for_host(ctx, report, host, done)
        elif host == here:
            _resume_or_fail(ctx, report, host, done)
        elif not ctx.runs.was_resumed(_taker(report).task_id):
            elsewhere.add(host)
    for host in sorted(elsewhere):
        _sweep_on(ctx, host)
    return done


def orphans(reports: Iterable[RunReport], workers: LiveWorkers) -> list[RunReport]:
    """The runs of `reports` whose step's process is not alive among `workers`."""
    return [r for r in reports if r.held_step is not None and not workers.alive(r.held_step)]


def _taker(report: RunReport) -> StepTaker:
    taker = report.held_step
    assert taker is not None, report.run_id
    return taker


def _fail_stale(ctx: Node, report: RunReport, cutoff: datetime, done: Recovery) -> bool:
    """Fail `report` when it was queued before `cutoff`; True when it was."""
    if report.queued_at >= cutoff:
        return False
    age_s = (utcnow() - report.queued_at).total_seconds()
    if ctx.runs.save(report.failed(f"lost: not finished {age_s:.0f} s after it was queued")):
        done.stale.append(report.run_id)
    return True


def _sweep_on(ctx: Node, host: str) -> None:
    """Send a recovery sweep to machine `host`'s queue (its runs are resumed there).

    Raises:
        ServiceUnavailable: the broker did not answer.
    """
    from mao_celery.periodic import RECOVER_RUNS  # the task module imports this one

    try:
        ctx.app.send_task(RECOVER_RUNS, queue=host_queue(host))
    except Exception as e:  # kombu and redis-py raise their own; the next sweep tries again
        raise ServiceUnavailable("the broker", "Redis", str(e)) from e
    log.info("runs of host %s whose worker died: recovery sent to its queue", host)


def _wait_for_host(ctx: Node, report: RunReport, host: str, done: Recovery) -> None:
    """`report`'s step process died and its machine `host` has no live worker: note since
    when, and fail the run as lost once that is `MAO_HOST_LOST_AFTER_S` seconds ago. (Nothing
    else writes the run meanwhile: a resume needs a live worker on `host`.)"""
    taker = _taker(report)
    bound_s = ctx.settings.host_lost_after_s
    if report.host_lost_at is None:
        if ctx.runs.save(report.updated(host_lost_at=utcnow())):
            log.warning(
                "run %s: worker %s (pid %d) died during %s and host %s has no live worker; "
                "the run waits for it, at most %g s",
                report.run_id,
                taker.hostname,
                taker.pid,
                taker.step,
                host,
                bound_s,
            )
        return
    gone_s = (utcnow() - report.host_lost_at).total_seconds()
    if gone_s < bound_s or not ctx.runs.claim_resume(taker.task_id, report.run_id):
        return
    reason = (
        f"lost: host {host} has had no live worker for {gone_s:.0f} s (MAO_HOST_LOST_AFTER_S "
        f"{bound_s:g}) since worker {taker.hostname} (pid {taker.pid}) died during "
        f"{taker.step}; last known state: {report.status}"
    )
    if ctx.runs.save(report.failed(reason)):
        done.lost.append(report.run_id)


def _resume_or_fail(ctx: Node, report: RunReport, host: str, done: Recovery) -> None:
    """Resume the step of `report` whose process died, once, on machine `host` (this sweep's);
    fail the run as lost when it is the container step and the run's container is gone."""
    taker = _taker(report)
    if not ctx.runs.claim_resume(taker.task_id, report.run_id):
        return
    current = ctx.runs.find(report.run_id)
    if current is None or current.status.terminal:  # cancelled (or ended) since it was read
        return
    if taker.step == RUN_CONTAINER and not container_exists(ctx.docker, report.run_id):
        reason = (
            f"lost: worker {taker.hostname} (pid {taker.pid}) died during {taker.step} and the "
            f"run's container is gone; last known state: {report.status}"
        )
        if ctx.runs.save(report.failed(reason)):
            done.lost.append(report.run_id)
        return
    try:
        run_chain(ctx.app, report, start=taker.step, host=host).apply_async()
    except Exception as e:  # kombu and redis-py raise their own; the next sweep tries again
        ctx.runs.unclaim_resume(taker.task_id)
        raise ServiceUnavailable("the broker", "Redis", str(e)) from e
    log.warning(
        "run %s: worker %s (pid %d) died during %s; step resumed",
        report.run_id,
        taker.hostname,
        taker.pid,
        taker.step,
    )
    done.resumed.append(report.run_id)


def container_exists(client: docker.DockerClient, run_id: str) -> bool:
    """Whether run `run_id`'s container exists (running or not).

    Raises:
        ServiceUnavailable: the Docker daemon did not answer.
    """
    name = containers.container_name(run_id)
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        return False
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise ServiceUnavailable("Docker", "the Docker daemon", str(e)) from e
    return True
