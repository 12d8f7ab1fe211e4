"""What maoctl does with tools, datasets and runs, for any caller holding a `Node`: register
and remove registry entries (a tool's schedule goes with it), clone datasets, start a run and
follow it to its end, query this node's runs, schedule tools.

Printing is not done here (render.py): functions return values or yield reports. The modules
they use are imported on first use, as in node.py (maoctl's start-up time: `maoctl --help`
imports this module but neither pydantic's models nor Celery, RedBeat or GitPython).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mao_celery.exceptions import NotFound

if TYPE_CHECKING:
    from mao_celery.models import Dataset, RunReport, Tool
    from mao_celery.node import Node
    from mao_celery.records import InvalidRecord
    from mao_celery.registry import Collection
    from mao_celery.runs import RunStore
    from mao_celery.schedules import Scheduled, ScheduleInfo

Kind = Literal["tool", "dataset"]
WAIT_STEP_S = 1.0
"""How long `follow_run` waits for a change of status before it reports the run again."""


def collection(node: Node, kind: Kind) -> Collection[Any]:
    """The registry collection of `kind` ("tool" -> `registry.tools`)."""
    return node.registry.tools if kind == "tool" else node.registry.datasets


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
    collection(node, kind).add(item)
    return item


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
    from mao_celery import datasets

    conf = node.settings
    dest = datasets.local_path(conf.importdir, name)
    item = node.registry.datasets.get(name)
    credentials, limits = conf.git_credentials_file, datasets.GitLimits.from_settings(conf)
    if update:
        return dest, datasets.update(dest, url=item.url, credentials=credentials, limits=limits)
    before_clone(item.url, dest)
    datasets.clone(item.url, dest, credentials=credentials, branch=item.branch, limits=limits)
    return dest, None


# ---- runs ------------------------------------------------------------------------------------


def start_run(node: Node, name: str) -> RunReport:
    """Queue a run of tool `name` on this node's workers; returns its report (queued).

    Raises:
        NotFound: the tool is not registered.
        AlreadyRunning: a run of the tool is under way on this node.
        ServiceUnavailable: etcd, Redis or the broker did not answer.
    """
    from mao_celery import enqueue

    conf = node.settings
    return enqueue.start_run(node.app, name, conf=conf, registry=node.registry, runs=node.runs)


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
        report = runs.wait(run_id, _other_status(report), timeout_s=WAIT_STEP_S, poll_s=0.05)
        yield report


def _other_status(report: RunReport) -> Callable[[RunReport], bool]:
    """Whether a newer read of `report`'s run has another status."""
    return lambda newer: newer.status != report.status


def recent_runs(node: Node, name: str, limit: int) -> tuple[list[RunReport], list[InvalidRecord]]:
    """The `limit` newest runs of tool `name` on this node, newest first, and the records among
    them that cannot be read (left out).

    Raises:
        InvalidState: the tool's run index cannot be read.
        ServiceUnavailable: Redis did not answer.
    """
    return node.runs.recent_checked(name, limit)


def get_run(node: Node, run_id: str) -> RunReport:
    """The report of run `run_id` on this node.

    Raises:
        NotFound: no such run.
        ServiceUnavailable: Redis did not answer.
    """
    return node.runs.get(run_id)


def forget_run(node: Node, run_id: str) -> list[str]:
    """Remove run `run_id`'s record (readable or not) from this node and free the tool lock it
    holds; returns the keys deleted or changed.

    Raises:
        NotFound: no such run.
        InvalidInput: the run has not ended.
        ServiceUnavailable: Redis did not answer.
    """
    return node.runs.forget(run_id)


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


def list_schedules(node: Node) -> list[ScheduleInfo]:
    """This node's tool schedules, by tool name, invalid entries included, each with its newest
    fire and that fire's run.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    return node.schedules.list_all(node.runs)


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
