"""maoctl's contract, run in-process with click's CliRunner against the node's real etcd and
Redis: exit codes, one-line error messages and the JSON shapes that scripts read.

Exit codes (cli.py): 0 ok; 1 not found / already exists / invalid input; 2 usage; 3 a service is
unreachable; 4 a run failed. Every invocation gets the node's whole environment through
`invoke(env=...)`, with any other MAO_* / CELERY_* variable of this process unset, so a command
reads the settings of its own invocation (test_each_invocation_reads_its_own_environment).
tests/integration/test_cli.py keeps maoctl's smoke tests as real processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

import cli
from mao_celery.models import Dataset, Member, Notification, RunReport, RunStatus, Tool
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import free_ports
from tests.helpers import TOOL_ARGS, WIDE, listing

pytestmark = pytest.mark.integration

Maoctl = Callable[..., Result]
TOOL_KEYS = {
    "name", "author", "image", "data_repo", "branch", "code_repo", "artefact", "description",
    "spike_window", "spike_threshold_pct", "network", "read_only_rootfs", "timeout_s",
    "memory_bytes", "cpus", "push", "push_branch", "created_at", "created_by",
}  # fmt: skip
DATASET_KEYS = {"name", "url", "branch", "description", "created_at", "created_by"}


@pytest.fixture
def maoctl(node: NodeUnderTest) -> Maoctl:
    """Run maoctl in this process with the node's environment (plus `env`); an exception that
    maoctl does not turn into an error line fails the test with its traceback."""
    unset: dict[str, str | None] = {
        key: None for key in os.environ if key.startswith(("MAO_", "CELERY_"))
    }

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        environment = unset | node.env | (env or {})
        return CliRunner().invoke(cli.main, list(args), env=environment, catch_exceptions=False)

    return invoke


def error_line(result: Result) -> str:
    """The one line maoctl prints on stderr for an error (failing the test if there are more)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def closed_port() -> int:
    """A loopback port that nothing listens on (it was free a moment ago)."""
    (port,) = free_ports(1)
    return port


def test_a_tool_is_shown_as_json_and_a_missing_one_is_not_found(maoctl: Maoctl) -> None:
    added = maoctl("tool", "add", "demo", *TOOL_ARGS, "--description", "counts things",
                   "--spike-window", "3", "--spike-threshold", "12.5")  # fmt: skip
    shown = maoctl("tool", "get", "demo", "--json")
    listed = maoctl("tool", "get", "--json")
    removed = maoctl("tool", "remove", "demo")
    missing = maoctl("tool", "get", "demo")

    assert (added.exit_code, added.stdout) == (0, "tool demo registered\n"), added.stderr
    tool = json.loads(shown.stdout)
    assert set(tool) == TOOL_KEYS
    assert tool | {"created_at": None} == {
        "name": "demo",
        "author": "tester",
        "image": "mao-demo:latest",
        "data_repo": "https://example.org/data.git",
        "branch": None,
        "code_repo": "https://example.org/code",
        "artefact": "csv",
        "description": "counts things",
        "spike_window": 3,
        "spike_threshold_pct": 12.5,
        "network": None,
        "read_only_rootfs": True,
        "timeout_s": None,
        "memory_bytes": None,
        "cpus": None,
        "push": False,
        "push_branch": None,
        "created_at": None,
        "created_by": "node-a",
    }
    assert datetime.fromisoformat(tool["created_at"]).tzinfo is not None
    assert listing(listed.stdout) == [tool]
    assert (removed.exit_code, removed.stdout) == (0, "tool demo removed; it had no schedule\n")
    assert missing.exit_code == 1
    assert error_line(missing) == "error: tool 'demo' is not registered"


def test_a_dataset_is_shown_as_json_and_a_missing_one_is_not_found(maoctl: Maoctl) -> None:
    added = maoctl("dataset", "add", "weather", "/srv/git/weather.git",
                   "--description", "daily weather")  # fmt: skip
    shown = maoctl("dataset", "get", "weather", "--json")
    listed = maoctl("dataset", "get", "--json")
    removed = maoctl("dataset", "remove", "weather")
    missing = maoctl("dataset", "get", "weather")

    assert added.exit_code == 0, added.stderr
    dataset = json.loads(shown.stdout)
    assert set(dataset) == DATASET_KEYS
    assert dataset | {"created_at": None} == {
        "name": "weather",
        "url": "/srv/git/weather.git",
        "branch": None,
        "description": "daily weather",
        "created_at": None,
        "created_by": "node-a",
    }
    assert listing(listed.stdout) == [dataset]
    assert removed.exit_code == 0, removed.stderr
    assert missing.exit_code == 1
    assert error_line(missing) == "error: dataset 'weather' is not registered"


@pytest.mark.parametrize(
    "add",
    [["tool", "add", "demo", *TOOL_ARGS], ["dataset", "add", "demo", "/srv/demo.git"]],
    ids=["tool", "dataset"],
)
def test_a_second_add_of_a_name_exits_1_and_changes_nothing(
    maoctl: Maoctl, registry: Registry, add: list[str]
) -> None:
    kind = add[0]
    collection = registry.tools if kind == "tool" else registry.datasets
    assert maoctl(*add).exit_code == 0
    before = collection.list()

    again = maoctl(*add, "--description", "second")

    assert again.exit_code == 1
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
def test_invalid_input_exits_1_in_one_line_with_nothing_written(
    maoctl: Maoctl, registry: Registry, tmp_path: Path, args: list[str], reason: str
) -> None:
    hostile = tmp_path / "pwned"

    result = maoctl(*(arg.replace(HOSTILE, str(hostile)) for arg in args))

    assert result.exit_code == 1
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
    maoctl: Maoctl, registry: Registry, args: list[str]
) -> None:
    result = maoctl(*args)

    assert result.exit_code == 2
    assert result.stderr.startswith("Usage: ")
    assert registry.tools.list() == ([], [])


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "MAO_ETCD_ENDPOINTS",
            "nonsense",
            "error: invalid setting etcd_endpoints: etcd endpoint 'nonsense' is not host:port",
        ),
        ("MAO_REDIS_URL", "nonsense", "redis_url: 'nonsense' is not a redis://"),
        ("MAO_NODE_ID", "a/b", "node_id: node id 'a/b'"),
        ("MAO_CONFIG", "/nonexistent/mao.toml", "config file /nonexistent/mao.toml cannot be read"),
    ],
    ids=["etcd-endpoints", "redis-url", "node-id", "config"],
)
def test_an_invalid_setting_exits_1_in_one_line_naming_it(
    maoctl: Maoctl, variable: str, value: str, expected: str
) -> None:
    result = maoctl("tool", "runs", "demo", env={variable: value})

    assert result.exit_code == 1
    assert expected in error_line(result)


def test_a_corrupt_run_record_exits_1_naming_the_run(maoctl: Maoctl, node: NodeUnderTest) -> None:
    redis.Redis.from_url(node.env["MAO_REDIS_URL"]).set(
        "mao:run:broken", '{"run_id": "broken", "status": "nonsense"}'
    )

    result = maoctl("run", "show", "broken")

    assert result.exit_code == 1
    assert error_line(result).startswith(
        "error: invalid state at mao:run:broken: not a valid run record (another version?): "
    )


def test_a_failed_run_exits_4_with_its_reason_and_its_report_as_json(
    maoctl: Maoctl, node: NodeUnderTest
) -> None:
    runs = node.runs()
    report = RunReport(run_id="failed-run", tool="demo", node="node-a")
    runs.begin(report, lock_ttl_s=60)
    runs.save(report.failed("the tool exited with code 3"))

    result = maoctl("run", "show", "failed-run", "--json")

    assert result.exit_code == 4
    assert json.loads(result.stderr) == {  # under --json, the error is JSON too
        "error": {
            "kind": "run_failed",
            "message": "run failed-run failed: the tool exited with code 3",
        }
    }
    shown = RunReport.model_validate_json(result.stdout)
    assert (shown.run_id, shown.status, shown.error) == (
        "failed-run", "failed", "the tool exited with code 3",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "variable", "service"),
    [
        (["tool", "get"], "MAO_ETCD_ENDPOINTS", "etcd"),
        (["tool", "runs", "demo"], "MAO_REDIS_URL", "Redis"),
    ],
    ids=["etcd", "Redis"],
)
def test_an_unreachable_service_exits_3_in_one_line_naming_it_and_the_endpoint(
    maoctl: Maoctl, args: list[str], variable: str, service: str
) -> None:
    port = closed_port()
    endpoint = f"127.0.0.1:{port}" if service == "etcd" else f"redis://127.0.0.1:{port}/0"

    result = maoctl(*args, env={variable: endpoint})

    assert result.exit_code == 3
    # etcd says that no member answers (registry.Etcd.call), Redis names the URL
    unreachable = "unreachable (no member answers)" if service == "etcd" else "unreachable"
    assert error_line(result).startswith(f"error: {service} {unreachable} at {endpoint}")


def test_status_lists_every_dependency_as_json(maoctl: Maoctl, node: NodeUnderTest) -> None:
    result = maoctl("status", "--json")

    assert result.exit_code == 3, result.stdout  # no worker, no beat (test_status_workers.py)
    checks = json.loads(result.stdout)
    assert all({"name", "ok", "detail"} <= set(check) for check in checks)
    assert [(c["name"], c["ok"]) for c in checks] == [
        ("etcd", True), ("Redis", True), ("Docker", True), ("importdir", True),
        ("workers", False), ("beat", False),
    ]  # fmt: skip
    assert node.env["MAO_ETCD_ENDPOINTS"] in checks[0]["detail"]
    assert checks[3]["detail"] == str(node.importdir)


def test_status_exits_3_naming_the_unreachable_etcd(maoctl: Maoctl) -> None:
    port = closed_port()

    result = maoctl("status", "--json", env={"MAO_ETCD_ENDPOINTS": f"127.0.0.1:{port}"})

    assert result.exit_code == 3
    checks = json.loads(result.stdout)
    assert [(c["name"], c["ok"]) for c in checks][:4] == [
        ("etcd", False), ("Redis", True), ("Docker", True), ("importdir", True),
    ]  # fmt: skip
    assert f"etcd unreachable (no member answers) at 127.0.0.1:{port}" in checks[0]["detail"]


def test_status_exits_1_for_a_redis_database_the_server_does_not_have(
    maoctl: Maoctl, node: NodeUnderTest
) -> None:
    url = node.env["MAO_REDIS_URL"].rsplit("/", 1)[0] + "/999"

    result = maoctl("status", "--json", env={"MAO_REDIS_URL": url})

    assert result.exit_code == 1
    redis_check = json.loads(result.stdout)[1]
    assert redis_check["name"] == "Redis"
    assert "database 999 is out of the server's range" in redis_check["detail"]


def test_config_shows_the_settings_in_force_with_the_redis_password_masked(
    maoctl: Maoctl, node: NodeUnderTest
) -> None:
    with_password = node.env["MAO_REDIS_URL"].replace("redis://", "redis://:s3cret@", 1)

    result = maoctl("config", "--json", env={"MAO_REDIS_URL": with_password})

    assert result.exit_code == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout)
    assert {
        "etcd_endpoints", "etcd_prefix", "redis_url", "importdir", "node_id",
    } <= set(values)  # fmt: skip
    assert values["node_id"] == "node-a"
    assert values["etcd_prefix"] == node.env["MAO_ETCD_PREFIX"]
    assert values["importdir"] == str(node.importdir)
    assert "s3cret" not in result.stdout
    assert values["redis_url"].startswith("redis://")


def test_each_invocation_reads_its_own_environment(maoctl: Maoctl) -> None:
    by_b = maoctl("tool", "add", "shared", *TOOL_ARGS, env={"MAO_NODE_ID": "node-b"})
    by_a = maoctl("dataset", "add", "weather", "/srv/weather.git")
    config_b = maoctl("config", "--json", env={"MAO_NODE_ID": "node-b"})
    config_a = maoctl("config", "--json")

    assert by_b.exit_code == by_a.exit_code == 0
    assert json.loads(maoctl("tool", "get", "shared", "--json").stdout)["created_by"] == "node-b"
    assert (
        json.loads(maoctl("dataset", "get", "weather", "--json").stdout)["created_by"] == "node-a"
    )
    assert (json.loads(config_b.stdout)["node_id"], json.loads(config_a.stdout)["node_id"]) == (
        "node-b", "node-a",
    )  # fmt: skip


def test_members_are_listed_as_json(maoctl: Maoctl, registry: Registry) -> None:
    now = datetime.now(UTC)
    member = Member(node_id="node-b", hostname="host-b", version="1.2.3", started_at=now,
                    last_seen=now)  # fmt: skip
    registry.register_member(member, ttl_s=60)

    result = maoctl("members", "--json")

    assert result.exit_code == 0, result.stderr
    (shown,) = listing(result.stdout)
    assert set(shown) == {
        "node_id", "hostname", "version", "started_at", "last_seen", "workers", "tools",
    }  # fmt: skip
    assert Member.model_validate(shown) == member


def test_notifications_are_listed_as_json_with_their_key(
    maoctl: Maoctl, registry: Registry
) -> None:
    now = datetime.now(UTC)
    notification = Notification(tool="demo", node="node-b", run_id="0123abcd", control_value=146.0,
                                baseline=101.0, gain_pct=44.55, threshold_pct=10.0,
                                detected_at=now)  # fmt: skip
    key, _ = registry.publish_notification(notification, started_at=now, retention_s=60)

    listed = maoctl("notifications", "list", "--json")
    of_other_tool = maoctl("notifications", "list", "--tool", "other", "--json")

    assert listed.exit_code == 0, listed.stderr
    (shown,) = listing(listed.stdout)
    assert set(shown) == {"key", *Notification.model_fields}
    assert shown["key"] == key
    assert Notification.model_validate({k: v for k, v in shown.items() if k != "key"}) == (
        notification
    )
    assert json.loads(of_other_tool.stdout) == {"items": [], "warnings": []}


def test_push_options_are_written_shown_and_unset(maoctl: Maoctl) -> None:
    added = maoctl("tool", "add", "demo", *TOOL_ARGS, "--push", "--push-branch", "main")
    shown = maoctl("tool", "get", "demo")
    stopped = maoctl("tool", "update", "demo", "--no-push", "--unset", "push-branch", "--json")
    bad = maoctl("tool", "update", "demo", "--push-branch", "a..b")

    assert added.exit_code == 0, added.stderr
    assert "push                 True" in shown.stdout
    assert "push_branch          main" in shown.stdout
    assert "  push    to branch main of the data repository (the tool's --push)" in shown.stdout
    assert stopped.exit_code == 0, stopped.stderr
    assert {k: json.loads(stopped.stdout)[k] for k in ("push", "push_branch")} == {
        "push": False, "push_branch": None,
    }  # fmt: skip
    assert bad.exit_code == 1
    assert "a..b" in error_line(bad)


def test_run_show_names_the_commit_digest_and_push(maoctl: Maoctl, node: NodeUnderTest) -> None:
    runs = node.runs()
    report = RunReport(run_id="pushed-run", tool="demo", node="node-a")
    runs.begin(report, lock_ttl_s=60)
    done = report.model_copy(update={"status": RunStatus.SUCCEEDED, "run_commit": "ab" * 20,
                                     "image_digest": "sha256:" + "c" * 64,
                                     "pushed_to": "mao/node-a"})  # fmt: skip
    runs.save(done)
    failed_push = done.model_copy(update={"run_id": "failed-push", "pushed_to": None,
                                          "push_error": "remote unreachable"})  # fmt: skip
    runs.begin(failed_push.model_copy(update={"status": RunStatus.QUEUED}), lock_ttl_s=60)
    runs.save(failed_push)

    text = maoctl("run", "show", "pushed-run")
    as_json = maoctl("run", "show", "pushed-run", "--json")
    failed = maoctl("run", "show", "failed-push")

    assert text.exit_code == 0, text.stderr
    assert f"commit     {'ab' * 6}  (what the run wrote)" in text.stdout.splitlines()
    assert f"image id   sha256:{'c' * 64}" in text.stdout.splitlines()
    assert "pushed     to branch mao/node-a of the data repository" in text.stdout.splitlines()
    shown = json.loads(as_json.stdout)
    keys = ("run_commit", "image_digest", "pushed_to", "push_error")
    assert [shown[key] for key in keys] == ["ab" * 20, "sha256:" + "c" * 64, "mao/node-a", None]
    assert "push       FAILED: remote unreachable (the next push carries it)" in failed.stdout


@pytest.mark.parametrize(
    "args", [["tool", "update-data", "demo"], ["tool", "history", "demo", "--json"]]
)
def test_data_commands_exit_1_for_an_unknown_tool_and_3_without_etcd(
    maoctl: Maoctl, args: list[str]
) -> None:
    missing = maoctl(*args[:3])
    port = closed_port()
    unreachable = maoctl(*args[:3], env={"MAO_ETCD_ENDPOINTS": f"127.0.0.1:{port}"})

    assert missing.exit_code == 1
    assert error_line(missing) == "error: tool 'demo' is not registered"
    assert unreachable.exit_code == 3
    assert error_line(unreachable).startswith("error: etcd unreachable")


def test_history_refuses_plot_with_json(maoctl: Maoctl) -> None:
    result = maoctl("tool", "history", "demo", "--plot", "--json")

    assert result.exit_code == 2
    assert "--plot draws for people and --json prints for scripts" in result.stderr


def names_in_table(stdout: str, stem: str) -> list[str]:
    """The first cells of a table's rows whose first cell starts with `stem`."""
    return [line.split()[0] for line in stdout.splitlines() if line.startswith(stem)]


def test_a_listing_table_shows_100_entries_then_the_command_for_the_next_page(
    maoctl: Maoctl, registry: Registry
) -> None:
    names = [f"set-{i:03d}" for i in range(101)]
    for name in names:
        registry.datasets.add(Dataset(name=name, url=f"/srv/git/{name}.git"))

    first = maoctl("dataset", "get", env=WIDE)
    rest = maoctl("dataset", "get", "--after", "set-099", env=WIDE)
    every = maoctl("dataset", "get", "--json")

    assert first.exit_code == 0, first.stderr
    assert names_in_table(first.stdout, "set-") == names[:100]
    assert first.stdout.splitlines()[-1] == "... more: maoctl dataset get --after set-099"
    assert rest.exit_code == 0, rest.stderr
    assert names_in_table(rest.stdout, "set-") == ["set-100"]
    assert "more:" not in rest.stdout
    assert [d["name"] for d in listing(every.stdout)] == names  # JSON: complete, no next_after


def test_a_json_listing_with_limit_gives_where_the_next_page_starts(
    maoctl: Maoctl, registry: Registry
) -> None:
    for i in range(5):
        registry.tools.add(
            Tool(name=f"t{i}", author="tester", image="mao-demo:latest", artefact="csv",
                 data_repo="https://example.org/data.git", code_repo="https://example.org/code")
        )  # fmt: skip
    pages: list[dict[str, Any]] = []
    after: list[str] = []
    while not pages or pages[-1]["next_after"] is not None:
        result = maoctl("tool", "get", "--json", "--limit", "2", *after)
        assert result.exit_code == 0, result.stderr
        pages.append(json.loads(result.stdout))
        after = ["--after", pages[-1]["next_after"]]
    table = maoctl("tool", "get", "--limit", "2", "--after", "t1", env=WIDE)

    assert [[t["name"] for t in p["items"]] for p in pages] == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    assert [(p["next_after"], p["warnings"]) for p in pages] == [("t1", []), ("t3", []), (None, [])]
    assert names_in_table(table.stdout, "t") == ["t2", "t3"]
    assert table.stdout.splitlines()[-1] == "... more: maoctl tool get --after t3 --limit 2"


@pytest.mark.parametrize(
    "args",
    [["tool", "get", "--limit", "0"], ["tool", "get", "t0", "--limit", "2"],
     ["dataset", "get", "d0", "--after", "c"]],
    ids=["limit-0", "tool-name-with-limit", "dataset-name-with-after"],
)  # fmt: skip
def test_paging_options_out_of_place_exit_2(maoctl: Maoctl, args: list[str]) -> None:
    result = maoctl(*args)

    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
