"""scripts/setup.sh: a bad MAO_VENV_PYTHON (the interpreter .venv is built on) is refused with one
line naming the setting, and the venv is left as it was."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.node import REPO_ROOT

pytestmark = pytest.mark.integration

VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


def test_a_missing_venv_interpreter_is_named_and_the_venv_left_alone(tmp_path: Path) -> None:
    before = VENV_PYTHON.resolve(strict=True), VENV_PYTHON.lstat().st_mtime_ns
    missing = tmp_path / "no-such" / "python3"

    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "setup.sh")],
        env=os.environ | {"MAO_VENV_PYTHON": str(missing)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"[setup] ERROR: MAO_VENV_PYTHON: no interpreter {missing} "
        "(name an installed python3.11 or unset it)"
    ]
    assert "venv:" not in result.stdout
    assert (VENV_PYTHON.resolve(strict=True), VENV_PYTHON.lstat().st_mtime_ns) == before
