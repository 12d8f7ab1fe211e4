"""The registry at federation scale: 10,000 tools of about 1 KB, and 1,000 `tool add`s.

Writes the tools into this node's etcd (127.0.0.1:2379, scripts/setup.sh) under a prefix of its
own, deleted afterwards (only that prefix), then times, each N times (median, min, max):
`maoctl tool get --json` and `maoctl tool get NAME` as whole processes, and 1,000 adds through
the API (`tools.register`, one etcd transaction each) once; the figures are printed side by side
with the targets of issue 14 and their ratio. `maoctl tool get` (the table) is timed once, for
information: the CLI does not page it yet. Usage:

    .venv/bin/python bench/registry.py [--runs N] [--tools N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyetcd

from mao_celery import tools
from mao_celery.models import Tool
from mao_celery.node import Node
from mao_celery.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
ETCD_HOST, ETCD_PORT = "127.0.0.1", 2379
ADDS = 1000
ETCD_TXN_OPS = 128
"""Puts per transaction when the tools are written (etcd's default --max-txn-ops)."""
DESCRIPTION = "d" * 750
"""Makes each tool's JSON value about 1.1 KB."""
TARGETS_S = {"tool get --json": 1.5, "tool add x1000 (API)": 10.0}


def make_tool(name: str) -> Tool:
    """A valid tool of about 1.1 KB."""
    return Tool(
        name=name,
        author="bench",
        image="mao-demo:latest",
        data_repo="https://example.org/data.git",
        code_repo="https://example.org/code",
        artefact="csv",
        description=DESCRIPTION,
        created_by="bench",
    )


def write_tools(client: pyetcd.MultiEndpointEtcd3Client, prefix: str, count: int) -> float:
    """Write `count` tools (tool-00000...) under `prefix`tools/ in batched transactions;
    returns the seconds taken."""
    started = time.perf_counter()
    names = [f"tool-{i:05d}" for i in range(count)]
    for first in range(0, count, ETCD_TXN_OPS):
        puts = [
            client.transactions.put(f"{prefix}tools/{name}", make_tool(name).model_dump_json())
            for name in names[first : first + ETCD_TXN_OPS]
        ]
        client.transaction(compare=[], success=puts, failure=[])
    return time.perf_counter() - started


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one command in seconds, its output discarded; exits if it fails."""
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[2:])} failed ({result.returncode}): {result.stderr.decode()}")
    return elapsed


def adds_through_api(env: dict[str, str], count: int) -> float:
    """Seconds `count` `tools.register` calls take in this process (one Node, as the CLI's)."""
    settings = load_settings(
        etcd_endpoints=env["MAO_ETCD_ENDPOINTS"], etcd_prefix=env["MAO_ETCD_PREFIX"]
    )
    with Node(settings) as node:
        node.registry.tools.list()  # connect first: the channel is not what is timed
        started = time.perf_counter()
        for i in range(count):
            fields = make_tool(f"added-{i:04d}").model_dump(exclude={"created_at", "created_by"})
            tools.register(node, "tool", **fields)
        return time.perf_counter() - started


@contextmanager
def own_prefix() -> Iterator[tuple[str, pyetcd.MultiEndpointEtcd3Client]]:
    """A fresh prefix on this node's etcd and a client; every key under it deleted at the end."""
    prefix = f"/mao-bench-registry-{uuid.uuid4().hex[:8]}/"
    client = pyetcd.MultiEndpointEtcd3Client(
        endpoints=[pyetcd.Endpoint(ETCD_HOST, ETCD_PORT, secure=False)], timeout=30
    )
    try:
        yield prefix, client
    finally:
        client.delete_prefix(prefix)
        client.close()


def row(label: str, times: list[float]) -> str:
    """One line of the table: median, min, max, target and median/target."""
    median = statistics.median(times)
    target = TARGETS_S.get(label)
    against = f"{target:10.2f}{median / target:8.2f}" if target else f"{'-':>10}{'-':>8}"
    return f"{label:24}{median:10.3f}{min(times):10.3f}{max(times):10.3f}{against}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument("--tools", type=int, default=10_000, help="tools listed (default 10000)")
    args = parser.parse_args()

    maoctl = [sys.executable, str(REPO_ROOT / "cli.py")]
    with own_prefix() as (prefix, client):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAO_")} | {
            "MAO_ETCD_ENDPOINTS": f"{ETCD_HOST}:{ETCD_PORT}",
            "MAO_ETCD_PREFIX": prefix,
            "PYTHONPATH": str(REPO_ROOT),
        }
        written_s = write_tools(client, prefix, args.tools)
        measured: dict[str, list[float]] = {}
        one = f"tool-{args.tools // 2:05d}"
        commands: dict[str, Callable[[], float]] = {
            "tool get --json": lambda: timed([*maoctl, "tool", "get", "--json"], env),
            "tool get NAME": lambda: timed([*maoctl, "tool", "get", one], env),
        }
        for _ in range(args.runs):  # interleaved, so that a busy moment hits both
            for label, run in commands.items():
                measured.setdefault(label, []).append(run())
        measured["tool get (table)"] = [timed([*maoctl, "tool", "get"], env)]
        measured["tool add x1000 (API)"] = [adds_through_api(env, ADDS)]

    print(f"tools listed: {args.tools} of {len(make_tool('tool-00000').model_dump_json())} bytes")
    print(f"written in {written_s:.2f} s ({ETCD_TXN_OPS} puts per transaction); runs: {args.runs}")
    print(f"{'':24}{'median s':>10}{'min s':>10}{'max s':>10}{'target s':>10}{'ratio':>8}")
    for label, times in measured.items():
        print(row(label, times))


if __name__ == "__main__":
    main()
