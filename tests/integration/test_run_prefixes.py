"""Run ids given by a unique prefix (like git and docker), in `run show` and `run forget`, with a
real Redis; errors under --json as JSON objects; `tool runs` of an unknown tool."""

from __future__ import annotations

import json

import pytest

from mao_celery.exceptions import AmbiguousId, NotFound
from mao_celery.models import RunReport
from tests.fixtures.node import NodeUnderTest
from tests.helpers import TOOL_ARGS, listing, maoctl

pytestmark = pytest.mark.integration

AMBIGUOUS = "run id prefix 'c32e' is ambiguous (2 runs): give more characters"
IDS = ("c32e0f50" + "a" * 24, "c32e0f51" + "b" * 24, "9f1b2c3d" + "c" * 24)


def record_ended_runs(node: NodeUnderTest, tool: str, run_ids: tuple[str, ...]) -> None:
    """Record ended (failed) runs of `tool` with these ids."""
    runs = node.runs()
    for run_id in run_ids:
        report = RunReport(run_id=run_id, tool=tool, node="node-a")
        runs.begin(report, lock_ttl_s=60)
        runs.save(report.failed("the tool exited with code 1"))


def test_a_unique_prefix_shows_its_run(node: NodeUnderTest) -> None:
    record_ended_runs(node, "demo", IDS)

    shown = maoctl(node, "run", "show", "9f1b", "--json")
    short = maoctl(node, "run", "show", "c32e0f51")

    assert shown.returncode == 4  # a failed run
    assert json.loads(shown.stdout)["run_id"] == IDS[2]
    assert short.stdout.splitlines()[0] == f"run        {IDS[1]}"


def test_an_exact_id_and_the_store_resolve_the_same_way(node: NodeUnderTest) -> None:
    record_ended_runs(node, "demo", IDS)
    runs = node.runs()

    assert runs.resolve(IDS[0]) == IDS[0]
    assert runs.resolve("c32e0f50") == IDS[0]
    with pytest.raises(AmbiguousId, match=r"ambiguous \(2 runs\)"):
        runs.resolve("c32e")
    with pytest.raises(NotFound):
        runs.resolve("ffff")
    with pytest.raises(NotFound):
        runs.resolve("c32e*")


def test_an_ambiguous_prefix_is_refused_naming_how_many_runs(node: NodeUnderTest) -> None:
    record_ended_runs(node, "demo", IDS)

    shown = maoctl(node, "run", "show", "c32e")
    as_json = maoctl(node, "run", "show", "c32e", "--json")
    forgotten = maoctl(node, "run", "forget", "c3")

    assert (shown.returncode, shown.stdout) == (1, "")
    assert (
        shown.stderr == "error: run id prefix 'c32e' is ambiguous (2 runs): give more characters\n"
    )
    assert (as_json.returncode, as_json.stdout) == (1, "")
    assert json.loads(as_json.stderr) == {
        "error": {
            "kind": "ambiguous",
            "message": AMBIGUOUS,
        }
    }
    assert forgotten.returncode == 1
    assert node.runs().find(IDS[0]) is not None


def test_an_unknown_id_or_prefix_exits_1(node: NodeUnderTest) -> None:
    record_ended_runs(node, "demo", IDS)

    shown = maoctl(node, "run", "show", "0000")
    as_json = maoctl(node, "run", "show", "0000", "--json")
    forgotten = maoctl(node, "run", "forget", "0000")

    assert (shown.returncode, shown.stderr) == (1, "error: run '0000' is not known on this node\n")
    assert as_json.returncode == 1
    assert json.loads(as_json.stderr)["error"]["kind"] == "not_found"
    assert forgotten.returncode == 1


def test_a_prefix_forgets_its_run(node: NodeUnderTest) -> None:
    record_ended_runs(node, "demo", IDS)

    forgotten = maoctl(node, "run", "forget", "9f1b2c")
    listed = maoctl(node, "tool", "runs", "demo", "--json")

    assert (forgotten.returncode, forgotten.stdout) == (0, f"run {IDS[2]} forgotten\n")
    assert sorted(r["run_id"] for r in listing(listed.stdout)) == sorted(IDS[:2])


def test_tool_runs_of_an_unknown_tool_exits_1(node: NodeUnderTest) -> None:
    assert maoctl(node, "tool", "add", "quiet", *TOOL_ARGS).returncode == 0

    unknown = maoctl(node, "tool", "runs", "nosuch")
    unknown_json = maoctl(node, "tool", "runs", "nosuch", "--json")
    never_run = maoctl(node, "tool", "runs", "quiet", "--json")

    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr.startswith("error: ")
    assert "nosuch" in unknown.stderr
    assert json.loads(unknown_json.stderr)["error"]["kind"] == "not_found"
    assert never_run.returncode == 0
    assert json.loads(never_run.stdout) == {"items": [], "warnings": []}


def test_tool_get_name_shows_every_field_of_the_tool(node: NodeUnderTest) -> None:
    added = maoctl(node, "tool", "add", "demo", *TOOL_ARGS, "--spike-threshold", "7.5")
    assert added.returncode == 0, added.stderr

    shown = maoctl(node, "tool", "get", "demo", env={"COLUMNS": "80"})
    as_json = json.loads(maoctl(node, "tool", "get", "demo", "--json").stdout)

    lines = shown.stdout.splitlines()
    fields = lines[: len(as_json)]  # the model's fields first, whatever else follows
    assert shown.returncode == 0, shown.stderr
    assert [line.split()[0] for line in fields] == list(as_json)
    assert any(line.split() == ["code_repo", "https://example.org/code"] for line in lines)
    assert any(line.split() == ["spike_threshold_pct", "7.5"] for line in lines)
    assert all(len(line) <= 80 for line in lines)
