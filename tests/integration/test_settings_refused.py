"""Every setting that would break the node later is refused at once, by `maoctl config` and by
`worker.sh` (exit 1, one line, no traceback, no restart loop); a real worker.sh and maoctl."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.node import REPO_ROOT, NodeUnderTest
from tests.helpers import WORKER_SH, Script, wait_until

pytestmark = pytest.mark.integration

WORKER_SH_EXIT_WITHIN_S = 60.0

INVALID = [
    ("MAO_RUN_TIMEOUT_S", "inf", "run_timeout_s: Input should be a finite number"),
    ("MAO_RUN_TIMEOUT_S", "1e308", "run_timeout_s: Input should be less than or equal to"),
    ("MAO_RUN_TIMEOUT_S", "nan", "run_timeout_s: Input should be a finite number"),
    ("MAO_NOTIFICATION_RETENTION_S", "99999999999", "less than or equal to 9000000000"),
    ("MAO_ETCD_ENDPOINTS", "http://127.0.0.1:2379", "drop the scheme (http://), e.g. 127.0.0.1"),
    ("MAO_RUN_MEMORY_BYTES", str(1 << 64), "run_memory_bytes: Input should be less than"),
    ("MAO_RUN_CPUS", "0.001", "run_cpus: Input should be greater than or equal to 0.01"),
    ("MAO_RUN_CPUS", "100000", "CPUs asked, this host has"),
    ("MAO_BROKER_VISIBILITY_TIMEOUT_S", "inf", "Input should be a finite number"),
    ("MAO_GIT_TIMEOUT_S", "0", "git_timeout_s: Input should be greater than 0"),
]


def non_utf8_config(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "mao.toml"
    path.write_bytes(b'importdir = "/srv/\xff"\n')
    return {"MAO_CONFIG": str(path)}


@pytest.mark.parametrize(("name", "value", "message"), INVALID)
def test_maoctl_config_refuses_the_setting_in_one_line(
    node: NodeUnderTest, name: str, value: str, message: str
) -> None:
    result = node.maoctl("config", env={name: value})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr, result.stderr


def test_maoctl_config_refuses_a_non_utf8_file_in_one_line(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    result = node.maoctl("config", env=non_utf8_config(tmp_path))

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: config file {tmp_path / 'mao.toml'} is not UTF-8 text (byte 0xff at offset 18): "
        "save it as UTF-8"
    ]


def run_worker_sh(
    node: NodeUnderTest, role: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """worker.sh ROLE with `env`; it must end by itself (a restart loop would not)."""
    return subprocess.run(
        [str(WORKER_SH), role],
        env=node.env | env,
        capture_output=True,
        text=True,
        timeout=WORKER_SH_EXIT_WITHIN_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(("name", "value", "message"), [INVALID[0], INVALID[3], INVALID[4]])
@pytest.mark.parametrize("role", ["worker", "beat", "all"])
def test_worker_sh_exits_1_on_an_invalid_setting_without_starting_anything(
    node: NodeUnderTest, role: str, name: str, value: str, message: str
) -> None:
    result = run_worker_sh(node, role, {name: value})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert message in result.stderr, result.stderr
    assert "started" not in result.stdout, result.stdout


def test_worker_sh_exits_1_on_a_non_utf8_config_file(node: NodeUnderTest, tmp_path: Path) -> None:
    result = run_worker_sh(node, "worker", non_utf8_config(tmp_path))

    assert result.returncode == 1
    assert "is not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_worker_sh_stops_with_exit_1_instead_of_restarting_when_a_setting_became_invalid(
    node: NodeUnderTest, tmp_path: Path
) -> None:
    config = tmp_path / "mao.toml"
    config.write_text("run_history = 10\n", encoding="utf-8")
    script = Script("worker", node.env | {"MAO_CONFIG": str(config)}, tmp_path / "w.log", REPO_ROOT)
    try:
        script.wait_for_log("worker started (pid ", WORKER_SH_EXIT_WITHIN_S)
        pid = int(re.findall(r"worker started \(pid (\d+)", script.log())[0])
        wait_until(lambda: " ready." in script.log(), 60, what="the worker to be ready")
        config.write_text("run_timeout_s = inf\n", encoding="utf-8")
        os.kill(pid, signal.SIGTERM)  # the worker ends by itself, as far as worker.sh knows

        assert script.process.wait(timeout=WORKER_SH_EXIT_WITHIN_S) == 1
    finally:
        script.kill_group()
    log = script.log()
    assert "a setting is invalid (above): stopping" in log, log
    assert "run_timeout_s: Input should be a finite number" in log
    assert log.count("worker started") == 1
    # (the worker's own log, in between, is Celery's business: worker.sh's lines are one each)
    own = [line for line in log.splitlines() if line.startswith("[worker.sh]")]
    assert own[-1] == "[worker.sh] stopped", own
    assert not any("restarting it" in line for line in own), own
