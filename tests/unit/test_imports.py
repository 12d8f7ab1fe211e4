"""Importing any module of the project reads no setting and connects nowhere (issue 8)."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import mao_celery

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "cli",
    "beat_schedule",
    *(f"mao_celery.{m.name}" for m in pkgutil.iter_modules(mao_celery.__path__)),
]
# Settings that would fail if anything read them, and no service anywhere to reach.
POISONED_ENV = {
    "MAO_REDIS_URL": "not-a-url",
    "MAO_ETCD_ENDPOINTS": "not-an-endpoint",
    "MAO_CONFIG": "/nonexistent/mao.toml",
    "DOCKER_HOST": "unix:///nonexistent.sock",
}


def test_every_module_imports_without_reading_settings_or_services(tmp_path: Path) -> None:
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"

    result = subprocess.run(
        [sys.executable, "-c", script, *MODULES],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **POISONED_ENV},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert len(MODULES) > 20
