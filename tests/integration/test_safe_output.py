"""Untrusted text never drives the terminal, forges a line or shows a secret (issue "Untrusted
tools stay in their box", parts 4-6): maoctl as real processes, and a real worker's log.

Hostile values are written straight into etcd (as another member's client could) and into the
node's Redis (as a tool's log tail or control file names end up there): the output has no raw
control character, no line of its own for them, and no URL password.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from beat_schedule import NOTIFICATION_LISTENER_INTERVAL_S
from mao_celery.models import InvalidControlFile, RunReport, RunStatus, SpikeResult
from mao_celery.registry import Registry
from mao_celery.text import printable
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import EtcdServer, connect_etcd
from tests.helpers import TOOL_ARGS, WIDE, listing, maoctl, wait_until

pytestmark = pytest.mark.integration

# Each injection ends with a line that would look like maoctl's (or the worker's) own.
INJECTIONS = {
    "newline": "x\nFORGED spike      no",
    "carriage return": "x\rFORGED",
    "ESC CSI": "x\x1b[2J\x1b[1;1HFORGED",
    "OSC title": "x\x1b]0;FORGED\x07",
    "NUL": "x\x00FORGED",
}
# A line (or a table row) of its own for an injection; an indented log tail line is not one.
FORGED_LINE = re.compile(r"^(│ )?FORGED", re.MULTILINE)
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")
SECRET = "S3cret-Pw"
SECRET_URL = f"http://alice:{SECRET}@host.example/d.git"
TOOL = dict(zip(("author", "image", "data_repo", "code_repo", "artefact"), TOOL_ARGS, strict=True))


def assert_safe(*results: subprocess.CompletedProcess[str]) -> None:
    """No raw control character (but the newline ending each line) and no line of its own for
    an injection, on stdout or stderr of any of `results`."""
    for result in results:
        for stream in (result.stdout, result.stderr):
            assert not RAW_CONTROL.search(stream), repr(stream)
            assert not FORGED_LINE.search(stream), stream


def put(etcd_server: EtcdServer, key: str, value: dict[str, Any]) -> None:
    """Write `value` at `key` as another member's client would: no validation."""
    with connect_etcd(etcd_server.port) as client:
        client.put(key, json.dumps(value))


@pytest.mark.parametrize("injection", INJECTIONS.values(), ids=INJECTIONS.keys())
def test_registry_text_is_shown_escaped_in_tables_warnings_and_errors(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer, injection: str
) -> None:
    put(etcd_server, registry.tools.key("demo"), {"name": "demo", **TOOL, "description": injection})
    put(etcd_server, registry.datasets.key("data"), {"name": "data", "url": "/srv/d.git",
                                                      "description": injection})  # fmt: skip
    put(etcd_server, registry.datasets.key("bad"), {"name": "bad", "url": f"/srv/{injection}"})
    hostile_key = f"{registry.notifications_prefix}{injection}"
    put(etcd_server, hostile_key, {"tool": "demo", "run_id": injection})

    results = [
        maoctl(node, "tool", "get", env=WIDE),
        maoctl(node, "tool", "get", "demo", env=WIDE),
        maoctl(node, "dataset", "get", env=WIDE),
        maoctl(node, "dataset", "get", "bad"),
        maoctl(node, "notifications", "list", env=WIDE),
        maoctl(node, "tool", "get", "--json"),
        maoctl(node, "notifications", "list", "--json"),
    ]

    assert_safe(*results)
    tools, one_tool, datasets, bad, notifications, as_json, notifications_json = results
    escaped = printable(injection)
    assert escaped in tools.stdout
    assert escaped in one_tool.stdout
    assert escaped in datasets.stdout
    assert "warning: skipped registry entry" in datasets.stderr
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr.startswith("error: registry entry")
    assert bad.stderr.count("\n") == 1
    assert notifications.stdout == "Notifications: none\n"
    assert f"skipped registry entry {printable(hostile_key)} is invalid" in notifications.stderr
    assert listing(as_json.stdout)[0]["description"] == injection
    assert listing(notifications_json.stdout) == []


def test_a_run_report_from_a_tool_is_shown_escaped(node: NodeUnderTest) -> None:
    hostile = "\n".join(INJECTIONS.values())
    spike = SpikeResult(
        window=2,
        threshold_pct=20.0,
        files=["control-1.csv"],
        invalid=[InvalidControlFile(name=f"control-{hostile}.csv", reason=hostile)],
        ignored=["control-\rFORGED spike      no.csv"],
        reason=hostile,
    )
    report = RunReport(
        run_id="0123abcd",
        tool="demo",
        node="node-a",
        status=RunStatus.FAILED,
        image="mao-demo:latest",
        spike=spike,
        error=f"exit code 1{hostile}",
        log_tail=f"line one\x1b]0;FORGED\x07\r\nFORGED spike      no\n{hostile}",
    )
    node.runs().save(report)

    shown = maoctl(node, "run", "show", "0123abcd")
    listed = maoctl(node, "tool", "runs", "demo", env=WIDE)
    as_json = maoctl(node, "run", "show", "0123abcd", "--json")

    assert_safe(shown, listed, as_json)
    assert shown.returncode == 4
    lines = shown.stdout.splitlines()
    assert [line.split()[0] for line in lines if line.startswith("spike")] == ["spike"]
    tail = lines[lines.index("log tail:") + 1 :]
    assert tail[:2] == ["  line one\\x1b]0;FORGED\\x07", "  FORGED spike      no"]
    assert all(line.startswith("  ") for line in tail)
    assert shown.stderr.startswith("error: run 0123abcd failed: exit code 1x\\nFORGED")
    assert shown.stderr.count("\n") == 1
    assert RunReport.model_validate_json(as_json.stdout) == report


def test_a_url_password_is_refused_and_never_shown(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    added = maoctl(node, "dataset", "add", "d", SECRET_URL)
    # written by another member's client, which does not check
    put(etcd_server, registry.datasets.key("d"), {"name": "d", "url": SECRET_URL})
    put(etcd_server, registry.tools.key("t"), {"name": "t", **TOOL, "data_repo": SECRET_URL})
    put(etcd_server, registry.datasets.key("ok"), {"name": "ok", "url": "/srv/ok.git"})

    results = [
        maoctl(node, "dataset", "get", env=WIDE),
        maoctl(node, "dataset", "get", "--json"),
        maoctl(node, "dataset", "get", "d"),
        maoctl(node, "dataset", "get", "d", "--json"),
        maoctl(node, "tool", "get", env=WIDE),
        maoctl(node, "tool", "get", "t", "--json"),
        maoctl(node, "dataset", "clone", "d"),
        maoctl(node, "tool", "run", "t", "--no-wait"),
    ]

    assert added.returncode == 1
    assert "credentials are refused in registry URLs" in added.stderr
    assert "MAO_GIT_CREDENTIALS_FILE" in added.stderr
    for result in [added, *results]:
        assert SECRET not in result.stdout + result.stderr, result
    table, as_json, one, one_json, tools, tool_json, clone, run = results
    assert re.search(r"^ok +/srv/ok\.git ", table.stdout, re.MULTILINE)
    assert "warning: skipped registry entry" in table.stderr
    assert "http://***@host.example/d.git" in table.stderr
    assert [d["name"] for d in listing(as_json.stdout)] == ["ok"]
    for refused in (one, one_json, tool_json, clone, run):
        assert refused.returncode == 1
        assert "http://***@host.example/d.git" in refused.stderr
    assert tools.stdout == "Tools: none\n"


def test_a_notification_cannot_forge_a_worker_log_line(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    notification = {
        "tool": "demo",
        "node": "node-b",
        "run_id": "0123abcd",
        "control_value": 200.0,
        "baseline": 100.0,
        "gain_pct": 100.0,
        "threshold_pct": 20.0,
        "detected_at": datetime.now(UTC).isoformat(),
    }
    prefix = registry.notifications_prefix
    # A valid value under a hostile key (logged), and a hostile run id (skipped, logged).
    put(etcd_server, f"{prefix}a\nFORGED ERROR\x1b]0;x\x07", notification)
    put(etcd_server, f"{prefix}b", notification | {"run_id": "r\nFORGED\x1b[2J"})
    worker = node.start_worker()
    node.start_beat(env={"MAO_LISTENER_SINCE": "all"})  # the entries predate the node

    def logged(text: str) -> Callable[[], bool]:
        return lambda: text in worker.log()

    wait_until(
        logged("skipped registry entry"),
        NOTIFICATION_LISTENER_INTERVAL_S + 20,
        what="the listener to skip the hostile entry",
        poll_s=0.2,
        details=worker.log,
    )
    log = worker.log()
    assert "spike: tool demo on node node-b" in log
    assert f"(run 0123abcd, {prefix}a\\nFORGED ERROR\\x1b]0;x\\x07)" in log
    assert "invalid run id 'r\\nFORGED\\x1b[2J'" in log
    assert not [line for line in log.splitlines() if line.startswith("FORGED")], log
    assert "\x1b" not in log
