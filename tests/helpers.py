"""Helpers shared by the test modules: waiting on a condition with a deadline, running maoctl
and registering tools, following runs and their containers, and `worker.sh` as a process.

Test modules import from here (or get fixtures from tests/fixtures/), never from each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest

from mao_celery.models import RunReport, Tool
from tests.fixtures.node import REPO_ROOT, NodeUnderTest

T = TypeVar("T")

RUN_WAIT_S = 90.0
"""How long a test waits for a run to reach the state it expects."""
WIDE = {"COLUMNS": "200"}
"""Environment for maoctl's rich tables: no folding of cells in the assertions."""
TOOL_ARGS = (
    "tester",
    "mao-demo:latest",
    "https://example.org/data.git",
    "https://example.org/code",
    "csv",
)
"""`tool add NAME` arguments after the name: author, image, data repo, code repo, artefact."""
WORKER_SH = REPO_ROOT / "worker.sh"
HEAVY = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("heavy")]
"""The `pytestmark` of the heavy modules (100 containers, worker kills and restarts): one xdist
worker runs them one after another, since the containers of one would otherwise starve the
others, whose worker restarts and sweeps are timed."""
COUNTING_TOOL = (
    "cd /usr/src/app/data; echo start >> starts.txt; sleep {sleep_s}; "
    'echo 100 > "control-$(wc -l < starts.txt).csv"'
)
"""A tool's script (format `sleep_s`): counts its starts in starts.txt, sleeps, and writes one new
control file per run."""


def listing(stdout: str) -> list[dict[str, Any]]:
    """The entries of a `--json` listing (`{"items": [...], "warnings": [...]}`)."""
    shown = json.loads(stdout)
    assert set(shown) == {"items", "warnings"}, shown
    return list(shown["items"])


def listing_warnings(stdout: str) -> list[dict[str, str]]:
    """The warnings of a `--json` listing: `[{"key", "reason"}]`, one per entry skipped."""
    return list(json.loads(stdout)["warnings"])


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    *,
    what: str,
    poll_s: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` every `poll_s` seconds until it returns a truthy value, and return that
    value.

    When `timeout_s` seconds pass first, fail the test with "not within N s: `what`" followed
    by `details()` (e.g. the end of a process's log), when given. The predicate is always called
    at least once, and once more after the deadline, so a slow poll never misses the end.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{details()}" if details is not None else ""
            pytest.fail(f"not within {timeout_s:g} s: {what}{extra}", pytrace=False)
        time.sleep(poll_s)


def maoctl(
    node: NodeUnderTest, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run maoctl as a process of `node`; no command may print a traceback, whatever its exit
    code."""
    result = node.maoctl(*args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def register(node: NodeUnderTest, name: str, image: str, data_repo: str, *extra: str) -> None:
    """Register tool `name` running `image` on `data_repo` with `maoctl tool add` (plus the
    options `extra`); fail the test when maoctl does not exit 0."""
    result = node.maoctl(
        "tool", "add", name, "tester", image, data_repo, "https://example.org/code", "csv", *extra
    )
    assert result.returncode == 0, result.stderr


def queue_run(node: NodeUnderTest, tool: str) -> str:
    """Queue a run of `tool` with `maoctl tool run --no-wait`; its run id (fails the test when
    maoctl does not exit 0)."""
    result = maoctl(node, "tool", "run", tool, "--no-wait")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for(node: NodeUnderTest, run_id: str, until: Callable[[RunReport], bool]) -> RunReport:
    """The report of run `run_id` once `until` holds for it; fail the test naming the run's
    status when it does not within `RUN_WAIT_S` seconds."""
    report = node.runs().wait(run_id, until, timeout_s=RUN_WAIT_S, poll_s=0.2)
    assert until(report), f"run {run_id} stuck at {report.status}"
    return report


def run_containers(docker_client: docker.DockerClient, run_id: str) -> list[str]:
    """The names of run `run_id`'s containers (labelled `mao.run_id`), running or not."""
    return [
        c.name
        for c in docker_client.containers.list(
            all=True, filters={"label": f"mao.run_id={run_id}"}, ignore_removed=True
        )
    ]


@contextlib.contextmanager
def containers_created(
    docker_client: docker.DockerClient, label: str
) -> Iterator[list[dict[str, Any]]]:
    """The daemon's "create" events of containers labelled `label` (`key=value`) while the block
    runs, streamed live into the list yielded.

    Live, not asked for afterwards with `since`: the daemon keeps only its last 256 events, which
    a suite running beside the test (each container makes several) pushes out within seconds.
    """
    stream = docker_client.events(
        filters={"type": "container", "event": "create", "label": label}, decode=True
    )
    created: list[dict[str, Any]] = []

    def collect() -> None:
        with contextlib.suppress(Exception):  # the stream is closed under it at the end
            created.extend(stream)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        yield created
    finally:
        stream.close()
        reader.join(timeout=10)


class Script:
    """`worker.sh ROLE` running in a process group of its own, its output in `log_path`."""

    def __init__(self, role: str, env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(WORKER_SH), role],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        """The script's output so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        """Fail the test with the log unless `text` appears in it within `timeout_s` seconds."""
        wait_until(
            lambda: text in self.log() or self.process.poll() is not None,
            timeout_s,
            what=f"{text!r} logged by worker.sh",
            poll_s=0.2,
            details=lambda: f"log:\n{self.log()}",
        )
        if text not in self.log():
            pytest.fail(f"worker.sh exited ({self.process.returncode}); log:\n{self.log()}")

    def kill_group(self) -> None:
        """SIGKILL worker.sh and every process it started (same process group), and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def make_tool(name: str, **fields: Any) -> Tool:
    """A valid registry tool `name` of author "tester" on example.org repositories; `fields`
    override or add fields (e.g. `description`, `created_by`)."""
    base = {
        "name": name,
        "author": "tester",
        "image": "mao-demo:latest",
        "data_repo": "https://example.org/data.git",
        "code_repo": "https://example.org/code",
        "artefact": "csv",
    }
    return Tool.model_validate(base | fields)
