"""git as the data plane (issue 10): refresh before each run, a commit per run, pushes that are
merged and retried (never forced), the history read back, remotes compared by meaning, and a
tool's work tree that cannot make any of it run a command. Real bare repositories as remotes;
the run tests use a real worker."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import pytest

from mao_celery import dataplane, datasets, gitcmd
from mao_celery.exceptions import InvalidInput
from mao_celery.models import RunReport, RunStatus, Tool
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest, git
from tests.integration import test_git_isolation as isolation
from tests.integration.test_git_isolation import PLANTS, Attack, Upstream, store_git

pytestmark = pytest.mark.integration

# The fixtures of the isolation tests: the upstream repository, a clone a tool attacks.
upstream = isolation.upstream
http_server = isolation.http_server
attack = isolation.attack

NODE = dataplane.Identity.of_node("node-a")
TRAILERS = {"MAO-Run-Id": "r1", "MAO-Tool": "tool", "MAO-Node": "node-a"}
# Counts the control files it finds and writes the next one: control-<n>.csv holding n * 10.
COUNTING_TOOL = (
    "cd /usr/src/app/data && n=$(ls | grep -c '^control-'); "
    "echo $(( (n + 1) * 10 )) > control-$(( n + 1 )).csv"
)


def trailers(run_id: str, value: float) -> dict[str, str]:
    """The trailers of a run commit of node-a with control value `value`."""
    return TRAILERS | {
        "MAO-Run-Id": run_id,
        "MAO-Control-Value": repr(value),
        "MAO-Spike": "no",
        "MAO-Gain-Pct": "none",
    }


def refresh(dest: Path, url: str, node_branch: str | None = None) -> str | None:
    return dataplane.refresh(dest, url=url, branch=None, node_branch=node_branch, identity=NODE)


def run_commit(dest: Path, name: str, content: str, run_id: str = "r1") -> str:
    """A run that writes `name` and is committed; returns its commit."""
    (dest / name).write_text(content)
    made = dataplane.commit_run(dest, identity=NODE, trailers=trailers(run_id, float(content)))
    assert made is not None
    return made


def state(dest: Path) -> tuple[str, str, str, list[str]]:
    """HEAD, the remote-tracking ref, `git status`, the work tree's files."""
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*"))
    tracking = store_git(dest, "rev-parse", "refs/remotes/origin/master")
    return store_git(dest, "rev-parse", "HEAD"), tracking, store_git(dest, "status"), files


def head_of(bare: Path, branch: str = "master") -> str:
    return subprocess.run(
        ["git", f"--git-dir={bare}", "rev-parse", branch], check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip


def is_ancestor(bare: Path, old: str, new: str) -> bool:
    argv = ["git", f"--git-dir={bare}", "merge-base", "--is-ancestor", old, new]
    return subprocess.run(argv, capture_output=True).returncode == 0


def force_push(upstream: Upstream) -> tuple[str, str]:
    """Rewrite the upstream's last commit and force-push it; return (old tip, new tip)."""
    old = head_of(upstream.bare)
    git("commit", "-q", "--amend", "-m", "rewritten", cwd=upstream.work)
    git("push", "-q", "--force", "origin", "HEAD", cwd=upstream.work)
    return old, head_of(upstream.bare)


@pytest.fixture
def clone(upstream: Upstream, importdir: Path) -> Path:
    return datasets.clone(upstream.url, importdir / "tool")


# ---- refresh ---------------------------------------------------------------------------------


def test_refresh_fast_forwards_to_the_remote(upstream: Upstream, clone: Path) -> None:
    upstream.push_file("control-2.csv", "20\n")

    head = refresh(clone, upstream.url)

    assert head == head_of(upstream.bare)
    assert (clone / "control-2.csv").read_text() == "20\n"


def test_refresh_merges_the_remote_into_local_run_commits(upstream: Upstream, clone: Path) -> None:
    mine = run_commit(clone, "control-1.csv", "10")
    upstream.push_file("control-2.csv", "20\n")
    theirs = head_of(upstream.bare)

    head = refresh(clone, upstream.url)

    assert head is not None
    parents = store_git(clone, "rev-list", "--parents", "-n", "1", head).split()[1:]
    assert parents == [mine, theirs]  # merged, the run commit kept
    assert store_git(clone, "log", "-1", "--format=%an <%ae>|%cn") == (
        "MAO node node-a <mao@node-a>|MAO node node-a"
    )
    assert (clone / "control-1.csv").is_file()
    assert (clone / "control-2.csv").is_file()


def test_a_force_pushed_remote_is_refused_naming_both_commits(
    upstream: Upstream, clone: Path
) -> None:
    run_commit(clone, "control-1.csv", "10")
    before = state(clone)
    old, new = force_push(upstream)

    with pytest.raises(InvalidInput, match=rf"tip {old[:12]} is not an ancestor .* {new[:12]}"):
        refresh(clone, upstream.url)

    assert state(clone) == before


@pytest.mark.parametrize("in_the_way", ["conflict", "untracked"])
def test_a_merge_that_cannot_be_made_changes_nothing(
    upstream: Upstream, clone: Path, in_the_way: str
) -> None:
    if in_the_way == "conflict":
        run_commit(clone, "control-2.csv", "10")
        expected = "CONFLICT"
    else:
        (clone / "control-2.csv").write_text("10")  # a failed run's file, never committed
        expected = "untracked working tree files would be overwritten"
    before = state(clone)
    upstream.push_file("control-2.csv", "20\n")
    theirs = head_of(upstream.bare)

    with pytest.raises(InvalidInput, match=rf"\({theirs[:12]}\).*{expected}.*left unchanged"):
        refresh(clone, upstream.url)

    assert state(clone) == before
    assert (clone / "control-2.csv").read_text() == "10"


# ---- commits and history -----------------------------------------------------------------------


def test_a_run_commit_records_changes_deletions_and_obeys_gitignore(clone: Path) -> None:
    (clone / ".gitignore").write_text("scratch/\n")
    (clone / "scratch").mkdir()
    (clone / "scratch" / "big.tmp").write_text("x")
    (clone / "README.md").unlink()
    (clone / "control-1.csv").write_text("10\n")

    made = dataplane.commit_run(clone, identity=NODE, trailers=trailers("r1", 10.0))

    assert made == store_git(clone, "rev-parse", "HEAD")
    changed = store_git(clone, "show", "--name-status", "--format=", made).splitlines()
    assert sorted(changed) == ["A\t.gitignore", "A\tcontrol-1.csv", "D\tREADME.md"]
    found = store_git(clone, "log", "-1", "--format=%(trailers:key=MAO-Run-Id,valueonly)")
    assert found == "r1"
    assert dataplane.commit_run(clone, identity=NODE, trailers=trailers("r2", 10.0)) is None


def test_twin_tasks_committing_one_run_at_once_make_one_commit(clone: Path) -> None:
    (clone / "control-1.csv").write_text("10\n")
    before = store_git(clone, "rev-parse", "HEAD")

    with ThreadPoolExecutor(max_workers=4) as pool:  # a redelivered step and its twins
        made = list(
            pool.map(
                lambda _: dataplane.commit_run(clone, identity=NODE, trailers=trailers("r1", 10.0)),
                range(4),
            )
        )

    head = store_git(clone, "rev-parse", "HEAD")
    assert made == [head] * 4
    assert store_git(clone, "rev-list", "--count", f"{before}..{head}") == "1"


def test_history_is_the_values_written_newest_first(upstream: Upstream, clone: Path) -> None:
    commits = [run_commit(clone, f"control-{n}.csv", str(n * 10), f"run{n}") for n in (1, 2, 3)]
    upstream.push_file("notes.txt")  # a merge commit, no point
    refresh(clone, upstream.url)

    points = dataplane.history(clone, limit=2)

    assert [(p.commit, p.run_id, p.control_value, p.node) for p in points] == [
        (commits[2], "run3", 30.0, "node-a"),
        (commits[1], "run2", 20.0, "node-a"),
    ]
    assert [p.spike for p in points] == [False, False]
    assert len(dataplane.history(clone, limit=10)) == 3


# ---- push --------------------------------------------------------------------------------------


def test_a_rejected_push_is_merged_and_retried_never_forced(
    upstream: Upstream, clone: Path, tmp_path: Path
) -> None:
    other = datasets.clone(upstream.url, tmp_path / "machine-b" / "tool")
    theirs = run_commit(other, "from-b.csv", "1")
    dataplane.push(other, ref="mao/node-a", url=upstream.url, branch=None, identity=NODE)
    mine = run_commit(clone, "from-a.csv", "2")

    pushed = dataplane.push(clone, ref="mao/node-a", url=upstream.url, branch=None, identity=NODE)

    assert pushed == head_of(upstream.bare, "mao/node-a")
    assert is_ancestor(upstream.bare, theirs, pushed)  # not forced over machine b's commit
    assert is_ancestor(upstream.bare, mine, pushed)
    assert (clone / "from-b.csv").is_file()


def test_a_remote_refusing_a_push_is_no_non_fast_forward(upstream: Upstream, clone: Path) -> None:
    """A hook's refusal (`[remote rejected]`) is not refreshed and retried."""
    hook = upstream.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    run_commit(clone, "control-1.csv", "1")

    with pytest.raises(InvalidInput, match=r"\[remote rejected\] .*pre-receive hook") as caught:
        dataplane.push(clone, ref="mao/node-a", url=upstream.url, branch=None, identity=NODE)

    assert not isinstance(caught.value, gitcmd.Rejected)


# ---- remotes compared by meaning ---------------------------------------------------------------


def test_a_trailing_slash_is_the_same_remote_and_a_moved_one_is_set(
    upstream: Upstream, clone: Path, tmp_path: Path
) -> None:
    run_commit(clone, "control-1.csv", "10")

    assert refresh(clone, upstream.url + "/") is not None
    moved = tmp_path / "moved.git"
    git("clone", "-q", "--mirror", str(upstream.bare), str(moved), cwd=tmp_path)
    with pytest.raises(InvalidInput, match="maoctl tool update-data tool --set-url"):
        refresh(clone, f"file://{moved}")
    assert dataplane.set_origin(clone, f"file://{moved}") is True
    git("push", "-q", str(moved), "HEAD:master", cwd=upstream.work)
    refresh(clone, f"file://{moved}")

    assert [p.control_value for p in dataplane.history(clone, 10)] == [10.0]


# ---- a tool's work tree runs nothing -----------------------------------------------------------


def plant_nested_repository(a: Attack) -> None:
    """A repository of the tool's inside its work tree, with hooks and an fsmonitor."""
    nested = a.data_dir / "sub"
    git("init", "-q", str(nested), cwd=a.tmp_path)
    (nested / "x.csv").write_text("1\n")
    git("add", "x.csv", cwd=nested)
    git("commit", "-q", "-m", "x", cwd=nested)
    with (nested / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {a.script}\n")
    for hook in ("pre-commit", "post-commit", "post-merge", "pre-push"):
        (nested / ".git" / "hooks" / hook).write_text(a.script.read_text())
        (nested / ".git" / "hooks" / hook).chmod(0o755)


@pytest.mark.parametrize("plant", [*PLANTS, "nested_repository"])
def test_commit_refresh_and_push_run_nothing_a_tool_planted(attack: Attack, plant: str) -> None:
    PLANTS.get(plant, plant_nested_repository)(attack)
    hooks = attack.data_dir / ".git" / "hooks"
    if not (attack.data_dir / ".git").is_file():  # a `gitdir:` file: its hooks are elsewhere
        hooks.mkdir(parents=True, exist_ok=True)
        for hook in ("pre-commit", "commit-msg", "post-commit", "pre-push", "post-merge"):
            (hooks / hook).write_text(attack.script.read_text())
            (hooks / hook).chmod(0o755)
    (attack.data_dir / "control-1.csv").write_text("10\n")
    attack.upstream.push_file("control-2.csv", "20\n")

    made = dataplane.commit_run(attack.data_dir, identity=NODE, trailers=trailers("r1", 10.0))
    refresh(attack.data_dir, attack.upstream.url, node_branch="mao/node-a")
    dataplane.push(
        attack.data_dir, ref="mao/node-a", url=attack.upstream.url, branch=None, identity=NODE
    )

    assert made is not None
    assert is_ancestor(attack.upstream.bare, made, head_of(attack.upstream.bare, "mao/node-a"))
    assert not attack.marker.exists()


# ---- runs with a worker -------------------------------------------------------------------------


def add_tool(registry: Registry, url: str, image: str, **fields: object) -> None:
    registry.tools.add(
        Tool(name="tool", author="t", image=image, data_repo=url, code_repo=url, artefact="csv",
             **fields)
    )  # fmt: skip


def run_tool(node: NodeUnderTest) -> RunReport:
    result = node.maoctl("tool", "run", "tool", "--json")
    return RunReport.model_validate_json(result.stdout)


def test_runs_see_new_data_commit_with_provenance_and_push(
    node: NodeUnderTest,
    registry: Registry,
    upstream: Upstream,
    tool_image: Callable[[str], str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    image = tool_image(COUNTING_TOOL)
    add_tool(registry, upstream.url, image, push=True)
    node.start_worker()
    data_dir = node.importdir / "tool"

    first = run_tool(node)
    upstream.push_file("control-2.csv", "20\n")  # new data between two runs
    machine_b = datasets.clone(upstream.url, tmp_path / "machine-b" / "tool")  # the node's other
    refresh(machine_b, upstream.url, node_branch="mao/node-a")  # worker machine shares history
    run_commit(machine_b, "from-b.txt", "1", run_id="run-on-b")
    dataplane.push(machine_b, ref="mao/node-a", url=upstream.url, branch=None, identity=NODE)
    second = run_tool(node)

    assert (first.status, second.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED), (
        first.error,
        second.error,
    )
    assert second.spike is not None
    assert second.spike.values == [10.0, 20.0, 30.0]  # the pushed control-2.csv was seen
    assert (data_dir / "from-b.txt").is_file()
    digest = docker_client.images.get(image).id
    for report, value in ((first, "10.0"), (second, "30.0")):
        assert report.run_commit is not None
        assert report.image_digest == digest
        assert report.pushed_to == "mao/node-a"
        assert report.push_error is None
        found = store_git(data_dir, "log", "-1", "--format=%(trailers:unfold)", report.run_commit)
        assert f"MAO-Run-Id: {report.run_id}" in found
        assert f"MAO-Image-Digest: {digest}" in found
        assert f"MAO-Control-Value: {value}" in found
    assert head_of(upstream.bare, "mao/node-a") == store_git(data_dir, "rev-parse", "HEAD")
    points = dataplane.history(data_dir, 10)
    assert [(p.run_id, p.control_value) for p in points] == [
        (second.run_id, 30.0),
        ("run-on-b", 1.0),
        (first.run_id, 10.0),
    ]


def test_a_force_pushed_remote_fails_the_prepare_step_and_a_slash_keeps_the_clone(
    node: NodeUnderTest,
    registry: Registry,
    upstream: Upstream,
    tool_image: Callable[[str], str],
) -> None:
    image = tool_image(COUNTING_TOOL)
    add_tool(registry, upstream.url, image)
    node.start_worker()
    data_dir = node.importdir / "tool"
    first = run_tool(node)
    registry.tools.remove("tool")
    add_tool(registry, upstream.url + "/", image)  # registered again, spelled otherwise
    second = run_tool(node)
    before = state(data_dir)
    old, new = force_push(upstream)

    third = run_tool(node)

    assert (first.status, second.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
    assert [p.run_id for p in dataplane.history(data_dir, 10)] == [second.run_id, first.run_id]
    assert third.status == RunStatus.FAILED
    assert third.error is not None
    assert old[:12] in third.error
    assert new[:12] in third.error
    assert third.run_commit is None
    assert state(data_dir) == before
