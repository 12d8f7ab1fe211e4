"""docker-compose.yml: valid for Debian's docker-compose (v1), and a whole node brought up from it
that runs the demo tool through the host's Docker daemon.

Tests reach no registry, so the stack runs on images built on this host, as an operator without
a registry builds them: `scripts/build-node-image.sh --offline` on the local base image makes the
node image and the Redis and etcd images (Debian's packages that scripts/setup.sh fetched), and
docker-compose.yml uses the latter by default (the stack sets no MAO_REDIS_IMAGE/MAO_ETCD_IMAGE).
The test talks to the containers only through the compose CLI (exec, logs) and the Docker API,
never over the compose network.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from docker.models.containers import Container

from mao_celery.models import RunReport, RunStatus
from tests.fixtures.node import BASE_IMAGE, REPO_ROOT
from tests.fixtures.services import free_ports, require_binary
from tests.helpers import wait_until

# One stack per run: every test of this module shares it, on one xdist worker.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("compose")]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
NODE_IMAGE = "mao-node:test"
LOCAL_SERVICE_IMAGES = {"redis": "mao-redis:latest", "etcd": "mao-etcd:latest"}
"""docker-compose.yml's default Redis and etcd images, made by scripts/build-node-image.sh."""
FLOWER_PASSWORD = "compose-test-secret"
READY_TIMEOUT_S = 90.0
COMPOSE_TIMEOUT_S = 300.0
REQUIRED = {"MAO_NODE_ID": "compose-node", "MAO_FLOWER_PASSWORD": FLOWER_PASSWORD}


@dataclass
class Compose:
    """docker-compose on docker-compose.yml as project `project`, its variables from `env_file`
    only (neither the caller's MAO_* variables nor a .env beside the file get in)."""

    project: str
    env_file: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `docker-compose ARGS`; with `check`, fail the test with its output on failure."""
        argv = [require_binary("docker-compose"), "-f", str(COMPOSE_FILE)]
        argv += ["--env-file", str(self.env_file), "-p", self.project, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAO_", "COMPOSE_"))}
        result = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=COMPOSE_TIMEOUT_S,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"docker-compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\nlogs:\n{self.logs()}",
                pytrace=False,
            )
        return result

    def logs(self) -> str:
        """The last lines of every service's output."""
        return self.run("logs", "--no-color", "--tail", "40", check=False).stdout

    def exec(self, service: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the running container of `service`, without a terminal."""
        return self.run("exec", "-T", service, *argv)


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    """Write `values` as a docker-compose env file (KEY=value lines) at `path`."""
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def compose_for(tmp_path: Path, values: dict[str, str]) -> Compose:
    """A Compose under a fresh project name, reading exactly `values`."""
    project = f"mao-test-{uuid.uuid4().hex[:8]}"
    return Compose(project, write_env_file(tmp_path / f"{project}.env", values))


def build_node_image_offline(base_image: str) -> subprocess.CompletedProcess[str]:
    """Run `scripts/build-node-image.sh --offline` on `base_image`, making NODE_IMAGE (and, for
    the bookworm base, the default Redis and etcd images); at most 300 s (COMPOSE_TIMEOUT_S)."""
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build-node-image.sh"), "--offline"],
        env={k: v for k, v in os.environ.items() if k not in ("MAO_REDIS_IMAGE", "MAO_ETCD_IMAGE")}
        | {"MAO_BASE_IMAGE": base_image, "MAO_NODE_IMAGE": NODE_IMAGE},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=COMPOSE_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def node_images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The images of the stack, built offline by scripts/build-node-image.sh: the node image
    (returned, as the compose variable choosing it) and the default Redis and etcd images,
    checked to be this build's (their ids by service in `local_image_ids`)."""
    build = build_node_image_offline(BASE_IMAGE)
    assert build.returncode == 0, build.stdout + build.stderr
    for service, tag in LOCAL_SERVICE_IMAGES.items():
        assert f"image {tag}: docker build images/{service}" in build.stdout, build.stdout
        local_image_ids[service] = docker_client.images.get(tag).id
    local_image_ids["node"] = docker_client.images.get(NODE_IMAGE).id
    return {"MAO_NODE_IMAGE": NODE_IMAGE}


local_image_ids: dict[str, str] = {}
"""The ids of the images build-node-image.sh made for the stack, by service (redis, etcd, node)."""


@dataclass
class Stack:
    """A node up from docker-compose.yml: its compose project, importdir and Flower's host port."""

    compose: Compose
    importdir: Path
    flower_port: int
    up_output: str
    images_before: frozenset[str]


@pytest.fixture(scope="module")
def stack(
    node_images: dict[str, str],
    demo_image: str,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A node brought up from docker-compose.yml under a project name of its own, with its own
    importdir and Flower port; taken down with its volumes after the module's tests."""
    work_dir = tmp_path_factory.mktemp("compose")
    importdir = work_dir / "importdir"
    importdir.mkdir()
    (flower_port,) = free_ports(1)
    values = REQUIRED | node_images  # no MAO_REDIS_IMAGE, MAO_ETCD_IMAGE: the defaults
    values |= {
        "MAO_IMPORTDIR": str(importdir),
        "MAO_TOOL_NETWORK": "none",
        "MAO_FLOWER_PORT": str(flower_port),
    }
    compose = compose_for(work_dir, values)
    images_before = frozenset(image.id for image in docker_client.images.list(all=True))
    try:
        up = compose.run("up", "-d")
        yield Stack(compose, importdir, flower_port, up.stdout + up.stderr, images_before)
    finally:
        compose.run("down", "-v", "--timeout", "30", check=False)


def wait_for_log(compose: Compose, service: str, text: str) -> None:
    """Wait up to 90 s for `service` to log `text`; fail the test with the logs otherwise."""
    wait_until(
        lambda: text in compose.run("logs", "--no-color", service, check=False).stdout,
        READY_TIMEOUT_S,
        what=f"{service} to log {text!r}",
        poll_s=0.5,
        details=compose.logs,
    )


def stack_containers(client: docker.DockerClient, compose: Compose) -> dict[str, Container]:
    """The running containers of the stack, by compose service."""
    return {
        c.labels["com.docker.compose.service"]: c
        for c in client.containers.list(
            filters={"label": f"com.docker.compose.project={compose.project}"}
        )
    }


def published_ports(container: Container) -> dict[str, list[tuple[str, str]]]:
    """The container's ports published on the host: {"5555/tcp": [(host ip, host port)]}."""
    return {
        port: [(binding["HostIp"], binding["HostPort"]) for binding in bindings]
        for port, bindings in container.ports.items()
        if bindings
    }


def test_the_compose_file_is_valid(tmp_path: Path) -> None:
    result = compose_for(tmp_path, REQUIRED).run("config", "-q", check=False)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_the_compose_file_refuses_to_run_without_a_required_variable(
    tmp_path: Path, missing: str
) -> None:
    values = {key: value for key, value in REQUIRED.items() if key != missing}

    result = compose_for(tmp_path, values).run("config", "-q", check=False)

    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_the_offline_build_refuses_a_base_nothing_was_fetched_for(busybox_image: str) -> None:
    # setup.sh fetches for the base image only; a fetch for busybox (no python3) never succeeds.
    result = build_node_image_offline(busybox_image)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"var/wheels and var/debs: not fetched for {busybox_image}" in result.stderr
    assert "run scripts/setup.sh" in result.stderr


@pytest.mark.timeout(600)
def test_a_node_from_compose_runs_the_demo_tool_through_the_host_docker(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    compose, importdir = stack.compose, stack.importdir
    wait_for_log(compose, "worker", " ready.")
    compose.exec("worker", "sh", "-ec", """
        git init -q --bare /tmp/demo.git
        git clone -q /tmp/demo.git /tmp/demo-work && cd /tmp/demo-work
        echo '# demo' > README.md && git add README.md
        git -c user.name=test -c user.email=test@localhost commit -qm 'initial commit'
        git push -q origin HEAD""")  # fmt: skip
    compose.exec("worker", "maoctl", "tool", "add", "demo", "tester", "mao-demo:latest",
                 "file:///tmp/demo.git", "https://example.org/code", "csv")  # fmt: skip

    result = compose.exec("worker", "maoctl", "tool", "run", "demo", "--json")

    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.SUCCEEDED, report.error
    assert report.node == "compose-node"
    assert report.data_dir == str(importdir / "demo")
    assert report.spike is not None
    assert report.spike.spike
    assert report.spike.values == [100.0, 102.0, 146.0]
    assert report.notification_key is not None
    # The tool container, started by the host's daemon, wrote through the host's importdir.
    assert (importdir / "demo" / "data-1.csv").is_file()
    containers = stack_containers(docker_client, compose)
    assert sorted(containers) == ["beat", "etcd", "flower", "redis", "worker"]
    assert {name: published_ports(c) for name, c in containers.items() if published_ports(c)} == {
        "flower": {"5555/tcp": [("127.0.0.1", str(stack.flower_port))]}
    }


@pytest.mark.timeout(600)
def test_flower_in_the_stack_asks_for_its_password(stack: Stack) -> None:
    compose = stack.compose
    wait_for_log(compose, "flower", "Visit me at")
    probe = """
import base64, sys, urllib.error, urllib.request
request = urllib.request.Request("http://127.0.0.1:5555/api/workers")
if sys.argv[1:]:
    token = base64.b64encode(sys.argv[1].encode()).decode()
    request.add_header("Authorization", "Basic " + token)
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
"""

    anonymous = compose.exec("flower", "python3", "-c", probe)
    with_password = compose.exec("flower", "python3", "-c", probe, f"mao:{FLOWER_PASSWORD}")

    assert anonymous.stdout.strip() == "401"
    assert with_password.stdout.strip() == "200"


@pytest.mark.timeout(600)
def test_the_stack_comes_up_from_local_images_without_a_registry(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    containers = stack_containers(docker_client, stack.compose)
    used = {service: c.attrs["Image"] for service, c in containers.items()}

    assert "Pulling" not in stack.up_output
    # Nothing pulled nor built by `up`: each service runs an image there before (other tests
    # build their tool images on the same daemon meanwhile).
    assert set(used.values()) <= stack.images_before
    assert used["redis"] == local_image_ids["redis"]
    assert used["etcd"] == local_image_ids["etcd"]
    assert {used[s] for s in ("worker", "beat", "flower")} == {local_image_ids["node"]}
    ping = stack.compose.exec("redis", "redis-cli", "ping")
    assert ping.stdout.strip() == "PONG"


@pytest.mark.timeout(600)
def test_the_nodes_containers_are_named_after_mao_node_id(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    compose = stack.compose

    def members() -> list[dict[str, str]]:
        shown = compose.run("exec", "-T", "worker", "maoctl", "members", "--json", check=False)
        return list(json.loads(shown.stdout)["items"]) if shown.returncode == 0 else []

    (member,) = wait_until(members, READY_TIMEOUT_S, what="the node in `maoctl members`")
    hostnames = {
        service: c.attrs["Config"]["Hostname"]
        for service, c in stack_containers(docker_client, compose).items()
    }

    assert member["node_id"] == "compose-node"
    assert member["hostname"] == "compose-node"
    assert {hostnames[s] for s in ("worker", "beat", "flower")} == {"compose-node"}
