"""Container steps on the container worker (Celery's thread pool, `ContainerPool`): 100 runs of
100 tools at once, each with one container, a short run of another tool not held up by them, a
killed container worker whose runs resume, and a Celery revoke with terminate. Real Celery
workers, Redis, etcd and Docker (network none).
"""

from __future__ import annotations

import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from mao_celery import tools
from mao_celery.containers import LABEL_RUN_ID
from mao_celery.enqueue import RUN_CONTAINER
from mao_celery.models import RunReport, RunStatus
from mao_celery.node import Node
from mao_celery.settings import Settings
from tests.fixtures.node import NodeUnderTest, Worker
from tests.fixtures.services import unique_name
from tests.helpers import HEAVY, RUN_WAIT_S, wait_until

pytestmark = HEAVY


@pytest.fixture
def redis_url(own_redis_url: str) -> str:
    """The node's Redis: a server of this test's own (many workers and queues per test)."""
    return own_redis_url


RUNS = 100
RESUMED_RUNS = 10
HELD = (
    "cd /usr/src/app/data; echo start >> starts.txt; while [ ! -e go ]; do sleep 1; done; rm go; "
    'echo 1 > "control-$(date +%s%N).csv"'
)
"""Counts its starts in starts.txt, runs until the test writes `go` into its data directory,
then writes a control file."""
SHORT = 'echo 1 > "/usr/src/app/data/control-$(date +%s%N).csv"'
START_TIMEOUT_S = 240.0
"""How long 100 runs get to have their containers running (clones on a 2-core machine)."""


@pytest.fixture
def ctx(node: NodeUnderTest) -> Iterator[Node]:
    """The node's clients, with the default container slots (more than `RUNS`: room for a
    short run beside them): a prefork worker for the other steps (it does not consume the
    containers queue) and the container worker must be started."""
    slots = Settings.model_fields["container_slots"].default
    assert slots > RUNS
    node.env["MAO_CONTAINER_SLOTS"] = str(slots)
    # Queues of this test's own: no worker process of another test can take its steps.
    node.env["MAO_WORKER_HOST"] = unique_name("machine")
    with Node(node.settings()) as clients:
        yield clients


def add_tools(ctx: Node, names: list[str], image: str, data_repo: str) -> None:
    for name in names:
        tools.register(
            ctx,
            "tool",
            name=name,
            author="tester",
            image=image,
            data_repo=data_repo,
            code_repo="https://example.org/code",
            artefact="csv",
        )


def start_runs(ctx: Node, names: list[str]) -> list[str]:
    return [tools.start_run(ctx, name).run_id for name in names]


def running_run_ids(docker_client: docker.DockerClient) -> set[str]:
    found = docker_client.containers.list(filters={"label": LABEL_RUN_ID}, ignore_removed=True)
    return {container.labels[LABEL_RUN_ID] for container in found}


def wait_running(ctx: Node, docker_client: docker.DockerClient, run_ids: list[str]) -> None:
    def details() -> str:
        running = len(set(run_ids) & running_run_ids(docker_client))
        reports = [ctx.runs.get(run_id) for run_id in run_ids]
        errors = Counter(r.error for r in reports if r.error)
        return f"{running} running; {Counter(r.status for r in reports)}; {errors}"

    wait_until(
        lambda: set(run_ids) <= running_run_ids(docker_client),
        START_TIMEOUT_S,
        what=f"the containers of {len(run_ids)} runs to run",
        poll_s=0.5,
        details=details,
    )


def release(importdir: Path, names: list[str]) -> None:
    """Let the held containers of tools `names` end (`HELD`)."""
    for name in names:
        (importdir / name / "go").touch()


def wait_all(ctx: Node, run_ids: list[str]) -> list[RunReport]:
    return [ctx.runs.wait(rid, lambda r: r.status.terminal, RUN_WAIT_S) for rid in run_ids]


def container_starts(importdir: Path, names: list[str]) -> list[int]:
    """How many times a container of each tool `names` started (`HELD` counts them; the
    daemon's event log keeps too few events to count 100 runs' containers)."""
    return [(importdir / name / "starts.txt").read_text().count("start") for name in names]


def container_takers(report: RunReport) -> set[str]:
    return {took.hostname for took in report.takers if took.step == RUN_CONTAINER}


def hostname(worker: Worker) -> str:
    return worker.name.replace("%h", socket.gethostname())


def test_100_concurrent_runs_each_get_one_container_and_a_short_run_is_not_held_up(
    node: NodeUnderTest,
    ctx: Node,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    names = [f"held-{i:03d}" for i in range(RUNS)]
    add_tools(ctx, names, tool_image(HELD), make_data_repo())
    add_tools(ctx, ["short"], tool_image(SHORT), make_data_repo("short"))
    node.start_worker()
    containers = node.start_container_worker()
    run_ids = start_runs(ctx, names)
    wait_running(ctx, docker_client, run_ids)

    (short_id,) = start_runs(ctx, ["short"])
    short = ctx.runs.wait(short_id, lambda r: r.status.terminal, RUN_WAIT_S)
    held = [ctx.runs.get(rid).status for rid in run_ids]
    release(node.importdir, names)
    reports = wait_all(ctx, run_ids)

    assert short.status == RunStatus.SUCCEEDED, short.error
    assert set(held) == {RunStatus.RUNNING}, Counter(held)
    assert [r.status for r in reports] == [RunStatus.SUCCEEDED] * RUNS, [
        r.error for r in reports if r.status != RunStatus.SUCCEEDED
    ]
    assert all(container_takers(r) == {hostname(containers)} for r in reports)
    assert container_starts(node.importdir, names) == [1] * RUNS
    assert not set(run_ids) & running_run_ids(docker_client)


def test_the_runs_of_a_killed_container_worker_resume_with_one_container_each(
    node: NodeUnderTest,
    ctx: Node,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    names = [f"resumed-{i:02d}" for i in range(RESUMED_RUNS)]
    add_tools(ctx, names, tool_image(HELD), make_data_repo())
    steps = node.start_worker()
    first = node.start_container_worker()
    run_ids = start_runs(ctx, names)
    wait_running(ctx, docker_client, run_ids)

    first.kill(signal.SIGKILL)
    second = node.start_container_worker()  # its worker_ready sends the recovery sweep
    wait_until(
        lambda: steps.log().count("step resumed") >= RESUMED_RUNS,
        RUN_WAIT_S,
        what="the sweep to resume the dead container steps",
        details=steps.log,
    )
    release(node.importdir, names)
    reports = wait_all(ctx, run_ids)

    assert [r.status for r in reports] == [RunStatus.SUCCEEDED] * RESUMED_RUNS, [
        r.error for r in reports if r.status != RunStatus.SUCCEEDED
    ]
    assert all(container_takers(r) == {hostname(first), hostname(second)} for r in reports), [
        container_takers(r) for r in reports
    ]
    assert container_starts(node.importdir, names) == [1] * RESUMED_RUNS


def test_a_celery_revoke_with_terminate_of_a_container_step_cancels_its_run(
    node: NodeUnderTest,
    ctx: Node,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    add_tools(ctx, ["revoked"], tool_image(HELD), make_data_repo())
    node.start_worker()
    node.start_container_worker()
    (run_id,) = start_runs(ctx, ["revoked"])
    wait_running(ctx, docker_client, [run_id])
    taken_by = ctx.runs.get(run_id).taken_by
    assert taken_by is not None
    assert taken_by.step == RUN_CONTAINER

    ctx.app.control.revoke(taken_by.task_id, terminate=True)  # as Flower's terminate does
    done = ctx.runs.wait(run_id, lambda r: r.status.terminal, RUN_WAIT_S)

    assert done.status == RunStatus.CANCELLED
    assert done.cancelled is not None
    assert "terminated" in done.cancelled.by
    wait_until(
        lambda: run_id not in running_run_ids(docker_client),
        RUN_WAIT_S,
        what=f"the container of run {run_id} removed",
    )
    assert ctx.runs.holder("revoked") is None
