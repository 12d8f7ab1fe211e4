"""datasets.py against real git repositories in tmp_path: a bare upstream and a work clone.

The attacks of a tool on its data directory are in test_git_isolation.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mao_celery import datasets, gitcmd
from mao_celery.exceptions import AlreadyExists, InvalidInput, NotFound, ServiceUnavailable

pytestmark = pytest.mark.integration

# Identity and isolation for the git commands the tests run themselves; ~/.gitconfig is never read
# or written by them.
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "MAO Test",
    "GIT_AUTHOR_EMAIL": "test@mao.invalid",
    "GIT_COMMITTER_NAME": "MAO Test",
    "GIT_COMMITTER_EMAIL": "test@mao.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def run_git(*args: str, cwd: Path) -> str:
    """Run git for the test's own set-up and inspection; return stdout without the last newline."""
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, check=True, capture_output=True, text=True
    )
    return done.stdout.rstrip("\n")


def in_clone(dest: Path, *args: str) -> str:
    """Run git on the clone at `dest` (its store and work tree), as run_git does."""
    return run_git(f"--git-dir={datasets.store_path(dest)}", f"--work-tree={dest}", *args, cwd=dest)


def commit_file(work: Path, name: str, content: str, *, store: bool = False) -> str:
    """Commit one file in the work tree `work` (a clone of ours when `store`); return its sha."""
    (work / name).write_text(content)
    prefix = (f"--git-dir={datasets.store_path(work)}", f"--work-tree={work}") if store else ()
    run_git(*prefix, "add", name, cwd=work)
    run_git(*prefix, "commit", "-q", "-m", f"add {name}", cwd=work)
    return run_git(*prefix, "rev-parse", "HEAD", cwd=work)


@dataclass(frozen=True)
class Upstream:
    """A bare repository with a `main` branch, and a work clone that pushes to it."""

    bare: Path
    work: Path

    def push_file(self, name: str, content: str) -> str:
        """Commit a file in the work clone, push it to the bare repo; return the commit's sha."""
        sha = commit_file(self.work, name, content)
        run_git("push", "-q", "origin", "main", cwd=self.work)
        return sha


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    bare = tmp_path / "upstream.git"
    work = tmp_path / "work"
    run_git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    run_git("clone", "-q", str(bare), str(work), cwd=tmp_path)
    run_git("checkout", "-q", "-b", "main", cwd=work)
    result = Upstream(bare=bare, work=work)
    result.push_file("control-1.csv", "10\n")
    return result


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A path that a command smuggled into git would create; it must never exist."""
    return tmp_path / "pwned"


@pytest.fixture
def script(tmp_path: Path, marker: Path) -> Path:
    """An executable that creates `marker`: the payload of the hostile URLs and configs."""
    path = tmp_path / "payload.sh"
    path.write_text(f"#!/bin/sh\ntouch {marker}\n")
    path.chmod(0o755)
    return path


def listing(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


@pytest.mark.parametrize("form", ["file_url", "absolute_path"])
def test_clone_by_url_and_path_leaves_only_the_clone(
    upstream: Upstream, importdir: Path, form: str
) -> None:
    url = upstream.bare.as_uri() if form == "file_url" else str(upstream.bare)
    dest = importdir / "weather"

    assert datasets.clone(url, dest) == dest

    assert listing(dest) == ["control-1.csv"]  # no .git: the git dir is in the store
    assert (dest / "control-1.csv").read_text() == "10\n"
    assert listing(importdir) == [".git-store", "weather"]
    assert listing(importdir / ".git-store") == ["weather.git"]
    assert datasets.store_path(dest) == importdir.absolute() / ".git-store" / "weather.git"
    assert (importdir / ".git-store").stat().st_mode & 0o777 == 0o700
    assert in_clone(dest, "config", "remote.origin.url") == url
    assert in_clone(dest, "status", "--porcelain") == ""


def test_a_stale_store_entry_is_replaced_not_trusted(
    upstream: Upstream, importdir: Path, tmp_path: Path, marker: Path, script: Path
) -> None:
    # A crash between the two renames left a store entry without its work tree.
    stale = datasets.store_path(importdir / "weather")
    run_git("init", "-q", "--bare", str(stale), cwd=tmp_path)
    run_git("config", "remote.origin.url", str(tmp_path / "elsewhere.git"), cwd=stale)
    (stale / "hooks" / "post-checkout").write_text(script.read_text())
    (stale / "hooks" / "post-checkout").chmod(0o755)

    dest = datasets.clone(str(upstream.bare), importdir / "weather")

    assert in_clone(dest, "config", "remote.origin.url") == str(upstream.bare)
    assert listing(dest) == ["control-1.csv"]
    assert not marker.exists()


def test_clone_into_existing_dest_is_refused_and_dest_unchanged(
    upstream: Upstream, importdir: Path
) -> None:
    dest = importdir / "weather"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")

    with pytest.raises(AlreadyExists, match="is not a git clone: move it away"):
        datasets.clone(str(upstream.bare), dest)

    assert listing(dest) == ["mine.txt"]
    assert listing(importdir) == ["weather"]


def test_clone_over_a_clone_points_to_update(upstream: Upstream, importdir: Path) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")

    with pytest.raises(AlreadyExists, match="use --update to fast-forward it"):
        datasets.clone(str(upstream.bare), dest)


@pytest.mark.parametrize("source", ["missing_path", "missing_file_url", "not_a_repo"])
def test_failed_clone_leaves_no_directory(tmp_path: Path, importdir: Path, source: str) -> None:
    not_a_repo = tmp_path / "plain.git"
    not_a_repo.mkdir()
    (not_a_repo / "README").write_text("not a repository")
    url = {
        "missing_path": str(tmp_path / "nowhere.git"),
        "missing_file_url": (tmp_path / "nowhere.git").as_uri(),
        "not_a_repo": str(not_a_repo),
    }[source]
    (importdir / "existing").mkdir()
    before = listing(importdir)

    with pytest.raises(NotFound, match=r"no git repository at .*: fatal: "):
        datasets.clone(url, importdir / "weather")

    assert listing(importdir) == before  # neither work tree nor store (nor a staging directory)


def test_clone_that_times_out_is_killed_and_leaves_nothing(importdir: Path) -> None:
    # A loopback listener that never answers: git waits for the server until it is killed.
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(ServiceUnavailable, match="did not complete"):
            datasets.clone(
                f"git://127.0.0.1:{port}/data.git",
                importdir / "slow",
                limits=gitcmd.GitLimits(timeout_s=1, total_s=1),
            )

    assert listing(importdir) == []


def test_clone_into_relative_dest(
    upstream: Upstream, importdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(importdir.parent)

    datasets.clone(str(upstream.bare), Path(importdir.name) / "weather")

    assert (importdir / "weather" / "control-1.csv").read_text() == "10\n"
    assert listing(importdir) == [".git-store", "weather"]


def test_unreachable_remote_error_masks_the_password(importdir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    # The port is closed again: the connection is refused (if the URL gets that far: a URL with
    # a password is refused by validate_git_url).
    with pytest.raises((InvalidInput, ServiceUnavailable)) as caught:
        datasets.clone(f"http://user:s3cret@127.0.0.1:{port}/data.git", importdir / "web")

    assert "s3cret" not in str(caught.value)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert listing(importdir) == []


@pytest.mark.parametrize(
    "url_template",
    [
        "ext::sh -c touch% {marker}",
        "ext::{script}",
        "--upload-pack=touch {marker}",
        "--upload-pack={script}",
        "fd::3",
        "",
        "../x",
    ],
)
def test_refused_url_never_reaches_git(
    importdir: Path, marker: Path, script: Path, url_template: str
) -> None:
    url = url_template.format(marker=marker, script=script)

    with pytest.raises(InvalidInput, match="invalid git URL"):
        datasets.clone(url, importdir / "weather")

    assert listing(importdir) == []
    assert not marker.exists()


@pytest.mark.parametrize("name", ["Upper", ".hidden", "a b"])
def test_clone_refuses_invalid_dest_name(upstream: Upstream, importdir: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid name"):
        datasets.clone(str(upstream.bare), importdir / name)

    assert listing(importdir) == []


def test_update_fast_forwards_to_the_new_commit(upstream: Upstream, importdir: Path) -> None:
    dest = datasets.clone(upstream.bare.as_uri(), importdir / "weather")
    sha = upstream.push_file("control-2.csv", "11\n")

    assert datasets.update(dest) == sha

    assert (dest / "control-2.csv").read_text() == "11\n"
    assert in_clone(dest, "rev-parse", "HEAD") == sha
    assert listing(dest) == ["control-1.csv", "control-2.csv"]


def test_update_of_diverged_clone_is_refused_and_changes_nothing(
    upstream: Upstream, importdir: Path
) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")
    local_sha = commit_file(dest, "local.csv", "1\n", store=True)
    upstream.push_file("remote.csv", "2\n")

    with pytest.raises(InvalidInput, match="cannot fast-forward"):
        datasets.update(dest)

    assert in_clone(dest, "rev-parse", "HEAD") == local_sha
    assert listing(dest) == ["control-1.csv", "local.csv"]
    assert in_clone(dest, "status", "--porcelain") == ""


@pytest.mark.parametrize("kind", ["missing", "plain_directory", "repo_without_origin"])
def test_update_of_non_clone_is_not_found(importdir: Path, kind: str) -> None:
    dest = importdir / "weather"
    if kind != "missing":
        dest.mkdir()
    if kind == "repo_without_origin":
        run_git("init", "-q", "--bare", str(datasets.store_path(dest)), cwd=importdir)

    with pytest.raises(NotFound, match="not a git clone"):
        datasets.update(dest)


def test_update_refuses_a_clone_of_another_repository(upstream: Upstream, importdir: Path) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")
    before = in_clone(dest, "rev-parse", "HEAD")
    upstream.push_file("new.csv", "1\n")

    with pytest.raises(InvalidInput, match="is a clone of"):
        datasets.update(dest, url="https://example.org/another.git")

    assert in_clone(dest, "rev-parse", "HEAD") == before


def test_update_from_a_remote_that_is_gone_is_not_found(
    upstream: Upstream, importdir: Path
) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")
    upstream.bare.rename(upstream.bare.with_name("moved.git"))

    with pytest.raises(NotFound, match=f"no git repository at {upstream.bare}"):
        datasets.update(dest)


# Defence in depth: the store is root's and never mounted, yet a helper URL, hook or fsmonitor
# found there still runs nothing. Tools' own plants are in test_git_isolation.py.


def test_update_refuses_helper_url_in_the_store(
    upstream: Upstream, importdir: Path, marker: Path, script: Path
) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")
    in_clone(dest, "config", "remote.origin.url", f"ext::{script}")
    in_clone(dest, "config", "protocol.ext.allow", "always")

    with pytest.raises(InvalidInput, match="not allowed"):
        datasets.update(dest)

    assert not marker.exists()


@pytest.mark.parametrize("plant", ["post_merge_hook", "fsmonitor"])
def test_update_runs_no_command_from_the_store(
    upstream: Upstream, importdir: Path, marker: Path, script: Path, plant: str
) -> None:
    dest = datasets.clone(str(upstream.bare), importdir / "weather")
    if plant == "post_merge_hook":
        hook = datasets.store_path(dest) / "hooks" / "post-merge"
        hook.write_text(script.read_text())
        hook.chmod(0o755)
    else:
        in_clone(dest, "config", "core.fsmonitor", str(script))
    sha = upstream.push_file("control-2.csv", "11\n")

    assert datasets.update(dest) == sha

    assert not marker.exists()


def test_opening_a_clone_refuses_a_clone_of_another_repository(
    upstream: Upstream, importdir: Path, tmp_path: Path
) -> None:
    dest = importdir / "demo-tool"
    datasets.clone(str(upstream.bare), dest)
    other = tmp_path / "other.git"
    run_git("clone", "-q", "--bare", str(upstream.bare), str(other), cwd=tmp_path)

    with pytest.raises(InvalidInput, match="is a clone of"):
        datasets.open_clone(dest, url=str(other))

    assert listing(dest) == ["control-1.csv"]


def test_a_clone_refuses_a_file_in_the_way(upstream: Upstream, importdir: Path) -> None:
    dest = importdir / "demo-tool"
    dest.write_text("not a directory")

    with pytest.raises(AlreadyExists):
        datasets.clone(str(upstream.bare), dest)

    assert dest.read_text() == "not a directory"


def test_list_local_describes_valid_directories_only(upstream: Upstream, importdir: Path) -> None:
    sha = run_git("rev-parse", "HEAD", cwd=upstream.work)
    datasets.clone(upstream.bare.as_uri(), importdir / "weather")
    (importdir / "plain").mkdir()
    (importdir / ".clone-weather-abc123").mkdir()
    (importdir / ".hidden").mkdir()
    (importdir / "Upper").mkdir()
    (importdir / "notes.txt").write_text("a file")
    (importdir / "empty-repo").mkdir()
    run_git(
        "init", "-q", "--bare", str(datasets.store_path(importdir / "empty-repo")), cwd=importdir
    )
    run_git("init", "-q", str(importdir / "old-layout"), cwd=importdir)  # its .git is not read

    found = datasets.list_local(importdir)

    assert found == [
        datasets.LocalDataset(
            name="empty-repo", path=importdir / "empty-repo", is_git=True, head=None, remote=None
        ),
        datasets.LocalDataset(
            name="old-layout", path=importdir / "old-layout", is_git=False, head=None, remote=None
        ),
        datasets.LocalDataset(
            name="plain", path=importdir / "plain", is_git=False, head=None, remote=None
        ),
        datasets.LocalDataset(
            name="weather",
            path=importdir / "weather",
            is_git=True,
            head=sha[: datasets.SHORT_SHA_LEN],
            remote=upstream.bare.as_uri(),
        ),
    ]


def test_list_local_of_missing_importdir_is_empty(tmp_path: Path) -> None:
    assert datasets.list_local(tmp_path / "missing") == []


# ---- git that cannot hang, clones that are what they claim -----------------------------------


def test_a_silent_http_host_fails_the_clone_on_the_stall_limit_without_a_retry(
    importdir: Path, silent_host: int
) -> None:
    limits = gitcmd.GitLimits(timeout_s=120, low_speed_time_s=2, total_s=120)
    tries: list[str] = []
    started = time.monotonic()

    with pytest.raises(gitcmd.GitUnavailable) as failed:
        datasets.clone(
            f"http://127.0.0.1:{silent_host}/data.git",
            importdir / "stalled",
            limits=limits,
            tries=tries,
        )

    took_s = time.monotonic() - started
    assert 2 <= took_s < 30, took_s  # the stall limit (2 s), long before the 120 s timeout
    assert len(tries) == 1, tries  # a stall is not retried
    assert tries[0].startswith("try 1: "), tries
    assert "too slow" in str(failed.value).lower(), failed.value
    assert listing(importdir) == []


def test_a_silent_git_protocol_host_is_killed_after_its_silence(
    importdir: Path, silent_host: int
) -> None:
    limits = gitcmd.GitLimits(timeout_s=120, low_speed_time_s=1, total_s=120)
    started = time.monotonic()

    with pytest.raises(gitcmd.GitUnavailable, match="silent for 6 s") as failed:
        datasets.clone(
            f"git://127.0.0.1:{silent_host}/data.git", importdir / "stalled", limits=limits
        )

    took_s = time.monotonic() - started
    assert 6 <= took_s < 30, took_s  # 1 s + the 5 s margin, long before the 120 s timeout
    assert len(failed.value.tries) == 1  # a stall is not retried
    assert listing(importdir) == []


def test_a_refused_connection_is_tried_again_within_the_total_and_each_try_named(
    importdir: Path,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    # Nothing listens on `port` now: every try is refused, which may heal, so it is tried again
    # until the next wait would pass the total of 5 s (tries at 0 s and 2 s; a wait of 10 s
    # would not fit).
    tries: list[str] = []
    started = time.monotonic()

    with pytest.raises(gitcmd.GitUnavailable, match=r"2 tries: try 1: .*; try 2: ") as failed:
        datasets.clone(
            f"http://127.0.0.1:{port}/data.git",
            importdir / "refused",
            limits=gitcmd.GitLimits(total_s=5),
            tries=tries,
        )

    assert time.monotonic() - started < 5
    assert [line.split(":")[0] for line in tries] == ["try 1", "try 2"]
    assert all("couldn't connect to server" in line.lower() for line in tries), tries
    assert failed.value.tries == tries
    assert listing(importdir) == []


def test_a_silent_ssh_host_fails_on_the_connect_timeout(importdir: Path, silent_host: int) -> None:
    limits = gitcmd.GitLimits(timeout_s=120, connect_timeout_s=2, total_s=120)
    started = time.monotonic()

    with pytest.raises(gitcmd.GitUnavailable, match=r"timed out|Connection"):
        datasets.clone(
            f"ssh://git@127.0.0.1:{silent_host}/data.git", importdir / "stalled", limits=limits
        )

    assert time.monotonic() - started < 30


def dangling(upstream: Upstream, *branches: str) -> None:
    """Make `upstream`'s HEAD name `master`, a branch that does not exist, and push `branches`
    (besides `main`) to it."""
    for branch in branches:
        run_git("push", "-q", "origin", f"main:{branch}", cwd=upstream.work)
    run_git("symbolic-ref", "HEAD", "refs/heads/master", cwd=upstream.bare)


def test_a_dangling_remote_head_checks_out_the_only_branch(
    upstream: Upstream, importdir: Path
) -> None:
    dangling(upstream)
    dest = importdir / "weather"

    datasets.clone(str(upstream.bare), dest)

    assert listing(dest) == ["control-1.csv"]
    assert in_clone(dest, "symbolic-ref", "--short", "HEAD") == "main"
    assert datasets.head_commit(dest) == run_git("rev-parse", "main", cwd=upstream.bare)
    # and it stays updatable: its branch tracks origin/main
    sha = upstream.push_file("control-2.csv", "11\n")
    assert datasets.update(dest, url=str(upstream.bare)) == sha
    assert (dest / "control-2.csv").read_text() == "11\n"


def test_a_dangling_remote_head_with_several_branches_fails_naming_them(
    upstream: Upstream, importdir: Path
) -> None:
    dangling(upstream, "v2")

    with pytest.raises(InvalidInput, match=r"2 branches \(main, v2\): register it with --branch"):
        datasets.clone(str(upstream.bare), importdir / "weather")

    assert listing(importdir) == []


def test_a_clone_of_a_branch_checks_out_that_branch(upstream: Upstream, importdir: Path) -> None:
    run_git("checkout", "-q", "-b", "v2", cwd=upstream.work)
    sha = commit_file(upstream.work, "control-2.csv", "20\n")
    run_git("push", "-q", "origin", "v2", cwd=upstream.work)
    dest = importdir / "weather"

    datasets.clone(str(upstream.bare), dest, branch="v2")

    assert listing(dest) == ["control-1.csv", "control-2.csv"]
    assert datasets.head_commit(dest) == sha


@pytest.mark.parametrize("branch", ["-x", "a..b", "a b", "x.lock", ""])
def test_an_invalid_branch_is_refused_before_git_runs(
    upstream: Upstream, importdir: Path, branch: str
) -> None:
    with pytest.raises(InvalidInput, match="invalid branch name"):
        datasets.clone(str(upstream.bare), importdir / "weather", branch=branch)
    assert listing(importdir) == []
