"""Importing any module of the project reads no setting and connects nowhere, `maoctl --help` (of
every group, and of `tool run` and `tool get`) loads none of the heavy libraries (issue 8), and
`tool get` and `tool run --no-wait` load only what they need (issue 14: start-up time)."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import mao_celery
import mao_celery.commands
from tests.fixtures.services import EtcdServer

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "cli",
    "beat_schedule",
    *(f"mao_celery.{m.name}" for m in pkgutil.iter_modules(mao_celery.__path__)),
    *(f"mao_celery.commands.{m.name}" for m in pkgutil.iter_modules(mao_celery.commands.__path__)),
]
HEAVY = (
    "celery",
    "kombu",
    "redbeat",
    "docker",
    "grpc",
    "pyetcd",
    "redis",
    "rich",
    "pydantic",
    "git",
    "apprise",
    "plotext",
    "matplotlib",
)
"""Libraries whose import `maoctl --help` must not pay for (start-up time)."""
NOT_FOR_THE_REGISTRY = ("celery", "kombu", "redbeat", "docker", "redis", "git", "apprise")
"""Libraries `maoctl tool get` must not pay for: it reads etcd only (rich: tables only)."""
NOT_FOR_A_RUN = ("rich", "docker", "git", "apprise", "redbeat", "tomllib", "configparser")
"""What `maoctl tool run --no-wait` must not pay for: it reads etcd and sends a Celery chain over
Redis (no stage line; no config file given)."""
SUBCOMMAND_HELPS = [["tool", "run"], ["tool", "get"]]
"""Commands whose `--help` is checked besides the groups' (the ones run most)."""
LOADED_LIBRARIES = (
    "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)\n"
)
"""Script line: the top-level packages loaded, on stderr."""
# Settings that would fail if anything read them, and no service anywhere to reach.
POISONED_ENV = {
    "MAO_REDIS_URL": "not-a-url",
    "MAO_ETCD_ENDPOINTS": "not-an-endpoint",
    "MAO_CONFIG": "/nonexistent/mao.toml",
    "DOCKER_HOST": "unix:///nonexistent.sock",
}


def bare_env(home: Path) -> dict[str, str]:
    """An environment with nothing of the node's but the poisoned settings, HOME in `home`."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), **POISONED_ENV}


def python(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`script` run by a Python interpreter of its own in the repository, with `args` and `env`."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_module_imports_without_reading_settings_or_services(tmp_path: Path) -> None:
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"

    result = python(script, *MODULES, env=bare_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert len(MODULES) > 20


def test_help_of_every_group_loads_no_heavy_library(tmp_path: Path) -> None:
    script = (
        "import sys, click, cli\n"
        "groups = [n for n, c in cli.main.commands.items() if isinstance(c, click.Group)]\n"
        f"for args in [[], *([n] for n in groups), *{SUBCOMMAND_HELPS!r}]:\n"
        "    cli.main([*args, '--help'], prog_name='maoctl', standalone_mode=False)\n"
        + LOADED_LIBRARIES
    )

    result = python(script, env=bare_env(tmp_path))

    assert result.returncode == 0, result.stderr
    assert "Commands:" in result.stdout
    assert set(result.stderr.split()).isdisjoint(HEAVY), result.stderr


def loaded_by(argv: list[str], env: dict[str, str]) -> tuple[str, set[str]]:
    """What `maoctl ARGV` prints, and the top-level packages it loaded (in a process of its own).

    Fails when the command fails.
    """
    script = (
        "import sys, cli\n"
        f"cli.main({argv!r}, prog_name='maoctl', standalone_mode=False)\n" + LOADED_LIBRARIES
    )
    result = python(script, env=env)
    assert result.returncode == 0, result.stderr
    *_, modules = result.stderr.splitlines()
    return result.stdout, set(modules.split())


def test_tool_get_loads_neither_celery_nor_redis_nor_docker_and_json_no_rich(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str
) -> None:
    env = bare_env(tmp_path) | {
        "MAO_CONFIG": "",
        "MAO_REDIS_URL": "redis://127.0.0.1:1/0",  # valid, never reached
        "MAO_ETCD_ENDPOINTS": etcd_server.endpoint,
        "MAO_ETCD_PREFIX": etcd_prefix,
    }
    repo = "https://example.org/data.git"
    add = ["tool", "add", "listed", "me", "busybox:latest", repo, repo, "csv"]
    loaded_by(add, env)

    listing, as_json = loaded_by(["tool", "get", "--json"], env)
    detail, detail_json = loaded_by(["tool", "get", "listed", "--json"], env)
    table, as_table = loaded_by(["tool", "get"], env)

    assert [tool["name"] for tool in json.loads(listing)["items"]] == ["listed"]
    assert json.loads(detail)["name"] == "listed"
    assert "listed" in table
    for modules in (as_json, detail_json):
        assert modules.isdisjoint(("rich", *NOT_FOR_THE_REGISTRY)), sorted(modules)
    assert as_table.isdisjoint(NOT_FOR_THE_REGISTRY), sorted(as_table)


def test_tool_run_no_wait_loads_no_stage_line_nor_docker_nor_config_parser(
    tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str, redis_url: str
) -> None:
    env = bare_env(tmp_path) | {
        "MAO_CONFIG": "",
        "MAO_REDIS_URL": redis_url,
        "MAO_ETCD_ENDPOINTS": etcd_server.endpoint,
        "MAO_ETCD_PREFIX": etcd_prefix,
    }
    repo = "https://example.org/data.git"
    loaded_by(["tool", "add", "queued", "me", "busybox:latest", repo, repo, "csv"], env)

    run_id, modules = loaded_by(["tool", "run", "--no-wait", "queued"], env)

    assert len(run_id.strip()) == 32
    assert {"celery", "redis", "pyetcd"} <= modules
    assert modules.isdisjoint(NOT_FOR_A_RUN), sorted(modules)
