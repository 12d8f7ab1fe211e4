"""Tool runs end to end: maoctl, a real Celery worker, Redis, etcd, Docker and git."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable

import docker
import pytest

from mao_celery.models import RunReport, RunStatus
from tests.fixtures.node import NodeUnderTest
from tests.helpers import (
    RUN_WAIT_S,
    containers_created,
    listing,
    register,
    run_containers,
    wait_for,
    wait_until,
)

pytestmark = pytest.mark.integration

TOOL_UID = 10001


def test_demo_run_reports_a_spike_and_publishes_one_notification(
    node: NodeUnderTest, demo_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    register(node, "demo", demo_image, make_data_repo("demo"))

    result = node.maoctl("tool", "run", "demo", "--json")

    assert result.returncode == 0, result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.SUCCEEDED
    assert report.spike is not None
    assert report.spike.spike
    assert report.spike.values == [100.0, 102.0, 146.0]
    assert report.spike.baseline == pytest.approx(101.0)
    assert report.spike.gain_pct == pytest.approx(44.554, abs=0.01)
    assert (node.importdir / "demo" / "README.md").is_file()
    assert (node.importdir / "demo" / "data-1.csv").is_file()
    listed = node.maoctl("notifications", "list", "--tool", "demo", "--json")
    notifications = listing(listed.stdout)
    assert [n["run_id"] for n in notifications] == [report.run_id]
    assert notifications[0]["key"] == report.notification_key


def test_the_report_for_people_names_the_spike(
    node: NodeUnderTest, demo_image: str, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    register(node, "demo", demo_image, make_data_repo("demo"))

    result = node.maoctl("tool", "run", "demo")

    assert result.returncode == 0, result.stderr
    for expected in ("image      mao-demo:latest", "baseline   101.0", "current    146.0",
                     "spike      YES", "notified   "):  # fmt: skip
        assert expected in result.stdout
    runs = listing(node.maoctl("tool", "runs", "demo", "--json").stdout)
    assert len(runs) == 1
    assert runs[0]["status"] == "succeeded"


def test_a_tool_exiting_3_fails_the_run_with_its_log_tail(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    image = tool_image("echo collecting; echo 'upstream API said no' >&2; exit 3")
    register(node, "broken", image, make_data_repo())

    result = node.maoctl("tool", "run", "broken", "--json")

    assert result.returncode == 4
    assert "exited with code 3" in result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.FAILED
    assert report.exit_code == 3
    assert "upstream API said no" in report.log_tail
    assert report.spike is None
    assert listing(node.maoctl("notifications", "list", "--json").stdout) == []


def test_a_tool_running_past_its_timeout_is_killed(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker(env={"MAO_RUN_TIMEOUT_S": "2"})
    register(node, "slow", tool_image("sleep 60"), make_data_repo())

    started = time.monotonic()
    result = node.maoctl("tool", "run", "slow", "--json")

    assert result.returncode == 4
    assert time.monotonic() - started < 30
    report = RunReport.model_validate_json(result.stdout)
    assert report.error is not None
    assert report.error.startswith("timeout")
    assert run_containers(docker_client, report.run_id) == []


def test_a_missing_image_fails_the_run_naming_the_image(
    node: NodeUnderTest, make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    # A loopback registry that nobody serves: the one pull attempt stays on this machine.
    image = "127.0.0.1:9/mao-no-such-image:latest"
    register(node, "ghost", image, make_data_repo())

    result = node.maoctl("tool", "run", "ghost")

    assert result.returncode == 4
    assert image in result.stderr
    assert "not found locally and pull failed" in result.stderr


def test_a_tool_writing_no_control_file_fails_the_run_with_the_reason(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    register(node, "quiet", tool_image("echo 1 > /usr/src/app/data/data.csv"), make_data_repo())

    result = node.maoctl("tool", "run", "quiet", "--json")

    assert result.returncode == 4
    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.FAILED
    assert report.exit_code == 0
    assert report.error is not None
    assert report.error.startswith(
        "the tool wrote no new control file in /usr/src/app/data (it runs as uid:gid 10001:10001;"
    )
    assert report.error in result.stderr
    assert report.spike is not None
    assert report.spike.compliance_warning
    assert not report.spike.spike
    assert listing(node.maoctl("notifications", "list", "--json").stdout) == []


def test_an_image_with_a_user_of_its_own_runs_as_the_tool_user_and_succeeds(
    node: NodeUnderTest,
    docker_client: docker.DockerClient,
    busybox_image: str,
    make_data_repo: Callable[..., str],
) -> None:
    script = "id -u; echo 5 > /usr/src/app/data/control-1.csv"
    dockerfile = f"FROM {busybox_image}\nUSER 1000\nCMD {json.dumps(['sh', '-c', script])}\n"
    image = "mao-test-user-1000:latest"
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=image, rm=True)
    node.start_worker()
    register(node, "own-user", image, make_data_repo())

    result = node.maoctl("tool", "run", "own-user", "--json")

    assert result.returncode == 0, result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.SUCCEEDED
    assert (report.user, report.log_tail) == (f"{TOOL_UID}:{TOOL_UID}", f"{TOOL_UID}\n")
    assert report.spike is not None
    assert report.spike.new_files == ["control-1.csv"]
    assert (node.importdir / "own-user" / "control-1.csv").stat().st_uid == TOOL_UID


def test_a_tool_asking_for_a_network_the_node_does_not_allow_fails_and_starts_nothing(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker()
    image = tool_image("echo 1 > /usr/src/app/data/control-1.csv")
    register(node, "online", image, make_data_repo(), "--network", "bridge")
    with containers_created(docker_client, "mao.tool=online") as created:
        result = node.maoctl("tool", "run", "online", "--json")

    assert result.returncode == 4
    expected = (
        "tool online asks for network 'bridge', which this node does not allow "
        "(MAO_TOOL_NETWORKS_ALLOWED=none); an operator may allow it"
    )
    assert expected in result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert (report.status, report.error, report.container_name) == (
        RunStatus.FAILED,
        expected,
        "",
    )
    assert created == []


# /proc/net/dev lists the container's interfaces: loopback alone without a network. Reading it
# sends nothing anywhere.
NETWORK_PROBE = "cat /proc/net/dev; echo 1 > /usr/src/app/data/control-1.csv"


@pytest.mark.parametrize(
    ("asked", "expected_network", "has_eth0"),
    [([], "none", False), (["--network", "bridge"], "bridge", True)],
    ids=["default-none", "bridge-allowed"],
)
def test_a_tool_runs_on_the_network_it_asks_for_when_the_node_allows_it(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    asked: list[str],
    expected_network: str,
    has_eth0: bool,
) -> None:
    node.start_worker(env={"MAO_TOOL_NETWORKS_ALLOWED": "none,bridge"})
    register(node, "probe", tool_image(NETWORK_PROBE), make_data_repo(), *asked)

    result = node.maoctl("tool", "run", "probe", "--json")

    assert result.returncode == 0, result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert report.network == expected_network
    assert "lo:" in report.log_tail
    assert ("eth0:" in report.log_tail) is has_eth0


def test_a_second_run_of_a_running_tool_is_refused(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    register(node, "busy", tool_image("sleep 4"), make_data_repo())

    first = node.maoctl("tool", "run", "busy", "--no-wait")
    second = node.maoctl("tool", "run", "busy")

    assert first.returncode == 0, first.stderr
    run_id = first.stdout.strip()
    assert second.returncode == 1
    assert f"already running (run {run_id})" in second.stderr
    wait_for(node, run_id, lambda r: r.status.terminal)
    third = node.maoctl("tool", "run", "busy", "--no-wait")
    assert third.returncode == 0, third.stderr


def test_a_lock_left_by_a_dead_run_expires(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    register(node, "stale", tool_image("true"), make_data_repo())
    runs = node.runs()
    runs.begin(RunReport(run_id="dead-run", tool="stale", node="node-a"), lock_ttl_s=5)

    refused = node.maoctl("tool", "run", "stale", "--no-wait")
    wait_until(lambda: runs.holder("stale") is None, 10, what="the dead run's lock to expire")
    accepted = node.maoctl("tool", "run", "stale", "--no-wait")

    assert refused.returncode == 1
    assert "already running (run dead-run)" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert runs.holder("stale") == accepted.stdout.strip()


COUNTING_TOOL = (
    "echo start >> /usr/src/app/data/starts.txt; sleep {sleep_s}; "
    "echo 100 > /usr/src/app/data/control-1.csv; echo 100 > /usr/src/app/data/control-2.csv; "
    "echo 200 > /usr/src/app/data/control-3.csv"
)


@pytest.mark.parametrize("victim", ["pool process", "whole worker"])
def test_a_worker_killed_mid_container_loses_nothing_and_doubles_nothing(
    node: NodeUnderTest,
    victim: str,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    fast_redelivery = {"MAO_BROKER_VISIBILITY_TIMEOUT_S": "5"}
    worker = node.start_worker(env=fast_redelivery)
    register(node, "counted", tool_image(COUNTING_TOOL.format(sleep_s=6)), make_data_repo())
    run_id = node.maoctl("tool", "run", "counted", "--no-wait").stdout.strip()
    starts = node.importdir / "counted" / "starts.txt"
    wait_until(
        lambda: starts.is_file() and "start" in starts.read_text(),
        RUN_WAIT_S,
        what="the tool to start in its container",
    )

    if victim == "pool process":
        for pid in worker.pool_pids():
            os.kill(pid, signal.SIGKILL)
    else:
        worker.kill(signal.SIGKILL)
        node.start_worker(env=fast_redelivery)

    report = wait_for(node, run_id, lambda r: r.status.terminal)
    assert report.status == RunStatus.SUCCEEDED, report.error
    assert (node.importdir / "counted" / "starts.txt").read_text().count("start") == 1
    assert run_containers(docker_client, run_id) == []
    notifications = listing(node.maoctl("notifications", "list", "--json").stdout)
    assert [n["run_id"] for n in notifications] == [run_id]


@pytest.mark.slow
def test_a_container_outliving_the_visibility_timeout_runs_once_and_notifies_once(
    node: NodeUnderTest,
    tool_image: Callable[[str], str],
    make_data_repo: Callable[..., str],
    docker_client: docker.DockerClient,
) -> None:
    node.start_worker(env={"MAO_BROKER_VISIBILITY_TIMEOUT_S": "2"}, concurrency=2)
    register(node, "long", tool_image(COUNTING_TOOL.format(sleep_s=8)), make_data_repo())
    seen: set[str] = set()
    stop = threading.Event()

    def watch_containers() -> None:
        while not stop.is_set():
            # ignore_removed: a container removed between listing and inspection is skipped
            found = docker_client.containers.list(
                all=True, filters={"label": "mao.tool=long"}, ignore_removed=True
            )
            seen.update(c.id for c in found)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_containers)
    watcher.start()
    try:
        result = node.maoctl("tool", "run", "long", "--json")
    finally:
        stop.set()
        watcher.join()

    assert result.returncode == 0, result.stderr
    report = RunReport.model_validate_json(result.stdout)
    assert len(seen) == 1
    assert (node.importdir / "long" / "starts.txt").read_text().count("start") == 1
    notifications = listing(node.maoctl("notifications", "list", "--json").stdout)
    assert [n["run_id"] for n in notifications] == [report.run_id]
