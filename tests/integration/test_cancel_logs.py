"""Cancelling runs (`maoctl run cancel`, a Celery revoke with terminate, Ctrl-C in `tool run`)
and their output (`maoctl run logs`): a real Celery worker, Redis, etcd, Docker and git.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

import docker
import pytest

from mao_celery import recovery
from mao_celery.enqueue import RUN_CONTAINER
from mao_celery.models import RunReport, RunStatus
from mao_celery.node import Node
from tests.fixtures.node import REPO_ROOT, NodeUnderTest
from tests.helpers import (
    RUN_WAIT_S,
    containers_created,
    maoctl,
    queue_run,
    register,
    run_containers,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.integration

FREE_WITHIN_S = 5.0
"""A cancelled run's tool may be run again this soon after the cancel is asked (issue 12)."""
SLEEPER = "echo started; sleep 300"
"""A tool that runs until it is stopped; as the container's process 1 it ignores SIGTERM, so a
cancel must SIGKILL it after the grace."""
WRITER = "echo 100 > /usr/src/app/data/control-$(date +%s%N).csv"
"""A tool that succeeds at once."""


def running_in_container(
    node: NodeUnderTest, docker_client: docker.DockerClient, run_id: str
) -> RunReport:
    """Run `run_id`'s report once its container runs."""
    report = wait_for(node, run_id, lambda r: r.status == RunStatus.RUNNING)
    wait_until(
        lambda: run_containers(docker_client, run_id),
        RUN_WAIT_S,
        what=f"the container of run {run_id}",
    )
    return report


@pytest.mark.slow
def test_cancelling_a_running_run_removes_its_container_and_frees_the_tool_within_5_s(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    register(node, "sleeper", tool_image(SLEEPER), make_data_repo())
    run_id = queue_run(node, "sleeper")
    running_in_container(node, docker_client, run_id)

    asked = time.monotonic()
    cancel = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "cli.py"), "run", "cancel", run_id[:8]],
        env=node.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: node.runs().holder("sleeper") is None,
        FREE_WITHIN_S,
        what="the tool's lock released by the cancel",
    )
    assert time.monotonic() - asked <= FREE_WITHIN_S
    second = queue_run(node, "sleeper")  # runnable again while the old container is being stopped
    out, err = cancel.communicate(timeout=60)

    assert cancel.returncode == 0, err
    assert f"run {run_id} cancelled; tool sleeper is free" in out
    assert "container was stopped and removed" in out
    assert run_containers(docker_client, run_id) == []
    report = wait_for(node, run_id, lambda r: RUN_CONTAINER in r.steps_done)
    assert report.status == RunStatus.CANCELLED
    assert report.cancelled is not None
    assert report.cancelled.by.startswith("maoctl (")
    assert report.finished_at == report.cancelled.at
    shown = maoctl(node, "run", "show", run_id)
    assert shown.returncode == 4
    assert "cancelled by maoctl" in shown.stderr

    again = maoctl(node, "run", "cancel", run_id, "--json")  # idempotent
    assert again.returncode == 0, again.stderr
    assert '"cancelled": false' in again.stdout
    assert maoctl(node, "run", "cancel", second).returncode == 0
    wait_until(
        lambda: run_containers(docker_client, second) == [],
        RUN_WAIT_S,
        what=f"no container of the second run {second}",
    )


def test_a_queued_run_is_cancelled_before_it_starts(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    register(node, "later", tool_image(WRITER), make_data_repo())
    queued = queue_run(node, "later")  # no worker yet: the run stays queued

    result = maoctl(node, "run", "cancel", queued)

    assert result.returncode == 0, result.stderr
    assert f"run {queued} cancelled; tool later is free" in result.stdout
    assert node.runs().get(queued).status == RunStatus.CANCELLED
    with containers_created(docker_client, f"mao.run_id={queued}") as created:
        node.start_worker(concurrency=1)  # takes the cancelled run's message first
        after = queue_run(node, "later")
        assert wait_for(node, after, lambda r: r.status.terminal).status == RunStatus.SUCCEEDED
    report = node.runs().get(queued)
    assert report.status == RunStatus.CANCELLED
    assert report.steps_done == []
    assert report.taken_by is None
    assert created == []


@pytest.mark.slow
def test_a_celery_revoke_with_terminate_cancels_the_run_and_frees_the_tool(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    register(node, "revoked", tool_image(SLEEPER), make_data_repo())
    run_id = queue_run(node, "revoked")
    report = running_in_container(node, docker_client, run_id)
    assert report.taken_by is not None

    with Node(node.settings()) as ctx:  # what Flower's /api/task/revoke/ID?terminate=true does
        ctx.app.control.revoke(report.taken_by.task_id, terminate=True)

    done = wait_for(node, run_id, lambda r: r.status.terminal)
    assert done.status == RunStatus.CANCELLED
    assert done.cancelled is not None
    assert done.cancelled.by.startswith(f"celery revoke of {RUN_CONTAINER}")
    assert "terminated" in done.cancelled.by
    assert node.runs().holder("revoked") is None
    wait_until(
        lambda: run_containers(docker_client, run_id) == [],
        RUN_WAIT_S,
        what=f"the container of run {run_id} removed",
    )
    assert maoctl(node, "run", "cancel", queue_run(node, "revoked")).returncode == 0


@pytest.mark.slow
def test_ctrl_c_in_tool_run_names_the_run_and_leaves_it_going(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    register(node, "waited", tool_image(SLEEPER), make_data_repo())
    waiting = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "cli.py"), "tool", "run", "waited"],
        env=node.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    holder = wait_until(lambda: node.runs().holder("waited"), RUN_WAIT_S, what="the run queued")
    run_id = str(holder)
    running_in_container(node, docker_client, run_id)

    waiting.send_signal(signal.SIGINT)
    _, err = waiting.communicate(timeout=30)

    assert waiting.returncode == 130, err
    assert f"run {run_id} goes on" in err
    assert f"maoctl run logs {run_id} --follow" in err
    assert f"maoctl run cancel {run_id}" in err
    assert "Traceback" not in err
    assert node.runs().get(run_id).status == RunStatus.RUNNING
    assert run_containers(docker_client, run_id)
    assert maoctl(node, "run", "cancel", run_id).returncode == 0


def test_run_logs_returns_all_5000_lines_of_a_noisy_tool_after_its_container_is_gone(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    noisy = 'i=1; while [ $i -le 5000 ]; do echo "line $i"; i=$((i+1)); done; ' + WRITER
    register(node, "noisy", tool_image(noisy), make_data_repo())
    result = maoctl(node, "tool", "run", "noisy", "--json")
    assert result.returncode == 0, result.stderr
    run_id = RunReport.model_validate_json(result.stdout).run_id
    assert run_containers(docker_client, run_id) == []

    logs = maoctl(node, "run", "logs", run_id[:8])
    tail = maoctl(node, "run", "logs", run_id, "--tail", "3")

    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [f"line {i}" for i in range(1, 5001)]
    assert logs.stderr == ""
    assert tail.stdout.splitlines() == ["line 4998", "line 4999", "line 5000"]
    ended = maoctl(node, "run", "cancel", run_id)
    assert ended.returncode == 0, ended.stderr
    assert f"run {run_id} already ended (succeeded); nothing to cancel" in ended.stdout
    assert maoctl(node, "run", "logs", "nosuchrun").returncode == 1
    assert maoctl(node, "run", "cancel", "nosuchrun").returncode == 1


def test_run_logs_follow_streams_a_live_run_to_its_end(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    slow = "echo first; sleep 4; echo last; " + WRITER
    register(node, "slow", tool_image(slow), make_data_repo())
    run_id = queue_run(node, "slow")
    running_in_container(node, docker_client, run_id)

    follow = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "cli.py"), "run", "logs", run_id, "--follow"],
        env=node.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    first = follow.stdout.readline()
    still = node.runs().get(run_id).status
    out, err = follow.communicate(timeout=RUN_WAIT_S)

    assert first == "first\n"
    assert not still.terminal  # streamed while the tool ran
    assert follow.returncode == 0, err
    assert out == "last\n"
    assert node.runs().get(run_id).status == RunStatus.SUCCEEDED


def test_the_recovery_never_resumes_a_cancelled_run(node: NodeUnderTest) -> None:
    runs = node.runs()
    report = RunReport(run_id="cancelledrun", tool="gone", node="node-a")
    runs.begin(report, 60)
    runs.save(report.updated(status=RunStatus.RUNNING))
    cancelled, now = runs.cancel("cancelledrun", "a test")
    assert now
    assert runs.holder("gone") is None

    assert not runs.save(cancelled.failed("a late step"))  # a cancelled run stays cancelled
    with Node(node.settings()) as ctx:
        done = recovery.recover(ctx, stale_after_s=0)
    assert done.summary() == {"resumed": [], "lost": [], "stale": [], "invalid": []}
    assert runs.get("cancelledrun").status == RunStatus.CANCELLED
