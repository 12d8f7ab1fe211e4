"""maoctl's registry, dataset and status commands as real processes against real etcd, Redis, git.

Exit codes under test (cli.py): 0 ok; 1 not found / already exists / invalid input; 2 usage;
3 a service is unreachable (4, a failed run, is covered by test_runs.py). No command ever prints
a traceback.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

import cli
from mao_celery import datasets
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest, git
from tests.fixtures.services import EtcdServer, connect_etcd, free_ports

pytestmark = pytest.mark.integration

WIDE = {"COLUMNS": "200"}  # rich tables: no folding of cells in the assertions below
LONGEST_NAME = "weather-" + "x" * 56
TOOL_ARGS = (
    "tester",
    "mao-demo:latest",
    "https://example.org/data.git",
    "https://example.org/code",
    "csv",
)


def maoctl(
    node: NodeUnderTest, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run maoctl as a process; no command may print a traceback, whatever its exit code."""
    result = node.maoctl(*args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


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


def test_a_tool_is_registered_shown_and_removed(node: NodeUnderTest) -> None:
    added = maoctl(node, "tool", "add", "demo", *TOOL_ARGS, "--description", "counts things",
                   "--spike-window", "3", "--spike-threshold", "12.5")  # fmt: skip
    listed = maoctl(node, "tool", "get", "--json")
    shown = maoctl(node, "tool", "get", "demo", "--json")
    table = maoctl(node, "tool", "get", env=WIDE)
    removed = maoctl(node, "tool", "remove", "demo")
    missing = maoctl(node, "tool", "get", "demo")

    assert (added.returncode, added.stdout) == (0, "tool demo registered\n"), added.stderr
    tool = json.loads(shown.stdout)
    assert json.loads(listed.stdout) == [tool]
    assert tool | {"created_at": None} == {
        "name": "demo",
        "author": "tester",
        "image": "mao-demo:latest",
        "data_repo": "https://example.org/data.git",
        "code_repo": "https://example.org/code",
        "artefact": "csv",
        "description": "counts things",
        "spike_window": 3,
        "spike_threshold_pct": 12.5,
        "network": None,
        "read_only_rootfs": True,
        "created_at": None,
        "created_by": "node-a",
    }
    assert "│ demo │ tester │ mao-demo:latest │" in table.stdout
    assert (removed.returncode, removed.stdout) == (0, "tool demo removed\n")
    assert missing.returncode == 1
    assert error_line(missing) == "error: tool 'demo' is not registered"


def test_a_dataset_is_registered_shown_and_removed(node: NodeUnderTest) -> None:
    added = maoctl(node, "dataset", "add", LONGEST_NAME, "/srv/git/weather.git",
                   "--description", "daily weather")  # fmt: skip
    listed = maoctl(node, "dataset", "get", "--json")
    shown = maoctl(node, "dataset", "get", LONGEST_NAME, "--json")
    table = maoctl(node, "dataset", "get", LONGEST_NAME, env=WIDE)
    removed = maoctl(node, "dataset", "remove", LONGEST_NAME)
    missing = maoctl(node, "dataset", "get", LONGEST_NAME)

    assert added.returncode == 0, added.stderr
    dataset = json.loads(shown.stdout)
    assert json.loads(listed.stdout) == [dataset]
    assert dataset | {"created_at": None} == {
        "name": LONGEST_NAME,
        "url": "/srv/git/weather.git",
        "description": "daily weather",
        "created_at": None,
        "created_by": "node-a",
    }
    assert f"│ {LONGEST_NAME} │ /srv/git/weather.git │ daily weather │" in table.stdout
    assert removed.returncode == 0, removed.stderr
    assert missing.returncode == 1
    assert error_line(missing) == f"error: dataset '{LONGEST_NAME}' is not registered"


@pytest.mark.parametrize(
    "add",
    [["tool", "add", "demo", *TOOL_ARGS], ["dataset", "add", "demo", "/srv/demo.git"]],
    ids=["tool", "dataset"],
)
def test_a_second_add_of_a_name_exits_1_and_changes_nothing(
    node: NodeUnderTest, registry: Registry, add: list[str]
) -> None:
    kind = add[0]
    collection = registry.tools if kind == "tool" else registry.datasets
    assert maoctl(node, *add).returncode == 0
    before = collection.list()

    again = maoctl(node, *add, "--description", "second")

    assert again.returncode == 1
    assert error_line(again) == f"error: {kind} 'demo' already exists"
    assert collection.list() == before


HOSTILE = "{hostile}"  # replaced by a path under tmp_path that the command would create
INVALID_ADDS: dict[str, tuple[list[str], str]] = {
    "name ../x": (["dataset", "add", "../x", "/srv/d.git"], "invalid name '../x'"),
    "empty name": (["dataset", "add", "", "/srv/d.git"], "invalid name ''"),
    "65-character name": (["dataset", "add", "a" * 65, "/srv/d.git"], "invalid name"),
    "ext:: URL": (["dataset", "add", "evil", f"ext::sh -c touch% {HOSTILE}"], "remote helpers"),
    "fd:: URL": (["dataset", "add", "evil", "fd::17"], "remote helpers"),
    "option URL": (["dataset", "add", "evil", "--", f"--upload-pack=touch {HOSTILE}"], "git URL"),
    "bare option URL": (["dataset", "add", "evil", "--", f"--upload-pack={HOSTILE}"], "option"),
    "relative URL": (["dataset", "add", "evil", "../x"], "invalid git URL '../x'"),
    "tool name ../x": (["tool", "add", "../x", *TOOL_ARGS], "invalid name '../x'"),
    "tool image": (["tool", "add", "demo", "tester", "Mao-Demo:latest", *TOOL_ARGS[2:]],
                   "invalid image reference"),
    "tool data repo ext::": (["tool", "add", "demo", "tester", "mao-demo:latest",
                              f"ext::sh -c touch% {HOSTILE}", *TOOL_ARGS[3:]], "remote helpers"),
}  # fmt: skip


@pytest.mark.parametrize(("args", "reason"), INVALID_ADDS.values(), ids=INVALID_ADDS.keys())
def test_invalid_input_is_refused_with_nothing_written(
    node: NodeUnderTest, registry: Registry, tmp_path: Path, args: list[str], reason: str
) -> None:
    hostile = tmp_path / "pwned"

    result = maoctl(node, *(arg.replace(HOSTILE, str(hostile)) for arg in args))

    assert result.returncode == 1
    assert reason in error_line(result)
    assert registry.tools.list() == ([], [])
    assert registry.datasets.list() == ([], [])
    assert not hostile.exists()


USAGE_ERRORS: dict[str, list[str]] = {
    "missing arguments": ["tool", "add", "demo"],
    "spike window 0": ["tool", "add", "demo", *TOOL_ARGS, "--spike-window", "0"],
    "spike threshold 0": ["tool", "add", "demo", *TOOL_ARGS, "--spike-threshold", "0"],
    "unknown command": ["dataset", "frobnicate"],
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_a_usage_error_exits_2_with_nothing_written(
    node: NodeUnderTest, registry: Registry, args: list[str]
) -> None:
    result = maoctl(node, *args)

    assert result.returncode == 2
    assert result.stderr.startswith("Usage: ")
    assert registry.tools.list() == ([], [])


def test_an_invalid_setting_exits_1_naming_it(node: NodeUnderTest) -> None:
    result = maoctl(node, "tool", "get", env={"MAO_ETCD_ENDPOINTS": "nonsense"})

    assert result.returncode == 1
    assert error_line(result) == (
        "error: invalid setting etcd_endpoints: etcd endpoint 'nonsense' is not host:port"
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MAO_REDIS_URL", "nonsense", "redis_url: 'nonsense' is not a redis://"),
        ("MAO_NODE_ID", "a/b", "node_id: node id 'a/b'"),
        ("MAO_CONFIG", "/nonexistent/mao.toml", "config file /nonexistent/mao.toml cannot be read"),
    ],
    ids=["redis-url", "node-id", "config"],
)
def test_an_invalid_setting_of_any_kind_exits_1_in_one_line(
    node: NodeUnderTest, variable: str, value: str, expected: str
) -> None:
    result = maoctl(node, "tool", "runs", "demo", env={variable: value})

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert expected in error_line(result)


def test_a_corrupt_run_record_exits_1_naming_the_run(node: NodeUnderTest) -> None:
    runs = node.runs()
    runs.set_value("run:broken", '{"run_id": "broken", "status": "nonsense"}')

    result = maoctl(node, "run", "show", "broken")

    assert result.returncode == 1
    assert "run record of broken is invalid" in error_line(result)


@pytest.mark.parametrize(
    ("args", "variable", "service"),
    [
        (["tool", "get"], "MAO_ETCD_ENDPOINTS", "etcd"),
        (["tool", "runs", "demo"], "MAO_REDIS_URL", "Redis"),
    ],
    ids=["etcd", "Redis"],
)
def test_an_unreachable_service_exits_3_naming_it_and_the_endpoint(
    node: NodeUnderTest, args: list[str], variable: str, service: str
) -> None:
    (port,) = free_ports(1)
    endpoint = f"127.0.0.1:{port}" if service == "etcd" else f"redis://127.0.0.1:{port}/0"

    result = maoctl(node, *args, env={variable: endpoint})

    assert result.returncode == 3
    assert result.stderr.count("\n") == 1
    assert error_line(result).startswith(f"error: {service} unreachable at {endpoint}")


def test_status_checks_every_dependency(node: NodeUnderTest) -> None:
    as_json = maoctl(node, "status", "--json")
    for_people = maoctl(node, "status")

    assert as_json.returncode == 0, as_json.stdout
    checks = json.loads(as_json.stdout)
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("etcd", True), ("Redis", True), ("Docker", True), ("importdir", True),
    ]  # fmt: skip
    assert node.env["MAO_ETCD_ENDPOINTS"] in checks[0]["detail"]
    assert checks[3]["detail"] == str(node.importdir)
    assert for_people.returncode == 0
    assert [line.split()[:2] for line in for_people.stdout.splitlines()] == [
        ["etcd", "OK"], ["Redis", "OK"], ["Docker", "OK"], ["importdir", "OK"],
    ]  # fmt: skip


def test_status_exits_3_when_etcd_is_unreachable(node: NodeUnderTest) -> None:
    (port,) = free_ports(1)

    result = maoctl(node, "status", env={"MAO_ETCD_ENDPOINTS": f"127.0.0.1:{port}"})

    assert result.returncode == 3
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["etcd", "FAIL"]
    assert f"etcd unreachable at 127.0.0.1:{port}" in lines[0]
    assert [line.split()[1] for line in lines[1:]] == ["OK", "OK", "OK"]


def test_two_nodes_see_the_same_registry(node: NodeUnderTest) -> None:
    node_b = {"MAO_NODE_ID": "node-b"}

    by_b = maoctl(node, "tool", "add", "shared", *TOOL_ARGS, env=node_b)
    by_a = maoctl(node, "dataset", "add", "weather", "/srv/weather.git")
    tool_seen_by_a = maoctl(node, "tool", "get", "shared", "--json")
    datasets_seen_by_b = maoctl(node, "dataset", "get", "--json", env=node_b)

    assert by_b.returncode == by_a.returncode == 0
    assert json.loads(tool_seen_by_a.stdout)["created_by"] == "node-b"
    assert [(d["name"], d["created_by"]) for d in json.loads(datasets_seen_by_b.stdout)] == [
        ("weather", "node-a")
    ]


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
    assert json.loads(local.stdout) == [
        {"name": "notes", "path": str(node.importdir / "notes"), "is_git": False, "head": None,
         "remote": None},
        {"name": "weather", "path": str(clone), "is_git": True, "head": new_head[:12],
         "remote": url},
    ]  # fmt: skip
    assert f"│ {new_head[:12]} │" in table.stdout
    assert "│ notes " in table.stdout


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
