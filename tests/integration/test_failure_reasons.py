"""Runs that fail say why, from git's and Docker's state: a silent data repository host, an
out-of-memory tool. A real worker, Redis, etcd, Docker and a loopback socket."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mao_celery.models import RunReport, RunStatus
from tests.fixtures.node import NodeUnderTest
from tests.helpers import register

pytestmark = pytest.mark.integration

SILENT_HOST_FAILS_WITHIN_S = 60.0


@pytest.mark.slow
def test_a_silent_git_host_fails_the_run_within_a_minute_with_default_settings(
    node: NodeUnderTest, tool_image: Callable[[str], str], silent_host: int
) -> None:
    node.start_worker()
    register(node, "stalled", tool_image("exit 0"), f"http://127.0.0.1:{silent_host}/data.git")

    started = time.monotonic()
    result = node.maoctl("tool", "run", "stalled", "--json")
    took_s = time.monotonic() - started

    assert result.returncode == 4, result.stderr
    assert took_s < SILENT_HOST_FAILS_WITHIN_S, took_s
    report = RunReport.model_validate_json(result.stdout)
    assert report.status == RunStatus.FAILED
    assert report.error is not None
    assert "too slow" in report.error.lower(), report.error
    assert len(report.git_tries) == 1
    assert report.git_tries[0].startswith("try 1: ")
    assert report.exit_code is None  # no container ran


def test_an_out_of_memory_tool_is_reported_as_memory_exceeded(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker(env={"MAO_RUN_MEMORY_BYTES": str(16 << 20)})
    image = tool_image("exec dd if=/dev/zero of=/dev/null bs=200M count=1")
    register(node, "hungry", image, make_data_repo())

    result = node.maoctl("tool", "run", "hungry", "--json")

    assert result.returncode == 4
    report = RunReport.model_validate_json(result.stdout)
    assert report.error is not None
    # Docker records most such kills (OOMKilled); the rest read "out of memory (limit 16 MiB)".
    assert "16 MiB" in report.error, report.error
    assert "exceeded" in report.error or "out of memory" in report.error, report.error
    assert report.exit_code == 137
    assert "16 MiB" in result.stderr


def test_a_run_records_the_commit_of_its_data(
    node: NodeUnderTest, tool_image: Callable[[str], str], make_data_repo: Callable[..., str]
) -> None:
    node.start_worker()
    register(
        node, "writer", tool_image("echo 1 > /usr/src/app/data/control-1.csv"), make_data_repo()
    )

    result = node.maoctl("tool", "run", "writer", "--json")

    report = RunReport.model_validate_json(result.stdout)
    assert report.data_commit is not None
    assert len(report.data_commit) == 40, report
    assert report.git_tries == []
