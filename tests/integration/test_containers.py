"""containers.py against the real Docker daemon, with the FROM-scratch busybox image.

Every container runs with network_mode="none", as the tool user 10001:10001 (who owns the data
directory, as the prepare step arranges), and a run id of its own; teardown removes whatever
carries the test's run ids. The pure helpers (remaining time, timeout classification,
validation) are tested in tests/unit/test_containers.py.
"""

from __future__ import annotations

import inspect
import io
import os
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import docker
import pytest
from docker.api.container import ContainerApiMixin
from docker.models.containers import Container

from mao_celery.containers import (
    DATA_MOUNT,
    LABEL_RUN_ID,
    LABEL_TOOL,
    LOG_TAIL_MAX_CHARS,
    ContainerGone,
    ContainerOutcome,
    ContainerSpec,
    container_name,
    ensure_image,
    run_container,
    stop_run_containers,
)
from mao_celery.exceptions import NotFound, RunFailed, ServiceUnavailable
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

# For specs whose image is never looked at.
ANY_IMAGE = "mao-busybox:latest"
TOOL = "demo"
TOOL_UID = 10001
TOOL_USER = f"{TOOL_UID}:{TOOL_UID}"
# A registry on a closed loopback port: the one pull attempt fails at once and leaves the machine
# for no address but loopback (127.0.0.0/8 is an insecure registry by default, so plain HTTP).
MISSING_IMAGE = "127.0.0.1:9/mao-no-such-image:latest"
WAIT_LIMIT_S = 15.0


@pytest.fixture
def new_run_id(docker_client: docker.DockerClient) -> Iterator[Callable[[], str]]:
    """Make fresh run ids; on teardown remove every container labelled with one of them."""
    made: list[str] = []

    def make() -> str:
        made.append(uuid.uuid4().hex)
        return made[-1]

    yield make
    for run_id in made:
        for container in containers_of(docker_client, run_id):
            container.remove(force=True)


@pytest.fixture
def run_id(new_run_id: Callable[[], str]) -> str:
    return new_run_id()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "importdir" / TOOL
    path.mkdir(parents=True)
    os.chown(path, TOOL_UID, TOOL_UID)
    return path


@pytest.fixture(scope="module")
def writable_etc_image(docker_client: docker.DockerClient, busybox_image: str) -> str:
    """Busybox whose /etc anyone may write: only a read-only root file system keeps a tool out."""
    tag = "mao-test-writable-etc:latest"
    dockerfile = f"FROM {busybox_image}\nRUN chmod 1777 /etc\n"
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, network_mode="none"
    )
    return tag


def containers_of(client: docker.DockerClient, run_id: str) -> list[Container]:
    """Every container, running or not, labelled with `run_id`."""
    found: list[Container] = client.containers.list(
        all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"}, ignore_removed=True
    )
    return found


def make_spec(run_id: str, data_dir: Path, image: str, script: str, **kwargs: Any) -> ContainerSpec:
    """A spec running `sh -c script` as the tool user without network."""
    return ContainerSpec(
        run_id=run_id,
        tool=TOOL,
        image=image,
        data_dir=data_dir,
        user=TOOL_USER,
        network_mode="none",
        command=["sh", "-c", script],
        **kwargs,
    )


def ran_for_s(container: Container) -> float:
    """Seconds since the daemon started `container` (its `State.StartedAt`)."""
    container.reload()
    started = datetime.fromisoformat(container.attrs["State"]["StartedAt"])
    return (datetime.now(UTC) - started).total_seconds()


def create_run_container(client: docker.DockerClient, spec: ContainerSpec) -> Container:
    """Create (not start) a container named and labelled as `spec`'s run, as a lost task would."""
    assert spec.command is not None
    container: Container = client.containers.create(
        spec.image,
        spec.command,
        name=container_name(spec.run_id),
        labels={LABEL_RUN_ID: spec.run_id, LABEL_TOOL: spec.tool},
        volumes={str(spec.data_dir): {"bind": DATA_MOUNT, "mode": "rw"}},
        network_mode="none",
    )
    return container


def run_in_own_client(spec: ContainerSpec) -> ContainerOutcome:
    """run_container with a Docker client of its own, as a task in another worker process has."""
    client = docker.from_env()
    try:
        return run_container(client, spec)
    finally:
        client.close()


def some_thread_runs(function: Callable[..., object]) -> bool:
    """Whether a thread of this process is inside `function` (anywhere on its stack) right now."""
    code = inspect.unwrap(function).__code__
    for frame in sys._current_frames().values():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code is code:
                return True
            current = current.f_back
    return False


def is_running(client: docker.DockerClient, run_id: str) -> bool:
    return any(c.status == "running" for c in containers_of(client, run_id))


def outcome_or_gone(run: Callable[[], ContainerOutcome]) -> ContainerOutcome | ContainerGone:
    try:
        return run()
    except ContainerGone as e:
        return e


def test_run_boxes_the_container_binds_data_dir_sets_labels_and_limits_then_removes_it(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    script = f"until [ -f {DATA_MOUNT}/go ]; do sleep 0.05; done; echo $GREETING > out.txt"
    spec = make_spec(
        run_id,
        data_dir,
        busybox_image,
        f"cd {DATA_MOUNT}; {script}",
        memory_bytes=64 << 20,
        nano_cpus=500_000_000,
        environment={"GREETING": "hello"},
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(run_in_own_client, spec)
        wait_until(
            lambda: is_running(docker_client, run_id),
            WAIT_LIMIT_S,
            what="the run's container to run",
            poll_s=0.05,
        )
        (container,) = containers_of(docker_client, run_id)
        attrs = container.attrs
        (data_dir / "go").touch()
        outcome = future.result(timeout=WAIT_LIMIT_S)

    assert container.name == f"mao-run-{run_id}"
    labels = attrs["Config"]["Labels"]
    assert (labels[LABEL_RUN_ID], labels[LABEL_TOOL]) == (run_id, TOOL)
    assert attrs["Config"]["User"] == TOOL_USER
    assert attrs["Config"]["Tty"] is False
    assert attrs["Config"]["OpenStdin"] is False
    host_config = attrs["HostConfig"]
    assert host_config["Memory"] == 64 << 20
    assert host_config["NanoCpus"] == 500_000_000
    assert host_config["PidsLimit"] == 4096
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["CapDrop"] == ["ALL"]
    assert not host_config["CapAdd"]
    assert host_config["Privileged"] is False
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    assert host_config["NetworkMode"] == "none"
    assert host_config["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "1"},
    }
    assert host_config["Binds"] == [f"{data_dir}:{DATA_MOUNT}:rw"]
    assert outcome == ContainerOutcome(
        exit_code=0, timed_out=False, log_tail="", adopted=False, container_name=f"mao-run-{run_id}"
    )
    assert (data_dir / "out.txt").read_text() == "hello\n"
    assert (data_dir / "out.txt").stat().st_uid == TOOL_UID
    assert containers_of(docker_client, run_id) == []


def test_a_tool_leaves_no_setuid_root_file_and_no_device_node(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    script = f"cd {DATA_MOUNT}; cp /bin/sh x; chmod 4755 x; mknod -m 666 null c 1 3; echo done"
    outcome = run_container(docker_client, make_spec(run_id, data_dir, busybox_image, script))

    assert outcome.exit_code == 0
    assert "mknod: null: Operation not permitted" in outcome.log_tail
    entries = {path.name: path.lstat() for path in data_dir.iterdir()}
    assert sorted(entries) == ["x"]
    assert all(st.st_uid == TOOL_UID and st.st_gid == TOOL_UID for st in entries.values())
    assert not any(stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) for st in entries.values())
    assert not any(st.st_mode & stat.S_ISUID and st.st_uid == 0 for st in entries.values())


@pytest.mark.parametrize(
    ("read_only_rootfs", "expected"),
    [
        (True, ["sh: can't create /etc/x: Read-only file system", "wrote /tmp/x"]),
        (False, ["wrote /etc/x", "wrote /tmp/x"]),
    ],
    ids=["read-only", "writable"],
)
def test_a_read_only_root_file_system_leaves_the_tool_only_its_data_and_tmp(
    docker_client: docker.DockerClient,
    writable_etc_image: str,
    run_id: str,
    data_dir: Path,
    read_only_rootfs: bool,
    expected: list[str],
) -> None:
    script = "for f in /etc/x /tmp/x; do echo x > $f && echo wrote $f; done 2>&1"
    spec = make_spec(
        run_id, data_dir, writable_etc_image, script, read_only_rootfs=read_only_rootfs
    )

    outcome = run_container(docker_client, spec)

    assert outcome.exit_code == 0
    assert outcome.log_tail.splitlines() == expected


def test_the_log_tail_keeps_the_last_characters_of_a_huge_line(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    script = "head -c 100000 /dev/zero | tr '\\0' a; echo end"
    outcome = run_container(docker_client, make_spec(run_id, data_dir, busybox_image, script))

    assert len(outcome.log_tail) == LOG_TAIL_MAX_CHARS
    assert outcome.log_tail.endswith("aaaaend\n")


def test_nonzero_exit_returns_exit_code_and_last_log_lines(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    script = (
        'for i in $(seq 1 199); do echo "line $i"; done; sleep 0.2; echo "line 200" >&2; exit 3'
    )
    outcome = run_container(docker_client, make_spec(run_id, data_dir, busybox_image, script))

    assert outcome.exit_code == 3
    assert outcome.timed_out is False
    assert outcome.log_tail.splitlines() == [f"line {i}" for i in range(151, 201)]
    assert containers_of(docker_client, run_id) == []


def test_timeout_kills_container_and_removes_it(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, "echo started; sleep 30", timeout_s=2)
    began = time.monotonic()
    outcome = run_container(docker_client, spec)

    assert time.monotonic() - began < 10
    assert outcome.timed_out is True
    assert outcome.exit_code is None
    assert outcome.log_tail == "started\n"
    assert containers_of(docker_client, run_id) == []


def test_missing_image_fails_naming_it_and_leaves_nothing(
    docker_client: docker.DockerClient, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, MISSING_IMAGE, "true")
    with pytest.raises(RunFailed, match=f"image {MISSING_IMAGE} not found locally and pull failed"):
        run_container(docker_client, spec)
    assert containers_of(docker_client, run_id) == []


def test_present_image_needs_no_pull(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    ensure_image(docker_client, busybox_image)
    assert docker_client.images.get(busybox_image).tags


def test_command_missing_from_image_fails_and_leaves_nothing(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = ContainerSpec(
        run_id=run_id,
        tool=TOOL,
        image=busybox_image,
        data_dir=data_dir,
        user=TOOL_USER,
        command=["/no/such/tool"],
    )
    with pytest.raises(RunFailed, match=rf"container mao-run-{run_id} could not start: .*/no/such"):
        run_container(docker_client, spec)
    assert containers_of(docker_client, run_id) == []


def test_second_task_adopts_running_container_instead_of_starting_another(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    script = f"echo start >> {DATA_MOUNT}/starts.txt; sleep 3; echo done > {DATA_MOUNT}/marker"
    spec = make_spec(run_id, data_dir, busybox_image, script)
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(outcome_or_gone, lambda: run_in_own_client(spec))
        wait_until(
            lambda: is_running(docker_client, run_id),
            WAIT_LIMIT_S,
            what="the first task's container to run",
            poll_s=0.05,
        )
        second = outcome_or_gone(lambda: run_container(docker_client, spec))
        results = [first.result(timeout=WAIT_LIMIT_S), second]

    assert (data_dir / "starts.txt").read_text() == "start\n"
    assert (data_dir / "marker").read_text() == "done\n"
    outcomes = [r for r in results if isinstance(r, ContainerOutcome)]
    assert outcomes, "at least the task that removed the container has its outcome"
    assert all(o.exit_code == 0 and not o.timed_out for o in outcomes)
    assert all(r.run_id == run_id for r in results if isinstance(r, ContainerGone))
    if isinstance(results[0], ContainerOutcome):
        assert results[0].adopted is False
    if isinstance(results[1], ContainerOutcome):
        assert results[1].adopted is True
    assert containers_of(docker_client, run_id) == []


def test_concurrent_tasks_of_one_run_start_one_container(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(
        run_id, data_dir, busybox_image, f"echo start >> {DATA_MOUNT}/starts.txt; sleep 1"
    )
    tasks = 4
    barrier = threading.Barrier(tasks)

    def task() -> ContainerOutcome | ContainerGone:
        barrier.wait(timeout=WAIT_LIMIT_S)
        return outcome_or_gone(lambda: run_in_own_client(spec))

    with ThreadPoolExecutor(max_workers=tasks) as pool:
        results = [
            f.result(timeout=WAIT_LIMIT_S) for f in [pool.submit(task) for _ in range(tasks)]
        ]

    assert (data_dir / "starts.txt").read_text() == "start\n"
    outcomes = [r for r in results if isinstance(r, ContainerOutcome)]
    assert outcomes
    assert all(o.exit_code == 0 for o in outcomes)
    assert sum(not o.adopted for o in outcomes) <= 1
    assert containers_of(docker_client, run_id) == []


def test_adopts_exited_container_reads_it_and_removes_it(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    lost = make_spec(run_id, data_dir, busybox_image, "echo from the lost task; exit 4")
    container = create_run_container(docker_client, lost)
    container.start()
    container.wait(timeout=WAIT_LIMIT_S)

    redelivered = make_spec(run_id, data_dir, busybox_image, "echo from a second container")
    outcome = run_container(docker_client, redelivered)

    assert outcome == ContainerOutcome(
        exit_code=4,
        timed_out=False,
        log_tail="from the lost task\n",
        adopted=True,
        container_name=f"mao-run-{run_id}",
        failure="the tool exited with code 4",
    )
    assert containers_of(docker_client, run_id) == []


def test_adopts_created_container_its_creator_never_started(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, f"echo start >> {DATA_MOUNT}/starts.txt")
    create_run_container(docker_client, spec)

    outcome = run_container(docker_client, spec)

    assert (outcome.exit_code, outcome.adopted) == (0, True)
    assert (data_dir / "starts.txt").read_text() == "start\n"
    assert containers_of(docker_client, run_id) == []


def test_adopted_running_container_keeps_the_deadline_of_its_start(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, "sleep 30", timeout_s=3)
    container = create_run_container(docker_client, spec)
    container.start()
    # The container has used 2 of its 3 s (by Docker's clock) when a task adopts it.
    wait_until(lambda: ran_for_s(container) >= 2, WAIT_LIMIT_S, what="2 s of the container's run")

    began = time.monotonic()
    outcome = run_container(docker_client, spec)

    assert time.monotonic() - began < 2.5
    assert (outcome.timed_out, outcome.exit_code, outcome.adopted) == (True, None, True)
    assert containers_of(docker_client, run_id) == []


def test_container_killed_on_timeout_by_another_task_reads_as_timed_out(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, "sleep 30", timeout_s=1)
    container = create_run_container(docker_client, spec)
    container.start()
    # The container outlives its 1 s timeout (by Docker's clock), then another task kills it;
    # only its run time tells that kill from any other end.
    wait_until(lambda: ran_for_s(container) >= 1.2, WAIT_LIMIT_S, what="1.2 s of its run")
    container.kill()
    container.wait(timeout=WAIT_LIMIT_S)

    outcome = run_container(docker_client, spec)

    assert (outcome.timed_out, outcome.exit_code, outcome.adopted) == (True, None, True)


def test_container_removed_by_another_task_mid_wait_raises_container_gone(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, "sleep 30")
    container = create_run_container(docker_client, spec)
    container.start()
    with ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(run_in_own_client, spec)
        wait_until(
            lambda: some_thread_runs(ContainerApiMixin.wait),
            WAIT_LIMIT_S,
            what="the task to wait on the container it adopted",
            poll_s=0.02,
        )
        container.remove(force=True)
        with pytest.raises(ContainerGone) as gone:
            waiting.result(timeout=WAIT_LIMIT_S)
    assert gone.value.run_id == run_id


def test_a_resumed_step_adopts_the_runs_container_and_never_creates_a_second_one(
    docker_client: docker.DockerClient,
    busybox_image: str,
    new_run_id: Callable[[], str],
    data_dir: Path,
) -> None:
    script = f"echo start >> {DATA_MOUNT}/starts.txt"
    gone_run, kept_run = new_run_id(), new_run_id()
    with pytest.raises(ContainerGone) as gone:
        run_container(
            docker_client, make_spec(gone_run, data_dir, busybox_image, script, adopt_only=True)
        )
    assert gone.value.run_id == gone_run
    assert containers_of(docker_client, gone_run) == []
    assert not (data_dir / "starts.txt").exists()

    spec = make_spec(kept_run, data_dir, busybox_image, script)
    create_run_container(docker_client, spec).start()
    outcome = run_container(docker_client, replace(spec, adopt_only=True))
    assert (outcome.adopted, outcome.exit_code) == (True, 0)
    assert (data_dir / "starts.txt").read_text() == "start\n"
    assert containers_of(docker_client, kept_run) == []


def test_stop_run_containers_stops_only_the_given_runs_and_keeps_them(
    docker_client: docker.DockerClient,
    busybox_image: str,
    new_run_id: Callable[[], str],
    tmp_path: Path,
) -> None:
    run_ids = [new_run_id() for _ in range(3)]
    for run_id in run_ids:
        create_run_container(
            docker_client, make_spec(run_id, tmp_path, busybox_image, "sleep 30")
        ).start()

    stopped = stop_run_containers(docker_client, run_ids=run_ids[:2], timeout_s=1)

    assert sorted(stopped) == sorted(run_ids[:2])
    for run_id in run_ids[:2]:
        assert [c.status for c in containers_of(docker_client, run_id)] == ["exited"]
    assert is_running(docker_client, run_ids[2])


def test_missing_data_dir_is_not_found(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, tmp_path: Path
) -> None:
    spec = make_spec(run_id, tmp_path / "absent", busybox_image, "true")
    with pytest.raises(NotFound, match="absent does not exist"):
        run_container(docker_client, spec)


@pytest.mark.parametrize(
    "call",
    [
        lambda client, spec: run_container(client, spec),
        lambda client, spec: ensure_image(client, spec.image),
        lambda client, spec: stop_run_containers(client, run_ids=[spec.run_id]),
    ],
    ids=["run_container", "ensure_image", "stop_run_containers"],
)
def test_unreachable_daemon_is_service_unavailable(
    call: Callable[[docker.DockerClient, ContainerSpec], object], run_id: str, data_dir: Path
) -> None:
    client = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=5)
    spec = make_spec(run_id, data_dir, ANY_IMAGE, "true")
    try:
        with pytest.raises(ServiceUnavailable, match=r"Docker unreachable at .*127\.0\.0\.1:9"):
            call(client, spec)
    finally:
        client.close()


# ---- failure reasons from Docker's state ------------------------------------------------------


def test_a_tool_over_its_memory_limit_is_reported_as_memory_exceeded(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    # dd's one 200 MiB buffer in a 16 MiB container: the kernel's OOM killer ends it.
    spec = make_spec(
        run_id,
        data_dir,
        busybox_image,
        "exec dd if=/dev/zero of=/dev/null bs=200M count=1",
        memory_bytes=16 << 20,
    )

    outcome = run_container(docker_client, spec)

    assert outcome.exit_code == 137
    assert outcome.failure is not None
    # Docker records most such kills (OOMKilled); the rest read "out of memory (limit 16 MiB)".
    assert "16 MiB" in outcome.failure, outcome.failure
    assert "exceeded" in outcome.failure or "out of memory" in outcome.failure, outcome.failure
    assert containers_of(docker_client, run_id) == []


def test_a_container_killed_from_outside_is_reported_with_its_signal(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    spec = make_spec(run_id, data_dir, busybox_image, "exec sleep 60")
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_in_own_client, spec)
        wait_until(
            lambda: is_running(docker_client, run_id) and some_thread_runs(ContainerApiMixin.wait),
            WAIT_LIMIT_S,
            what="the run's container to run and the task to wait on it",
            poll_s=0.05,
        )
        # SIGKILL: PID 1 of a container ignores the signals it has no handler for (SIGTERM).
        docker_client.containers.get(container_name(run_id)).kill(signal="SIGKILL")
        outcome = running.result(timeout=WAIT_LIMIT_S)

    assert (outcome.exit_code, outcome.timed_out) == (137, False)
    assert outcome.failure is not None
    assert outcome.failure.startswith("killed by signal 9 (SIGKILL, exit code 137)")
    assert containers_of(docker_client, run_id) == []


def test_an_exit_code_is_judged_and_the_container_removed_when_its_log_cannot_be_read(
    docker_client: docker.DockerClient, busybox_image: str, run_id: str, data_dir: Path
) -> None:
    # A container of the run whose log driver keeps no log (a lost task's, made by hand): Docker
    # refuses to read its logs.
    spec = make_spec(run_id, data_dir, busybox_image, "echo unseen; exit 5")
    assert spec.command is not None
    container = docker_client.containers.create(
        spec.image,
        spec.command,
        name=container_name(run_id),
        labels={LABEL_RUN_ID: run_id, LABEL_TOOL: TOOL},
        network_mode="none",
        log_config=docker.types.LogConfig(type="none"),
    )
    container.start()
    container.wait(timeout=WAIT_LIMIT_S)

    outcome = run_container(docker_client, spec)

    assert (outcome.exit_code, outcome.failure) == (5, "the tool exited with code 5")
    assert outcome.log_tail.startswith("[the container's log could not be read: ")
    assert containers_of(docker_client, run_id) == []
