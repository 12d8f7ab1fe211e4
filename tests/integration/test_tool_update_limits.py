"""Per-tool run limits (`tool add/update --timeout-s --memory --cpus`) bounded by the node's
maxima and applied by a real worker to a real container, and `tool update`'s compare-and-swap
on the entry's etcd revision (a concurrent update is refused, not lost). Real etcd, Redis,
Celery workers and Docker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

import pytest

from mao_celery.exceptions import Conflict
from mao_celery.models import RunReport, Tool
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest
from tests.helpers import listing, maoctl, register

pytestmark = pytest.mark.integration

RACE_WAIT_S = 30.0
"""How long each of the two racing updates waits for the other at the barrier."""


def run_report(node: NodeUnderTest, *args: str) -> tuple[int, RunReport]:
    """`maoctl tool run ... --json`: its exit code and the report it printed."""
    result = maoctl(node, "tool", "run", *args, "--json")
    assert result.stdout, result.stderr
    return result.returncode, RunReport.model_validate_json(result.stdout)


def test_a_tool_with_timeout_3_s_is_killed_at_about_3_s_on_a_node_whose_default_is_3600(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    register(node, "sleeper", tool_image("sleep 600"), make_data_repo(), "--timeout-s", "3")
    node.start_worker()

    code, report = run_report(node, "sleeper")

    assert node.settings().run_timeout_s == 3600
    assert code == 4
    assert report.timeout_s == 3
    assert report.error == "timeout: the tool ran longer than 3 s, killed"
    assert report.started_at is not None
    assert report.finished_at is not None
    took_s = (report.finished_at - report.started_at).total_seconds()
    assert 3 <= took_s < 15, took_s


def test_memory_and_cpu_limits_of_a_tool_reach_its_container(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    # cgroup v2 (memory.max, cpu.max) or v1 (memory.limit_in_bytes, cpu.cfs_quota_us)
    script = (
        "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes "
        "/sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null; true"
    )
    register(
        node, "boxed", tool_image(script), make_data_repo(), "--memory", "64m", "--cpus", "0.5"
    )
    node.start_worker()

    _, report = run_report(node, "boxed")

    assert (report.memory_bytes, report.cpus) == (64 << 20, 0.5)
    assert str(64 << 20) in report.log_tail, report.log_tail
    assert "50000" in report.log_tail, report.log_tail  # 0.5 CPU: 50 ms per 100 ms period


def test_a_worker_refuses_a_tool_asking_more_than_its_maximum(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    register(node, "greedy", tool_image("true"), make_data_repo(), "--timeout-s", "100")
    node.start_worker(env={"MAO_RUN_TIMEOUT_S": "30", "MAO_RUN_TIMEOUT_MAX_S": "60"})

    code, report = run_report(node, "greedy")

    assert code == 4
    assert report.error == (
        "tool 'greedy' asks for more than this node allows: timeout 100 s is above this node's "
        "maximum 60 s (MAO_RUN_TIMEOUT_MAX_S): ask for less, or raise MAO_RUN_TIMEOUT_MAX_S on "
        "the node"
    )


def test_tool_update_changes_limits_within_the_maxima_and_keeps_the_schedule(
    node: NodeUnderTest,
) -> None:
    register(node, "demo", "mao-demo:latest", "https://example.org/d.git", "--timeout-s", "60")
    assert maoctl(node, "schedule", "add", "demo", "daily", "--at", "06:00").returncode == 0

    updated = maoctl(node, "tool", "update", "demo", "--image", "mao-demo:2", "--memory", "256m",
                     "--cpus", "0.5", "--writable-rootfs", "--description", "v2")  # fmt: skip
    too_long = maoctl(node, "tool", "update", "demo", "--timeout-s", "7200")
    unset = maoctl(node, "tool", "update", "demo", "--unset", "timeout-s", "--json")
    nothing = maoctl(node, "tool", "update", "demo")
    missing = maoctl(node, "tool", "update", "nosuch", "--cpus", "1")
    added_too_long = maoctl(
        node, "tool", "add", "big", "t", "mao-demo:latest", "https://example.org/d.git",
        "https://example.org/c", "csv", "--timeout-s", "99999",
    )  # fmt: skip
    shown = maoctl(node, "tool", "get", "demo")
    schedules = listing(maoctl(node, "schedule", "list", "--json").stdout)

    assert (updated.returncode, updated.stdout) == (
        0,
        "tool demo updated: cpus, description, image, memory_bytes, read_only_rootfs\n",
    ), updated.stderr
    assert too_long.returncode == 1
    assert too_long.stderr.strip().endswith(
        "timeout 7200 s is above this node's maximum 3600 s (MAO_RUN_TIMEOUT_MAX_S): ask for "
        "less, or raise MAO_RUN_TIMEOUT_MAX_S on the node"
    ), too_long.stderr
    tool = Tool.model_validate_json(unset.stdout)
    assert (tool.image, tool.description, tool.timeout_s, tool.memory_bytes, tool.cpus) == (
        "mao-demo:2", "v2", None, 256 << 20, 0.5,
    )  # fmt: skip
    assert tool.read_only_rootfs is False
    assert nothing.returncode == 1
    assert "nothing to change" in nothing.stderr
    assert missing.returncode == 1
    assert "tool 'nosuch' is not registered" in missing.stderr
    assert added_too_long.returncode == 1, added_too_long.stdout
    assert maoctl(node, "tool", "get", "big").returncode == 1
    assert "timeout 3600 s (node default; max 3600 s)" in shown.stdout, shown.stdout
    assert "memory  256 MiB (the tool's; max 1 GiB)" in shown.stdout, shown.stdout
    assert [s["tool"] for s in schedules] == ["demo"]


def test_tool_remove_says_that_it_removed_the_schedule_too(node: NodeUnderTest) -> None:
    register(node, "demo", "mao-demo:latest", "https://example.org/d.git")
    register(node, "other", "mao-demo:latest", "https://example.org/d.git")
    assert maoctl(node, "schedule", "add", "demo", "daily").returncode == 0

    with_schedule = maoctl(node, "tool", "remove", "demo")
    without = maoctl(node, "tool", "remove", "other")

    assert with_schedule.stdout == "tool demo removed; its schedule on this node removed too\n"
    assert without.stdout == "tool other removed; it had no schedule\n"


def test_two_concurrent_updates_one_is_refused_not_lost(registry: Registry) -> None:
    registry.tools.add(
        Tool(
            name="raced",
            author="t",
            image="mao-demo:1",
            data_repo="https://example.org/d.git",
            code_repo="https://example.org/c",
            artefact="csv",
        )
    )
    both_read = threading.Barrier(2, timeout=RACE_WAIT_S)
    outcomes: dict[str, object] = {}

    def update(image: str) -> None:
        def change(tool: Tool) -> Tool:
            both_read.wait()  # both have read the same revision before either writes
            return tool.model_copy(update={"image": image})

        try:
            outcomes[image] = registry.tools.update("raced", change)
        except Conflict as e:
            outcomes[image] = e

    threads = [threading.Thread(target=update, args=(image,)) for image in ("mao-demo:a", "b:b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RACE_WAIT_S * 2)

    written = [o for o in outcomes.values() if isinstance(o, Tool)]
    refused = [o for o in outcomes.values() if isinstance(o, Conflict)]
    assert (len(written), len(refused)) == (1, 1), outcomes
    assert registry.tools.get("raced") == written[0]
    assert "was changed by someone else since it was read" in str(refused[0])
    assert isinstance(written[0].created_at, datetime)
