"""How much `maoctl tool run` costs over a bare `docker run --rm` of the same minimal image.

Runs both N times, interleaved, with a Redis server and a worker started for the purpose (the
node's Redis is not touched), this node's etcd (scripts/setup.sh) under a prefix of its own that is
deleted afterwards, and its own importdir, and prints the median wall times (seconds) and their
ratio side by side. Usage:

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
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE = "mao-busybox:latest"
IMAGE = "mao-bench-minimal:latest"
SCRIPT = "echo 1 > /usr/src/app/data/control-$(date +%s%N).csv"


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one command in seconds; exits if it fails."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


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
            docker_s, maoctl_s = [], []
            for _ in range(runs):
                docker_s.append(timed(bare, env))
                maoctl_s.append(timed([*maoctl, "tool", "run", "bench"], env))
        finally:
            worker.terminate()
            worker.wait(30)

    bare_median, mao_median = statistics.median(docker_s), statistics.median(maoctl_s)
    print(f"runs of each: {runs} (interleaved)")
    print(f"{'':24}{'median s':>10}{'min s':>10}{'max s':>10}")
    for label, times in (("docker run --rm", docker_s), ("maoctl tool run", maoctl_s)):
        print(f"{label:24}{statistics.median(times):10.3f}{min(times):10.3f}{max(times):10.3f}")
    print(f"ratio maoctl / docker run: {mao_median / bare_median:.2f}")


if __name__ == "__main__":
    main()
