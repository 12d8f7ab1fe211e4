"""The notification listener (an etcd watch, periodic.Listener) and alerts to people, against
private etcd (one member and a 3-member cluster), Redis, and real worker and beat processes."""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mao_celery.models import Notification
from mao_celery.node import Node
from mao_celery.node_state import CURSOR_KEY
from mao_celery.periodic import Listener
from mao_celery.registry import Registry, connect
from tests.fixtures.node import NodeUnderTest, Worker
from tests.fixtures.services import EtcdCluster, connect_etcd, free_ports
from tests.helpers import maoctl, wait_until

RETENTION_S = 3600
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def notification(run: int, tool: str = "demo") -> Notification:
    return Notification(
        tool=tool,
        node="node-b",
        run_id=f"run-{run}",
        control_value=144.5,
        baseline=100.0,
        gain_pct=44.5,
        threshold_pct=20.0,
        detected_at=T0,
    )


def publish(registry: Registry, run: int, tool: str = "demo") -> str:
    key, _ = registry.publish_notification(
        notification(run, tool), T0 + timedelta(seconds=run), RETENTION_S
    )
    return key


class Recorder:
    """A listener's hand-over that records the keys handed over, in order."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str, raw: str) -> None:
        self.keys.append(key)


def test_a_new_node_starts_from_now_and_a_cursor_ahead_replays_without_duplicates(
    node: NodeUnderTest, registry: Registry
) -> None:
    old = publish(registry, 1)
    ctx = Node(node.settings())
    recorder = Recorder()
    listener = Listener(ctx.settings, ctx.registry, ctx.state, recorder)
    listener.catch_up()
    assert recorder.keys == []  # a new node: from now

    new = publish(registry, 2)
    listener.catch_up()
    ctx.state.set(CURSOR_KEY, "1000000")
    newer = publish(registry, 3)
    listener.catch_up()  # replays everything retained: old is new to this node, 2 is not
    listener.catch_up()

    assert recorder.keys == [new, old, newer]
    assert int(ctx.state.get(CURSOR_KEY) or 0) < 1000000


def test_the_watch_delivers_at_once_and_survives_a_member_restart_and_a_compaction(
    node: NodeUnderTest, etcd_cluster: EtcdCluster
) -> None:
    node.env["MAO_ETCD_ENDPOINTS"] = ",".join(etcd_cluster.endpoints)
    ctx = Node(node.settings())
    recorder = Recorder()
    listener = Listener(ctx.settings, ctx.registry, ctx.state, recorder, resync_s=30.0)
    thread = threading.Thread(target=listener.run, daemon=True)
    thread.start()
    writer = connect(node.settings())
    try:
        wait_until(lambda: ctx.state.get(CURSOR_KEY), 15, what="the listener to start")
        published = [publish(writer, 1)]
        wait_until(lambda: recorder.keys == published, 5, what="the watch to deliver run 1")
        for index in range(3):  # every member restarts once: the watch's one among them
            etcd_cluster.stop_member(index)
            published.append(publish(writer, 10 + index))
            etcd_cluster.start_member(index)
        published.append(publish(writer, 20))
        wait_until(
            lambda: sorted(recorder.keys) == sorted(published),
            30,
            what="every notification after the restarts",
            details=lambda: str(recorder.keys),
        )
        _, revision = writer.position()
        with connect_etcd(int(etcd_cluster.endpoints[0].rpartition(":")[2])) as client:
            client.compact(revision)
        published.append(publish(writer, 30))
        wait_until(
            lambda: sorted(recorder.keys) == sorted(published),
            30,
            what="the notification after the compaction",
        )
    finally:
        listener.stop.set()
        thread.join(timeout=10)
        writer.etcd.close()
    assert len(recorder.keys) == len(set(recorder.keys))


class Hook(http.server.BaseHTTPRequestHandler):
    """A local webhook recording the JSON bodies posted to it."""

    received: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


def test_an_alert_is_delivered_once_per_node_and_retried_while_the_endpoint_is_down(
    node: NodeUnderTest, registry: Registry
) -> None:
    (port,) = free_ports(1)
    node.env["MAO_NOTIFY_URLS"] = f"json://127.0.0.1:{port}/"
    worker = node.start_worker()
    node.start_beat()
    state = Node(node.settings()).state
    wait_until(lambda: state.get(CURSOR_KEY), 30, what="the listener to start")
    assert node.maoctl("notifications", "follow", "demo").returncode == 0
    ignored = publish(registry, 1, tool="other")
    key = publish(registry, 2)
    wait_until(
        lambda: f"alert of {key} to url:0 failed" in worker.log(),
        30,
        what="a failed alert",
        details=worker.log,
    )
    Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wait_until(
            lambda: f"alert of {key} sent to url:0" in worker.log(),
            30,
            what="the alert retried",
            details=worker.log,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert len(Hook.received) == 1
    assert "run-2" in Hook.received[0]["message"]
    assert "spike: tool other on node node-b" in worker.log()
    assert ignored not in "".join(m["message"] for m in Hook.received)
    assert worker.log().count(f"(run run-2, {key})") == 1


@pytest.fixture
def hook() -> Iterator[str]:
    """A local webhook (`Hook`) running; yields its apprise URL (json://)."""
    Hook.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"json://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


ALERT_SCRIPT = """#!/bin/sh
# the alert on stdin into a file of its own in "$1" (renamed when whole)
f=$(mktemp "$1/alert.XXXXXX") && cat > "$f" && mv "$f" "$f.json"
"""


@dataclass(frozen=True)
class AlertCommand:
    """A `MAO_NOTIFY_COMMAND` writing each alert's JSON (its stdin) to a file in `out`."""

    command: str
    out: Path

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts received so far, as JSON data."""
        return [json.loads(path.read_text()) for path in sorted(self.out.glob("*.json"))]

    def keys(self) -> list[str]:
        """The notification keys of the alerts received so far."""
        return sorted(alert["key"] for alert in self.alerts())


@pytest.fixture
def alert_command(tmp_path: Path) -> AlertCommand:
    script = tmp_path / "alert.sh"
    script.write_text(ALERT_SCRIPT)
    script.chmod(0o755)
    out = tmp_path / "alerts"
    out.mkdir()
    return AlertCommand(f"{script} {out}", out)


NOT_ALERTED = re.compile(r"Task mao\.notify\[[^\]]+\] succeeded in [0-9.e-]+s: \[\]")
"""Celery's log line of a `mao.notify` task that sent no alert (it returned no target)."""


def following(node: NodeUnderTest) -> dict[str, Any]:
    result = maoctl(node, "notifications", "following", "--json")
    assert result.returncode == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def alerting_node(node: NodeUnderTest, command: AlertCommand, beats: int = 1) -> Worker:
    """Start `node` with `command` as its alert hook: a worker and `beats` beats, once the
    listener has started. Returns the worker."""
    node.env["MAO_NOTIFY_COMMAND"] = command.command
    worker = node.start_worker()
    for _ in range(beats):
        node.start_beat()
    state = Node(node.settings()).state
    wait_until(lambda: state.get(CURSOR_KEY), 30, what="the listener to start")
    return worker


def test_a_node_alerts_only_for_the_tools_it_follows(
    node: NodeUnderTest, registry: Registry, alert_command: AlertCommand
) -> None:
    worker = alerting_node(node, alert_command)

    def not_alerted(count: int, what: str) -> None:
        wait_until(
            lambda: len(NOT_ALERTED.findall(worker.log())) == count,
            30,
            what=what,
            details=worker.log,
        )

    assert following(node) == {"all": True, "tools": []}
    assert maoctl(node, "notifications", "follow", "x").returncode == 0
    assert following(node) == {"all": False, "tools": ["x"]}
    publish(registry, 1, tool="y")
    not_alerted(1, "the notification of y handled without an alert")
    alerted_x = publish(registry, 2, tool="x")
    wait_until(lambda: alert_command.keys() == [alerted_x], 30, what="the alert of x")

    assert maoctl(node, "notifications", "unfollow", "x").returncode == 0
    assert following(node) == {"all": False, "tools": []}
    publish(registry, 3, tool="x")
    not_alerted(2, "the notification of x handled without an alert once unfollowed")
    refused = maoctl(node, "notifications", "unfollow", "x")
    assert refused.returncode != 0
    assert "'x' is not followed" in refused.stderr

    assert maoctl(node, "notifications", "follow", "--all").returncode == 0
    assert following(node) == {"all": True, "tools": []}
    alerted_y = publish(registry, 4, tool="y")
    wait_until(
        lambda: alert_command.keys() == sorted([alerted_x, alerted_y]),
        30,
        what="the alert of y once every tool is followed again",
        details=lambda: str(alert_command.keys()),
    )
    alert = next(a for a in alert_command.alerts() if a["key"] == alerted_x)
    assert alert["title"] == "MAO spike: x on node-b"
    assert alert["notification"]["run_id"] == "run-2"
    assert f"(run run-2, {alerted_x})" in alert["body"]


def test_a_notification_is_alerted_once_per_node_with_two_beats(
    node: NodeUnderTest, registry: Registry, alert_command: AlertCommand
) -> None:
    worker = alerting_node(node, alert_command, beats=2)

    keys = sorted(publish(registry, run) for run in range(1, 4))

    wait_until(
        lambda: alert_command.keys() == keys,
        30,
        what="one alert per notification",
        details=lambda: str(alert_command.keys()),
    )
    log = worker.log()
    assert len(re.findall(r"Task mao\.notify\[[^\]]+\] received", log)) == len(keys), log
    assert len(re.findall(r"Task mao\.alert\[[^\]]+\] received", log)) == len(keys), log


def test_notifications_test_delivers_to_every_target(
    node: NodeUnderTest, hook: str, alert_command: AlertCommand
) -> None:
    env = {"MAO_NOTIFY_URLS": hook, "MAO_NOTIFY_COMMAND": alert_command.command}

    result = maoctl(node, "notifications", "test", env=env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "test alert sent to url:0",
        "test alert sent to command",
    ]
    (received,) = Hook.received
    assert received["title"] == "MAO spike: mao-test on node-a"
    (alert,) = alert_command.alerts()
    assert alert["notification"]["tool"] == "mao-test"
    assert alert["key"] == "test alert (maoctl notifications test)"


def test_notifications_test_exits_3_naming_the_reason(
    node: NodeUnderTest, alert_command: AlertCommand
) -> None:
    (port,) = free_ports(1)
    result = maoctl(
        node, "notifications", "test", env={"MAO_NOTIFY_URLS": f"json://127.0.0.1:{port}/"}
    )
    unset = maoctl(node, "notifications", "test")
    failing = maoctl(
        node, "notifications", "test", env={"MAO_NOTIFY_COMMAND": f"{alert_command.out}/absent"}
    )

    assert result.returncode == 3, result.stderr
    assert "alert target unreachable at json://..." in result.stderr
    assert unset.returncode == 1, unset.stderr
    assert "no alert target" in unset.stderr
    assert failing.returncode == 3, failing.stderr
    assert "notify command" in failing.stderr
