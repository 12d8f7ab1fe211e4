"""`maoctl tool history` and `maoctl tool update-data` (issue 10) as real maoctl processes, on
the history two real runs of a worker committed to a tool's data clone (a bare repository as
its remote)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from matplotlib import image

from mao_celery.models import RunReport, RunStatus
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest
from tests.integration import test_git_isolation as isolation
from tests.integration.test_data_plane import COUNTING_TOOL, add_tool, head_of, run_tool
from tests.integration.test_git_isolation import Upstream

pytestmark = pytest.mark.integration

upstream = isolation.upstream
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def two_runs(
    node: NodeUnderTest, registry: Registry, upstream: Upstream, tool_image: Callable[[str], str]
) -> list[RunReport]:
    """Tool `tool` (the counting tool: 10, then 20) run twice by a real worker, oldest first."""
    add_tool(registry, upstream.url, tool_image(COUNTING_TOOL))
    node.start_worker()
    reports = [run_tool(node), run_tool(node)]
    assert [r.status for r in reports] == [RunStatus.SUCCEEDED] * 2, [r.error for r in reports]
    return reports


def test_history_json_is_the_values_written_newest_first(
    node: NodeUnderTest, two_runs: list[RunReport]
) -> None:
    result = node.maoctl("tool", "history", "tool", "--json")

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["warnings"] == []
    assert [(p["run_id"], p["control_value"], p["node"]) for p in shown["items"]] == [
        (two_runs[1].run_id, 20.0, "node-a"),
        (two_runs[0].run_id, 10.0, "node-a"),
    ]
    assert [p["commit"] for p in shown["items"]] == [r.run_commit for r in reversed(two_runs)]
    limited = json.loads(node.maoctl("tool", "history", "tool", "--limit", "1", "--json").stdout)
    assert limited["items"] == shown["items"][:1]


def test_history_table_png_and_plot(
    node: NodeUnderTest, two_runs: list[RunReport], tmp_path: Path
) -> None:
    png = tmp_path / "history.png"

    result = node.maoctl("tool", "history", "tool", "--png", str(png), "--plot",
                         env={"COLUMNS": "80"})  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Control values of tool (newest first)")
    assert all(len(line) <= 80 for line in lines)
    rows = [line.split() for line in lines if line.startswith(two_runs[1].queued_at.strftime("%Y"))]
    assert [(row[2], row[4]) for row in rows] == [
        (two_runs[1].run_id[:8], "20.0"),
        (two_runs[0].run_id[:8], "10.0"),
    ]
    assert f"chart of tool written to {png}" in result.stderr
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert image.imread(png).shape[2] in (3, 4)  # matplotlib reads it back
    assert "band: baseline of 2 ± 20 %" in result.stdout  # the terminal chart's title
    assert "run (1 = " in result.stdout


def test_update_data_shows_the_new_head_pushed_to_the_remote(
    node: NodeUnderTest, two_runs: list[RunReport], upstream: Upstream
) -> None:
    upstream.push_file("control-99.csv", "5\n")
    new_head = head_of(upstream.bare)

    result = node.maoctl("tool", "update-data", "tool", "--json")
    again = node.maoctl("tool", "update-data", "tool")
    routed = node.maoctl("dataset", "clone", "tool", "--update")

    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert (done["before"], done["cloned"], done["url_set"]) == (
        two_runs[1].run_commit,
        False,
        False,
    )
    assert (done["commits"], done["added"], done["changed"], done["deleted"]) == (2, 1, 0, 0)
    assert done["path"] == str(node.importdir / "tool")
    assert (node.importdir / "tool" / "control-99.csv").read_text() == "5\n"
    assert done["after"] != done["before"]
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout
        == f"tool tool: data in {done['path']} already up to date at {done['after'][:12]}\n"
    )
    assert routed.returncode == 0, routed.stderr
    assert "tool is a tool: updating its data as `maoctl tool update-data` does" in routed.stderr
    assert new_head != done["after"]  # a merge commit of the node: local run commits kept
    assert "already up to date" in routed.stdout


def test_no_clone_yet_is_an_empty_series_with_a_note(
    node: NodeUnderTest, registry: Registry, upstream: Upstream
) -> None:
    add_tool(registry, upstream.url, "mao-test-none:latest")

    shown = node.maoctl("tool", "history", "tool", "--json")
    drawn = node.maoctl("tool", "history", "tool", "--plot")
    cloned = node.maoctl("tool", "update-data", "tool")
    empty = node.maoctl("tool", "history", "tool", "--json")

    assert (shown.returncode, json.loads(shown.stdout)) == (0, {"items": [], "warnings": []})
    assert "has no data clone on this node yet" in shown.stderr
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout == "Control values of tool (newest first): none\n"
    assert cloned.returncode == 0, cloned.stderr
    head = head_of(upstream.bare)
    assert (
        cloned.stdout == f"tool tool: data cloned into {node.importdir / 'tool'} at {head[:12]}\n"
    )
    assert (empty.returncode, json.loads(empty.stdout)["items"]) == (0, [])
    assert "no run commit in its data history yet" in empty.stderr
