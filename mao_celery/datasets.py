"""Git clones of data repositories under importdir (design.md §2 and §4, the prepare step).

A clone is made in a hidden temporary sibling (`.clone-<name>-<random>`) and renamed into place,
so a failed or interrupted clone never leaves a half-filled dataset directory. Every git command
runs with only the file, git, http(s) and ssh transports allowed (no `ext::`/`fd::` helpers that
run commands), without a password prompt, and ignoring hooks and `core.fsmonitor` from the clone's
own config: tools write into their data directory, `.git/` included.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git
from git.util import remove_password_if_present

from mao_celery.exceptions import AlreadyExists, InvalidInput, NotFound, ServiceUnavailable
from mao_celery.models import NAME_RE, validate_git_url, validate_name

_GIT_ENV = {
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_TERMINAL_PROMPT": "0",
}
_SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# Messages (under LC_ALL=C, which GitPython sets) of git refusing the URL rather than the remote
# failing to answer.
_REFUSED_MARKERS = ("not allowed", "not supported", "unable to find remote helper")
_MISSING_MARKERS = ("does not exist", "does not appear to be a git repository", "not found")
SHORT_SHA_LEN = 12


@dataclass(frozen=True)
class LocalDataset:
    """A directory directly under importdir, as `maoctl dataset list-local` shows it.

    `head` is the first 12 hex digits of the checked-out commit; `head` and `remote` (the URL of
    `origin`) are None when the directory is not a git repository or has no commit/origin.
    """

    name: str
    path: Path
    is_git: bool
    head: str | None
    remote: str | None


def local_path(importdir: Path, name: str) -> Path:
    """The data directory of dataset or tool `name`: `importdir/<name>`.

    Raises:
        InvalidInput: `name` is not a valid name (design.md §3), e.g. `../x`.
    """
    try:
        return importdir / validate_name(name)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def clone(url: str, dest: Path, *, timeout_s: float = 600.0) -> Path:
    """Clone `url` into `dest` atomically; return `dest`.

    The URL is checked by `models.validate_git_url` before anything touches the disk. The clone
    is killed after `timeout_s` seconds (default 600).

    Raises:
        InvalidInput: the URL or `dest`'s name is refused, by our rules or by git.
        AlreadyExists: `dest` exists (update it with `update`, i.e. `--update`).
        ServiceUnavailable: git could not read the remote, or timed out.
    """
    try:
        validate_git_url(url)
        validate_name(dest.name)
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    if os.path.lexists(dest):
        if dest.is_dir() and _describe(dest).is_git:
            raise AlreadyExists(f"{dest} already exists: use --update to fast-forward it")
        raise AlreadyExists(f"{dest} already exists and is not a git clone: move it away first")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".clone-{dest.name}-", dir=dest.parent.absolute()))
    except OSError as e:
        raise InvalidInput(f"cannot create a clone in {dest.parent}: {e.strerror}") from e
    try:
        _git(["clone", "--", url, str(tmp)], cwd=dest.parent, endpoint=url, timeout_s=timeout_s)
        tmp.rename(dest)
    except OSError as e:
        raise AlreadyExists(f"{dest} appeared while cloning into it: {e.strerror}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove once renamed
    return dest


def update(dest: Path, *, url: str | None = None, timeout_s: float = 600.0) -> str:
    """Fast-forward the clone at `dest` to its upstream branch; return the new HEAD sha (40 hex).

    Works like `git pull --ff-only`: fetch, then merge only when that is a fast-forward, so a
    refused update leaves the clone as it was. Each git command is killed after `timeout_s`
    seconds (default 600).

    `url`, when given, must be the clone's `origin`: a directory cloned from elsewhere (another
    dataset's, or a tool's data directory of the same name) is not touched.

    Raises:
        NotFound: `dest` is not a git clone with an `origin` remote.
        InvalidInput: not a fast-forward (local commits diverged from the remote), no upstream
            branch, local changes in the way, or git refuses the clone's remote URL.
        ServiceUnavailable: the remote could not be read, or timed out.
    """
    remote = _describe(dest).remote if dest.is_dir() else None
    if remote is None:
        raise NotFound(f"{dest} is not a git clone with an 'origin' remote: clone it first")
    _check_origin(dest, remote, url)
    _git(["fetch", "--quiet"], cwd=dest, endpoint=remote, timeout_s=timeout_s)
    status, _, stderr = _run(["merge", "--ff-only", "--quiet"], cwd=dest, timeout_s=timeout_s)
    if status != 0:
        raise InvalidInput(
            f"cannot fast-forward {dest}: {_git_message(stderr)}; "
            "reconcile local commits or changes by hand, or clone afresh"
        )
    with git.Repo(dest) as repo:
        return repo.head.commit.hexsha


def ensure_clone(url: str, dest: Path, *, timeout_s: float = 600.0) -> bool:
    """Clone `url` into `dest` unless `dest` is already a directory; True when it cloned.

    An existing directory is reused as it is, never reset or cleaned: tools add files to their
    data directory between runs (design.md §4, prepare). `timeout_s` as for `clone`.

    Raises:
        InvalidInput: as `clone`, or `dest` is a clone of another repository (e.g. the tool was
            registered again with another data repository).
        AlreadyExists, ServiceUnavailable: as `clone` (AlreadyExists when `dest` is a file).
    """
    if dest.is_dir():
        _check_origin(dest, _describe(dest).remote, url)
        return False
    clone(url, dest, timeout_s=timeout_s)
    return True


def list_local(importdir: Path) -> list[LocalDataset]:
    """Describe every directory directly under `importdir` whose name is a valid name, by name.

    Hidden directories (temporary clones among them), files and invalid names are left out;
    a missing `importdir` gives an empty list. Reads the file system only, no remote.
    """
    if not importdir.is_dir():
        return []
    return [
        _describe(entry)
        for entry in sorted(importdir.iterdir())
        if entry.is_dir() and NAME_RE.fullmatch(entry.name)
    ]


def _describe(path: Path) -> LocalDataset:
    try:
        repo = git.Repo(path)
    except git.InvalidGitRepositoryError:
        return LocalDataset(name=path.name, path=path, is_git=False, head=None, remote=None)
    with repo:
        head = repo.head.commit.hexsha[:SHORT_SHA_LEN] if repo.head.is_valid() else None
        remote = repo.remotes.origin.url if "origin" in repo.remotes else None
    return LocalDataset(name=path.name, path=path, is_git=True, head=head, remote=remote)


def _run(args: list[str], *, cwd: Path, timeout_s: float) -> tuple[int, str, str]:
    """Run one hardened git command; return its exit status, stdout and stderr."""
    return git.Git(cwd).execute(
        ["git", *_SAFE_CONFIG, *args],
        with_extended_output=True,
        with_exceptions=False,
        env=_GIT_ENV,
        kill_after_timeout=timeout_s,
    )


def _git(args: list[str], *, cwd: Path, endpoint: str, timeout_s: float) -> str:
    """Run one hardened git command that talks to `endpoint`; return its stdout.

    Errors show `endpoint` with any password in it masked.

    Raises:
        InvalidInput: git refused the URL (e.g. a transport that is not allowed).
        NotFound: there is no repository at the URL (not worth a retry).
        ServiceUnavailable: any other failure, with git's message.
    """
    status, stdout, stderr = _run(args, cwd=cwd, timeout_s=timeout_s)
    if status == 0:
        return stdout
    detail = _git_message(stderr)
    [shown] = remove_password_if_present([endpoint])
    if any(marker in detail for marker in _REFUSED_MARKERS):
        raise InvalidInput(f"git refused the URL {shown!r}: {detail}")
    if any(marker in detail for marker in _MISSING_MARKERS):
        raise NotFound(f"no git repository at {shown}: {detail}")
    raise ServiceUnavailable("git", shown, detail)


def _check_origin(dest: Path, remote: str | None, url: str | None) -> None:
    """Raise InvalidInput when the clone at `dest` comes from `remote`, not from `url`."""
    if remote is not None and url is not None and remote != url:
        [shown_remote, shown_url] = remove_password_if_present([remote, url])
        raise InvalidInput(
            f"{dest} is a clone of {shown_remote}, not of {shown_url}: move it away to clone afresh"
        )


def _git_message(stderr: str) -> str:
    """git's first `fatal:` line (its reason), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith("fatal:")]
    return (fatal or lines or ["no message from git"])[0 if fatal else -1]
