"""The end of a node's shutdown grace period: interrupt the runs still in their containers.

`worker.sh` sends the worker SIGTERM (Celery's warm shutdown: no new tasks, running ones go on)
and waits `MAO_SHUTDOWN_GRACE_S` seconds. A run whose container outlives that is ended here:
its report is marked interrupted (which releases the tool's lock), then its container is stopped
but kept, so the task waiting on it reads its exit code, finds the run interrupted and removes the
container. `maoctl node interrupt-runs --grace-s N` runs it with the node's clients.
"""

from __future__ import annotations

import docker

from mao_celery import containers
from mao_celery.exceptions import NotFound
from mao_celery.models import RunStatus
from mao_celery.runs import RunStore

STOP_TIMEOUT_S = 10.0
"""Seconds between the SIGTERM and the SIGKILL that stop a container (Docker's default)."""


def interrupt_running_runs(
    client: docker.DockerClient,
    runs: RunStore,
    grace_s: float,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> list[str]:
    """Mark interrupted every unfinished run of this node whose container is running, then stop
    those containers (SIGTERM, SIGKILL after `stop_timeout_s` seconds, default 10) without
    removing them.

    Runs are those of the containers labelled `mao.run_id` on the Docker daemon of `client` that
    `runs` knows; a container whose run is unknown there belongs to another node sharing the
    daemon and is left alone, as is one whose run has already ended. `grace_s` (seconds) is only
    quoted in the runs' error.

    Returns:
        The ids of the runs interrupted.

    Raises:
        ServiceUnavailable: the Docker daemon or Redis did not answer.
    """
    running = containers.running_run_ids(client)
    error = (
        "interrupted: the node shut down; the container was stopped after a grace period "
        f"of {grace_s:g} s"
    )
    interrupted: list[str] = []
    for run_id in running:
        try:
            report = runs.get(run_id)
        except NotFound:
            continue
        if report.status.terminal:
            continue
        runs.save(report.ended(RunStatus.INTERRUPTED, error))
        interrupted.append(run_id)
    if interrupted:
        containers.stop_run_containers(client, run_ids=interrupted, timeout_s=stop_timeout_s)
    return interrupted
