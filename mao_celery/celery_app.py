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

Every log handler Celery sets up for the worker and beat gets `logfilter.PrintableFilter`, so a
value from outside (a notification, a registry entry, a tool's output) cannot forge a log line.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from beat_schedule import beat_schedule
from mao_celery import logfilter
from mao_celery.settings import BEAT_MAX_LOOP_INTERVAL_S, Settings, load_settings

TASK_MODULES = ["mao_celery.tasks", "mao_celery.periodic"]


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
        beat_schedule=beat_schedule(settings.heartbeat_interval_s),
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
    """Configure `celery` for a node with `settings` (before it sends or runs a task)."""
    celery.conf.update(celery_config(settings))


after_setup_logger.connect(logfilter.install)
after_setup_task_logger.connect(logfilter.install)

app = Celery("mao", set_as_current=True)
"""The node's Celery app; its tasks are registered when tasks.py is imported (`include`)."""
app.add_defaults(lambda: celery_config(load_settings()))
