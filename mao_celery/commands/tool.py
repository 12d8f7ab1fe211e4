"""`maoctl tool ...`: list, register, update, remove, run and schedule tools."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mao_celery import render, tools
from mao_celery.commands.common import (
    EXIT_INTERRUPTED,
    EXIT_STILL_RUNNING,
    MaoGroup,
    current_node,
    json_option,
    page_size,
    paging_options,
    show_entry,
    show_error,
    show_report,
)
from mao_celery.commands.schedule import SCHEDULE_HELP, add_schedule, schedule_options
from mao_celery.exceptions import MaoError

if TYPE_CHECKING:
    from mao_celery.models import RunReport
    from mao_celery.node import Node


@click.group("tool", cls=MaoGroup)
def tool() -> None:
    """List, register, remove and run tools."""


def show_listing(
    kind: tools.Kind, name: str | None, as_json: bool, limit: int | None, after: str | None
) -> Any:
    """Print registry entry `name` of `kind` and return it (one key read), or, `name` None, one
    page of the entries (`limit` of them after `after`; see `paging_options`) and return None.

    Raises:
        click.UsageError: --limit or --after with a NAME.
    """
    if name is not None:
        if limit is not None or after is not None:
            raise click.UsageError("--limit and --after page a listing: give them without NAME")
        return show_entry(kind, name, as_json)
    size = page_size(limit, as_json)
    page = tools.collection(current_node(), kind).page(start_after=after, limit=size)
    render.warn_invalid(page.invalid)
    render.show_page(kind, page, as_json, limit)
    return None


@tool.command("get")
@click.argument("name", required=False)
@paging_options
@json_option
def tool_get(name: str | None, as_json: bool, limit: int | None, after: str | None) -> None:
    """List registered tools by name, a page at a time (see --limit, --after), or show every
    field of tool NAME and the run limits it gets on this node."""
    shown = show_listing("tool", name, as_json, limit, after)
    if shown is not None and not as_json:
        render.echo_lines(render.tool_limit_lines(shown, current_node().settings))


def _memory(_: click.Context, __: click.Parameter, value: str | None) -> int | None:
    """Parse --memory (e.g. 512m, 2g, a byte count) into bytes."""
    if value is None:
        return None
    from mao_celery.models import parse_memory

    try:
        return parse_memory(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


LIMIT_OPTIONS = (
    click.option(
        "--timeout-s",
        type=click.FloatRange(min=0, min_open=True),
        help="Kill the tool's container after this many seconds (node default MAO_RUN_TIMEOUT_S, "
        "at most MAO_RUN_TIMEOUT_MAX_S).",
    ),
    click.option(
        "--memory",
        "memory_bytes",
        metavar="SIZE",
        callback=_memory,
        help="Memory limit of the container, e.g. 512m or 2g (node default MAO_RUN_MEMORY_BYTES, "
        "at most MAO_RUN_MEMORY_MAX_BYTES).",
    ),
    click.option(
        "--cpus",
        type=click.FloatRange(min=0.01),
        help="CPUs the container may use, e.g. 1.5 (node default MAO_RUN_CPUS, at most "
        "MAO_RUN_CPUS_MAX).",
    ),
)


def limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """The run-limit options of `tool add` and `tool update`."""
    for option in reversed(LIMIT_OPTIONS):
        command = option(command)
    return command


def push_options(default: bool | None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The push options of `tool add` (`default` False) and `tool update` (None: unchanged)."""
    push = click.option(
        "--push/--no-push",
        default=default,
        help="Push each run's commit to DATA_REPO (never forced), or stop pushing; a node's "
        "MAO_GIT_PUSH pushes every tool's.",
    )
    branch = click.option(
        "--push-branch",
        metavar="BRANCH",
        help="Branch of DATA_REPO the run commits are pushed to (default: mao/<node id>).",
    )
    return lambda command: push(branch(command))


@tool.command("add")
@click.argument("name")
@click.argument("author")
@click.argument("image")
@click.argument("data_repo")
@click.argument("code_repo")
@click.argument("artefact")
@click.option("--description", default="", help="What the tool collects.")
@click.option(
    "--spike-window",
    type=click.IntRange(1, 1000),
    help="Values averaged into the baseline (node default: 2).",
)
@click.option(
    "--spike-threshold",
    "spike_threshold_pct",
    type=click.FloatRange(min=0, min_open=True),
    help="Spike when |gain| exceeds this many percent (node default: 20).",
)
@click.option(
    "--network",
    metavar="NAME",
    help="Docker network the tool needs, e.g. bridge; default: the node's MAO_TOOL_NETWORK "
    "(none); nodes run it only if they allow it.",
)
@click.option(
    "--branch",
    metavar="NAME",
    help="Branch of DATA_REPO to clone (default: the repository's HEAD).",
)
@click.option(
    "--writable-rootfs",
    is_flag=True,
    help="Let the tool write outside its data directory and /tmp (root file system writable).",
)
@limit_options
@push_options(default=False)
def tool_add(name: str, writable_rootfs: bool, **fields: Any) -> None:
    """Register tool NAME: its Docker IMAGE runs against a clone of DATA_REPO.

    CODE_REPO is where its source lives; ARTEFACT is the kind of artefact it targets. The tool
    runs as an unprivileged user, without network and with a read-only root file system unless
    --network or --writable-rootfs say otherwise, within the node's run limits unless
    --timeout-s, --memory or --cpus ask for others (each at most the node's maximum: exit 1).
    """
    node = current_node()
    tools.register(node, "tool", name=name, read_only_rootfs=not writable_rootfs, **fields)
    click.echo(f"tool {name} registered")


@tool.command("remove")
@click.argument("name")
def tool_remove(name: str) -> None:
    """Remove tool NAME from the registry and its schedule on this node, the schedule first
    (its local data directory is kept)."""
    node = current_node()
    unscheduled = tools.remove(node, "tool", name)
    click.echo(render.removed_tool_line(name, unscheduled, tools.data_directory(node, name)))


UNSETTABLE = {
    "timeout-s": "timeout_s",
    "memory": "memory_bytes",
    "cpus": "cpus",
    "network": "network",
    "push-branch": "push_branch",
}
"""The options `tool update --unset` gives back to the node's default, and their fields."""


@tool.command("update")
@click.argument("name")
@click.option("--image", help="Another Docker image (e.g. a new tag).")
@click.option("--description", help="Another description.")
@limit_options
@click.option("--network", metavar="NAME", help="Docker network the tool needs, e.g. bridge.")
@click.option(
    "--writable-rootfs/--read-only-rootfs",
    "writable_rootfs",
    default=None,
    help="Make the tool's root file system writable, or read-only again.",
)
@push_options(default=None)
@click.option(
    "--unset",
    multiple=True,
    type=click.Choice(sorted(UNSETTABLE)),
    help="Give a setting back to the node's default (repeatable).",
)
@json_option
def tool_update(
    name: str, writable_rootfs: bool | None, unset: tuple[str, ...], as_json: bool, **given: Any
) -> None:
    """Change tool NAME's image, description, run limits, network or pushes.

    The entry is written with a compare-and-swap on its etcd revision: if someone else changed
    it since it was read, nothing is written and the update exits 1 (run it again). Its schedule
    and data directory stay. Limits above this node's maxima are refused (exit 1).
    """
    changes = {field: value for field, value in given.items() if value is not None}
    if writable_rootfs is not None:
        changes["read_only_rootfs"] = not writable_rootfs
    for option in unset:
        if UNSETTABLE[option] in changes:
            raise click.UsageError(f"--{option} and --unset {option} contradict each other")
        changes[UNSETTABLE[option]] = None
    updated = tools.update_tool(current_node(), name, changes)
    if as_json:
        render.print_json(updated)
    else:
        click.echo(f"tool {name} updated: {', '.join(sorted(changes))}")


@tool.command("run")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Print the run id (one per NAME) and return at once.")
@click.option(
    "--wait-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds (the run goes on); exit 5.",
)
@click.option(
    "--wait-for-worker",
    is_flag=True,
    help="Queue the run even when no worker answers, and wait for one to take it.",
)
@json_option
def tool_run(
    names: tuple[str, ...],
    no_wait: bool,
    wait_timeout_s: float | None,
    wait_for_worker: bool,
    as_json: bool,
) -> None:
    """Run tool NAME now on this node's workers and print its report.

    When no worker answers a ping (1 s), nothing is queued and it exits 3 at once, unless
    --wait-for-worker (queue and wait) or --no-wait (queue, with a warning) is given.
    Exits 0 when the run succeeded, 4 when it failed (the reason on stderr), 5 when
    --wait-timeout-s passed first. Ctrl-C stops waiting, not the run: it prints the run id and
    how to follow or cancel it, and exits 130.

    Several NAMEs (with --no-wait) queue one run of each, in order, and print their run ids,
    one per line; an unknown tool queues none (exit 1), a tool already running is named on
    stderr and the others are queued (exit 1).
    """
    if len(names) > 1 and not no_wait:
        raise click.UsageError("several tools are run with --no-wait (one run id per line)")
    if len(set(names)) < len(names):
        raise click.UsageError("a tool is named twice: one run of a tool at a time")
    node = current_node()
    no_worker: tools.IfNoWorker = "wait" if wait_for_worker else "warn" if no_wait else "refuse"
    if no_wait:
        _queue(node, names, no_worker)
        return
    report = tools.start_run(node, names[0], no_worker=no_worker, warn=render.note)
    report = _follow(node, report, wait_timeout_s)
    if not report.status.terminal:
        render.note(f"run {report.run_id} is still {report.status}: see `maoctl run show`")
        sys.exit(EXIT_STILL_RUNNING)
    show_report(report, as_json)


def _queue(node: Node, names: tuple[str, ...], no_worker: tools.IfNoWorker) -> None:
    """Queue a run of each tool of `names` and print their run ids; the tools that could not
    be queued are named on stderr and the command exits with the first one's code."""
    codes = []
    for outcome in tools.start_runs(node, names, no_worker=no_worker, warn=render.note):
        if isinstance(outcome, MaoError):
            codes.append(show_error(outcome))
        else:
            click.echo(outcome.run_id)
    if codes:
        sys.exit(codes[0])


def _follow(node: Node, report: RunReport, timeout_s: float | None) -> RunReport:
    """Show the stages of run `report` until it ends or `timeout_s` passes; return its newest
    report. Ctrl-C says how to follow or cancel the run (it goes on) and exits 130."""
    try:
        return render.follow(report, tools.follow_run(node.runs, report.run_id, timeout_s))
    except KeyboardInterrupt:
        for line in render.interrupted_follow_lines(report.run_id):
            render.note(line)
        sys.exit(EXIT_INTERRUPTED)


@tool.command("runs")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def tool_runs(name: str, limit: int, as_json: bool) -> None:
    """List the recent runs of tool NAME on this node, newest first (exit 1 for a tool neither
    registered nor run here)."""
    reports, invalid = tools.recent_runs(current_node(), name, limit)
    render.warn_records(invalid)
    render.show_runs(name, reports, as_json, invalid)


@tool.command(
    "schedule",
    help=SCHEDULE_HELP + "\nThe same as `maoctl schedule add`.",
    short_help="Schedule tool NAME (as `schedule add`).",
)
@schedule_options
def tool_schedule(name: str, as_json: bool, **options: Any) -> None:
    """`maoctl schedule add`, as the original MAO named it."""
    add_schedule(name, as_json, options)


@tool.command("update-data")
@click.argument("name")
@click.option(
    "--set-url",
    is_flag=True,
    help="Point an existing clone at the tool's registered DATA_REPO first (the repository "
    "moved; the clone and its history are kept).",
)
@json_option
def tool_update_data(name: str, set_url: bool, as_json: bool) -> None:
    """Bring tool NAME's data directory up to date now, as a run does before it starts: clone
    it on first use, else fetch and merge its data repository's branch (and the node's push
    branch), and print the new head and what changed.

    A rewritten (force-pushed) remote or a merge that cannot be made changes nothing and exits
    1 naming both commits; exits 3 when etcd or the data repository does not answer.
    """
    render.show_data_update(
        name, tools.update_tool_data(current_node(), name, set_url=set_url), as_json
    )


@tool.command("history")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--plot", is_flag=True, help="Draw the values in the terminal too.")
@click.option(
    "--png",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Write a chart with the spike threshold band to FILE (needs the charts extra: "
    "matplotlib).",
)
@json_option
def tool_history(name: str, limit: int, plot: bool, png: Path | None, as_json: bool) -> None:
    """Show tool NAME's control values over time, newest first: the run commits of its data
    history (every node's that reached this clone), with their dates, runs, nodes and spikes.

    No clone or no run commit yet: an empty series and a note (exit 0).
    """
    if plot and as_json:
        raise click.UsageError("--plot draws for people and --json prints for scripts: pick one")
    history = tools.tool_history(current_node(), name, limit)
    render.show_history(history, as_json)
    if not history.points or not (plot or png):
        return
    chart = render.Chart.of(history)
    if png is not None:
        render.write_history_png(chart, png)
        render.note(f"chart of {history.tool} written to {png}")
    if plot:
        import shutil  # here, not at the top: only --plot needs it (start-up time)

        width = render.table_width() or shutil.get_terminal_size().columns
        click.echo(render.plot_history(chart, width))
