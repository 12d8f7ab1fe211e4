"""What maoctl does with tools, datasets and runs, for any caller holding a `Node`: register
and remove registry entries (a tool's schedule goes with it), clone datasets, start a run and
follow it to its end, query this node's runs, schedule tools.

Printing is not done here (render.py): functions return values or yield reports. The modules
they use are imported on first use, as in node.py (maoctl's start-up time: `maoctl --help`
imports this module but neither pydantic's models nor Celery, RedBeat or GitPython).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mao_celery.exceptions import MaoError, NotFound

if TYPE_CHECKING:
    from mao_celery.cancel import Cancelled
    from mao_celery.dataplane import HistoryPoint
    from mao_celery.datasets import LocalDataset
    from mao_celery.health import Check
    from mao_celery.models import Dataset, RunReport, Tool
    from mao_celery.node import Node
    from mao_celery.records import InvalidRecord
    from mao_celery.registry import Collection
    from mao_celery.runs import RunStore
    from mao_celery.schedules import Scheduled, ScheduleInfo
    from mao_celery.worker_info import PublishedSettings

Kind = Literal["tool", "dataset"]
WAIT_STEP_S = 1.0
"""How long `follow_run` waits for a change of status before it reports the run again (a change
wakes it at once: `RunStore.wait`)."""
LOG_POLL_S = 0.2
"""How often `run_output` looks for new output of a run it follows, in seconds."""


def collection(node: Node, kind: Kind) -> Collection[Any]:
    """The registry collection of `kind` ("tool" -> `registry.tools`)."""
    return node.registry.tools if kind == "tool" else node.registry.datasets


def is_registered(node: Node, kind: Kind, name: str) -> bool:
    """Whether the registry has an entry `name` of `kind`.

    Raises:
        InvalidInput: `name` is not a valid name.
        ServiceUnavailable: etcd did not answer.
    """
    try:
        collection(node, kind).get(name)
    except NotFound:
        return False
    return True


def register(node: Node, kind: Kind, **fields: Any) -> Tool | Dataset:
    """Validate `fields` as a `kind` created by this node and add it to the registry.

    Raises:
        InvalidInput: a field is invalid; nothing was written.
        AlreadyExists: an entry of that kind has the name.
        ServiceUnavailable: etcd did not answer.
    """
    from mao_celery.models import Dataset, Tool, build

    model: type[Tool | Dataset] = Tool if kind == "tool" else Dataset
    item = build(model, **fields, created_by=node.settings.node_id)
    if isinstance(item, Tool):
        node.settings.run_limits(item.timeout_s, item.memory_bytes, item.cpus)
    collection(node, kind).add(item)
    return item


TOOL_UPDATABLE = frozenset(
    {
        "image",
        "description",
        "timeout_s",
        "memory_bytes",
        "cpus",
        "network",
        "read_only_rootfs",
        "spike_window",
        "spike_threshold_pct",
        "push",
        "push_branch",
    }
)
"""The fields of a tool `tool update` may change (not its name, repositories or author)."""


def update_tool(node: Node, name: str, changes: dict[str, Any]) -> Tool:
    """Change the fields `changes` of tool `name` (a None value: back to the node's default)
    with a compare-and-swap on its etcd revision: an update made by someone else between the
    read and the write refuses this one, so that neither is lost. Limits are checked against
    this node's maxima. Returns the tool as written.

    Raises:
        InvalidInput: nothing to change, a field that may not be changed, an invalid value, or a
            limit above this node's maximum; nothing was written.
        NotFound: the tool is not registered.
        Conflict: the tool changed since it was read; nothing was written.
        ServiceUnavailable: etcd did not answer.
    """
    from mao_celery.exceptions import InvalidInput
    from mao_celery.models import Tool, build

    if not changes:
        raise InvalidInput(
            "nothing to change: give at least one option (maoctl tool update --help)"
        )
    if unknown := sorted(set(changes) - TOOL_UPDATABLE):
        raise InvalidInput(f"tool field(s) {', '.join(unknown)} cannot be changed by an update")

    def change(tool: Tool) -> Tool:
        updated = build(Tool, **(tool.model_dump() | changes))
        node.settings.run_limits(updated.timeout_s, updated.memory_bytes, updated.cpus)
        return updated

    return node.registry.tools.update(name, change)


def remove(node: Node, kind: Kind, name: str) -> bool:
    """Remove entry `name` of `kind` from the registry; a tool's schedule on this node (valid or
    not) is removed first, so no schedule outlives its tool. A local data directory or clone is
    kept; a run under way goes on. Returns True when a schedule was removed.

    Raises:
        NotFound: no such entry (its schedule, if any, was removed all the same).
        ServiceUnavailable: etcd or Redis did not answer.
    """
    unscheduled = kind == "tool" and unschedule(node, name)
    collection(node, kind).remove(name)
    return unscheduled


def data_directory(node: Node, name: str) -> Path | None:
    """The local data directory of tool or dataset `name` (importdir/`name`), None when there
    is none."""
    path = node.settings.importdir / name
    return path if path.is_dir() else None


def unschedule(node: Node, name: str) -> bool:
    """Remove tool `name`'s schedule on this node if it has one; True when it had one.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    try:
        remove_schedule(node, name)
    except NotFound:
        return False
    return True


def clone_dataset(
    node: Node,
    name: str,
    *,
    update: bool,
    before_clone: Callable[[str, Path], None] = lambda url, dest: None,
) -> tuple[Path, str | None]:
    """Clone registered dataset `name` into importdir/`name`, or fast-forward that clone when
    `update`. `before_clone(url, dest)` is called before a (slow) clone starts.

    Returns the clone's path and, after an update, its new HEAD commit.

    Raises:
        NotFound: the dataset is not registered.
        InvalidInput: the name leaves importdir, or the registry entry is invalid.
        AlreadyExists: a clone exists (without `update`).
        ServiceUnavailable: etcd or the git remote did not answer.
    """
    from mao_celery import datasets, gitcmd

    conf = node.settings
    dest = datasets.local_path(conf.importdir, name)
    item = node.registry.datasets.get(name)
    credentials, limits = conf.git_credentials_file, gitcmd.GitLimits.from_settings(conf)
    if update:
        return dest, datasets.update(dest, url=item.url, credentials=credentials, limits=limits)
    before_clone(item.url, dest)
    datasets.clone(item.url, dest, credentials=credentials, branch=item.branch, limits=limits)
    return dest, None


def local_datasets(node: Node) -> list[LocalDataset]:
    """The data directories under this node's importdir, from the file system (see
    `datasets.list_local`)."""
    from mao_celery import datasets

    return datasets.list_local(node.settings.importdir)


# ---- runs ------------------------------------------------------------------------------------


IfNoWorker = Literal["refuse", "warn", "wait"]
"""What `start_runs` does when no worker of this node answers a ping: queue nothing and raise
("refuse"), queue and warn ("warn"), or queue without asking (the caller waits for one)."""


def start_run(
    node: Node,
    name: str,
    *,
    no_worker: IfNoWorker = "wait",
    warn: Callable[[str], None] = lambda line: None,
) -> RunReport:
    """Queue a run of tool `name` on this node's workers; returns its report (queued). The
    worker check is `start_runs`'s.

    Raises:
        NotFound: the tool is not registered.
        NoWorker: "refuse" and no worker answers (a ServiceUnavailable: exit 3).
        AlreadyRunning: a run of the tool is under way on this node.
        InvalidState: the tool's lock or run index cannot be read.
        ServiceUnavailable: etcd, Redis or the broker did not answer.
    """
    (outcome,) = start_runs(node, [name], no_worker=no_worker, warn=warn)
    if isinstance(outcome, MaoError):
        raise outcome
    return outcome


def start_runs(
    node: Node,
    names: Sequence[str],
    *,
    no_worker: IfNoWorker = "wait",
    warn: Callable[[str], None] = lambda line: None,
) -> list[RunReport | MaoError]:
    """Queue a run of each tool of `names`, in that order, on this node's workers; returns, by
    name, its report (queued) or why it was not queued (AlreadyRunning, InvalidState, NotFound).

    Every tool must be registered first (else NotFound: nothing is queued). Unless `no_worker`
    is "wait", a worker must then answer a ping (`health.PING_TIMEOUT_S`, once): with "refuse"
    nothing is queued when none answers; with "warn" the runs are queued and `warn` is called
    with a one-line warning.

    Raises:
        NotFound: a tool is not registered; nothing was queued.
        NoWorker: "refuse" and no worker answers (a ServiceUnavailable: exit 3).
        ServiceUnavailable: etcd, Redis or the broker did not answer (the runs queued before
            stay queued).
    """
    from mao_celery import enqueue
    from mao_celery.exceptions import AlreadyRunning, InvalidState

    for name in names:
        node.registry.tools.get(name)
    if no_worker == "refuse":
        _require_worker(node, warn=None)
    outcomes: list[RunReport | MaoError] = []
    for name in names:
        try:
            report = enqueue.start_run(
                node.app, name, conf=node.settings, registry=node.registry, runs=node.runs
            )
        except (AlreadyRunning, InvalidState, NotFound) as e:
            outcomes.append(e)
        else:
            outcomes.append(report)
    if no_worker == "warn" and any(not isinstance(o, MaoError) for o in outcomes):
        _require_worker(node, warn=warn)
    return outcomes


def _require_worker(node: Node, *, warn: Callable[[str], None] | None) -> None:
    """Check that a worker of this node answers a ping; when none does, raise, or call `warn`
    (when given) with a one-line warning.

    Raises:
        NoWorker: no worker answers and no `warn` was given.
        ServiceUnavailable: the broker (Redis) did not answer.
    """
    from mao_celery import health
    from mao_celery.text import redact_url

    if health.ping_workers(node.app, limit=1):
        return
    broker = redact_url(node.settings.redis_url)
    if warn is None:
        raise health.NoWorker(
            broker, health.PING_TIMEOUT_S, "or pass --wait-for-worker to queue the run and wait"
        )
    missing = health.NoWorker(broker, health.PING_TIMEOUT_S, "the run stays queued until then")
    warn(f"warning: {missing}")


def check_node(node: Node) -> list[Check]:
    """The checks of `maoctl status` on this node (`health.check_all`): etcd, Redis, Docker,
    importdir, its workers and its beat; each says whether it is usable and why not."""
    from mao_celery.health import check_all

    return check_all(node.settings, node.app)


def worker_settings(
    node: Node,
) -> tuple[list[PublishedSettings], list[str], list[InvalidRecord]]:
    """The settings the workers of this node published (`worker_info`), the host names of the
    workers answering a ping now, and the published entries that cannot be read.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    from mao_celery import health, worker_info

    published, invalid = worker_info.read_all(node.settings)
    return published, health.ping_workers(node.app), invalid


def follow_run(runs: RunStore, run_id: str, timeout_s: float | None) -> Iterator[RunReport]:
    """Yield run `run_id`'s report now, then again each time its status changes (or every
    `WAIT_STEP_S` seconds), until it ends or `timeout_s` seconds pass (None: no limit).

    The last report yielded is the newest read: terminal, or still under way after the timeout.

    Raises:
        NotFound: no such run.
        ServiceUnavailable: Redis did not answer.
    """
    deadline = time.monotonic() + timeout_s if timeout_s else math.inf
    report = runs.get(run_id)
    yield report
    while not report.status.terminal and time.monotonic() < deadline:
        report = runs.wait(run_id, _other_status(report), timeout_s=WAIT_STEP_S, poll_s=WAIT_STEP_S)
        yield report


def _other_status(report: RunReport) -> Callable[[RunReport], bool]:
    """Whether a newer read of `report`'s run has another status."""
    return lambda newer: newer.status != report.status


def recent_runs(node: Node, name: str, limit: int) -> tuple[list[RunReport], list[InvalidRecord]]:
    """The `limit` newest runs of tool `name` on this node, newest first, and the records among
    them that cannot be read (left out).

    A tool with no run here must be registered (a tool removed since keeps its runs listed).

    Raises:
        NotFound: no run of `name` here and no such tool registered.
        InvalidState: the tool's run index cannot be read.
        ServiceUnavailable: Redis (or, for a tool without runs, etcd) did not answer.
    """
    reports, invalid = node.runs.recent_checked(name, limit)
    if not reports and not invalid:
        node.registry.tools.get(name)
    return reports, invalid


def resolve_run(node: Node, prefix: str) -> str:
    """The id of this node's one run whose id is `prefix` or starts with it (git and docker's
    short ids), for every command that takes a RUN_ID.

    Raises:
        NotFound: no run id starts with `prefix`.
        AmbiguousId: several do ("ambiguous (N runs)").
        ServiceUnavailable: Redis did not answer.
    """
    return node.runs.resolve(prefix)


def get_run(node: Node, run_id: str) -> RunReport:
    """The report of run `run_id` (a unique prefix of it will do) on this node.

    Raises:
        NotFound: no such run.
        AmbiguousId: the prefix matches several runs.
        ServiceUnavailable: Redis did not answer.
    """
    return node.runs.get(resolve_run(node, run_id))


def forget_run(node: Node, run_id: str) -> str:
    """Remove run `run_id`'s record (readable or not) from this node and free the tool lock it
    holds; returns the run's id (in full when `run_id` was a prefix of it).

    `run_id` may be a unique prefix of a run's record; a full id whose record is gone still
    clears its index entries and lock.

    Raises:
        NotFound: no such run.
        AmbiguousId: the prefix matches several runs.
        InvalidInput: the run has not ended.
        ServiceUnavailable: Redis did not answer.
    """
    with contextlib.suppress(NotFound):  # no record: its index entries or lock may be left
        run_id = resolve_run(node, run_id)
    node.runs.forget(run_id)
    return run_id


def caller() -> str:
    """Who runs this command, as a run records who cancelled it: `maoctl (user@host)`, or
    `maoctl (uid N@host)` when the uid has no login name nor passwd entry."""
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name nor passwd entry for this uid
        user = f"uid {os.getuid()}"
    return f"maoctl ({user}@{socket.gethostname()})"


def cancel_run(node: Node, run_id: str, by: str) -> Cancelled:
    """Cancel run `run_id` (a unique prefix of it will do) for `by` (who asks): mark it
    cancelled, which frees its tool, then stop its container (SIGTERM, SIGKILL after
    `containers.CANCEL_STOP_S` seconds) and remove it; see cancel.py. A run that has ended is
    left as it is (`Cancelled.cancelled` False).

    Raises:
        NotFound: no such run.
        AmbiguousId: the prefix matches several runs.
        InvalidState: its record cannot be read.
        ServiceUnavailable: Redis or the Docker daemon did not answer.
    """
    from mao_celery import cancel

    return cancel.cancel_run(node, resolve_run(node, run_id), by)


@dataclass(frozen=True)
class RunOutput:
    """A piece of a run's container output: `data` (bytes, stdout and stderr interleaved),
    after `skipped` bytes that are no longer kept (a run keeps its last `runs.LOG_MAX_BYTES`);
    `tail_only` when only the report's log tail (its last lines) exists for the run."""

    data: bytes
    skipped: int = 0
    tail_only: bool = False


def run_output(
    node: Node, run_id: str, *, follow: bool, poll_s: float = LOG_POLL_S
) -> Iterator[RunOutput]:
    """Run `run_id`'s container output (a unique prefix of the id will do): what is kept now
    as one piece, then, when `follow`, each new piece every `poll_s` seconds until the run has
    ended and no new output comes. A run whose output was not kept (older runs) yields its
    report's log tail.

    Raises:
        NotFound: no such run.
        AmbiguousId: the prefix matches several runs.
        InvalidState: its record or stored output cannot be read.
        ServiceUnavailable: Redis did not answer.
    """
    run_id = resolve_run(node, run_id)
    report = node.runs.get(run_id)
    data, first, position = node.runs.read_log(run_id, 0)
    if not data and first == 0 and report.status.terminal and report.log_tail:
        yield RunOutput(report.log_tail.encode(), tail_only=True)
        return
    yield RunOutput(data, first)
    ended = report.status.terminal
    while follow:
        if not ended:
            time.sleep(poll_s)
            ended = node.runs.get(run_id).status.terminal
        data, first, end = node.runs.read_log(run_id, position)
        if data or first > position:
            yield RunOutput(data, first - position)
        elif ended:
            return
        position = end


def interrupt_runs(node: Node, grace_s: float) -> list[str]:
    """Interrupt the runs of this node still in their containers after a shutdown's grace
    period of `grace_s` seconds (see shutdown.py); returns their ids.

    Raises:
        ServiceUnavailable: Docker or Redis did not answer.
    """
    from mao_celery.shutdown import interrupt_running_runs

    return interrupt_running_runs(node.docker, node.runs, grace_s)


def repair(node: Node, delete: bool) -> list[InvalidRecord]:
    """The node-local records that cannot be read (run records and indexes, locks, node state;
    see repair.py), deleted when `delete`.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    from mao_celery import repair as records
    from mao_celery.redis_calls import redis_client

    client = redis_client(node.settings.redis_url)
    try:
        if delete:
            return records.delete_invalid(client, node.settings.redis_url, node.runs)
        return records.find_invalid(client, node.settings.redis_url)
    finally:
        client.close()


# ---- schedules -------------------------------------------------------------------------------


def schedule(node: Node, name: str, **options: Any) -> Scheduled:
    """Schedule runs of tool `name` on this node as `options` say (the fields of
    `schedule_spec.ScheduleRequest`), replacing any schedule it had. The options are checked
    before the registry is asked.

    Raises:
        InvalidInput: the options are invalid.
        NotFound: the tool is not registered.
        ServiceUnavailable: etcd or Redis did not answer.
    """
    from mao_celery.schedule_spec import ScheduleRequest, build_spec

    spec = build_spec(ScheduleRequest(**options))
    node.registry.tools.get(name)
    return node.schedules.add(name, spec)


def list_schedules(
    node: Node, after: str | None = None, limit: int | None = None
) -> tuple[list[ScheduleInfo], str | None]:
    """This node's tool schedules, by tool name, invalid entries included, each with its newest
    fire and that fire's run: those after tool `after` (None: from the first), at most `limit`
    (None: all); and the tool to continue after (None: no more).

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    return node.schedules.list_page(node.runs, after, limit)


def pause_schedule(node: Node, name: str, paused: bool) -> ScheduleInfo:
    """Pause tool `name`'s schedule on this node, or resume it (`paused` False: from its next
    fire time; missed fires are not made up).

    Raises:
        NotFound: the tool has no schedule here.
        InvalidState: its entry cannot be read (remove it).
        ServiceUnavailable: Redis did not answer.
    """
    return node.schedules.set_paused(name, paused)


def next_fires(node: Node, name: str, count: int) -> tuple[ScheduleInfo, list[datetime]]:
    """Tool `name`'s schedule and its next `count` fire times (UTC; none while paused).

    Raises:
        NotFound: the tool has no schedule here.
        InvalidState: its entry cannot be read (remove it).
        ServiceUnavailable: Redis did not answer.
    """
    return node.schedules.upcoming(name, count)


def remove_schedule(node: Node, name: str) -> None:
    """Delete tool `name`'s schedule on this node, valid or not; a run under way goes on.

    Raises:
        NotFound: the tool has no schedule here.
        ServiceUnavailable: Redis did not answer.
    """
    node.schedules.remove(name)


# ---- the data plane --------------------------------------------------------------------------


@dataclass(frozen=True)
class DataUpdate:
    """What `update_tool_data` did to a tool's data directory `path`: its HEAD commit (40 hex)
    `before` and `after` (None: no clone, or no commit), whether it was `cloned` now, whether
    its `origin` was pointed to the registered URL (`url_set`), how many `commits` HEAD gained
    and how many files they `added`, `changed` and `deleted`."""

    path: Path
    before: str | None
    after: str | None
    cloned: bool
    url_set: bool
    commits: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0


def update_tool_data(node: Node, name: str, *, set_url: bool = False) -> DataUpdate:
    """Bring tool `name`'s data directory up to date by hand, as a run's prepare step does
    (`dataplane.sync`: clone on first use, else fetch and merge the remote's branch, and the
    node's push branch). With `set_url`, the clone's `origin` is first pointed to the tool's
    registered data repository (it moved: the clone and its history are kept).

    Raises:
        NotFound: the tool is not registered, or its remote lacks its branch.
        InvalidInput: the clone comes from another repository (without `set_url`), the remote's
            branch was rewritten, or the merge failed (both commits named; nothing changed).
        ServiceUnavailable: etcd or the git remote did not answer.
    """
    from mao_celery import dataplane, datasets

    conf = node.settings
    tool = node.registry.tools.get(name)
    dest = datasets.local_path(conf.importdir, tool.name)
    cloned = not dest.is_dir()
    url_set = set_url and not cloned and dataplane.set_origin(dest, tool.data_repo)
    before = None if cloned else datasets.head_commit(dest)
    after = dataplane.sync(tool, conf)
    done = DataUpdate(dest, before, after, cloned, url_set)
    if before is None or after is None or before == after:
        return done
    return _with_changes(done, before, after)


def _with_changes(done: DataUpdate, before: str, after: str) -> DataUpdate:
    """`done` with the commits and files that `after` adds to `before` (host git, hardened)."""
    from mao_celery import datasets, gitcmd
    from mao_celery.exceptions import InvalidInput

    def git(*args: str) -> str:
        found = gitcmd.run([*datasets.Clone.of(done.path).args(), *args])
        if found.status != 0:
            raise InvalidInput(
                f"cannot compare {before[:12]} with {after[:12]} in {done.path}: "
                f"{gitcmd.git_message(found.stderr)}"
            )
        return found.stdout

    commits = int(git("rev-list", "--count", f"{before}..{after}"))
    names = git(
        "diff", "--name-status", "--no-renames", "--no-ext-diff", "--no-textconv", before, after
    )
    kinds = [line[:1] for line in names.splitlines()]
    return replace(
        done,
        commits=commits,
        added=kinds.count("A"),
        changed=len(kinds) - kinds.count("A") - kinds.count("D"),
        deleted=kinds.count("D"),
    )


@dataclass(frozen=True)
class ToolHistory:
    """The metric of a tool over time: its run commits (`dataplane.HistoryPoint`), newest
    first; `cloned` False when this node has no clone of its data yet; the spike rule the tool
    gets on this node (`window` values, `threshold_pct` percent)."""

    tool: str
    points: list[HistoryPoint]
    cloned: bool
    window: int
    threshold_pct: float


def tool_history(node: Node, name: str, limit: int) -> ToolHistory:
    """The runs of tool `name` recorded in its data directory's git history (run commits, other
    nodes' merged ones included), newest first, at most `limit` (`dataplane.history`); none when
    the node has no clone of it yet.

    Raises:
        NotFound: the tool is not registered.
        InvalidInput: git could not read the history.
        ServiceUnavailable: etcd did not answer.
    """
    from mao_celery import dataplane, datasets

    conf = node.settings
    tool = node.registry.tools.get(name)
    dest = datasets.local_path(conf.importdir, tool.name)
    cloned = datasets.Clone.of(dest).git_dir.is_dir()
    return ToolHistory(
        tool=tool.name,
        points=dataplane.history(dest, limit) if cloned else [],
        cloned=cloned,
        window=tool.spike_window or conf.spike_window,
        threshold_pct=tool.spike_threshold_pct or conf.spike_threshold_pct,
    )
