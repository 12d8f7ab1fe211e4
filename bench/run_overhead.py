"""How much `maoctl tool run` costs over a bare `docker run --rm` of the same minimal image.

Runs both N times, interleaved, with a Redis server and a worker started for the purpose (the
node's Redis is not touched), this node's etcd (scripts/setup.sh) under a prefix of its own that is
deleted afterwards, and its own importdir. In the same loop it times two more rows:

- "original's design (stand-in)": the original (2019) MAO ran the tool's container synchronously
  in its aiohttp server on a request of its `requests` CLI; it cannot run here, so a lower bound of
  its design is timed instead (`StandInServer`, `STAND_IN_CLI`: warm loopback server, no etcd
  read, no spike detection);
- "python -c pass": the interpreter's own start-up, the floor of any Python CLI.

Prints the median/min/max wall times (seconds) side by side, then the ratios maoctl / docker run,
stand-in / docker run and maoctl / stand-in. Usage:

    .venv/bin/python bench/run_overhead.py [--runs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = "mao-busybox:latest"
IMAGE = "mao-bench-minimal:latest"
SCRIPT = "echo 1 > /usr/src/app/data/control-$(date +%s%N).csv"
# The original CLI's design: `maoctl.py tool run NAME` (argparse), one POST with `requests`.
# argv: SERVER_URL tool run NAME; prints the reply, exits non-zero on an HTTP error.
STAND_IN_CLI = """
import argparse, configparser, json, sys
import requests
parser = argparse.ArgumentParser(prog="maoctl.py")
tool = parser.add_subparsers(dest="command", required=True).add_parser("tool")
tool.add_subparsers(dest="action", required=True).add_parser("run").add_argument("name")
args = parser.parse_args(sys.argv[2:])
reply = requests.post(sys.argv[1], json={"name": args.name}, timeout=600)
reply.raise_for_status()
print(json.dumps(reply.json()))
"""


def timed_output(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall time of one command in seconds, and its stdout; exits if it fails."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed, result.stdout


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one command in seconds; exits if it fails."""
    return timed_output(argv, env)[0]


@contextlib.contextmanager
def own_redis(root: Path) -> Iterator[str]:
    """A throw-away Redis server on a free loopback port, no persistence; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", root],
        stdout=subprocess.DEVNULL,
    )
    ping = ["redis-cli", "-p", str(port), "ping"]
    deadline = time.monotonic() + 10
    while subprocess.run(ping, capture_output=True, text=True).stdout.strip() != "PONG":
        if time.monotonic() > deadline or server.poll() is not None:
            server.kill()
            sys.exit(f"redis-server on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(30)


def make_data_repo(root: Path) -> str:
    """A bare git repository with one commit; returns its file:// URL."""
    bare, work = root / "data.git", root / "work"
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    (work / "README.md").write_text("bench\n")
    subprocess.run([*git, "-C", str(work), "add", "README.md"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-q", "-m", "bench"], check=True)
    subprocess.run([*git, "-C", str(work), "push", "-q", "origin", "HEAD"], check=True)
    return f"file://{bare}"


def build_image(tag: str, script: str) -> str:
    """Build tool image `tag` from the test base image, running `sh -c script`; returns `tag`."""
    dockerfile = f"FROM {BASE}\nCMD {json.dumps(['sh', '-c', script])}\n"
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(dockerfile)
        docker.from_env().images.build(path=context, tag=tag, rm=True)
    return tag


class StandInServer(ThreadingHTTPServer):
    """Stand-in for the original (2019) MAO server: on POST, runs `IMAGE` on `data_dir`
    synchronously through the Docker SDK, as the original did (no hardening), and answers 200
    with a small JSON body (500 with the error if the container fails). A lower bound of the
    original: warm, no etcd read, no spike detection. Loopback, free port."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(("127.0.0.1", 0), _StandInHandler)
        self.data_dir = data_dir
        self.docker = docker.from_env()

    @property
    def url(self) -> str:
        """The `http://127.0.0.1:PORT/` URL the server listens on."""
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _StandInHandler(BaseHTTPRequestHandler):
    server: StandInServer

    def do_POST(self) -> None:
        """Run the tool container to its end, then answer with JSON `{"tool": ..., ...}`."""
        name = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["name"]
        volumes = {str(self.server.data_dir): {"bind": "/usr/src/app/data", "mode": "rw"}}
        try:
            self.server.docker.containers.run(
                IMAGE, remove=True, network_mode="none", volumes=volumes
            )
            status, reply = 200, {"tool": name, "status": "done"}
        except docker.errors.DockerException as exc:
            status, reply = 500, {"tool": name, "error": str(exc)}
        body = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """No access log on stderr."""


@contextlib.contextmanager
def stand_in_server(data_dir: Path) -> Iterator[str]:
    """A `StandInServer` on `data_dir`, served from a thread; yields its URL, shut down after."""
    server = StandInServer(data_dir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def bench_env(root: Path, **settings: str) -> Iterator[dict[str, str]]:
    """The environment of a node of the bench's own: a throw-away Redis (`own_redis`), this
    node's etcd (127.0.0.1:2379) under a prefix of its own, deleted afterwards, an importdir in
    `root`, tools without network, plus the MAO_* `settings` given."""
    with own_redis(root) as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MAO_", "CELERY_"))}
        env |= {
            "MAO_REDIS_URL": redis_url,
            "MAO_ETCD_ENDPOINTS": "127.0.0.1:2379",
            "MAO_ETCD_PREFIX": f"/mao-bench-{uuid.uuid4().hex[:8]}/",
            "MAO_IMPORTDIR": str(root / "importdir"),
            "MAO_TOOL_NETWORK": "none",
            **settings,
        }
        try:
            yield env
        finally:
            subprocess.run(
                ["etcdctl", "del", "--prefix", env["MAO_ETCD_PREFIX"]],
                capture_output=True,
                env=os.environ | {"ETCDCTL_API": "3"},
                check=False,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each (default 10)")
    runs = parser.parse_args().runs

    build_image(IMAGE, SCRIPT)
    # no container worker: this worker takes the containers
    with tempfile.TemporaryDirectory() as tmp, bench_env(Path(tmp), MAO_CONTAINER_SLOTS="0") as env:
        root = Path(tmp)
        maoctl = [sys.executable, str(REPO_ROOT / "cli.py")]
        celery = [sys.executable, "-m", "celery", "-A", "mao_celery.celery_app", "worker"]
        worker = subprocess.Popen(
            [*celery, "-c", "2", "--without-mingle", "--without-gossip", "-l", "warning"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = make_data_repo(root)
            timed(
                [
                    *maoctl,
                    "tool",
                    "add",
                    "bench",
                    "bench",
                    IMAGE,
                    url,
                    "https://example.org/bench",
                    "csv",
                ],
                env,
            )
            warm_up = [*maoctl, "tool", "run", "--wait-for-worker", "bench"]
            timed(warm_up, env)  # clone, worker ready
            data_dir = root / "importdir" / "bench"
            bare = ["docker", "run", "--rm", "--network", "none"]
            bare += ["-v", f"{data_dir}:/usr/src/app/data", IMAGE]
            docker_s: list[float] = []
            maoctl_s: list[float] = []
            stand_in_s: list[float] = []
            python_s: list[float] = []
            with stand_in_server(data_dir) as server_url:
                stand_in = [sys.executable, "-c", STAND_IN_CLI, server_url, "tool", "run", "bench"]
                for _ in range(runs):
                    docker_s.append(timed(bare, env))
                    maoctl_s.append(timed([*maoctl, "tool", "run", "bench"], env))
                    stand_in_s.append(timed(stand_in, env))
                    python_s.append(timed([sys.executable, "-c", "pass"], env))
        finally:
            worker.terminate()
            worker.wait(30)

    rows = {
        "docker run --rm": docker_s,
        "maoctl tool run": maoctl_s,
        "original's design (stand-in)": stand_in_s,
        "python -c pass": python_s,
    }
    bare_median, mao_median = statistics.median(docker_s), statistics.median(maoctl_s)
    stand_in_median = statistics.median(stand_in_s)
    print(f"runs of each: {runs} (interleaved)")
    print(f"{'':30}{'median s':>10}{'min s':>10}{'max s':>10}")
    for label, times in rows.items():
        print(f"{label:30}{statistics.median(times):10.3f}{min(times):10.3f}{max(times):10.3f}")
    print(f"ratio maoctl / docker run: {mao_median / bare_median:.2f}")
    print(f"ratio stand-in / docker run: {stand_in_median / bare_median:.2f}")
    print(f"ratio maoctl / stand-in: {mao_median / stand_in_median:.2f}")


if __name__ == "__main__":
    main()
