"""The node's processes, run for real: worker.sh (worker, beat, Flower), its shutdown, the member
record's lease and the notification listener, against real Redis, etcd and Docker.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import requests

from beat_schedule import NOTIFICATION_LISTENER_INTERVAL_S
from mao_celery.containers import LABEL_RUN_ID
from mao_celery.exceptions import NotFound
from mao_celery.models import RunReport, RunStatus
from mao_celery.settings import Settings
from mao_celery.shutdown import interrupt_running_runs
from tests.fixtures.node import WORKER_READY_TIMEOUT_S, NodeUnderTest
from tests.fixtures.services import LOOPBACK, free_ports
from tests.helpers import WORKER_SH, Script, listing, register, run_containers, wait_for, wait_until

DEFAULT_HEARTBEAT_S = Settings.model_fields["heartbeat_interval_s"].default
# A heartbeat every second on a 4 s lease: the lease's expiry is measured in seconds, not 30.
SHORT_HEARTBEAT_S = 1
SHORT_TTL_S = 4

pytestmark = pytest.mark.integration

READY_LINES = {
    "all": (" ready.", "beat: Starting..."),
    "worker": (" ready.",),
    "flower": ("Visit me at",),
}
SPIKE_TOOL = (
    "echo 100 > /usr/src/app/data/control-1.csv; echo 100 > /usr/src/app/data/control-2.csv; "
    "echo 200 > /usr/src/app/data/control-3.csv"
)
FLOWER_USER = "mao"
RUN_TASKS = {"mao.prepare_dataset", "mao.run_container", "mao.detect_spike",
             "mao.publish_notification"}  # fmt: skip


StartScript = Callable[..., Script]


@pytest.fixture
def worker_sh(
    node: NodeUnderTest, tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[StartScript]:
    """Start `worker.sh ROLE` from a directory outside the repository with the node's environment
    (plus `env`) and wait until its processes are ready. Teardown kills what is left and removes
    the containers of this node's runs."""
    started: list[Script] = []

    def start(role: str = "all", env: dict[str, str] | None = None) -> Script:
        log_path = tmp_path / f"worker-sh-{role}-{uuid.uuid4().hex[:6]}.log"
        script = Script(role, node.env | (env or {}), log_path, cwd=tmp_path)
        started.append(script)
        for line in READY_LINES[role]:
            script.wait_for_log(line, WORKER_READY_TIMEOUT_S)
        return script

    yield start
    for script in started:
        script.kill_group()
    runs = node.runs()
    for container in docker_client.containers.list(
        all=True, filters={"label": LABEL_RUN_ID}, ignore_removed=True
    ):
        with contextlib.suppress(NotFound):
            runs.get(container.labels[LABEL_RUN_ID])
            container.remove(force=True)


def member_ids(node: NodeUnderTest) -> list[str]:
    result = node.maoctl("members", "--json")
    assert result.returncode == 0, result.stderr
    return [member["node_id"] for member in listing(result.stdout)]


def start_running(
    node: NodeUnderTest, docker_client: docker.DockerClient, tool: str
) -> tuple[str, str]:
    """Start a run of `tool` and wait until its container runs; return run id and container."""
    result = node.maoctl("tool", "run", tool, "--no-wait")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    wait_until(
        lambda: running_containers(docker_client, run_id), 30, what=f"run {run_id}'s container"
    )
    return run_id, running_containers(docker_client, run_id)[0]


def running_containers(docker_client: docker.DockerClient, run_id: str) -> list[str]:
    return [
        c.name
        for c in docker_client.containers.list(
            filters={"label": f"mao.run_id={run_id}"}, ignore_removed=True
        )
    ]


@pytest.mark.slow
def test_worker_sh_joins_the_federation_and_leaves_it_on_sigterm(
    node: NodeUnderTest, worker_sh: StartScript
) -> None:
    script = worker_sh("all")
    ready = time.monotonic()

    wait_until(
        lambda: member_ids(node) == ["node-a"],
        DEFAULT_HEARTBEAT_S + 5,
        what="node-a as the one member",
        poll_s=0.2,
    )
    joined_s = time.monotonic() - ready
    members = listing(node.maoctl("members", "--json").stdout)
    table = node.maoctl("members", env={"COLUMNS": "200"}).stdout
    script.process.send_signal(signal.SIGTERM)

    assert script.process.wait(timeout=30) == 0, script.log()
    assert member_ids(node) == []
    assert joined_s <= DEFAULT_HEARTBEAT_S + 5
    assert set(members[0]) == {
        "node_id", "hostname", "version", "started_at", "last_seen", "workers", "tools",
    }  # fmt: skip
    assert "node-a" in table
    assert "seen" in table
    log = script.log()
    assert "[worker.sh] stopping the worker" in log
    assert "[worker.sh] stopping beat" in log
    assert "[worker.sh] stopped" in log
    assert "grace period" not in log


@pytest.mark.slow
def test_worker_sh_restarts_a_crashed_beat(node: NodeUnderTest, worker_sh: StartScript) -> None:
    script = worker_sh("all")
    children = subprocess.run(
        ["pgrep", "-f", "-P", str(script.process.pid), "celery .* beat"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert len(children) == 1, script.log()

    os.kill(int(children[0]), signal.SIGKILL)

    script.wait_for_log("restarting it in 5 s", 10)
    wait_until(
        lambda: script.log().count("beat: Starting...") == 2,
        30,
        what="a second beat started",
        poll_s=0.2,
        details=script.log,
    )
    assert script.process.poll() is None
    script.process.send_signal(signal.SIGTERM)
    assert script.process.wait(timeout=30) == 0, script.log()


@pytest.mark.slow
def test_a_killed_node_leaves_the_federation_within_the_member_ttl(
    node: NodeUnderTest, worker_sh: StartScript
) -> None:
    short = {
        "MAO_HEARTBEAT_INTERVAL_S": str(SHORT_HEARTBEAT_S),
        "MAO_MEMBER_TTL_S": str(SHORT_TTL_S),
    }
    script = worker_sh("all", env=short)
    wait_until(
        lambda: member_ids(node) == ["node-a"],
        SHORT_HEARTBEAT_S + 5,
        what="node-a as the one member",
        poll_s=0.2,
    )

    script.kill_group()
    killed = time.monotonic()
    wait_until(lambda: member_ids(node) == [], SHORT_TTL_S + 5, what="no member left", poll_s=0.2)
    gone_s = time.monotonic() - killed

    # Gone by the lease's expiry (at most one TTL after the last heartbeat), not by a revoke.
    assert SHORT_TTL_S - SHORT_HEARTBEAT_S - 1 <= gone_s <= SHORT_TTL_S + 2, gone_s


def stop_with_sigterm(script: Script) -> tuple[int, float]:
    """SIGTERM a started worker.sh; return its exit code and how long it took to exit, in s."""
    signalled = time.monotonic()
    script.process.send_signal(signal.SIGTERM)
    code = script.process.wait(timeout=60)
    return code, time.monotonic() - signalled


@pytest.mark.slow
def test_a_run_outliving_the_grace_period_is_interrupted_and_its_lock_freed(
    node: NodeUnderTest,
    worker_sh: StartScript,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    register(node, "sleeper", tool_image("sleep 30"), make_data_repo("sleeper"))
    script = worker_sh("worker", env={"MAO_SHUTDOWN_GRACE_S": "2"})
    run_id, _ = start_running(node, docker_client, "sleeper")

    code, stopped_s = stop_with_sigterm(script)

    assert code == 0, script.log()
    assert stopped_s < 20, script.log()
    report = node.runs().get(run_id)
    assert report.status == RunStatus.INTERRUPTED
    assert report.error == (
        "interrupted: the node shut down; the container was stopped after a grace period of 2 s"
    )
    assert run_containers(docker_client, run_id) == []
    assert node.runs().holder("sleeper") is None
    again = node.maoctl("tool", "run", "sleeper", "--no-wait")
    assert again.returncode == 0, again.stderr
    log = script.log()
    assert "[worker.sh] grace period of 2 s over" in log
    assert f"shutdown: interrupted 1 run(s), their containers stopped: {run_id}" in log


def test_shutdown_interrupts_only_unfinished_runs_of_this_node_and_keeps_their_containers(
    node: NodeUnderTest, docker_client: docker.DockerClient, busybox_image: str
) -> None:
    runs = node.runs()
    mine, ended, foreign = (uuid.uuid4().hex for _ in range(3))
    for run_id, status in ((mine, RunStatus.RUNNING), (ended, RunStatus.SUCCEEDED)):
        runs.save(RunReport(run_id=run_id, tool=f"t{run_id[:6]}", node="node-a", status=status))
    started = [
        docker_client.containers.run(
            busybox_image,
            ["sleep", "30"],
            labels={LABEL_RUN_ID: run_id},
            network_mode="none",
            detach=True,
        )
        for run_id in (mine, ended, foreign)
    ]
    try:
        interrupted = interrupt_running_runs(docker_client, runs, grace_s=7.5, stop_timeout_s=1)
        statuses = []
        for container in started:
            container.reload()
            statuses.append(container.status)
    finally:
        for container in started:
            container.remove(force=True)

    assert interrupted == [mine]
    assert statuses == ["exited", "running", "running"]
    report = runs.get(mine)
    assert report.status == RunStatus.INTERRUPTED
    assert report.error is not None
    assert report.error.endswith("stopped after a grace period of 7.5 s")
    assert report.finished_at is not None
    assert runs.get(ended).status == RunStatus.SUCCEEDED


def test_a_run_ending_within_the_grace_period_is_not_interrupted(
    node: NodeUnderTest,
    worker_sh: StartScript,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    register(node, "brief", tool_image(f"sleep 2; {SPIKE_TOOL}"), make_data_repo("brief"))
    script = worker_sh("worker", env={"MAO_SHUTDOWN_GRACE_S": "20"})
    run_id, _ = start_running(node, docker_client, "brief")

    code, stopped_s = stop_with_sigterm(script)

    assert code == 0, script.log()
    assert stopped_s < 15, script.log()
    assert "grace period of 20 s over" not in script.log()
    # The warm-stopped worker finished the container step; a worker started later runs the
    # steps queued after it.
    node.start_worker()
    report = wait_for(node, run_id, lambda r: r.status.terminal)
    assert report.status == RunStatus.SUCCEEDED, report.error
    assert report.exit_code == 0
    assert report.notification_key is not None


def test_flower_lists_the_tasks_of_a_run_behind_basic_auth(
    node: NodeUnderTest,
    worker_sh: StartScript,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
) -> None:
    (port,) = free_ports(1)
    password = uuid.uuid4().hex
    flower = worker_sh(
        "flower",
        env={
            "MAO_FLOWER_PORT": str(port),
            "MAO_FLOWER_USER": FLOWER_USER,
            "MAO_FLOWER_PASSWORD": password,
        },
    )
    node.start_worker()
    register(node, "spiky", tool_image(SPIKE_TOOL), make_data_repo("spiky"))
    result = node.maoctl("tool", "run", "spiky", "--no-wait")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.strip()
    wait_for(node, run_id, lambda r: r.status.terminal)
    url = f"http://{LOOPBACK}:{port}/api/tasks"

    def run_task_names() -> set[str]:
        tasks = requests.get(url, auth=(FLOWER_USER, password), timeout=5).json()
        return {t["name"] for t in tasks.values() if run_id in str(t.get("args"))}

    wait_until(
        lambda: run_task_names() == RUN_TASKS,
        10,
        what=f"Flower to show the run's tasks {sorted(RUN_TASKS)}",
        poll_s=0.2,
        details=lambda: f"shown: {sorted(run_task_names())}",
    )
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=(FLOWER_USER, "wrong"), timeout=5).status_code == 401
    command_line = Path(f"/proc/{flower.process.pid}/cmdline").read_bytes()
    assert b"flower" in command_line
    assert password.encode() not in command_line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MAO_FLOWER_ADDRESS": "0.0.0.0"},
            "refusing to serve Flower on 0.0.0.0 without basic auth",
        ),
        (
            {"MAO_FLOWER_USER": FLOWER_USER},
            "set both MAO_FLOWER_USER and MAO_FLOWER_PASSWORD",
        ),
    ],
    ids=["beyond loopback without credentials", "user without password"],
)
def test_flower_refuses_to_start_without_the_auth_it_needs(
    node: NodeUnderTest, env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [str(WORKER_SH), "flower"],
        env=node.env | env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


def test_the_listener_logs_a_spike_notification_of_the_federation(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    worker = node.start_worker()
    node.start_beat()
    register(node, "spiky", tool_image(SPIKE_TOOL), make_data_repo("spiky"))

    result = node.maoctl("tool", "run", "spiky", "--json")
    finished = time.monotonic()

    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: "spike: tool spiky on node node-a" in worker.log(),
        NOTIFICATION_LISTENER_INTERVAL_S + 5,
        what="the listener to log the spike notification",
        poll_s=0.2,
        details=worker.log,
    )
    assert time.monotonic() - finished <= NOTIFICATION_LISTENER_INTERVAL_S + 5
    run_id = json.loads(result.stdout)["run_id"]
    assert f"(run {run_id}," in worker.log()
