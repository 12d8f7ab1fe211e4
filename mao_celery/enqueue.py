"""Starting a run: record it, take the tool's lock and send its chain of tasks to the workers.

Kept apart from tasks.py so that `maoctl tool run` sends a run by task name without importing
what the tasks need (Docker, GitPython): the CLI's start-up stays short (see bench/).
"""

from __future__ import annotations

import uuid

from celery import Celery, chain
from celery.canvas import Signature

from mao_celery.celery_app import container_queue, host_queue
from mao_celery.exceptions import ServiceUnavailable
from mao_celery.models import RunReport
from mao_celery.registry import Registry
from mao_celery.runs import RunStore
from mao_celery.settings import Settings
from mao_celery.text import redact_url

PREPARE_DATASET = "mao.prepare_dataset"
RUN_CONTAINER = "mao.run_container"
DETECT_SPIKE = "mao.detect_spike"
PUBLISH_NOTIFICATION = "mao.publish_notification"
RUN_STEPS = (PREPARE_DATASET, RUN_CONTAINER, DETECT_SPIKE, PUBLISH_NOTIFICATION)
"""The tasks of a run, in order (design.md §4)."""


def lock_ttl_s(conf: Settings) -> float:
    """How long a tool's lock may outlive a dead worker: a redelivery after the broker's
    visibility timeout, then a whole container run, plus 5 minutes."""
    return conf.visibility_timeout_s + conf.timeout_max_s + 300.0


def step_queue(step: str, host: str) -> str:
    """The queue of step `step` (one of `RUN_STEPS`) of a run bound to worker machine `host`:
    its containers queue for the container step (the machine's thread-pool worker waits on
    containers), its host queue for the others."""
    return container_queue(host) if step == RUN_CONTAINER else host_queue(host)


def run_chain(
    app: Celery, report: RunReport, start: str = PREPARE_DATASET, host: str | None = None
) -> Signature:
    """The chain of tasks that performs the run `report` (queued), or the rest of it from step
    `start` (one of `RUN_STEPS`) on, each step sent to its queue on worker machine `host`
    (`step_queue`; None: the first step to the node's shared queue, and the first step taken
    routes the rest to its machine, see tasks.py)."""
    steps = RUN_STEPS[RUN_STEPS.index(start) :]
    state = report.model_dump(mode="json")

    def options(step: str) -> dict[str, str]:
        return {} if host is None else {"queue": step_queue(step, host)}

    first, *rest = steps
    return chain(
        app.signature(first, args=(state,), options=options(first)),
        *(app.signature(name, options=options(name)) for name in rest),
    )


def start_run(
    app: Celery,
    tool: str,
    *,
    conf: Settings,
    registry: Registry,
    runs: RunStore,
    run_id: str | None = None,
) -> RunReport:
    """Queue a run of `tool`: record it, take the tool's lock, send the chain to the workers.

    `run_id` (default: a new one) makes starting idempotent: a run already recorded under that
    id is returned as it is, and nothing is sent again.

    Raises:
        NotFound: the tool is not registered.
        AlreadyRunning: a run of the tool is under way on this node.
        ServiceUnavailable: etcd, Redis or the broker did not answer; nothing is left queued.
    """
    if run_id is not None and (existing := runs.find(run_id)) is not None:
        return existing
    registry.tools.get(tool)
    report = RunReport(run_id=run_id or uuid.uuid4().hex, tool=tool, node=conf.node_id)
    runs.begin(report, lock_ttl_s(conf))
    try:
        run_chain(app, report).apply_async()
    except Exception as e:  # kombu, redis-py and Celery's result consumer each raise their own
        runs.save(report.failed(f"could not send the run to the workers: {e}"))
        raise ServiceUnavailable("Redis", redact_url(conf.redis_url), str(e)) from e
    return report
