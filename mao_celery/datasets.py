"""Git clones of data repositories under importdir (design.md §2 and §4, the prepare step).

Layout. A clone of dataset or tool `<name>` has two parts:

- its work tree `importdir/<name>`: the files only, no `.git` entry. For a tool it is mounted
  read-write into the tool's container, so everything in it is written by untrusted code;
- its git dir `importdir/.git-store/<name>.git` (the store, root-only, never mounted): config,
  index, refs, objects and hooks, written only by the git commands of this module.

Threat model. A tool may write anything into its work tree, between runs and during one: a
`.git` directory or file (`gitdir:` elsewhere) with a config naming `uploadpack`,
`core.sshCommand`, `core.gitProxy`, `credential.helper`, `include.path`, filters or hooks;
`.gitmodules` with submodule git dirs; `.gitattributes` naming filter drivers; symlinks out of
its directory. None of that may run a command on the host or change what the host reads. So every
host-side git command runs with an explicit `--git-dir=<store>` and `--work-tree=<dir>` (no
repository discovery: git never reads a `.git` in the work tree, and skips `.git` entries when
it walks one), without system or global config, with the worker's own `GIT_*` variables removed
(`GIT_DIR`, `GIT_CONFIG_PARAMETERS`, ...), only the file, git, http(s) and ssh transports (no
`ext::`/`fd::` helpers), no password prompt, hooks and `core.fsmonitor` off, no submodule
recursion, and the credential helpers of the node only (below). Filter and merge drivers named by
a tool's `.gitattributes` are defined nowhere, so they do nothing. The store's own config comes
from `git clone` and is never written by a tool.

Cloning is atomic: the work tree and the git dir are made in a hidden temporary sibling
(`importdir/.clone-<name>-<random>/`), then renamed into place, store first. A failed clone
leaves neither. A store entry without its work tree (a crash between the two renames) is stale:
it is removed by the next clone, never used.

Old layout. A directory cloned before the store existed keeps its git metadata in
`importdir/<name>/.git`, written by the tool like the rest: it is never read by git. It is
migrated, because tool data directories hold the control files of every past run: a fresh
`git clone --no-checkout` of the *registered* URL becomes the store, its index is reset to its
HEAD without touching a work-tree file (the directory's files stay as they are; where they differ
from the registered HEAD they are local changes), the files of that HEAD missing from the
directory are written (none is overwritten), then the old `.git` is removed. Its local
commits, if any, are not carried over. Migration happens where the registered URL is known: at a
tool run's prepare step and at `maoctl dataset clone NAME --update`. Until then `list_local`
shows the directory as not a git clone.

Credentials. URLs with passwords are refused by the registry. A node that needs them names a
git-credential-store file in `git_credentials_file` (outside importdir); git commands then use
that file as their only credential helper. Without it, no helper at all.

Ownership. `hand_over` gives the work tree to the tool's uid:gid before each run (never
following a symlink); the store stays root's. A worker that is not root cannot give files away:
it leaves ownership as it is (run tools as the worker's user then, `MAO_TOOL_USER`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mao_celery import gitcmd
from mao_celery.exceptions import AlreadyExists, InvalidInput, NotFound
from mao_celery.models import (
    NAME_RE,
    same_remote,
    validate_branch,
    validate_git_url,
    validate_name,
)
from mao_celery.text import redact_url

STORE_DIR = ".git-store"
SHORT_SHA_LEN = 12


@dataclass(frozen=True)
class LocalDataset:
    """A directory directly under importdir, as `maoctl dataset list-local` shows it.

    `is_git` is True when the directory has its git dir in the store. `head` is the first 12 hex
    digits of the checked-out commit; `head` and `remote` (the URL of `origin`) are None when the
    directory is not a git clone or has no commit/origin.
    """

    name: str
    path: Path
    is_git: bool
    head: str | None
    remote: str | None


@dataclass(frozen=True)
class Clone:
    """A work tree (tool-writable) and its git dir (in the store); both absolute paths. Every
    git command on it names both (`args`)."""

    work_tree: Path
    git_dir: Path

    @classmethod
    def of(cls, dest: Path) -> Clone:
        return cls(dest.absolute(), store_path(dest))

    def args(self) -> list[str]:
        """git's options naming this clone; no discovery, no `.git` of the work tree read."""
        return [f"--git-dir={self.git_dir}", f"--work-tree={self.work_tree}"]

    def head(self) -> str | None:
        """The sha (40 hex) of the clone's HEAD commit, or None (no commit yet)."""
        found = gitcmd.run([*self.args(), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        return found.stdout.strip() if found.status == 0 else None

    def origin(self) -> str | None:
        """The URL of the clone's `origin` remote, from the store's config, or None."""
        found = gitcmd.run([*self.args(), "config", "--get", "remote.origin.url"])
        return found.stdout.strip() if found.status == 0 else None

    def is_old_layout(self) -> bool:
        """A `.git` in the work tree and no store entry: cloned before the store existed."""
        return os.path.lexists(self.work_tree / ".git") and not self.git_dir.is_dir()


def local_path(importdir: Path, name: str) -> Path:
    """The data directory of dataset or tool `name`: `importdir/<name>`.

    Raises:
        InvalidInput: `name` is not a valid name (design.md §3), e.g. `../x`.
    """
    return importdir / valid(validate_name, name)


def store_path(dest: Path) -> Path:
    """The git dir of the clone whose work tree is `dest`: `<dest's parent>/.git-store/<name>.git`
    (absolute)."""
    dest = dest.absolute()
    return dest.parent / STORE_DIR / f"{dest.name}.git"


def clone(
    url: str,
    dest: Path,
    *,
    credentials: Path | None = None,
    branch: str | None = None,
    limits: gitcmd.GitLimits = gitcmd.DEFAULT_LIMITS,
    tries: list[str] | None = None,
) -> Path:
    """Clone `url` into the work tree `dest` and its store entry, atomically; return `dest`.

    The URL is checked by `models.validate_git_url` before anything touches the disk. git talks
    to the remote within `limits` (timeout, stall limits); a failure that can heal (connection
    refused or reset) is tried again, within `limits.total_s`, and each failed try is appended
    to `tries` when given. `credentials` is the node's git-credential-store file, if any.

    `branch` is checked out when given; else the remote's HEAD. A remote whose HEAD names no
    existing branch (dangling) gets its only branch checked out.

    Raises:
        InvalidInput: the URL, `branch` or `dest`'s name is refused, by our rules or by git; or
            the remote's HEAD is dangling and it has several branches (named in the message).
        AlreadyExists: `dest` exists (update it with `update`, i.e. `--update`).
        NotFound: there is no repository at the URL, or no such branch.
        gitcmd.GitUnavailable: git could not read the remote, or timed out (a ServiceUnavailable).
    """
    valid(validate_git_url, url)
    if branch is not None:
        valid(validate_branch, branch)
    valid(validate_name, dest.name)
    target = Clone.of(dest)
    if os.path.lexists(dest):
        if dest.is_dir() and (target.git_dir.is_dir() or target.is_old_layout()):
            raise AlreadyExists(f"{dest} already exists: use --update to fast-forward it")
        raise AlreadyExists(f"{dest} already exists and is not a git clone: move it away first")
    shutil.rmtree(target.git_dir, ignore_errors=True)  # stale: its work tree never arrived
    with _staging(target) as stage:
        staged = _clone_into(
            stage, url, credentials, limits, checkout=True, branch=branch, tries=tries
        )
        _fix_dangling_head(staged, url, limits.timeout_s)
        _install_store(staged.git_dir, target)
        try:
            staged.work_tree.rename(target.work_tree)
        except OSError as e:
            shutil.rmtree(target.git_dir, ignore_errors=True)
            raise AlreadyExists(f"{dest} appeared while cloning into it: {e.strerror}") from e
    return dest


def update(
    dest: Path,
    *,
    url: str | None = None,
    credentials: Path | None = None,
    limits: gitcmd.GitLimits = gitcmd.DEFAULT_LIMITS,
    tries: list[str] | None = None,
) -> str:
    """Fast-forward the clone at `dest` to its upstream branch; return the new HEAD sha (40 hex).

    Works like `git pull --ff-only`: fetch, then merge only when that is a fast-forward, so a
    refused update leaves the clone as it was. The fetch runs within `limits` and is tried
    again like a clone's (see `clone`); `credentials` and `tries` as for `clone`. A clone whose
    HEAD names no branch (cloned from a dangling remote HEAD) gets the remote's only branch.

    `url`, when given, must be the clone's `origin`: a directory cloned from elsewhere (another
    dataset's, or a tool's data directory of the same name) is not touched. An old-layout
    directory is migrated from `url` first (see the module's docstring).

    Raises:
        NotFound: `dest` is not a git clone with an `origin` remote, or is an old-layout
            directory and no `url` is given.
        InvalidInput: not a fast-forward (local commits diverged from the remote), no upstream
            branch, local changes in the way, or git refuses the clone's remote URL.
        gitcmd.GitUnavailable: the remote could not be read, or timed out.
    """
    timeout_s = limits.timeout_s
    target, remote = open_clone(dest, url=url, credentials=credentials, limits=limits)
    fetch = [*target.args(), "fetch", "--progress", "--no-recurse-submodules"]
    gitcmd.remote(fetch, endpoint=remote, credentials=credentials, limits=limits, tries=tries)
    _fix_dangling_head(target, remote, timeout_s)
    merged = gitcmd.run([*target.args(), "merge", "--ff-only", "--quiet"], timeout_s=timeout_s)
    if merged.status != 0:
        raise InvalidInput(
            f"cannot fast-forward {dest}: {gitcmd.git_message(merged.stderr)}; "
            "reconcile local commits or changes by hand, or clone afresh"
        )
    head = target.head()
    if head is None:
        raise NotFound(f"{dest} has no commit after its update")
    return head


def open_clone(
    dest: Path,
    *,
    url: str | None,
    credentials: Path | None = None,
    limits: gitcmd.GitLimits = gitcmd.DEFAULT_LIMITS,
) -> tuple[Clone, str]:
    """The clone at `dest` and the URL of its `origin`; an old-layout directory is migrated
    from `url` first (see the module's docstring).

    Raises:
        NotFound: `dest` is not a git clone with an `origin` remote, or is an old-layout
            directory and no `url` is given.
        InvalidInput: `url` is given and is not the clone's `origin` (compared by
            `models.same_remote`); or as `_migrate`.
        gitcmd.GitUnavailable: a migration could not read the remote.
    """
    target = _open(dest, url, credentials, limits)
    remote = target.origin() if target is not None else None
    if target is None or remote is None:
        raise NotFound(f"{dest} is not a git clone with an 'origin' remote: clone it first")
    _check_origin(dest, remote, url)
    return target, remote


def list_local(importdir: Path) -> list[LocalDataset]:
    """Describe every directory directly under `importdir` whose name is a valid name, by name.

    Hidden directories (the store and temporary clones among them), files and invalid names are
    left out; a missing `importdir` gives an empty list. Reads the store only, no remote, and
    nothing git-related in the directories themselves.
    """
    if not importdir.is_dir():
        return []
    return [
        _describe(entry)
        for entry in sorted(importdir.iterdir())
        if entry.is_dir() and NAME_RE.fullmatch(entry.name)
    ]


def head_commit(dest: Path) -> str | None:
    """The sha (40 hex) of the commit checked out in the clone at `dest`, from its store; None
    when `dest` is not a clone in the store or has no commit."""
    target = Clone.of(dest)
    return target.head() if target.git_dir.is_dir() else None


def hand_over(path: Path, uid: int, gid: int) -> None:
    """Make the work tree `path` (mode 0755) and everything in it owned by `uid`:`gid`, with no
    setuid or setgid file.

    Symlinks are changed themselves, never followed, and the walk does not enter a directory
    that is swapped for a symlink while it runs (`os.fwalk`). When this process is not root, it
    cannot give files away: only the mode is set and ownership is left as it is.

    Raises:
        OSError: `path` cannot be changed (e.g. it does not exist).
    """
    path.chmod(0o755)
    if os.geteuid() != 0:
        return
    os.chown(path, uid, gid, follow_symlinks=False)
    for _, dirs, files, dir_fd in os.fwalk(path, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        for name in files:
            _drop_setid_bits(name, dir_fd)


def _drop_setid_bits(name: str, dir_fd: int) -> None:
    """Clear the setuid and setgid bits of regular file `name` in directory `dir_fd`: a tool's
    file must not run as the tool user for whoever on the host executes it. Called while no
    container of the tool runs, so the file cannot be swapped for a symlink meanwhile."""
    mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    if stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID):
        os.chmod(name, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID), dir_fd=dir_fd)


# ---- clones and the store ---------------------------------------------------------------------


def _open(
    dest: Path, url: str | None, credentials: Path | None, limits: gitcmd.GitLimits
) -> Clone | None:
    """The clone at `dest` (migrated from `url` if it has the old layout), or None.

    Raises:
        NotFound: an old-layout directory and no `url` to migrate it from.
        InvalidInput, ServiceUnavailable: as `_migrate`.
    """
    if not dest.is_dir():
        return None
    target = Clone.of(dest)
    if target.is_old_layout():
        if url is None:
            raise NotFound(
                f"{dest} keeps its git metadata in {dest / '.git'} (old layout, never read): "
                "update it from its registered URL (maoctl dataset clone NAME --update) to move it"
            )
        _migrate(target, url, credentials, limits)
    return target if target.git_dir.is_dir() else None


def _migrate(target: Clone, url: str, credentials: Path | None, limits: gitcmd.GitLimits) -> None:
    """Give the old-layout work tree a store entry cloned from `url`, then remove its `.git`.

    Raises:
        InvalidInput: the URL is refused, or git cannot index the work tree.
        NotFound, ServiceUnavailable: as `clone`.
    """
    valid(validate_git_url, url)
    timeout_s = limits.timeout_s
    with _staging(target) as stage:
        staged = _clone_into(stage, url, credentials, limits, checkout=False)
        adopted = Clone(target.work_tree, staged.git_dir)
        # Index := HEAD, work tree untouched; then only the files missing from it are written.
        _adopt(adopted, ["reset", "--quiet"], timeout_s=timeout_s)
        missing = _adopt(adopted, ["ls-files", "-z", "--deleted"], timeout_s=timeout_s)
        _adopt(adopted, ["checkout-index", "-z", "--stdin"], stdin=missing, timeout_s=timeout_s)
        _install_store(staged.git_dir, target)
    _remove(target.work_tree / ".git")


def _adopt(adopted: Clone, args: list[str], *, timeout_s: float, stdin: str = "") -> str:
    """Run one local git command of a migration; return its stdout.

    Raises:
        InvalidInput: it failed (git's message).
    """
    done = gitcmd.run([*adopted.args(), *args], stdin=stdin, timeout_s=timeout_s)
    if done.status != 0:
        reason = gitcmd.git_message(done.stderr)
        raise InvalidInput(f"cannot move the git metadata of {adopted.work_tree} out: {reason}")
    return done.stdout


@contextmanager
def _staging(target: Clone) -> Iterator[Path]:
    """A new hidden, root-only directory next to the work tree, removed on exit.

    Raises:
        InvalidInput: it cannot be created.
    """
    parent = target.work_tree.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".clone-{target.work_tree.name}-", dir=parent))
    except OSError as e:
        raise InvalidInput(f"cannot create a clone in {parent}: {e.strerror}") from e
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _clone_into(
    stage: Path,
    url: str,
    credentials: Path | None,
    limits: gitcmd.GitLimits,
    *,
    checkout: bool,
    branch: str | None = None,
    tries: list[str] | None = None,
) -> Clone:
    """Clone `url` into `stage/work` with its git dir in `stage/git`; the work tree keeps no
    `.git` file. Without `checkout`, the work tree stays empty. A try that fails is cleaned up
    before the next one.

    Raises:
        InvalidInput, NotFound, gitcmd.GitUnavailable: as `_remote`.
    """
    staged = Clone(stage / "work", stage / "git")
    options = ["--progress", "--no-recurse-submodules", f"--separate-git-dir={staged.git_dir}"]
    if not checkout:
        options.append("--no-checkout")
    if branch is not None:
        options += ["--branch", branch]
    args = ["clone", *options, "--", url, str(staged.work_tree)]

    def clean() -> None:
        shutil.rmtree(staged.work_tree, ignore_errors=True)
        shutil.rmtree(staged.git_dir, ignore_errors=True)

    gitcmd.remote(
        args, endpoint=url, credentials=credentials, limits=limits, tries=tries, before_try=clean
    )
    (staged.work_tree / ".git").unlink()  # the gitlink file git leaves
    return staged


def _remote_branches(target: Clone) -> list[str]:
    """The branches of `origin` the clone knows (`refs/remotes/origin/*` but HEAD), sorted."""
    found = gitcmd.run(
        [*target.args(), "for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/"]
    )
    return sorted(name for name in found.stdout.split() if name != "HEAD")


def _fix_dangling_head(target: Clone, url: str, timeout_s: float) -> None:
    """When the clone has no commit checked out although `origin` has branches (the remote's
    HEAD names a branch that does not exist), check out `origin`'s only branch, tracking it.

    A remote without any branch (an empty repository) is left as it is.

    Raises:
        InvalidInput: `origin` has several branches (they are named: choose one with --branch),
            or the checkout failed.
    """
    if target.head() is not None:
        return
    branches = _remote_branches(target)
    if not branches:
        return
    shown = redact_url(url)
    if len(branches) > 1:
        listed = ", ".join(branches[:20]) + (", ..." if len(branches) > 20 else "")
        raise InvalidInput(
            f"the HEAD of {shown} names no existing branch and it has {len(branches)} branches "
            f"({listed}): register it with --branch NAME"
        )
    (only,) = branches
    done = gitcmd.run(
        [*target.args(), "checkout", "--quiet", "-B", only, "--track", f"origin/{only}"],
        timeout_s=timeout_s,
    )
    if done.status != 0:
        raise InvalidInput(
            f"cannot check out branch {only} of {shown} (its HEAD names no existing branch): "
            f"{gitcmd.git_message(done.stderr)}"
        )


def _install_store(git_dir: Path, target: Clone) -> None:
    """Rename the staged `git_dir` to `target`'s store entry (the store made root-only).

    Raises:
        AlreadyExists: the store entry appeared meanwhile (another clone of the same name).
    """
    try:
        target.git_dir.parent.mkdir(mode=0o700, exist_ok=True)
        git_dir.rename(target.git_dir)
    except OSError as e:
        raise AlreadyExists(
            f"{target.work_tree} appeared while cloning into it: {target.git_dir}: {e.strerror}"
        ) from e


def _remove(path: Path) -> None:
    """Remove the file, symlink or directory `path` without following a symlink.

    Raises:
        InvalidInput: it cannot be removed.
    """
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as e:
        raise InvalidInput(f"cannot remove {path}: {e.strerror}") from e


def _describe(path: Path) -> LocalDataset:
    target = Clone.of(path)
    if not (
        target.git_dir.is_dir()
        and gitcmd.run([*target.args(), "rev-parse", "--git-dir"]).status == 0
    ):
        return LocalDataset(name=path.name, path=path, is_git=False, head=None, remote=None)
    head = target.head()
    return LocalDataset(
        name=path.name,
        path=path,
        is_git=True,
        head=head[:SHORT_SHA_LEN] if head else None,
        remote=target.origin(),
    )


def valid(validate: Callable[[str], str], value: str) -> str:
    """`validate(value)` (one of `models.validate_*`); its ValueError raised as InvalidInput."""
    try:
        return validate(value)
    except ValueError as e:
        raise InvalidInput(str(e)) from e


def _check_origin(dest: Path, remote: str | None, url: str | None) -> None:
    """Raise InvalidInput when the clone at `dest` comes from `remote`, not from `url`
    (compared by meaning: `models.same_remote`)."""
    if remote is not None and url is not None and not same_remote(remote, url):
        raise InvalidInput(
            f"{dest} is a clone of {redact_url(remote)}, not of {redact_url(url)}: if the data "
            f"moved there, `maoctl tool update-data {dest.name} --set-url` points the clone to "
            "it and keeps its history"
        )
