"""One run, one machine (issue 10): two worker machines on one Redis, each with its own
`MAO_WORKER_HOST` and `MAO_IMPORTDIR`; real Celery workers, Redis, etcd and Docker.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import docker
import pytest

from mao_celery import dataplane
from mao_celery.models import RunReport, RunStatus, utcnow
from mao_celery.node import Node
from mao_celery.periodic import RECOVER_RUNS
from tests.fixtures.node import NodeUnderTest
from tests.helpers import (
    COUNTING_TOOL,
    HEAVY,
    queue_run,
    register,
    run_containers,
    wait_for,
    wait_until,
)

pytestmark = HEAVY


@pytest.fixture
def redis_url(own_redis_url: str) -> str:
    """The node's Redis: a server of this test's own (many workers and queues per test)."""
    return own_redis_url


RUNS = 12
LOST_AFTER_S = 3


def hosts_of(report: RunReport) -> set[str]:
    """The machines that took a step of the run."""
    return {taker.host for taker in report.takers}


def under(path: str, directory: Path) -> bool:
    return Path(path).is_relative_to(directory)


def container_running(docker_client: docker.DockerClient, run_id: str) -> bool:
    found = docker_client.containers.list(filters={"label": f"mao.run_id={run_id}"})
    return bool(found)


def test_all_steps_of_each_run_are_taken_on_the_machine_of_its_first_step(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
) -> None:
    node.start_worker(host="alpha")
    node.start_worker(host="beta")
    register(node, "split", tool_image(COUNTING_TOOL.format(sleep_s=0)), make_data_repo())

    reports = []
    for _ in range(RUNS):
        run_id = queue_run(node, "split")
        reports.append(wait_for(node, run_id, lambda r: r.status.terminal))

    for report in reports:
        assert report.status == RunStatus.SUCCEEDED, (report.run_id, report.error)
        steps = [taker.step for taker in report.takers]
        assert steps == report.steps_done, report.takers
        assert len(steps) == 4
        assert hosts_of(report) == {report.host}, report.takers
        assert report.host is not None
        assert under(report.data_dir, node.host_importdir(report.host)), report.data_dir
    by_host = {host: [r for r in reports if r.host == host] for host in ("alpha", "beta")}
    assert all(by_host.values()), "both machines took runs"
    for host, runs in by_host.items():
        starts = (node.host_importdir(host) / "split" / "starts.txt").read_text()
        assert starts.count("start") == len(runs)
    shown = node.maoctl("run", "show", reports[0].run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"host       {reports[0].host}" in shown.stdout


def kill_alpha_during_the_container(
    node: NodeUnderTest, docker_client: docker.DockerClient, image: str, data_repo: str
) -> str:
    """Start a run on machine alpha (its only worker), SIGKILL that worker while the container
    runs, start a worker of machine beta and wait until its sweep has found the run waiting for
    alpha; returns the run id."""
    alpha = node.start_worker(host="alpha")
    register(node, "crashy", image, data_repo)
    run_id = queue_run(node, "crashy")
    wait_until(
        lambda: container_running(docker_client, run_id),
        60,
        what=f"run {run_id}'s container to run",
        poll_s=0.2,
    )
    alpha.kill(signal.SIGKILL)
    beta = node.start_worker(host="beta")  # its worker_ready sends a sweep
    report = wait_for(node, run_id, lambda r: r.host_lost_at is not None or r.status.terminal)
    assert report.status == RunStatus.RUNNING, (report.status, report.error, beta.log())
    assert report.host == "alpha"
    return run_id


def test_a_killed_workers_run_waits_for_its_machine_and_resumes_there(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    image = tool_image(COUNTING_TOOL.format(sleep_s=5))
    run_id = kill_alpha_during_the_container(node, docker_client, image, make_data_repo())

    node.start_worker(host="alpha")  # its sweep (or beta's, sent on to alpha) resumes the run
    report = wait_for(node, run_id, lambda r: r.status.terminal)

    assert report.status == RunStatus.SUCCEEDED, (report.status, report.error)
    assert hosts_of(report) == {"alpha"}, report.takers
    assert [t.step for t in report.takers].count("mao.run_container") == 2
    assert report.host_lost_at is None
    assert under(report.data_dir, node.host_importdir("alpha"))
    starts = node.host_importdir("alpha") / "crashy" / "starts.txt"
    assert starts.read_text().count("start") == 1  # the container was adopted, not run again
    assert not (node.host_importdir("beta") / "crashy").exists()
    assert run_containers(docker_client, run_id) == []


def test_a_run_whose_machine_stays_away_is_failed_as_lost_naming_it(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.env["MAO_HOST_LOST_AFTER_S"] = str(LOST_AFTER_S)
    image = tool_image("sleep 120")
    run_id = kill_alpha_during_the_container(node, docker_client, image, make_data_repo())
    try:
        waiting = node.runs().get(run_id)
        assert waiting.host_lost_at is not None
        since = waiting.host_lost_at
        wait_until(
            lambda: utcnow() - since > timedelta(seconds=LOST_AFTER_S),
            LOST_AFTER_S + 5,
            what="the machine to be away longer than the bound",
        )
        with Node(node.settings()) as ctx:
            ctx.app.send_task(RECOVER_RUNS)
        report = wait_for(node, run_id, lambda r: r.status.terminal)
    finally:
        for name in run_containers(docker_client, run_id):
            docker_client.containers.get(name).remove(force=True)

    assert report.status == RunStatus.FAILED
    assert (report.error or "").startswith("lost: host alpha has had no live worker for "), (
        report.error
    )
    assert f"(MAO_HOST_LOST_AFTER_S {LOST_AFTER_S})" in (report.error or "")
    assert "died during mao.run_container; last known state: running" in (report.error or "")
    assert node.runs().holder("crashy") is None


def test_two_machines_pushing_share_one_history_and_each_spike_check_sees_every_run(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
) -> None:
    pushing = {"MAO_GIT_PUSH": "true"}
    node.start_worker(host="alpha", env=pushing)
    node.start_worker(host="beta", env=pushing)
    data_repo = make_data_repo()
    register(node, "shared", tool_image(COUNTING_TOOL.format(sleep_s=0)), data_repo)

    reports = []
    for _ in range(RUNS):
        run_id = queue_run(node, "shared")
        reports.append(wait_for(node, run_id, lambda r: r.status.terminal))
    clones = [node.host_importdir(host) / "shared" for host in ("alpha", "beta")]
    heads = [
        dataplane.refresh(
            clone,
            url=data_repo,
            branch=None,
            node_branch="mao/node-a",
            identity=dataplane.Identity.of_node("node-a"),
        )
        for clone in clones
    ]

    for count, report in enumerate(reports, start=1):
        assert report.status == RunStatus.SUCCEEDED, (report.run_id, report.error)
        assert hosts_of(report) == {report.host}, report.takers
        assert report.pushed_to == "mao/node-a", report.push_error
        assert report.spike is not None
        assert report.spike.control_files == count, (count, report.host)  # every earlier run
    assert {r.host for r in reports} == {"alpha", "beta"}, "both machines took runs"
    assert heads[0] == heads[1]
    for clone in clones:
        points = dataplane.history(clone, RUNS + 1)
        assert [p.run_id for p in points] == [r.run_id for r in reversed(reports)]
