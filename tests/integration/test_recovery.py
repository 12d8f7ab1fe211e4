"""Runs of a killed worker recovered in seconds, with default settings (visibility timeout
4200 s): worker.sh, real Celery worker processes, Redis, etcd and Docker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import docker
import pytest
import redis

from mao_celery.containers import LABEL_RUN_ID
from mao_celery.models import RunReport, RunStatus
from tests.fixtures.node import WORKER_READY_TIMEOUT_S, NodeUnderTest
from tests.helpers import (
    COUNTING_TOOL,
    HEAVY,
    Script,
    containers_created,
    queue_run,
    register,
    run_containers,
    wait_for,
    wait_until,
)

pytestmark = HEAVY

RECOVERY_LIMIT_S = 60.0
"""A killed worker's run ends at most this long after the worker is back (issue 9)."""
KILLS = 5
CONTAINER_S = 10
WORKER_STARTED = "[worker.sh] worker started (pid "


@pytest.fixture
def node_sh(node: NodeUnderTest, tmp_path: Path) -> Iterator[Script]:
    """`worker.sh all` (worker and beat) of the node, default settings, ready; killed at the end."""
    assert not {"MAO_BROKER_VISIBILITY_TIMEOUT_S", "MAO_RUN_TIMEOUT_S"} & set(node.env)
    script = Script("all", node.env, tmp_path / "worker-sh.log", cwd=tmp_path)
    try:
        script.wait_for_log(" ready.", WORKER_READY_TIMEOUT_S)
        yield script
    finally:
        script.kill_group()


def wait_container_running(docker_client: docker.DockerClient, run_id: str) -> None:
    def running() -> bool:
        found = docker_client.containers.list(
            filters={"label": f"mao.run_id={run_id}"}, ignore_removed=True
        )
        return bool(found)

    wait_until(running, 60, what=f"run {run_id}'s container to run", poll_s=0.2)


def children(pid: int, pattern: str = "") -> list[int]:
    """The pids of `pid`'s child processes (whose command line matches `pattern`)."""
    argv = ["pgrep", "-P", str(pid), *(["-f", pattern] if pattern else [])]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def kill_worker(script: Script) -> None:
    """SIGKILL the celery worker started by worker.sh: its main process and its pool."""
    (worker,) = children(script.process.pid, "celery .* worker")
    for pid in [*children(worker), worker]:
        os.kill(pid, signal.SIGKILL)


def test_runs_of_a_sigkilled_worker_end_within_60_s_of_its_restart_with_default_settings(
    node: NodeUnderTest,
    node_sh: Script,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    image = tool_image(COUNTING_TOOL.format(sleep_s=CONTAINER_S))
    register(node, "crashy", image, make_data_repo())
    runs = node.runs()
    recovered_s: list[float] = []
    run_ids: list[str] = []
    with containers_created(docker_client, "mao.tool=crashy") as created:
        for kill in range(1, KILLS + 1):
            run_id = queue_run(node, "crashy")
            run_ids.append(run_id)
            wait_container_running(docker_client, run_id)
            kill_worker(node_sh)
            wait_until(
                lambda kill=kill: node_sh.log().count(WORKER_STARTED) == kill + 1,  # type: ignore[misc]
                30,
                what="worker.sh to restart the worker",
                poll_s=0.05,
                details=node_sh.log,
            )
            restarted = time.monotonic()
            report = runs.wait(run_id, lambda r: r.status.terminal, RECOVERY_LIMIT_S, poll_s=0.1)
            recovered_s.append(time.monotonic() - restarted)

            assert report.status == RunStatus.SUCCEEDED, (
                report.status,
                report.error,
                node_sh.log(),
            )
            assert run_containers(docker_client, run_id) == []
            assert runs.holder("crashy") is None
    print(f"recovered {KILLS} runs, seconds after the restart: {recovered_s}")

    assert max(recovered_s) <= RECOVERY_LIMIT_S, recovered_s
    starts = (node.importdir / "crashy" / "starts.txt").read_text()
    assert starts.count("start") == KILLS
    ours = [e["Actor"]["Attributes"][LABEL_RUN_ID] for e in created]  # not another test's
    assert sorted(r for r in ours if r in run_ids) == sorted(run_ids), "one container per run"
    assert node_sh.log().count("step resumed") >= KILLS


def test_a_run_whose_container_is_gone_is_failed_as_lost_with_its_last_state(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    worker = node.start_worker()
    register(node, "vanished", tool_image("sleep 60"), make_data_repo())
    run_id = queue_run(node, "vanished")
    wait_container_running(docker_client, run_id)
    taken_by = node.runs().get(run_id).taken_by
    worker.kill(signal.SIGKILL)
    for name in run_containers(docker_client, run_id):
        docker_client.containers.get(name).remove(force=True)

    node.start_worker()
    report = wait_for(node, run_id, lambda r: r.status.terminal)

    assert taken_by is not None
    assert taken_by.step == "mao.run_container"
    assert taken_by.hostname == worker.name.replace("%h", socket.gethostname())
    assert report.status == RunStatus.FAILED
    assert report.error == (
        f"lost: worker {taken_by.hostname} (pid {taken_by.pid}) died during mao.run_container "
        "and the run's container is gone; last known state: running"
    )
    assert run_containers(docker_client, run_id) == []
    assert node.runs().holder("vanished") is None


def test_the_sweep_skips_an_invalid_record_and_fails_a_stale_run(
    node: NodeUnderTest, redis_url: str
) -> None:
    runs = node.runs()
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    stale = RunReport(run_id="stale-run", tool="orphan", node="node-a", queued_at=long_ago)
    recent = RunReport(run_id="recent-run", tool="busy", node="node-a")
    ended = RunReport(run_id="ended-run", tool="done", node="node-a", queued_at=long_ago)
    for report in (stale, recent, ended):
        runs.begin(report, lock_ttl_s=3600)
    runs.save(ended.failed("the tool exited with code 1"))
    with redis.Redis.from_url(redis_url) as client:
        client.set("mao:run:bad", "not json")
        client.zadd("mao:runs:orphan", {"bad": time.time()})
        client.hset("mao:run:hashed", "status", "running")
        client.zadd("mao:runs:orphan", {"hashed": time.time()})

    worker = node.start_worker()  # its worker_ready sends the sweep
    report = wait_for(node, "stale-run", lambda r: r.status.terminal)

    assert report.status == RunStatus.FAILED
    assert (report.error or "").startswith("lost: not finished ")
    assert runs.holder("orphan") is None
    assert runs.get("recent-run").status == RunStatus.QUEUED
    assert runs.holder("busy") == "recent-run"
    assert runs.get("ended-run").error == "the tool exited with code 1"
    wait_until(
        lambda: "skipped invalid state at mao:run:hashed" in worker.log(),
        10,
        what="the sweep's warning",
        details=worker.log,
    )
    assert "skipped invalid state at mao:run:bad: not a valid run record" in worker.log()


def test_a_twin_recovery_resumes_a_dead_step_once(node: NodeUnderTest) -> None:
    runs = node.runs()
    task_id = uuid.uuid4().hex

    first = runs.claim_resume(task_id, "r1")
    second = runs.claim_resume(task_id, "r1")

    assert (first, second) == (True, False)
