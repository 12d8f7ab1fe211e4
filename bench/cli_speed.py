"""maoctl's speed and throughput next to the targets of issue 14, as whole processes.

Prints medians (seconds) and ratios side by side:

- `maoctl --help` (target 0.10 s);
- `maoctl tool get` and `tool get --json` with 100 tools (target 0.30 s);
- `maoctl tool run` of a minimal image against a bare `docker run --rm` of it (target 1.3 x; the
  original MAO measured so in issue 14: 0.59 s against 0.47 s, 1.26 x), and `tool run --no-wait`
  of it (until the run id is printed; the next command starts once the run ended);
- throughput: N runs of N tools (each container sleeps `--sleep-s`) queued with
  `tool run --no-wait` one after another and with one `tool run --no-wait A B ...`, until all
  ended, against `xargs -P<concurrency> docker run --rm` of the same containers (target 1.1 x).

A Redis server and the workers as worker.sh starts them (prefork, 2 processes; the container
worker, `--concurrency` threads) are started for the purpose (the node's
Redis is not touched), with this node's etcd (scripts/setup.sh) under a prefix of its own that is
deleted afterwards, and an importdir of its own. Usage:

    .venv/bin/python bench/cli_speed.py [--runs N] [--tools N] [--sleep-s S] [--concurrency C]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from run_overhead import REPO_ROOT, bench_env, build_image, make_data_repo, timed, timed_output

IMAGE = "mao-bench-minimal:latest"
SLEEP_IMAGE = "mao-bench-sleep:latest"
WRITE_CONTROL = "echo 1 > /usr/src/app/data/control-$(date +%s%N).csv"
MAOCTL = [sys.executable, str(REPO_ROOT / "cli.py")]


def medians(label: str, times: list[float], target: float | None = None, unit: str = "s") -> None:
    """One line: median, min, max of `times` and the target."""
    aim = f"{target:g} {unit}" if target is not None else "-"
    print(f"{label:44}{statistics.median(times):9.3f}{min(times):9.3f}{max(times):9.3f}  {aim}")


def interleaved(commands: dict[str, Callable[[], float]], runs: int) -> dict[str, list[float]]:
    """Each command's wall times (its callable times one) over `runs` interleaved rounds."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, time_one in commands.items():
            times[label].append(time_one())
    return times


def processes(
    commands: dict[str, list[str]], env: dict[str, str]
) -> dict[str, Callable[[], float]]:
    """For `interleaved`: each command's argv timed as a whole process (`timed`)."""
    return {label: functools.partial(timed, argv, env) for label, argv in commands.items()}


def timed_queue(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of `argv`, a `maoctl tool run --no-wait` of one tool; then (not timed) waits
    until its run ended, so that the next command finds the tool free and the workers idle."""
    elapsed, run_id = timed_output(argv, env)
    until(lambda: all_ended(env["MAO_REDIS_URL"], [run_id.strip()]), 120)
    return elapsed


def quiet(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`argv` started in the repository, its output dropped."""
    return subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@contextmanager
def bench_node(root: Path, concurrency: int) -> Iterator[dict[str, str]]:
    """A node of its own: Redis, its workers, an etcd prefix (deleted afterwards); yields its
    environment."""
    with bench_env(root, MAO_CONTAINER_SLOTS=str(concurrency)) as env:
        celery = [sys.executable, "-m", "celery", "-A", "mao_celery.celery_app", "worker"]
        celery += ["--without-mingle", "--without-gossip", "-l", "warning"]
        pool = {"CELERY_CUSTOM_WORKER_POOL": "mao_celery.celery_app:ContainerPool"}
        workers = [  # as worker.sh starts them: the steps, then the containers (threads)
            quiet([*celery, "-c", "2"], env),
            quiet(
                [*celery, "-P", "custom", "-c", str(concurrency), "-n", "containers@%h"], env | pool
            ),
        ]
        try:
            yield env
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(60)


def add_tool(env: dict[str, str], name: str, image: str, url: str) -> None:
    """`maoctl tool add` of tool `name` running `image` on data repository `url`."""
    timed([*MAOCTL, "tool", "add", name, "bench", image, url, "https://example.org", "csv"], env)


def all_ended(redis_url: str, run_ids: list[str]) -> bool:
    """Whether every run of `run_ids` has a terminal record (read straight from Redis)."""
    client = redis.Redis.from_url(redis_url)
    raws = client.mget([f"mao:run:{run_id}" for run_id in run_ids])
    ended = {"succeeded", "failed", "cancelled", "interrupted"}
    return all(raw is not None and json.loads(raw)["status"] in ended for raw in raws)


def until(predicate: Callable[[], bool], timeout_s: float) -> None:
    """Poll `predicate` every 20 ms; exit when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit("runs did not end in time")
        time.sleep(0.02)


def throughput(env: dict[str, str], names: list[str], root: Path, concurrency: int) -> None:
    """N runs queued by N `tool run --no-wait` processes, and by one `tool run --no-wait A B ..`,
    against `xargs -P<concurrency> docker run --rm` of the same containers."""
    started = time.perf_counter()
    run_ids = []
    for name in names:
        out = subprocess.run(
            [*MAOCTL, "tool", "run", "--no-wait", name], env=env, capture_output=True, text=True
        )
        if out.returncode:
            sys.exit(f"tool run --no-wait failed: {out.stderr.strip()}")
        run_ids.append(out.stdout.strip())
    queued = time.perf_counter() - started
    until(lambda: all_ended(env["MAO_REDIS_URL"], run_ids), 600)
    one_by_one = time.perf_counter() - started

    started = time.perf_counter()
    out = subprocess.run(
        [*MAOCTL, "tool", "run", "--no-wait", *names], env=env, capture_output=True, text=True
    )
    multi_queued = time.perf_counter() - started
    multi = None
    if out.returncode == 0:
        many_ids = out.stdout.split()
        until(lambda: all_ended(env["MAO_REDIS_URL"], many_ids), 600)
        multi = time.perf_counter() - started

    lines = "\n".join(
        f"--rm --network none -v {root / 'importdir' / name}:/usr/src/app/data {SLEEP_IMAGE}"
        for name in names
    )
    started = time.perf_counter()
    subprocess.run(
        ["xargs", f"-P{concurrency}", "-L1", "docker", "run"],
        input=lines,
        text=True,
        check=True,
        capture_output=True,
    )
    bare = time.perf_counter() - started
    print(f"\nthroughput: {len(names)} runs, concurrency {concurrency}")
    print(f"{'':44}{'s':>9}{'ratio':>9}  target")
    print(f"{'xargs -P docker run --rm':44}{bare:9.2f}")
    print(f"{'tool run --no-wait x N, queueing':44}{queued:9.2f}")
    print(f"{'tool run --no-wait x N, all ended':44}{one_by_one:9.2f}{one_by_one / bare:9.2f}  1.1")
    print(f"{'tool run --no-wait A B .., queueing':44}{multi_queued:9.2f}")
    if multi is None:
        print(f"{'tool run --no-wait A B ..':44} not offered: {out.stderr.strip()[:60]}")
    else:
        print(f"{'tool run --no-wait A B .., all ended':44}{multi:9.2f}{multi / bare:9.2f}  1.1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each timing (default 10)")
    parser.add_argument("--tools", type=int, default=12, help="runs of the throughput (12)")
    parser.add_argument("--sleep-s", type=float, default=2.0, help="their container's sleep (2)")
    parser.add_argument("--concurrency", type=int, default=2, help="container slots (2)")
    args = parser.parse_args()

    build_image(IMAGE, WRITE_CONTROL)
    build_image(SLEEP_IMAGE, f"sleep {args.sleep_s:g}; {WRITE_CONTROL}")
    with tempfile.TemporaryDirectory() as tmp, bench_node(Path(tmp), args.concurrency) as env:
        root = Path(tmp)
        url = make_data_repo(root)
        print(f"{'':44}{'median':>9}{'min':>9}{'max':>9}  target  ({args.runs} runs)")
        help_times = interleaved(processes({"help": [*MAOCTL, "--help"]}, env), args.runs)["help"]
        medians("maoctl --help", help_times, 0.10)

        from mao_celery import tools
        from mao_celery.node import Node
        from mao_celery.settings import load_settings

        with Node(load_settings(etcd_prefix=env["MAO_ETCD_PREFIX"])) as node:
            for i in range(100):
                tools.register(
                    node, "tool", name=f"listed-{i:03}", author="bench", image=IMAGE,
                    data_repo=url, code_repo="https://example.org", artefact="csv",
                )  # fmt: skip
        get = {
            "table": [*MAOCTL, "tool", "get"],
            "json": [*MAOCTL, "tool", "get", "--json"],
        }
        for label, times in interleaved(processes(get, env), args.runs).items():
            medians(f"maoctl tool get ({label}), 100 tools", times, 0.30)

        add_tool(env, "bench", IMAGE, url)
        timed([*MAOCTL, "tool", "run", "--wait-for-worker", "bench"], env)  # clone, workers ready
        data_dir = root / "importdir" / "bench"
        bare = ["docker", "run", "--rm", "--network", "none"]
        bare += ["-v", f"{data_dir}:/usr/src/app/data", IMAGE]
        run = processes(
            {"docker run --rm": bare, "maoctl tool run": [*MAOCTL, "tool", "run", "bench"]}, env
        )
        no_wait = [*MAOCTL, "tool", "run", "--no-wait", "bench"]
        run["maoctl tool run --no-wait"] = functools.partial(timed_queue, no_wait, env)
        by_command = interleaved(run, args.runs)
        for label, times in by_command.items():
            medians(label, times)
        ratio = statistics.median(by_command["maoctl tool run"]) / statistics.median(
            by_command["docker run --rm"]
        )
        print(f"{'ratio tool run / docker run (medians)':44}{ratio:9.2f}  target 1.3")
        print(f"{'issue 14: original MAO / docker run':44}{0.59 / 0.47:9.2f}  (0.59 / 0.47 s)")

        names = [f"thr-{i:02}" for i in range(args.tools)]
        for name in names:
            add_tool(env, name, SLEEP_IMAGE, url)
        subprocess.run(
            [*MAOCTL, "tool", "run", "--wait-for-worker", "--no-wait", names[0]],
            env=env,
            check=True,
            capture_output=True,
        )
        for name in names:  # every clone made, so the baseline has its data directory
            timed([*MAOCTL, "tool", "update-data", name], env)
        until(lambda: not redis.Redis.from_url(env["MAO_REDIS_URL"]).keys("mao:lock:*"), 120)
        throughput(env, names, root, args.concurrency)


if __name__ == "__main__":
    main()
