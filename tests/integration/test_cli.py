"""maoctl's smoke tests as real processes against real etcd, Redis and git: every command's
help, tables for people, dataset clones. No command ever prints a traceback. The contract (exit
codes, error lines, JSON shapes) is pinned in-process by test_cli_contract.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

import cli
from mao_celery import datasets
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest, git
from tests.fixtures.services import EtcdServer, connect_etcd
from tests.helpers import TOOL_ARGS, WIDE, listing, maoctl

pytestmark = pytest.mark.integration

LONGEST_NAME = "weather-" + "x" * 56


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line error maoctl ends with on stderr."""
    lines = result.stderr.splitlines()
    assert lines, f"no error on stderr (exit {result.returncode})"
    assert lines[-1].startswith("error: "), result.stderr
    return lines[-1]


def head_of(repo: Path) -> str:
    """The HEAD commit of the git repository at `repo` (its own `.git`)."""
    return rev_parse_head(["-C", str(repo)])


def clone_head(clone: Path) -> str:
    """The HEAD commit of a MAO clone whose work tree is `clone` (its git dir is in the store)."""
    return rev_parse_head([f"--git-dir={datasets.store_path(clone)}"])


def rev_parse_head(where: list[str]) -> str:
    return subprocess.run(
        ["git", *where, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def push_file(work: Path, name: str) -> str:
    """Commit file `name` in the work clone `work`, push it; return the new commit's sha."""
    (work / name).write_text("10\n")
    git("add", name, cwd=work)
    git("commit", "-q", "-m", f"add {name}", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    return head_of(work)


def work_clone_of(url: str) -> Path:
    """The work clone that `make_data_repo` left next to the bare repository at `url`."""
    bare = Path(url.removeprefix("file://"))
    return bare.with_name(bare.name.removesuffix(".git") + "-work")


def command_paths(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*path, name))


@pytest.mark.parametrize(
    "path", [(), *command_paths(cli.main)], ids=lambda path: " ".join(path) or "maoctl"
)
def test_help_of_every_command_and_group(node: NodeUnderTest, path: tuple[str, ...]) -> None:
    result = maoctl(node, *path, "--help")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: ")


def test_a_tool_and_a_dataset_are_registered_and_shown_as_tables(node: NodeUnderTest) -> None:
    tool = maoctl(node, "tool", "add", "demo", *TOOL_ARGS, "--description", "counts things")
    dataset = maoctl(node, "dataset", "add", LONGEST_NAME, "/srv/git/weather.git",
                     "--description", "daily weather")  # fmt: skip
    tools = maoctl(node, "tool", "get", env=WIDE)
    datasets_shown = maoctl(node, "dataset", "get", LONGEST_NAME, env=WIDE)

    assert (tool.returncode, tool.stdout) == (0, "tool demo registered\n"), tool.stderr
    assert dataset.returncode == 0, dataset.stderr
    assert re.search(r"^demo +tester +mao-demo:latest +", tools.stdout, re.MULTILINE)
    for field, value in (("name", LONGEST_NAME), ("url", "/srv/git/weather.git"),
                         ("branch", "-"), ("description", "daily weather")):  # fmt: skip
        assert re.search(rf"^{field} +{value}$", datasets_shown.stdout, re.MULTILINE), field


def test_status_shows_every_dependency_for_people(node: NodeUnderTest) -> None:
    result = maoctl(node, "status")

    assert result.returncode == 3, result.stdout  # no worker, no beat (test_status_workers.py)
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["etcd", "OK"], ["Redis", "OK"], ["Docker", "OK"], ["importdir", "OK"],
        ["workers", "FAIL"], ["beat", "FAIL"],
    ]  # fmt: skip


def test_a_dataset_is_cloned_then_fast_forwarded(
    node: NodeUnderTest, make_data_repo: Callable[..., str]
) -> None:
    url = make_data_repo("weather")
    clone = node.importdir / "weather"
    (node.importdir / "notes").mkdir()
    assert maoctl(node, "dataset", "add", "weather", url).returncode == 0

    cloned = maoctl(node, "dataset", "clone", "weather")
    first_head = clone_head(clone)
    new_head = push_file(work_clone_of(url), "control-1.csv")
    updated = maoctl(node, "dataset", "clone", "weather", "--update")
    cloned_again = maoctl(node, "dataset", "clone", "weather")
    local = maoctl(node, "dataset", "list-local", "--json")
    table = maoctl(node, "dataset", "list-local", env=WIDE)

    assert cloned.returncode == 0, cloned.stderr
    assert cloned.stdout == f"dataset weather cloned into {clone}\n"
    assert updated.returncode == 0, updated.stderr
    assert updated.stdout == f"dataset weather updated to {new_head[:12]} in {clone}\n"
    assert new_head != first_head
    assert clone_head(clone) == new_head
    assert (clone / "control-1.csv").read_text() == "10\n"
    assert cloned_again.returncode == 1
    assert "already exists: use --update" in error_line(cloned_again)
    assert listing(local.stdout) == [
        {"name": "notes", "path": str(node.importdir / "notes"), "is_git": False, "head": None,
         "remote": None},
        {"name": "weather", "path": str(clone), "is_git": True, "head": new_head[:12],
         "remote": url},
    ]  # fmt: skip
    assert re.search(rf" {new_head[:12]} ", table.stdout)
    assert re.search(r"^notes ", table.stdout, re.MULTILINE)


def test_a_failed_clone_leaves_nothing(node: NodeUnderTest, tmp_path: Path) -> None:
    missing = (tmp_path / "missing.git").as_uri()
    assert maoctl(node, "dataset", "add", "gone", missing).returncode == 0

    failed = maoctl(node, "dataset", "clone", "gone")
    not_cloned = maoctl(node, "dataset", "clone", "gone", "--update")
    unregistered = maoctl(node, "dataset", "clone", "nope")

    assert failed.returncode == 1
    assert error_line(failed).startswith(f"error: no git repository at {missing}: fatal: ")
    assert list(node.importdir.iterdir()) == []
    assert not_cloned.returncode == 1
    assert "is not a git clone with an 'origin' remote" in error_line(not_cloned)
    assert unregistered.returncode == 1
    assert error_line(unregistered) == "error: dataset 'nope' is not registered"


def test_a_hostile_url_written_by_another_client_is_never_cloned(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer, tmp_path: Path
) -> None:
    hostile = tmp_path / "pwned"
    key = registry.datasets.key("evil")
    with connect_etcd(etcd_server.port) as client:
        client.put(key, json.dumps({"name": "evil", "url": f"ext::sh -c touch% {hostile}"}))

    result = maoctl(node, "dataset", "clone", "evil")

    assert result.returncode == 1
    assert error_line(result).startswith(f"error: registry entry {key} is invalid")
    assert not hostile.exists()
    assert list(node.importdir.iterdir()) == []


def test_clone_update_refuses_a_name_that_leaves_importdir(
    node: NodeUnderTest, make_data_repo: Callable[..., str], tmp_path: Path
) -> None:
    url = make_data_repo("outside")
    outside = tmp_path / "outside"  # importdir/../outside
    git("clone", "-q", url, str(outside), cwd=tmp_path)
    before = head_of(outside)
    push_file(work_clone_of(url), "control-1.csv")

    result = maoctl(node, "dataset", "clone", "../outside", "--update")

    assert result.returncode == 1
    assert "invalid name '../outside'" in error_line(result)
    assert head_of(outside) == before
