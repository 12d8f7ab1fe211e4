"""Long containers do not hold worker processes: N runs of N tools whose containers each run
S seconds, queued at once on one node with default settings (`worker.sh worker`: the prefork
worker, MAO_WORKER_CONCURRENCY 2, and the container worker, MAO_CONTAINER_SLOTS 128).

Starts a Redis server and the workers for the purpose (the node's Redis is not touched), uses
this node's etcd (scripts/setup.sh) under a prefix of its own that is deleted afterwards, and its
own importdir. Prints the time from the first run queued to the last one ended, and the peak of
the summed resident memory (RSS) of all worker processes, side by side with issue 14's targets
(100 runs of 60 s in < 90 s, < 600 MB). Usage:

    .venv/bin/python bench/long_containers.py [--runs N] [--seconds S]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import docker
from run_overhead import REPO_ROOT, bench_env, build_image, make_data_repo

from mao_celery import tools
from mao_celery.containers import LABEL_RUN_ID
from mao_celery.node import Node
from mao_celery.settings import load_settings

TARGET_S = 90.0
TARGET_MB = 600.0
SAMPLE_S = 0.5
READY_TIMEOUT_S = 120.0


def descendants(root: int) -> list[int]:
    """The pids of every process below `root` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def workers_rss_mb(root: int) -> tuple[float, int]:
    """The summed RSS (MB) of the Celery worker processes below `root`, and their count."""
    total_kb, count = 0, 0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            if b"worker" not in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:8]:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
            rss = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
            total_kb += int(rss.split()[1])
            count += 1
    return total_kb / 1024, count


class PeakRss(threading.Thread):
    """Samples `workers_rss_mb(root)` every `SAMPLE_S` seconds until stopped; keeps the peak."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak_mb = 0.0
        self.processes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            mb, count = workers_rss_mb(self.root)
            if mb > self.peak_mb:
                self.peak_mb, self.processes = mb, count


@contextlib.contextmanager
def node_workers(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`worker.sh worker` (both workers) in its own session, until both are ready."""
    with log_path.open("ab") as log:
        script = subprocess.Popen(
            [str(REPO_ROOT / "worker.sh"), "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while log_path.read_text(errors="replace").count(" ready.") < 2:
            if script.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"worker.sh did not start; log:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield script
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        script.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs at once (default 100)")
    parser.add_argument("--seconds", type=int, default=60, help="container seconds (default 60)")
    args = parser.parse_args()
    client = docker.from_env()
    script = f"sleep {args.seconds}; echo 1 > /usr/src/app/data/control-1.csv"
    image = build_image(f"mao-bench-long-{args.seconds}:latest", script)
    with tempfile.TemporaryDirectory() as tmp, bench_env(Path(tmp)) as env:
        root = Path(tmp)
        run_ids: list[str] = []
        try:
            elapsed_s, peak, counts = measure(env, root, image, args, run_ids)
        finally:
            for container in client.containers.list(all=True, filters={"label": LABEL_RUN_ID}):
                if container.labels[LABEL_RUN_ID] in run_ids:
                    container.remove(force=True)
    target_s = TARGET_S * args.seconds / 60
    print(f"{args.runs} runs of {args.seconds} s containers at once; outcomes: {dict(counts)}")
    print(f"{'measure':34}{'value':>10}{'target':>10}{'value / target':>16}")
    print(f"{'first queued -> last ended, s':34}{elapsed_s:10.1f}{target_s:10.1f}"
          f"{elapsed_s / target_s:16.2f}")  # fmt: skip
    print(f"{'peak worker RSS, MB':34}{peak.peak_mb:10.0f}{TARGET_MB:10.0f}"
          f"{peak.peak_mb / TARGET_MB:16.2f}")  # fmt: skip
    print(f"(worker processes at the peak: {peak.processes})")


def measure(
    env: dict[str, str], root: Path, image: str, args: argparse.Namespace, run_ids: list[str]
) -> tuple[float, PeakRss, Counter[str]]:
    """Register `args.runs` tools running `image`, start the workers, queue one run of each
    (their ids appended to `run_ids`) and wait for them all; the seconds taken, the RSS peak,
    the outcomes."""
    settings = load_settings(
        etcd_endpoints=env["MAO_ETCD_ENDPOINTS"],
        etcd_prefix=env["MAO_ETCD_PREFIX"],
        redis_url=env["MAO_REDIS_URL"],
        importdir=Path(env["MAO_IMPORTDIR"]),
    )
    url = make_data_repo(root)
    names = [f"long-{i:03d}" for i in range(args.runs)]
    with Node(settings) as node, node_workers(env, root / "worker-sh.log") as script:
        for name in names:
            tools.register(
                node, "tool", name=name, author="bench", image=image, data_repo=url,
                code_repo="https://example.org/bench", artefact="csv",
            )  # fmt: skip
        peak = PeakRss(script.pid)
        peak.start()
        started = time.perf_counter()
        for name in names:
            run_ids.append(tools.start_run(node, name).run_id)
        reports = [
            node.runs.wait(rid, lambda r: r.status.terminal, 30 * args.seconds + 600)
            for rid in run_ids
        ]
        elapsed_s = time.perf_counter() - started
        peak.stop.set()
        peak.join()
    return elapsed_s, peak, Counter(str(r.status) for r in reports)


if __name__ == "__main__":
    main()
