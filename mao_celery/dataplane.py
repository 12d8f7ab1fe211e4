"""git as a tool's data plane (issue 10): the clone refreshed before each run, a commit per run
(its provenance, in git trailers), the run commits pushed (opt-in), the metric read back.

The clone is the one of datasets.py (work tree `importdir/<tool>`, git dir in the store), and
every command goes through the hardened runner (gitcmd.py) with explicit `--git-dir` and
`--work-tree`: nothing a tool writes into its work tree (`.git`, `.gitattributes` naming
drivers, hooks) makes them run a command. Commands here also run no background `gc`/maintenance
and sign nothing.

```
  data repository (remote)        refs/heads/<branch>        refs/heads/mao/<node id>
        |  fetch (refs/mao/incoming/*)   ^ push (never forced)    ^ push (default branch)
        v                                |                        |
  store: refs/remotes/origin/* --merge--> local branch: ... -- run commit -- run commit
```

- `refresh`: fetch into `refs/mao/incoming/*`, refuse a rewritten (force-pushed) branch, merge
  the remote branch (and the node's branch, shared by the node's worker machines) into the local
  one: a fast-forward, or a merge commit by the node when local run commits are not on the
  remote (merged, never rebased: the run records name their commits). Any refusal leaves the
  clone's refs, index and work tree as they were.
- `commit_run`: everything the run changed (`add --all`: deletions too, `.gitignore` obeyed),
  committed by the node with the trailers of `run_trailers`.
- `push`: `HEAD` to a branch of the remote; a non-fast-forward is refreshed and tried again.
- `history`: the run commits of `HEAD`, read back from their trailers.
"""

from __future__ import annotations

import fcntl
import math
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from mao_celery import datasets, gitcmd
from mao_celery.exceptions import InvalidInput, NotFound
from mao_celery.models import (
    same_remote,
    validate_branch,
    validate_git_url,
    validate_node_id,
    validate_run_id,
)
from mao_celery.text import printable, redact_url

if TYPE_CHECKING:
    from mao_celery.models import RunReport, Tool
    from mao_celery.settings import Settings

INCOMING = "refs/mao/incoming/"
"""Where `refresh` fetches the remote's branches before it has checked them."""
TRACKING = "refs/remotes/origin/"
PUSH_TRIES = 3
"""Pushes tried at most, a refresh between two, when the branch moved meanwhile."""
NODE_BRANCH_PREFIX = "mao/"
SHORT = datasets.SHORT_SHA_LEN

TRAILER_KEYS = (
    "MAO-Run-Id",
    "MAO-Tool",
    "MAO-Node",
    "MAO-Image",
    "MAO-Image-Digest",
    "MAO-Exit-Code",
    "MAO-Control-Value",
    "MAO-Spike",
    "MAO-Gain-Pct",
)
"""The trailers of a run commit, in the order they are written."""
NONE = "none"
"""A trailer's value when the run has none (no image digest, no control value, ...)."""
SPIKE_VALUES = {"yes": True, "no": False, "unknown": None}

_LOCAL_CONFIG = (
    *("-c", "gc.auto=0"),
    *("-c", "maintenance.auto=false"),
    *("-c", "commit.gpgSign=false"),
    *("-c", "merge.autoStash=false"),
)
# git log: one record per commit, fields and trailers separated by ASCII separators.
_RS, _FS, _TS = "\x1e", "\x1f", "\x1d"
_LOG_FORMAT = "%H%x1f%cI%x1f%(trailers:only=true,unfold=true,separator=%x1d)%x1e"


@dataclass(frozen=True)
class Identity:
    """Who commits: the node (author and committer of run and merge commits)."""

    name: str
    email: str

    @classmethod
    def of_node(cls, node_id: str) -> Identity:
        """The identity of node `node_id`: `MAO node <id> <mao@<id>>`."""
        return cls(f"MAO node {node_id}", f"mao@{node_id}")

    def config(self) -> list[str]:
        """git options making this identity the author and committer."""
        return ["-c", f"user.name={self.name}", "-c", f"user.email={self.email}"]


class HistoryPoint(BaseModel):
    """One run in a tool's history: its commit (40 hex), when it was committed (UTC), the run id,
    the node, the control value, the spike verdict (None: unknown) and the gain in % (None:
    undefined)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    commit: str
    committed_at: datetime
    run_id: str
    node: str
    control_value: float
    spike: bool | None
    gain_pct: float | None


# ---- the settings of a tool ------------------------------------------------------------------


def push_branch(tool: Tool, settings: Settings) -> str | None:
    """The branch of the data repository the runs of `tool` are pushed to on this node: the
    tool's `push_branch`, else `mao/<node id>`; None when neither the tool (`push`) nor the
    node (`git_push`) pushes.

    Raises:
        InvalidInput: the node id does not make a valid branch name (e.g. it ends with `.lock`).
    """
    if not (tool.push or settings.git_push):
        return None
    node_branch = NODE_BRANCH_PREFIX + settings.node_id
    return tool.push_branch or datasets.valid(validate_branch, node_branch)


def sync(tool: Tool, settings: Settings, *, tries: list[str] | None = None) -> str | None:
    """Bring the clone of `tool`'s data repository in `settings.importdir` up to date: clone it
    on first use, and `refresh` it (following the node's push branch too, see `push_branch`;
    right after a clone only when there is such a branch).
    Returns its HEAD sha (None: the repository has no commit). `tries` as for `refresh`.

    Raises:
        InvalidInput, NotFound, AlreadyExists, gitcmd.GitUnavailable: as `datasets.clone` and
            `refresh`.
    """
    dest = datasets.local_path(settings.importdir, tool.name)
    credentials, limits = settings.git_credentials_file, gitcmd.GitLimits.from_settings(settings)
    node_branch = push_branch(tool, settings)
    with exclusive(dest):
        if not dest.is_dir():
            datasets.clone(
                tool.data_repo,
                dest,
                credentials=credentials,
                branch=tool.branch,
                limits=limits,
                tries=tries,
            )
            if node_branch is None:
                return datasets.head_commit(dest)
            # A new machine of a pushing node: merge what its other machines pushed.
        return refresh(
            dest,
            url=tool.data_repo,
            branch=tool.branch,
            node_branch=node_branch,
            identity=Identity.of_node(settings.node_id),
            credentials=credentials,
            limits=limits,
            tries=tries,
        )


# ---- refresh ---------------------------------------------------------------------------------


def refresh(
    dest: Path,
    *,
    url: str,
    branch: str | None,
    node_branch: str | None,
    identity: Identity,
    credentials: Path | None = None,
    limits: gitcmd.GitLimits = gitcmd.DEFAULT_LIMITS,
    tries: list[str] | None = None,
) -> str | None:
    """Fetch the clone at `dest` from `url` and bring its branch to the remote's; return the new
    HEAD sha (40 hex; None: still no commit).

    The remote's `branch` (None: the clone's own branch) is merged into the local branch: a
    fast-forward when the local branch has no commit of its own, else a merge commit by
    `identity`. Then the remote's `node_branch`, when given and present, likewise (the history
    the node's other worker machines pushed). Finally `refs/remotes/origin/*` take the fetched
    tips. The fetch runs within `limits`, tried again as a clone's (`gitcmd.remote`), each
    failed try appended to `tries`.

    Raises:
        NotFound: `dest` is not a clone in the store (or an old-layout one; it is migrated from
            `url`), or the remote has no branch `branch`.
        InvalidInput: `url` is not the clone's origin (see `datasets.open_clone`); a followed
            branch was rewritten on the remote (its old tip is not an ancestor of the new one:
            force-pushed); the merge conflicts, or local changes or untracked files are in its
            way; HEAD is detached. Both commits are named; nothing was changed.
        gitcmd.GitUnavailable: the remote could not be read.
    """
    with exclusive(dest):
        target, remote = datasets.open_clone(dest, url=url, credentials=credentials, limits=limits)
        fetch = [
            *_args(target),
            *("fetch", "--progress", "--no-recurse-submodules", "--no-tags", "--prune"),
            *("--refmap=", "origin", f"+refs/heads/*:{INCOMING}*"),
        ]
        gitcmd.remote(fetch, endpoint=remote, credentials=credentials, limits=limits, tries=tries)
        local = _current_branch(target)
        main = branch or local
        followed = dict.fromkeys(b for b in (main, node_branch) if b is not None)
        tips = _checked_tips(target, list(followed), remote)
        if main not in tips:
            raise NotFound(f"{redact_url(remote)} has no branch {main}")
        _merge_all(target, local, tips, identity)
        _take_incoming(target)
        return target.head()


def _current_branch(target: datasets.Clone) -> str:
    """The branch HEAD names (it may have no commit yet).

    Raises:
        InvalidInput: HEAD is detached.
    """
    found = _git(target, "symbolic-ref", "--quiet", "--short", "HEAD")
    if found.status != 0:
        raise InvalidInput(f"{target.work_tree} has a detached HEAD: check out its branch")
    return found.stdout.strip()


def _checked_tips(target: datasets.Clone, branches: list[str], remote: str) -> dict[str, str]:
    """The fetched tips (sha) of those of `branches` the remote has, by branch.

    Raises:
        InvalidInput: a branch's previous tip (`refs/remotes/origin/<b>`) is not an ancestor
            of its fetched tip.
    """
    tips: dict[str, str] = {}
    for name in branches:
        new = _sha(target, INCOMING + name)
        if new is None:
            continue
        old = _sha(target, TRACKING + name)
        if old is not None and not _is_ancestor(target, old, new):
            raise InvalidInput(
                f"branch {name} of {redact_url(remote)} was rewritten (force-pushed?): its tip "
                f"{old[:SHORT]} is not an ancestor of its new tip {new[:SHORT]}; "
                f"{target.work_tree} was left unchanged (reconcile the remote's history by hand)"
            )
        tips[name] = new
    return tips


def _merge_all(
    target: datasets.Clone, local: str, tips: Mapping[str, str], identity: Identity
) -> None:
    """Merge each tip into the local branch in turn; on a failure undo them all.

    Raises:
        InvalidInput: a merge failed; the message names both commits and git's reason.
    """
    start = target.head()
    for name, tip in tips.items():
        before = target.head()
        if before is not None and _is_ancestor(target, tip, before):
            continue
        message = f"mao: merge {name} of origin into {local}"
        merge = ("merge", "--quiet", "--no-edit", "--no-stat", "-m", message, tip)
        merged = _git(target, *merge, identity=identity)
        if merged.status == 0:
            continue
        _git(target, "merge", "--abort")  # fails harmlessly when no merge was started
        if start is not None and target.head() != start:
            _git(target, "reset", "--quiet", "--merge", start)
        shown = before[:SHORT] if before is not None else "(no commit)"
        raise InvalidInput(
            f"cannot merge {name} of origin ({tip[:SHORT]}) into {local} of {target.work_tree} "
            f"({shown}): {_merge_reason(merged)}; the clone was left unchanged"
        )


def _merge_reason(merged: gitcmd.GitResult) -> str:
    """Why a merge failed, in one printable line: its first conflict, else git's error."""
    lines = [*merged.stdout.splitlines(), *merged.stderr.splitlines()]
    for start in ("CONFLICT", "error:", "fatal:"):
        found = [line for line in lines if line.startswith(start)]
        if found:
            more = " (and more)" if len(found) > 1 and start == "CONFLICT" else ""
            return printable(found[0]) + more
    return printable(gitcmd.git_message(merged.stderr))


def _take_incoming(target: datasets.Clone) -> None:
    """Set `refs/remotes/origin/*` to the fetched tips, in one transaction."""
    fetched = _git(target, "for-each-ref", "--format=%(objectname) %(refname)", INCOMING)
    updates = "".join(
        f"update {TRACKING}{ref.removeprefix(INCOMING)} {sha}\n"
        for sha, ref in (line.split(" ", 1) for line in fetched.stdout.splitlines())
    )
    _checked(target, "update the remote-tracking branches", "update-ref", "--stdin", stdin=updates)


# ---- commits ---------------------------------------------------------------------------------


def run_trailers(report: RunReport) -> dict[str, str]:
    """The trailers of `report`'s run commit (keys `TRAILER_KEYS`): run id, tool, node, image
    reference and digest, exit code, control value (the latest, `repr` of the float), spike
    verdict (`yes`/`no`/`unknown`: no verdict or an undefined gain) and gain in %. A missing
    value is `none`."""
    result = report.spike
    latest = result.latest if result is not None else None
    gain = result.gain_pct if result is not None else None
    verdict = "unknown" if result is None or gain is None else ("yes" if result.spike else "no")
    values = (
        report.run_id,
        report.tool,
        report.node,
        report.image,
        report.image_digest,
        report.exit_code,
        latest,
        verdict,
        gain,
    )
    return {
        key: NONE if value is None else repr(value) if isinstance(value, float) else str(value)
        for key, value in zip(TRAILER_KEYS, values, strict=True)
    }


def run_message(trailers: Mapping[str, str]) -> str:
    """A run commit's message: `mao run <run id[:8]> of <tool>: control <value>`, a blank line,
    then one `Key: value` trailer per line. Every value is made one printable line
    (`text.printable`: a newline becomes `\\n`), an empty one `none`."""
    lines = {key: printable(value) or NONE for key, value in trailers.items()}
    subject = (
        f"mao run {lines.get('MAO-Run-Id', NONE)[:8]} of {lines.get('MAO-Tool', NONE)}: "
        f"control {lines.get('MAO-Control-Value', NONE)}"
    )
    return subject + "\n\n" + "".join(f"{key}: {value}\n" for key, value in lines.items())


def commit_run(dest: Path, *, identity: Identity, trailers: Mapping[str, str]) -> str | None:
    """Commit everything that changed in the work tree at `dest` (new, changed and deleted
    files; `.gitignore` obeyed) as `identity`, with the message `run_message(trailers)`; return
    the commit (40 hex), or None when nothing changed (no commit is made).

    Raises:
        NotFound: `dest` is not a clone in the store.
        InvalidInput: git could not index or commit (its reason).
    """
    with exclusive(dest):
        target = _existing(dest)
        _checked(target, "index the run's files", "add", "--all")
        staged = _git(target, "diff", "--cached", "--quiet", "--no-ext-diff")
        if staged.status == 0:  # nothing new; or a twin task of this run committed it already
            twin = _committed_run(target) == trailers.get("MAO-Run-Id")
            return target.head() if twin else None
        _checked(
            target,
            "commit the run's files",
            *("commit", "--quiet", "--no-verify", "--no-gpg-sign", "--cleanup=verbatim"),
            *("-F", "-"),
            stdin=run_message(trailers),
            identity=identity,
        )
        return target.head()


# ---- push ------------------------------------------------------------------------------------


def push(
    dest: Path,
    *,
    ref: str,
    url: str,
    branch: str | None,
    identity: Identity,
    credentials: Path | None = None,
    limits: gitcmd.GitLimits = gitcmd.DEFAULT_LIMITS,
) -> str:
    """Push the clone's HEAD to branch `ref` of its origin (`url`), never forced; return the
    commit pushed. When the remote refuses (not a fast-forward: the branch moved), `refresh`
    (following `branch` and `ref`) and push again, `PUSH_TRIES` tries in all.

    Raises:
        NotFound: `dest` is not a clone, or has no commit.
        gitcmd.Rejected: still refused after `PUSH_TRIES` tries.
        InvalidInput: `ref` is not a branch name; or a refresh failed (see `refresh`).
        gitcmd.GitUnavailable: the remote could not be reached.
    """
    with exclusive(dest):
        datasets.valid(validate_branch, ref)
        target, remote = datasets.open_clone(dest, url=url, credentials=credentials, limits=limits)
        args = [
            *_args(target),
            *("push", "--progress", "--no-verify", "--recurse-submodules=no"),
            *("origin", f"HEAD:refs/heads/{ref}"),
        ]
        rejected: gitcmd.Rejected | None = None
        for _ in range(PUSH_TRIES):
            if rejected is not None:
                refresh(
                    dest,
                    url=url,
                    branch=branch,
                    node_branch=ref,
                    identity=identity,
                    credentials=credentials,
                    limits=limits,
                )
            head = target.head()
            if head is None:
                raise NotFound(f"{dest} has no commit to push")
            try:
                gitcmd.remote(args, endpoint=remote, credentials=credentials, limits=limits)
                return head
            except gitcmd.Rejected as e:
                rejected = e
        raise gitcmd.Rejected(f"{rejected} ({PUSH_TRIES} tries, a refresh between two)")


def set_origin(dest: Path, url: str) -> bool:
    """Point the `origin` of the clone at `dest` to `url` (the data repository moved), keeping
    its history and remote-tracking branches; True when it changed (False: `url` already names
    the same repository, `models.same_remote`).

    Raises:
        InvalidInput: `url` is not a valid git URL (`models.validate_git_url`).
        NotFound: `dest` is not a clone in the store with an `origin`.
    """
    with exclusive(dest):
        datasets.valid(validate_git_url, url)
        target, remote = datasets.open_clone(dest, url=None)
        if same_remote(remote, url):
            return False
        _checked(target, "set the URL of origin", "remote", "set-url", "origin", url)
        return True


# ---- history ---------------------------------------------------------------------------------


def history(dest: Path, limit: int) -> list[HistoryPoint]:
    """The run commits of the history of the clone at `dest` (its HEAD and every parent, merged
    histories of other nodes included), newest first, at most `limit`: see `parse_history`.

    Raises:
        NotFound: `dest` is not a clone in the store.
        InvalidInput: git could not read its history.
    """
    target = _existing(dest)
    if target.head() is None:
        return []
    found = _git(target, "log", f"--format={_LOG_FORMAT}", "--grep=^MAO-Run-Id: ", "HEAD", "--")
    if found.status != 0:
        raise InvalidInput(f"cannot read the history of {dest}: {gitcmd.git_message(found.stderr)}")
    return parse_history(found.stdout)[:limit]


def parse_history(text: str) -> list[HistoryPoint]:
    """The points of `git log --format=<_LOG_FORMAT>` output, in its order: records separated by
    0x1e, each `sha 0x1f ISO date 0x1f trailers` with trailers (`Key: value`) separated by 0x1d.
    A record that is not a valid run commit (a trailer missing or twice, a value out of its
    rules, a non-finite number) gives no point."""
    points = []
    for record in text.split(_RS):
        point = _parse_point(record.strip("\n"))
        if point is not None:
            points.append(point)
    return points


def _parse_point(record: str) -> HistoryPoint | None:
    fields = record.split(_FS)
    if len(fields) != 3:
        return None
    commit, date, trailers = fields
    found: dict[str, str] = {}
    for line in trailers.split(_TS):
        key, sep, value = line.partition(": ")
        if sep and key in TRAILER_KEYS:
            if key in found:
                return None
            found[key] = value.strip()
    try:
        return HistoryPoint(
            commit=commit,
            committed_at=datetime.fromisoformat(date).astimezone(UTC),
            run_id=validate_run_id(found["MAO-Run-Id"]),
            node=validate_node_id(found["MAO-Node"]),
            control_value=_finite(found["MAO-Control-Value"]),
            spike=SPIKE_VALUES[found["MAO-Spike"]],
            gain_pct=None if found["MAO-Gain-Pct"] == NONE else _finite(found["MAO-Gain-Pct"]),
        )
    except (KeyError, ValueError):
        return None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


# ---- git -------------------------------------------------------------------------------------

_HELD = threading.local()
"""The lock files this thread holds (`exclusive` is re-entrant within a thread)."""


@contextmanager
def exclusive(dest: Path) -> Iterator[None]:
    """Hold the lock of the clone at `dest` (`flock` on `.git-store/<name>.lock`, root's): git
    commands of two tasks on one clone (a redelivered step and its twin, `tool update-data`
    during a run) would otherwise race for git's own locks (`index.lock`, `HEAD`) and fail.
    Re-entrant within a thread; released when the process dies."""
    path = datasets.store_path(dest).with_suffix(".lock")
    held: set[Path] = _HELD.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)
    finally:
        os.close(fd)


def _committed_run(target: datasets.Clone) -> str | None:
    """The run id of HEAD's `MAO-Run-Id` trailer, or None (no commit, not a run commit)."""
    found = _git(target, "log", "-1", "--format=%(trailers:key=MAO-Run-Id,valueonly)", "HEAD")
    return (found.stdout.strip() or None) if found.status == 0 else None


def _existing(dest: Path) -> datasets.Clone:
    """The clone at `dest`.

    Raises:
        NotFound: `dest` is not a clone in the store.
    """
    target = datasets.Clone.of(dest)
    if not (target.git_dir.is_dir() and target.work_tree.is_dir()):
        raise NotFound(f"{dest} is not a git clone: clone it first")
    return target


def _args(target: datasets.Clone, identity: Identity | None = None) -> list[str]:
    """git's options for a command on `target`: no background gc, no signing, as `identity`."""
    who = identity.config() if identity is not None else []
    return [*_LOCAL_CONFIG, *who, *target.args()]


def _git(
    target: datasets.Clone, *args: str, identity: Identity | None = None, stdin: str = ""
) -> gitcmd.GitResult:
    """One local git command on `target` (see `_args`)."""
    return gitcmd.run([*_args(target, identity), *args], stdin=stdin)


def _checked(
    target: datasets.Clone,
    what: str,
    *args: str,
    identity: Identity | None = None,
    stdin: str = "",
) -> str:
    """`_git`, its stdout; a failure raised as InvalidInput("cannot <what> in <dest>: why")."""
    done = _git(target, *args, identity=identity, stdin=stdin)
    if done.status != 0:
        reason = printable(gitcmd.git_message(done.stderr))
        raise InvalidInput(f"cannot {what} in {target.work_tree}: {reason}")
    return done.stdout


def _sha(target: datasets.Clone, ref: str) -> str | None:
    found = _git(target, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    return found.stdout.strip() if found.status == 0 else None


def _is_ancestor(target: datasets.Clone, old: str, new: str) -> bool:
    return _git(target, "merge-base", "--is-ancestor", old, new).status == 0
