"""Run a tool's image as one container per run (design.md §4, "run").

The container of a run is named after the run id (`mao-run-<run_id>`), so a task redelivered after
its worker died adopts the container its first delivery started instead of starting a second one.
Docker's create-by-name is the only exclusive step: whoever creates the container starts it; any
other task of the same run waits for it, reads its exit code and logs, and removes it.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import docker
import requests
from docker.errors import APIError, ImageNotFound
from docker.models.containers import Container
from docker.types import LogConfig

from mao_celery.exceptions import InvalidInput, MaoError, NotFound, RunFailed, ServiceUnavailable
from mao_celery.settings import TOOL_USER_RE

log = logging.getLogger(__name__)

DATA_MOUNT = "/usr/src/app/data"
LABEL_RUN_ID = "mao.run_id"
LABEL_TOOL = "mao.tool"

TMP_SIZE = "64m"
"""Size of the `nosuid,nodev` tmpfs a tool gets at /tmp, where it may write scratch files when its
root file system is read-only; what it holds counts against the container's memory limit."""
LOG_MAX_SIZE = "1m"
"""Most bytes of log Docker keeps per tool container (json-file driver, one file): a tool that
floods stdout cannot fill the host's disk."""
LOG_TAIL_MAX_CHARS = 16 * 1024
"""Most characters of log a run's report keeps (the last ones), whatever the line count."""

# Docker's container name grammar (daemon/names.go), less the prefix we add.
_RUN_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
# How long a task that adopts a container still in "created" state gives its creator to start it
# (the creator starts it milliseconds after creating it) before starting it itself, in seconds.
_START_GRACE_S = 2.0
_POLL_S = 0.1
OOM_SETTLE_S = 2.0
"""How long an exit by SIGKILL is given to be recorded as an out-of-memory kill, in seconds."""
SIGKILL_EXIT = 137
_RUNNING_STATES = frozenset({"running", "paused", "restarting"})
LOG_FLUSH_S = 0.2
"""Most seconds a container's output waits in the log pump before it is handed to its sink."""
LOG_FLUSH_BYTES = 64 * 1024
"""Bytes of output the log pump gathers at most before it hands them to its sink."""
LOG_DRAIN_S = 10.0
"""How long, in seconds, the end of a stopped container's output is awaited by the log pump."""
CANCEL_STOP_S = 10.0
"""Seconds between the SIGTERM and the SIGKILL that stop a cancelled run's container."""


class LogSink(Protocol):
    """Where a run's container output goes while it runs (runs.RunStore via run_steps)."""

    def restart(self) -> None:
        """Forget what was written: the container's output is read again from its start."""

    def write(self, data: bytes) -> None:
        """Keep `data`, the next bytes of output (stdout and stderr interleaved)."""


class ContainerGone(MaoError):
    """Another task of the same run removed the run's container before this one had read it.

    The other task holds the outcome; the caller falls back to what it recorded.
    """

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"container of run {run_id} was removed by another task of the same run; "
            "use the outcome that task recorded"
        )
        self.run_id = run_id


@dataclass(frozen=True)
class ContainerSpec:
    """What to run for one run of a tool.

    Attributes:
        run_id: the run's id; names the container (`mao-run-<run_id>`) and labels it.
        tool: the tool's name, put in the `mao.tool` label.
        image: image reference; must be present locally or pullable.
        data_dir: existing host directory (`importdir/<tool>`) bound read-write to
            `/usr/src/app/data`; owned by `user` so that the tool can write into it.
        user: numeric `uid:gid` the tool runs as, overriding the image's `USER`; never root.
        timeout_s: seconds from the container's start after which it is killed; default 1 h.
        memory_bytes: memory limit in bytes; default 1 GiB.
        nano_cpus: CPU limit in billionths of a CPU (1e9 = one CPU); None = no limit.
        pids_limit: most processes the container may run at once (default 4096; stops a fork
            bomb from exhausting the host).
        network_mode: Docker network mode; default "none" (no network but loopback).
        read_only_rootfs: the image's file system is mounted read-only (default); the tool then
            writes only to its data directory and to memory (/tmp, `TMP_SIZE`; Docker's
            /dev/shm).
        command: command overriding the image's; None = the image's own.
        environment: extra environment variables.
        log_tail_lines: number of last log lines (stdout and stderr) kept; default 50 (and at
            most `LOG_TAIL_MAX_CHARS` characters).
        adopt_only: the run's container was created by an earlier task of the run (a resumed
            step): it is adopted, never created again; when it is gone, `ContainerGone`.

    Raises:
        InvalidInput: a limit is not positive, `log_tail_lines` is negative, or `user` is not a
            numeric non-root `uid:gid`.
    """

    run_id: str
    tool: str
    image: str
    data_dir: Path
    user: str
    timeout_s: float = 3600.0
    memory_bytes: int = 1 << 30
    nano_cpus: int | None = None
    pids_limit: int = 4096
    network_mode: str = "none"
    read_only_rootfs: bool = True
    command: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    log_tail_lines: int = 50
    adopt_only: bool = False

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.memory_bytes <= 0 or self.log_tail_lines < 0:
            raise InvalidInput(
                f"invalid container limits for run {self.run_id}: timeout_s and memory_bytes "
                "must be positive, log_tail_lines not negative"
            )
        if self.nano_cpus is not None and self.nano_cpus <= 0:
            raise InvalidInput(f"invalid nano_cpus {self.nano_cpus} for run {self.run_id}")
        match = TOOL_USER_RE.fullmatch(self.user)
        if match is None or int(match["uid"]) == 0 or int(match["gid"]) == 0:
            raise InvalidInput(
                f"invalid user {self.user!r} for run {self.run_id}: use a non-root uid:gid"
            )


@dataclass(frozen=True)
class ContainerOutcome:
    """How a run's container ended.

    Attributes:
        exit_code: the container's exit code; None when it was killed on timeout.
        timed_out: the container ran for `timeout_s` or longer and was killed.
        log_tail: its last `log_tail_lines` log lines, stdout and stderr interleaved, cut to
            their last `LOG_TAIL_MAX_CHARS` characters.
        adopted: True when a container this run had already created was adopted.
        container_name: `mao-run-<run_id>`.
        failure: why the run fails, judged from Docker's state of the ended container (see
            `judge`); None when the tool exited 0.
        image_id: the id of the image the container ran (`sha256:...`, the digest of its
            configuration), whatever tag named it.
    """

    exit_code: int | None
    timed_out: bool
    log_tail: str
    adopted: bool
    container_name: str
    failure: str | None = None
    image_id: str | None = field(default=None, compare=False)  # provenance, not how it ended


def judge(
    state: dict[str, Any], *, timed_out: bool, timeout_s: float, memory_bytes: int
) -> str | None:
    """The failure reason of an ended container from its Docker `State`, or None (exit 0).

    - killed by our timeout: "timeout: the tool ran longer than N s, killed";
    - killed by the kernel for memory (`State.OOMKilled`): "killed: memory limit of N MiB
      exceeded";
    - exit code 128+N (a process killed by signal N from outside, e.g. `docker kill`): "killed
      by signal N (NAME, exit code 128+N)"; for SIGKILL with "out of memory (limit N MiB)
      unless killed from outside" added, since the daemon does not always record an
      out-of-memory kill (`OOMKilled` stays false when the kernel's event comes too late);
    - any other non-zero code: "the tool exited with code N".
    """
    if timed_out:
        return f"timeout: the tool ran longer than {timeout_s:g} s, killed"
    code = int(state.get("ExitCode") or 0)
    if code == 0:
        return None
    if state.get("OOMKilled"):
        return (
            f"killed: memory limit of {memory_bytes / (1 << 20):g} MiB exceeded (exit code {code})"
        )
    number = code - 128
    if 0 < number < signal.NSIG:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "signal"
        killed = f"killed by signal {number} ({name}, exit code {code})"
        if number == signal.SIGKILL:
            limit_mib = memory_bytes / (1 << 20)
            return f"{killed}: out of memory (limit {limit_mib:g} MiB) unless killed from outside"
        return killed
    return f"the tool exited with code {code}"


def container_name(run_id: str) -> str:
    """The name of a run's container: `mao-run-<run_id>`.

    Raises:
        InvalidInput: the run id cannot be part of a container name (1-128 of `a-zA-Z0-9_.-`,
            starting with a letter or digit).
    """
    if not _RUN_ID_RE.fullmatch(run_id):
        raise InvalidInput(f"invalid run id {run_id!r}: use 1-128 of a-zA-Z0-9_.-")
    return f"mao-run-{run_id}"


def granted_network(tool: str, asked: str | None, default: str, allowed: Collection[str]) -> str:
    """The Docker network a tool's container runs on: the one the tool asks for (`asked`), else
    the node's `default` (`MAO_TOOL_NETWORK`), provided the node allows it (`allowed`,
    `MAO_TOOL_NETWORKS_ALLOWED`).

    Raises:
        RunFailed: the node does not allow that network; the message names the tool, the network
            and the setting an operator may change.
    """
    network = asked or default
    if network not in allowed:
        wish = f"asks for network {network!r}" if asked else f"gets MAO_TOOL_NETWORK {network!r}"
        raise RunFailed(
            f"tool {tool} {wish}, which this node does not allow "
            f"(MAO_TOOL_NETWORKS_ALLOWED={','.join(allowed)}); an operator may allow it"
        )
    return network


def ensure_image(client: docker.DockerClient, image: str) -> None:
    """Make sure `image` is present locally, pulling it once if it is not.

    Raises:
        RunFailed: not present and the pull failed; the message names the image.
        ServiceUnavailable: the Docker daemon did not answer.
    """
    with _docker_errors(client):
        try:
            client.images.get(image)
            return
        except ImageNotFound:
            pass
        try:
            client.images.pull(image)
        except APIError as e:
            raise RunFailed(
                f"image {image} not found locally and pull failed ({_explain(e)}); "
                "build or load it on this node"
            ) from e


def run_container(
    client: docker.DockerClient,
    spec: ContainerSpec,
    *,
    log_sink: LogSink | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> ContainerOutcome:
    """Run the run's container to its end, or adopt and finish the one this run already has.

    Starts the container boxed (see `_create_options`: `spec.user`, no capabilities,
    `no-new-privileges`, `spec.network_mode`, read-only root file system unless
    `spec.read_only_rootfs` is False, the limits of `spec`, a size-capped log, detached, no stdin,
    no tty, `spec.data_dir` bound to `/usr/src/app/data`), waits for it at most
    `spec.timeout_s` seconds counted from its start, kills it on expiry, reads its exit code and
    log tail, and removes it. An existing container of the same run (redelivered task, or a twin
    that created it a moment ago) is adopted instead: waited for with what is left of its timeout,
    or just read when it has exited.

    The whole output (stdout and stderr) is streamed to `log_sink`, when given, while the
    container runs (from its first byte, also when adopted: `LogSink.restart` first). Once the
    container runs, `cancelled()` is asked: True stops it (SIGTERM, SIGKILL after
    `CANCEL_STOP_S` seconds), so a run cancelled while its container was being created does not
    run on.

    Raises:
        NotFound: `spec.data_dir` does not exist.
        RunFailed: the image is missing and cannot be pulled, or the container cannot be created
            or started (e.g. its command does not exist in the image).
        ContainerGone: another task of the same run removed the container first (or, with
            `spec.adopt_only`, there is no container to adopt).
        ServiceUnavailable: the Docker daemon did not answer.
    """
    if not spec.data_dir.is_dir():
        raise NotFound(f"data directory {spec.data_dir} does not exist; prepare the dataset first")
    with _docker_errors(client):
        try:
            container, adopted = _create_or_adopt(client, spec)
            pump = LogPump(container, log_sink) if log_sink is not None else None
            try:
                if cancelled():
                    stop_container(container, CANCEL_STOP_S)
                return _finish(container, spec, adopted, pump)
            finally:
                if pump is not None:
                    pump.close(0)
        except docker.errors.NotFound as e:
            raise ContainerGone(spec.run_id) from e


def connect(timeout_s: float = 60.0, max_pool_size: int = 10) -> docker.DockerClient:
    """A client of the Docker daemon named by the environment (DOCKER_HOST, or the default
    socket); calls time out after `timeout_s` seconds; it keeps up to `max_pool_size` HTTP
    connections for reuse (the calls under way at once: a run's container step holds two, its
    wait and its log stream; beyond that, connections are made and dropped per call).

    Raises:
        ServiceUnavailable: no daemon configuration could be found.
    """
    try:
        return docker.from_env(timeout=int(timeout_s), max_pool_size=max_pool_size)
    except docker.errors.DockerException as e:
        raise ServiceUnavailable("Docker", "the local daemon", str(e).splitlines()[0]) from e


def running_run_ids(client: docker.DockerClient) -> list[str]:
    """The run ids of the MAO containers (labelled `mao.run_id`) running on the daemon.

    Raises:
        ServiceUnavailable: the Docker daemon did not answer.
    """
    with _docker_errors(client):
        running = client.containers.list(filters={"label": LABEL_RUN_ID}, ignore_removed=True)
    return [container.labels[LABEL_RUN_ID] for container in running]


def stop_run_containers(
    client: docker.DockerClient,
    *,
    run_ids: Collection[str],
    timeout_s: float = 10,
) -> list[str]:
    """Stop the running containers of MAO runs (those labelled `mao.run_id`), without removing them.

    Each gets SIGTERM, then SIGKILL after `timeout_s` seconds (rounded up; default 10). Meant for
    the end of a node's shutdown grace period (mao_celery/shutdown.py): the task waiting on a
    container then reads its exit code and logs and removes it, as after any other end; a task
    killed before that leaves it to its redelivery, which adopts the stopped container. Only the
    containers of `run_ids` are stopped: the daemon may run other nodes' containers too.

    Returns:
        The run ids whose containers this call stopped.

    Raises:
        ServiceUnavailable: the Docker daemon did not answer.
    """
    stopped: list[str] = []
    with _docker_errors(client):
        for container in client.containers.list(
            filters={"label": LABEL_RUN_ID}, ignore_removed=True
        ):
            run_id = container.labels[LABEL_RUN_ID]
            if run_id in run_ids and stop_container(container, timeout_s):
                stopped.append(run_id)
    return stopped


def stop_container(container: Container, timeout_s: float = CANCEL_STOP_S) -> bool:
    """Stop `container`: SIGTERM, then SIGKILL after `timeout_s` seconds (rounded up); one
    that has stopped is fine. False when it is gone.

    Raises:
        APIError: Docker refused for another reason.
    """
    try:
        container.stop(timeout=math.ceil(timeout_s))
    except docker.errors.NotFound:
        return False
    return True


def end_run_container(
    client: docker.DockerClient, run_id: str, timeout_s: float = CANCEL_STOP_S
) -> bool:
    """Stop run `run_id`'s container (SIGTERM, SIGKILL after `timeout_s` seconds) and remove
    it, if it exists; True when it existed. The task waiting on it, if any, then finds it gone
    and keeps what its run's record says (`ContainerGone`).

    Raises:
        InvalidInput: `run_id` cannot be part of a container name.
        ServiceUnavailable: the Docker daemon did not answer.
    """
    name = container_name(run_id)
    with _docker_errors(client):
        try:
            container = client.containers.get(name)
        except docker.errors.NotFound:
            return False
        stop_container(container, timeout_s)
        _remove(container)
    return True


class LogPump:
    """A container's output streamed to a `LogSink` by two daemon threads: one reads Docker's
    log stream (from the container's first byte, following it to its end), the other hands what
    was read to the sink at least every `LOG_FLUSH_S` seconds, in pieces of at most about
    `LOG_FLUSH_BYTES` bytes. A sink that fails (Redis away) loses that piece, with a warning.
    """

    def __init__(self, container: Container, sink: LogSink) -> None:
        self._container = container
        self._sink = sink
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name="mao-log-reader")
        self._writer = threading.Thread(target=self._write, daemon=True, name="mao-log-writer")
        sink.restart()
        self._reader.start()
        self._writer.start()

    def _read(self) -> None:
        try:
            stream = self._container.logs(stdout=True, stderr=True, stream=True, follow=True)
            for chunk in stream:
                self._chunks.put(bytes(chunk))
        except (docker.errors.DockerException, requests.RequestException) as e:
            log.info("output of %s no longer readable: %s", self._container.name, e)
        finally:
            self._chunks.put(None)

    def _write(self) -> None:
        pending: list[bytes] = []
        size = 0
        deadline = time.monotonic() + LOG_FLUSH_S
        done = False
        while not done:
            try:
                chunk = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                chunk = b""
            if chunk is None:
                done = True
            elif chunk:
                pending.append(chunk)
                size += len(chunk)
            if pending and (done or size >= LOG_FLUSH_BYTES or time.monotonic() >= deadline):
                self._hand_over(b"".join(pending))
                pending, size = [], 0
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + LOG_FLUSH_S

    def _hand_over(self, data: bytes) -> None:
        try:
            self._sink.write(data)
        except MaoError as e:
            log.warning("output of %s: %d bytes not kept: %s", self._container.name, len(data), e)

    def close(self, timeout_s: float = LOG_DRAIN_S) -> None:
        """Wait at most `timeout_s` seconds for the output to end (the container has stopped)
        and be handed to the sink."""
        self._reader.join(timeout_s)
        self._writer.join(timeout_s)


def remaining_s(timeout_s: float, started_at: datetime, now: datetime) -> float:
    """Seconds left of a `timeout_s` budget that began at `started_at`, in [0, timeout_s].

    A start in the future (clock skew) counts as a start now.
    """
    return min(timeout_s, max(0.0, timeout_s - (now - started_at).total_seconds()))


def ran_out_of_time(state: dict[str, Any], timeout_s: float) -> bool:
    """Whether an ended container ran `timeout_s` seconds or longer, from its Docker `State`.

    This is how a task that did not kill a container itself tells a kill on timeout (by another
    task of the run) from an ordinary exit.
    """
    started_at = _parse_docker_time(state["StartedAt"])
    finished_at = _parse_docker_time(state["FinishedAt"])
    return (finished_at - started_at).total_seconds() >= timeout_s


def _parse_docker_time(value: str) -> datetime:
    """Docker's RFC 3339 times with nanoseconds, e.g. `2024-05-07T10:11:12.123456789Z`."""
    return datetime.fromisoformat(value).astimezone(UTC)


def _create_or_adopt(client: docker.DockerClient, spec: ContainerSpec) -> tuple[Container, bool]:
    """The run's container, started; and whether it already existed (adopted)."""
    name = container_name(spec.run_id)
    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        if spec.adopt_only:
            raise
        ensure_image(client, spec.image)
        try:
            container = client.containers.create(**_create_options(spec, name))
        except APIError as e:
            if e.status_code != requests.codes.conflict:
                raise RunFailed(f"container {name} could not be created: {_explain(e)}") from e
            container = client.containers.get(name)
        else:
            _start(container)
            return container, False
    if container.status == "created" and _still_created_after_grace(container):
        _start(container)
    return container, True


def _create_options(spec: ContainerSpec, name: str) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for `spec`'s container named `name`.

    The box: the tool runs as `spec.user` with no Linux capability (so no `mknod`, `chown`,
    raw sockets, ...) and no way to gain privileges (setuid binaries do not elevate), its root
    file system read-only unless asked otherwise, /tmp a `nosuid,nodev` tmpfs of `TMP_SIZE`,
    its log capped at `LOG_MAX_SIZE`, on `spec.network_mode`, within the limits of `spec`.
    """
    return {
        "image": spec.image,
        "command": spec.command,
        "name": name,
        "labels": {LABEL_RUN_ID: spec.run_id, LABEL_TOOL: spec.tool},
        "environment": spec.environment,
        "volumes": {str(spec.data_dir.resolve()): {"bind": DATA_MOUNT, "mode": "rw"}},
        "user": spec.user,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": spec.read_only_rootfs,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={TMP_SIZE}"},
        "mem_limit": spec.memory_bytes,
        "nano_cpus": spec.nano_cpus,
        "pids_limit": spec.pids_limit,
        "network_mode": spec.network_mode,
        "log_config": LogConfig(
            type=LogConfig.types.JSON, config={"max-size": LOG_MAX_SIZE, "max-file": "1"}
        ),
        "detach": True,
        "stdin_open": False,
        "tty": False,
    }


def _still_created_after_grace(container: Container) -> bool:
    """Wait up to `_START_GRACE_S` for the creator of `container` to start it."""
    deadline = time.monotonic() + _START_GRACE_S
    while time.monotonic() < deadline:
        time.sleep(_POLL_S)
        container.reload()
        if container.status != "created":
            return False
    return True


def _start(container: Container) -> None:
    """Start `container`; if Docker refuses (e.g. no such command in the image), remove it."""
    try:
        container.start()
    except docker.errors.NotFound:
        raise
    except APIError as e:
        _remove(container)
        raise RunFailed(f"container {container.name} could not start: {_explain(e)}") from e
    container.reload()


def _finish(
    container: Container, spec: ContainerSpec, adopted: bool, pump: LogPump | None = None
) -> ContainerOutcome:
    """Wait for a started container within its timeout, then read and remove it (after its
    output has been handed to `pump`'s sink)."""
    killed = False
    if container.status in _RUNNING_STATES:
        started_at = _parse_docker_time(container.attrs["State"]["StartedAt"])
        left_s = remaining_s(spec.timeout_s, started_at, datetime.now(UTC))
        if not _wait(container, left_s):
            killed = _kill(container)
        container.reload()
    timed_out = killed or ran_out_of_time(container.attrs["State"], spec.timeout_s)
    state = container.attrs["State"] if timed_out else _settled_state(container)
    try:
        log_tail = _read_log_tail(container, spec)
    except (APIError, requests.exceptions.RequestException) as e:
        # The exit code is judged and the container removed all the same.
        explained = _explain(e) if isinstance(e, APIError) else type(e).__name__
        log_tail = f"[the container's log could not be read: {' '.join(explained.split())}]"
    if pump is not None:
        pump.close()
    if not _remove(container):  # a twin task of the run removed it: its outcome is the run's
        raise ContainerGone(spec.run_id)
    return ContainerOutcome(
        exit_code=None if timed_out else int(state["ExitCode"]),
        timed_out=timed_out,
        log_tail=log_tail,
        adopted=adopted,
        container_name=container.name,
        failure=judge(
            state, timed_out=timed_out, timeout_s=spec.timeout_s, memory_bytes=spec.memory_bytes
        ),
        image_id=container.attrs.get("Image"),
    )


def _settled_state(container: Container) -> dict[str, Any]:
    """The `State` of an ended container, read again for up to `OOM_SETTLE_S` seconds when it
    says SIGKILL (exit 137) without `OOMKilled`: the daemon records an out-of-memory kill from
    the kernel's event, which may arrive just after the exit."""
    state: dict[str, Any] = container.attrs["State"]
    deadline = time.monotonic() + OOM_SETTLE_S
    while state.get("ExitCode") == SIGKILL_EXIT and not state.get("OOMKilled"):
        if time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
        container.reload()
        state = container.attrs["State"]
    return state


def _read_log_tail(container: Container, spec: ContainerSpec) -> str:
    """The last `spec.log_tail_lines` lines of stdout and stderr, at most `LOG_TAIL_MAX_CHARS`
    characters of them (see `bound_log_tail`).

    Raises:
        ContainerGone: Docker refuses the logs of a container being removed (or dead).
        APIError: Docker refuses the logs for another reason (e.g. a log driver it cannot read).
    """
    try:
        tail = container.logs(stdout=True, stderr=True, tail=spec.log_tail_lines)
    except APIError as e:
        if e.status_code == requests.codes.conflict:
            raise ContainerGone(spec.run_id) from e
        raise
    return bound_log_tail(bytes(tail).decode("utf-8", errors="replace"))


def bound_log_tail(text: str, max_chars: int = LOG_TAIL_MAX_CHARS) -> str:
    """The last `max_chars` (>= 0) characters of `text`: a tool may print one huge line."""
    return text[max(0, len(text) - max_chars) :]


def _wait(container: Container, timeout_s: float) -> bool:
    """Wait for the container to stop running; False when `timeout_s` seconds passed first."""
    if timeout_s <= 0:
        return False
    try:
        container.wait(timeout=timeout_s)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        return False
    return True


def _kill(container: Container) -> bool:
    """SIGKILL the container; False when it had already stopped."""
    try:
        container.kill()
    except APIError as e:
        if e.status_code == requests.codes.conflict:
            return False
        raise
    return True


def _remove(container: Container) -> bool:
    """Remove the container and its anonymous volumes; False when another task removed it or is
    removing it (already removed or being removed is fine)."""
    try:
        container.remove(force=True, v=True)
    except docker.errors.NotFound:
        return False
    except APIError as e:
        if e.status_code == requests.codes.conflict and "already in progress" in _explain(e):
            return False
        raise
    return True


def _explain(error: APIError) -> str:
    return str(error.explanation or error)


@contextmanager
def _docker_errors(client: docker.DockerClient) -> Iterator[None]:
    """Turn "the daemon did not answer" into ServiceUnavailable naming the daemon's address."""
    try:
        yield
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise ServiceUnavailable("Docker", client.api.base_url, " ".join(str(e).split())) from e
