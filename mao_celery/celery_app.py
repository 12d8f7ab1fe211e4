"""The node's Celery application: Redis as broker and result store, JSON only, and the delivery
settings that keep a run from being lost or doubled (design.md §4).

- `task_acks_late` + `task_reject_on_worker_lost`: a task whose worker dies is delivered again
  (every step of a run is idempotent on its run id, so running one twice is safe).
- `worker_prefetch_multiplier=1`: a worker reserves no more tasks than it runs.
- The broker's `visibility_timeout` exceeds the longest allowed container run, so Redis does not
  hand a running task to a second worker while the first still works on it.

Importing this module reads no setting and connects nowhere: `app` is configured from the node's
settings (`MAO_*`, `MAO_CONFIG`) the first time its configuration is needed, i.e. when `celery -A
mao_celery.celery_app` starts a worker, beat or Flower, or by `configure` (`Node.app`).

One run, one machine: every worker consumes the node's shared queue (`SHARED_QUEUE`, where runs
and periodic tasks are sent) and its machine's host queue (`host_queue(MAO_WORKER_HOST)`, added
at `celeryd_after_setup`, whatever `-Q` says). The steps of a run after its first go to the host
queue of the machine that took the first (tasks.py), so they all use that machine's importdir
and Docker daemon. The container step goes to the machine's containers queue
(`container_queue`) instead: a worker with the `ContainerPool` (threads, `MAO_CONTAINER_SLOTS` of
them; worker.sh's second worker) consumes that queue alone, so a container that runs for an hour
holds a thread waiting on Docker, not a pool process. With `MAO_CONTAINER_SLOTS=0` the machine
has no such worker and its other workers consume the containers queue too.

Every log handler Celery sets up for the worker and beat gets `logfilter.PrintableFilter`, so a
value from outside (a notification, a registry entry, a tool's output) cannot forge a log line.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.signals import after_setup_logger, after_setup_task_logger, celeryd_after_setup

from beat_schedule import beat_schedule
from mao_celery import logfilter
from mao_celery.settings import BEAT_MAX_LOOP_INTERVAL_S, Settings, load_settings

TASK_MODULES = ["mao_celery.tasks", "mao_celery.periodic"]
SHARED_QUEUE = "celery"
"""The node's queue every worker consumes (Celery's default queue)."""
HOST_QUEUE_PREFIX = "mao.host."
CONTAINER_QUEUE_SUFFIX = ".containers"


def host_queue(host: str) -> str:
    """The name of worker machine `host`'s queue (`MAO_WORKER_HOST`), e.g. `mao.host.box1`."""
    return f"{HOST_QUEUE_PREFIX}{host}"


def container_queue(host: str) -> str:
    """The name of worker machine `host`'s containers queue, e.g. `mao.host.box1.containers`:
    the container steps of its runs."""
    return f"{host_queue(host)}{CONTAINER_QUEUE_SUFFIX}"


def host_of_queue(name: str) -> str | None:
    """The worker machine whose host queue is `name`, or None when it is not a host queue (a
    containers queue is not one)."""
    if not name.startswith(HOST_QUEUE_PREFIX) or name.endswith(CONTAINER_QUEUE_SUFFIX):
        return None
    return name.removeprefix(HOST_QUEUE_PREFIX)


class ContainerPool(ThreadPool):  # type: ignore[misc]
    """Celery's thread pool for the container worker (`celery worker -P custom` with
    `CELERY_CUSTOM_WORKER_POOL=mao_celery.celery_app:ContainerPool`, see worker.sh).

    A thread cannot be killed: Celery's thread pool refuses `revoke(terminate=True)` (its
    `terminate_job` raises NotImplementedError, so `task_revoked` is never sent). Here it does
    nothing, so Celery announces the revoke and tasks.py's `task_revoked` handler cancels the
    run: its container is stopped and removed, and the thread waiting on it returns the
    cancelled report.
    """

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Nothing to kill: the run's cancel removes its container (see the class)."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration of a node with `settings` (Celery's lower-case setting names)."""
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu scans for unacked messages past their visibility timeout every
        # interval x throttle seconds (default 10 x 10); make it a fifth of the timeout.
        "unacked_restore_interval": max(1, min(60, int(settings.visibility_timeout_s / 5))),
        "unacked_restore_throttle": 1,
    }
    return dict(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        include=TASK_MODULES,
        task_default_queue=SHARED_QUEUE,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(),
        beat_scheduler="mao_celery.beat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix="mao:beat:",
        redbeat_redis_options={},
        # A beat killed without releasing its lock blocks a restarted or second beat for at most
        # the lock's timeout; the holder extends it on every tick (at most 5 s apart).
        redbeat_lock_timeout=settings.beat_lock_timeout_s,
        beat_max_loop_interval=BEAT_MAX_LOOP_INTERVAL_S,
    )


def configure(celery: Celery, settings: Settings) -> None:
    """Configure `celery` for a node with `settings` (before it sends or runs a task).

    Celery keeps its broker connections (the connection and producer pools, the result
    backend) across `conf.update`: when a process builds a node on another Redis after using
    one (tests, a bench), they are dropped, else its tasks would still go to the first Redis."""
    config = celery_config(settings)
    if celery._pool is not None and celery.conf.broker_url != config["broker_url"]:
        celery._pool.force_close_all()
        celery._pool = None
        celery.amqp._producer_pool = None
        celery._local = threading.local()  # the result backend, built per thread on first use
    celery.conf.update(config)


def consume_host_queue(sender: str, instance: Any, **_: Any) -> None:
    """At `celeryd_after_setup`: choose the queues of the worker starting (node name `sender`,
    `instance` its `WorkController`), whatever `-Q` says (Celery's documented way). A worker
    with the `ContainerPool` consumes its machine's containers queue alone; any other consumes
    its machine's host queue too, and the containers queue when `MAO_CONTAINER_SLOTS` is 0.
    Queues are declared as Celery declares a queue it sends to by name (`Queues.new_missing`:
    its own direct exchange), so senders need no setup."""
    settings = load_settings()
    queues = instance.app.amqp.queues
    containers = container_queue(settings.worker_host)
    if isinstance(instance.pool_cls, type) and issubclass(instance.pool_cls, ContainerPool):
        queues.select([containers])
        return
    queues.select_add(queues.new_missing(host_queue(settings.worker_host)))
    if settings.container_slots == 0:
        queues.select_add(queues.new_missing(containers))


celeryd_after_setup.connect(consume_host_queue)
after_setup_logger.connect(logfilter.install)
after_setup_task_logger.connect(logfilter.install)

app = Celery("mao", set_as_current=True)
"""The node's Celery app; its tasks are registered when tasks.py is imported (`include`)."""
app.add_defaults(lambda: celery_config(load_settings()))
