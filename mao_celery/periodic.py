"""The node's periodic tasks (beat_schedule.py) and its scheduled tool runs (schedules.py):
the recovery of runs whose worker died (also when a worker starts) and leaving the federation
on a clean worker shutdown; the threads of every beat process (`start_node_threads`): the member
heartbeat and the notification listener (`Listener`, an etcd watch), which hands each new
notification to the `mao.notify` task (logged by a worker, alerts sent by `mao.alert` tasks).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Task
from celery.signals import beat_init, worker_ready, worker_shutdown
from celery.utils.time import get_exponential_backoff_interval
from pyetcd.events import PutEvent
from redbeat.schedulers import acquire_distributed_beat_lock

from beat_schedule import NOTIFICATION_LISTENER_INTERVAL_S
from mao_celery import alerts, members, recovery, worker_info
from mao_celery.celery_app import app
from mao_celery.enqueue import lock_ttl_s, start_run
from mao_celery.exceptions import (
    AlreadyRunning,
    InvalidInput,
    MaoError,
    NotFound,
    ServiceUnavailable,
)
from mao_celery.models import Member, Notification, RunReport, utcnow
from mao_celery.node import Node
from mao_celery.node_state import CLUSTER_KEY, CURSOR_KEY, NodeState
from mao_celery.registry import Registry, connect, validate_all
from mao_celery.schedules import TASK as SCHEDULED_RUN
from mao_celery.schedules import ScheduleStore
from mao_celery.settings import Settings, since_start
from mao_celery.tasks import node
from mao_celery.text import format_gain_pct

log = logging.getLogger(__name__)

RECOVER_RUNS = "mao.recover_runs"

# ---- notifications ---------------------------------------------------------------------------

NOTIFY = "mao.notify"
ALERT = "mao.alert"
ALERT_RETRIES = 10
ALERT_BACKOFF_S, ALERT_BACKOFF_MAX_S = 2, 600
"""Celery's exponential backoff of a failed alert: 2, 4, 8, ... s, at most 10 min apart, 10
retries (1622 s, about 27 minutes), then it is given up with an error in the log."""
WATCH_POLL_S = 0.5
"""Seconds the listener waits for a watch response before it checks whether to stop."""
LISTENER_BACKOFF_MAX_S = 10.0
"""The longest pause of the listener between two attempts while etcd or Redis is away."""


@dataclass(frozen=True)
class Start:
    """Where the listener reads from: the notifications written after revision `after` and,
    with `start_after`, only the keys after that one; `warning`: why it replays (None: it
    resumes, or a new node starts)."""

    after: int
    start_after: str | None = None
    warning: str | None = None


def new_node_start(since: str, revision: int, key_at: Callable[[datetime], str]) -> Start:
    """Where the listener of a new node (no cursor) starts, by `MAO_LISTENER_SINCE` (`since`,
    see `settings.since_start`): "now" after the current `revision`; "all" from the first
    notification retained; a time or duration from the notifications of runs started since
    then (`key_at(time)`: the key to read after)."""
    if since == "now":
        return Start(revision)
    when = since_start(since, utcnow())
    return Start(0, None if when is None else key_at(when))


def listener_start(
    cursor: int | None, cursor_cluster: int | None, cluster: int, revision: int, new: Start
) -> Start:
    """Where the listener starts, from its stored `cursor` (the last revision it handled;
    None: a new node, which starts at `new`) and the cluster it was read from
    (`cursor_cluster`), given the cluster's id and current `revision`.

    A cursor from another cluster, or ahead of the cluster's revision (an etcd restored from a
    snapshot, a new cluster), replays everything retained: the delivered keys deduplicate.
    """
    if cursor is None:
        return new
    if cursor_cluster is not None and cursor_cluster != cluster:
        return Start(0, None, f"etcd cluster changed ({cursor_cluster:x} -> {cluster:x})")
    if cursor > revision:
        return Start(0, None, f"cursor {cursor} is ahead of etcd's revision {revision}")
    return Start(cursor)


class Listener:
    """Follows the notifications of the federation and hands each new one, once per node, to
    `hand_over(key, raw JSON)` (which sends the `mao.notify` task).

    It reads by range from its cursor, then watches from the revision read, storing the last
    revision handled (`CURSOR_KEY`, with the cluster id: `CLUSTER_KEY`). A broken watch (an
    etcd member restarting), a compaction, or `resync_s` seconds of watching (a watch on a
    member cut off from the others may hang silently) end the watch; the listener then reads
    by range again from its cursor, which a compaction does not affect. Each key is claimed in
    Redis before it is handed over (`NodeState.claim`, for the notifications' retention), so a
    re-read, a replay or a second beat's listener never hands a notification over twice.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        state: NodeState,
        hand_over: Callable[[str, str], None],
        resync_s: float = NOTIFICATION_LISTENER_INTERVAL_S,
    ) -> None:
        self._conf = settings
        self._registry = registry
        self._state = state
        self._hand_over = hand_over
        self._resync_s = resync_s
        self.stop = threading.Event()

    def run(self) -> None:
        """Follow until `stop` is set; errors are logged and retried with backoff (1 s, 2 s,
        ... up to `LISTENER_BACKOFF_MAX_S`)."""
        failures = 0
        while not self.stop.is_set():
            try:
                self.follow()
                failures = 0
            except Exception as e:  # a listener thread must never die
                failures += 1
                pause = min(LISTENER_BACKOFF_MAX_S, 2.0 ** (failures - 1))
                log.warning("notification listener: %s; again in %g s", e, pause)
                self.stop.wait(pause)

    def follow(self) -> None:
        """Catch up by range, then watch until the watch ends, `resync_s` passes or `stop`.

        Raises:
            ServiceUnavailable: etcd or Redis did not answer.
        """
        cluster, revision = self.catch_up()
        events: queue.Queue[Any] = queue.Queue()
        watch_id = self._registry.watch_notifications(revision + 1, events.put)
        try:
            deadline = time.monotonic() + self._resync_s
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    response = events.get(timeout=WATCH_POLL_S)
                except queue.Empty:
                    continue
                if isinstance(response, Exception):
                    log.warning("notification watch ended (%s): reading by range", response)
                    return
                self._handle_events(cluster, response.events)
        finally:
            with contextlib.suppress(MaoError):
                self._registry.cancel_watch(watch_id)

    def catch_up(self) -> tuple[int, int]:
        """Hand over the notifications written since the cursor (see `listener_start`) and
        store the revision read. Returns the cluster id and that revision.

        Raises:
            ServiceUnavailable: etcd or Redis did not answer.
            InvalidState: the cursor in Redis is not a whole number.
        """
        cluster, revision = self._registry.position()
        cursor = self._state.get(CURSOR_KEY)
        stored_cluster = self._state.get(CLUSTER_KEY)
        new = new_node_start(
            self._conf.listener_since, revision, self._registry.notification_key_at
        )
        start = listener_start(
            None if cursor is None else int(cursor),
            None if stored_cluster is None else int(stored_cluster),
            cluster,
            revision,
            new,
        )
        if start.warning:
            log.warning(
                "notification listener: %s: reading every notification again", start.warning
            )
        read = self._registry.notification_changes(start.after, start_after=start.start_after)
        for key, raw in read.kvs:
            self._deliver(key, raw)
        self._save(cluster, read.revision)
        return cluster, read.revision

    def _handle_events(self, cluster: int, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, PutEvent):
                self._deliver(event.key.decode("utf-8", "replace"), event.value)
                self._save(cluster, int(event.mod_revision))

    def _deliver(self, key: str, raw: bytes) -> None:
        if not self._state.claim(key, self._conf.notification_retention_s):
            return
        try:
            self._hand_over(key, raw.decode("utf-8", "replace"))
        except Exception:
            self._state.release(key)
            raise

    def _save(self, cluster: int, revision: int) -> None:
        self._state.set(CLUSTER_KEY, str(cluster))
        self._state.set(CURSOR_KEY, str(revision))


def log_notification(key: str, raw: str) -> Notification | None:
    """Log the notification at etcd key `key` (its JSON `raw`) as a "spike:" warning, or as
    an error naming the key when it is invalid (then None)."""
    entries, invalid = validate_all(Notification, [(key, raw.encode())])
    for entry in invalid:
        log.error("skipped %s", entry.reason)
    for _, n in entries:
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
        return n
    return None


@app.task(name=NOTIFY, autoretry_for=(ServiceUnavailable,), retry_backoff=True, max_retries=5)
def notify(key: str, raw: str) -> list[str]:
    """Sent by the listener once per notification and node: log it (`log_notification`) and,
    when this node follows its tool, send one `mao.alert` task per alert target. Returns the
    targets alerted. Retried while Redis does not answer."""
    ctx = node()
    following = ctx.state.following()
    notification = log_notification(key, raw)
    if notification is None or not alerts.follows(following, notification.tool):
        return []
    sent = alerts.targets(ctx.settings)
    for target in sent:
        app.send_task(ALERT, args=[key, raw, target])
    return sent


@app.task(
    bind=True,
    name=ALERT,
    autoretry_for=(ServiceUnavailable,),
    retry_backoff=ALERT_BACKOFF_S,
    retry_backoff_max=ALERT_BACKOFF_MAX_S,
    retry_jitter=False,
    max_retries=ALERT_RETRIES,
)
def alert(self: Task, key: str, raw: str, target: str) -> None:
    """Send the alert of notification `key` (JSON `raw`) to alert target `target`
    (alerts.py); a target that fails is retried with backoff (`ALERT_RETRIES`)."""
    ctx = node()
    try:
        alerts.send(ctx.settings, target, key, Notification.model_validate_json(raw))
    except ServiceUnavailable as e:
        attempt = self.request.retries + 1
        given_up = " (given up)" if self.request.retries >= ALERT_RETRIES else ""
        log.warning(
            "alert of %s to %s failed (attempt %d)%s: %s", key, target, attempt, given_up, e
        )
        raise
    log.info("alert of %s sent to %s", key, target)


def send_test_alert(settings: Settings) -> list[str]:
    """Send a test alert to every alert target of `settings`, at once (`maoctl notifications
    test`). Returns the targets.

    Raises:
        InvalidInput: no target is configured, or a URL is not one apprise supports.
        ServiceUnavailable: a target failed (the first failure's reason).
    """
    names = alerts.targets(settings)
    if not names:
        raise InvalidInput("no alert target: set MAO_NOTIFY_URLS or MAO_NOTIFY_COMMAND")
    test = Notification(
        tool="mao-test",
        node=settings.node_id,
        run_id="0" * 32,
        control_value=1.0,
        baseline=1.0,
        gain_pct=0.0,
        threshold_pct=settings.spike_threshold_pct,
        detected_at=utcnow(),
    )
    for target in names:
        alerts.send(settings, target, "test alert (maoctl notifications test)", test)
    return names


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
SCHEDULED_RETRY_BACKOFF_MAX = 8
"""Celery's exponential backoff of those retries: 2b, 4b, 8b, 8b s for the setting
`MAO_SCHEDULED_RETRY_BACKOFF_S` b (at most 8 b); with its default 2 s that is 4, 8, 16, 16 s,
so a fire is given up (and recorded as a failed run) about 44 s after it."""


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
            backoff_s = ctx.settings.scheduled_retry_backoff_s
            countdown = get_exponential_backoff_interval(
                backoff_s,
                attempts,
                SCHEDULED_RETRY_BACKOFF_MAX * backoff_s,
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


WORKER_PING_TIMEOUT_S = 1.0
"""Seconds the heartbeat waits for the node's workers to answer a ping (to count them)."""


def beat_once(ctx: Node) -> Member:
    """Refresh this node's member record (`members.heartbeat`) with the workers answering a
    ping and the tools it schedules.

    Raises:
        ServiceUnavailable: etcd or Redis did not answer.
    """
    conf = ctx.settings
    workers = len(ctx.app.control.ping(timeout=WORKER_PING_TIMEOUT_S) or [])
    tools = ctx.schedules.tools()
    return members.heartbeat(
        ctx.registry, ctx.state, conf.node_id, conf.member_ttl_s, workers=workers, tools=tools
    )


def heartbeat_forever(ctx: Node, stop: threading.Event) -> None:
    """Beat every `MAO_HEARTBEAT_INTERVAL_S` seconds until `stop` is set; a failed beat is
    logged and the next one tried at its time."""
    while not stop.is_set():
        try:
            beat_once(ctx)
        except Exception as e:  # the heartbeat thread must never die
            log.warning("heartbeat failed: %s", e)
        stop.wait(ctx.settings.heartbeat_interval_s)


def start_node_threads(sender: Any, **_: Any) -> None:
    """When a beat process starts (`beat_init`): start its heartbeat and notification listener
    threads.

    Every beat process runs them, also one waiting for RedBeat's lock: the member record does
    not wait for a lock hand-over (a killed beat's lock goes stale only after
    `MAO_BEAT_LOCK_TIMEOUT_S`), and the listeners' claims in Redis keep a notification from
    being handed over twice. A beat process never forks, so its gRPC channels and threads are
    safe there (a prefork worker's are not).
    """
    ctx = node()
    listener = Listener(ctx.settings, connect(ctx.settings), ctx.state, _send_notify)
    stop = threading.Event()
    for name, target in (
        ("mao-heartbeat", functools.partial(heartbeat_forever, ctx, stop)),
        ("mao-listener", listener.run),
    ):
        threading.Thread(target=target, name=name, daemon=True).start()


def _send_notify(key: str, raw: str) -> None:
    app.send_task(NOTIFY, args=[key, raw])


# RedBeat's own `beat_init` receiver waits for the lock (`acquire_distributed_beat_lock`:
# `lock.acquire()`, blocking) and receivers run in the order they were connected; RedBeat's is
# connected first (schedules.py imports redbeat above). Connected after it, a second beat's
# threads would start only once it holds the lock: no heartbeat for up to
# `MAO_BEAT_LOCK_TIMEOUT_S` after the holder was killed, and the member record expired. So the
# threads are started first and RedBeat's receiver is moved behind them.
beat_init.disconnect(acquire_distributed_beat_lock)
beat_init.connect(start_node_threads)
beat_init.connect(acquire_distributed_beat_lock)


@worker_shutdown.connect
def leave_federation(**_: Any) -> None:
    """On a clean worker shutdown, remove this node's member record at once."""
    ctx = node()
    try:
        members.leave(ctx.registry, ctx.state)
    except MaoError as e:
        log.warning("could not remove this node's member record: %s", e)
