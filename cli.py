"""maoctl: the command line of a MAO node (also `python cli.py`).

Argument handling only: parse, call the service (mao_celery/tools.py and the package), print
(mao_celery/render.py, where every string shown for people is made `printable` and URLs are
redacted). Imports of the package's heavier modules (etcd/gRPC, Docker, Celery, GitPython,
rich, the models) happen inside the commands that need them, so each command pays only for
what it uses (the one exception to "imports at the top", for start-up time).

Exit codes: 0 ok; 1 not found, already exists, already running or invalid input; 2 usage;
3 a service (etcd, Redis, Docker, git remote) is unreachable; 4 a tool run failed (or was
interrupted or cancelled); 5 `tool run --wait-timeout-s` stopped waiting before the run ended;
130 Ctrl-C stopped waiting (the run goes on).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

from mao_celery import exceptions as errors
from mao_celery import render, tools

if TYPE_CHECKING:
    from mao_celery.models import RunReport
    from mao_celery.node import Node

EXIT_CODES: dict[type[errors.MaoError], int] = {
    errors.NotFound: 1,
    errors.AlreadyExists: 1,
    errors.AlreadyRunning: 1,
    errors.Conflict: 1,
    errors.InvalidInput: 1,
    errors.InvalidState: 1,
    errors.ServiceUnavailable: 3,
    errors.RunFailed: 4,
}
EXIT_STILL_RUNNING = 5
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT) stopped a command that waited: 128 + 2, as shells report it."""
ERROR_KINDS: dict[type[errors.MaoError], str] = {
    errors.NotFound: "not_found",
    errors.AlreadyExists: "already_exists",
    errors.AlreadyRunning: "already_running",
    errors.Conflict: "conflict",
    errors.AmbiguousId: "ambiguous",
    errors.InvalidState: "invalid_state",
    errors.InvalidInput: "invalid_input",
    errors.ServiceUnavailable: "unavailable",
    errors.RunFailed: "run_failed",
}
"""The `kind` of an error printed as JSON (`--json`), by class; the first match counts."""
JSON_REQUESTED = "mao.json"


def json_requested() -> bool:
    """Whether the command being run was given --json (its errors are then JSON too)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and bool(ctx.find_root().meta.get(JSON_REQUESTED))


def fail(error: errors.MaoError) -> NoReturn:
    """Print `error` on stderr, as one printable line or, under --json, as the object
    `{"error": {"kind", "message"}}`, and exit with its code."""
    kind = next((k for cls, k in ERROR_KINDS.items() if isinstance(error, cls)), "error")
    render.error(error, kind=kind, as_json=json_requested())
    sys.exit(next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1))


class MaoGroup(click.Group):
    """A click group that turns MAO errors into one-line messages and exit codes, and lists its
    commands with their whole summaries (click would cut them to the terminal's width)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.MaoError as e:
            fail(e)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands, each with its full first sentence (wrapped, never cut with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def current_node() -> Node:
    """The node of this command: its settings, read once, and its clients, each built on first
    use and closed when the command ends.

    Raises:
        InvalidInput: a setting is invalid.
    """
    from mao_celery.node import Node
    from mao_celery.settings import load_settings

    ctx = click.get_current_context()
    if "mao.node" not in ctx.meta:
        ctx.meta["mao.node"] = built = Node(load_settings())
        ctx.find_root().call_on_close(built.close)
    return cast("Node", ctx.meta["mao.node"])


def show_entry(kind: tools.Kind, name: str | None, as_json: bool) -> Any:
    """Print registry entry `name` of `kind` and return it, or print all of them (warning about
    invalid ones) and return None."""
    collection = tools.collection(current_node(), kind)
    if name is None:
        items, invalid = collection.list()
        render.warn_invalid(invalid)
        render.LISTINGS[kind].show(items, as_json, invalid)
        return None
    entry = collection.get(name)
    render.show_detail(entry, as_json)
    return entry


def show_report(report: RunReport, as_json: bool) -> None:
    """Print a run report; exit 4 with the reason on stderr when the run failed or was
    interrupted (a run still under way exits 0)."""
    render.show_report(report, as_json)
    if report.status.terminal and report.status != "succeeded":
        fail(errors.RunFailed(f"run {report.run_id} {report.status}: {report.error}"))


def _remember_json(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
    """Note that --json was given, so that errors are printed as JSON too (`fail`)."""
    if value:
        ctx.find_root().meta[JSON_REQUESTED] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_remember_json,
    help="Print JSON for scripts (errors too, on stderr).",
)


@click.group(cls=MaoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mao-orchestrator", prog_name="maoctl")
def main() -> None:
    """MAO Orchestrator: register, run and schedule data collectors (tools) and datasets."""


# ---- tools -----------------------------------------------------------------------------------


@main.group(cls=MaoGroup)
def tool() -> None:
    """List, register, remove and run tools."""


@tool.command("get")
@click.argument("name", required=False)
@json_option
def tool_get(name: str | None, as_json: bool) -> None:
    """List registered tools, or show every field of tool NAME and the run limits it gets on
    this node."""
    shown = show_entry("tool", name, as_json)
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
    schedule = "its schedule on this node removed too" if unscheduled else "it had no schedule"
    kept = node.settings.importdir / name
    data = f"; its data directory {kept} is kept" if kept.is_dir() else ""
    click.echo(f"tool {name} removed; {schedule}{data}")


UNSETTABLE = {
    "timeout-s": "timeout_s",
    "memory": "memory_bytes",
    "cpus": "cpus",
    "network": "network",
}


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
    """Change tool NAME's image, description, run limits or network.

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
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
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
    name: str, no_wait: bool, wait_timeout_s: float | None, wait_for_worker: bool, as_json: bool
) -> None:
    """Run tool NAME now on this node's workers and print its report.

    When no worker answers a ping (1 s), nothing is queued and it exits 3 at once, unless
    --wait-for-worker (queue and wait) or --no-wait (queue, with a warning) is given.
    Exits 0 when the run succeeded, 4 when it failed (the reason on stderr), 5 when
    --wait-timeout-s passed first. Ctrl-C stops waiting, not the run: it prints the run id and
    how to follow or cancel it, and exits 130.
    """
    node = current_node()
    if not (wait_for_worker or no_wait):
        node.registry.tools.get(name)  # an unknown tool is named as such first (exit 1)
        tools.require_worker(node, warn_only=False, warn=render.note)
    report = tools.start_run(node, name)
    if no_wait:
        if not wait_for_worker:  # queued: say so if no worker will take it yet
            tools.require_worker(node, warn_only=True, warn=render.note)
        click.echo(report.run_id)
        return
    try:
        report = render.follow(report, tools.follow_run(node.runs, report.run_id, wait_timeout_s))
    except KeyboardInterrupt:
        for line in render.interrupted_follow_lines(report.run_id):
            render.note(line)
        sys.exit(EXIT_INTERRUPTED)
    if not report.status.terminal:
        render.note(f"run {report.run_id} is still {report.status}: see `maoctl run show`")
        sys.exit(EXIT_STILL_RUNNING)
    show_report(report, as_json)


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


PERIODS = ("daily", "weekly")
SCHEDULE_COMMANDS = ("add", "list", "remove", "pause", "resume", "next")
SCHEDULE_HELP = """Run tool NAME periodically on this node's workers (needs beat running).

\b
daily / weekly          each day / each week at the current time of day
daily --at 06:30        each day at 06:30 (weekly: on --day, default today)
--cron "0 6 * * 1-5"    a standard cron expression: minute hour day-of-month month
                        day-of-week (names, 7 = Sunday, @hourly/@daily/@weekly; when both day
                        fields are restricted, either one matching fires)

Times are in --tz (an IANA zone, e.g. Europe/Zurich; default UTC), for every form, computed
on each tick: 06:00 stays 06:00 local across daylight-saving changes. A time skipped by the
change fires once, at the end of the gap; a repeated time fires once (hour field `*`: both).

A tool has at most one schedule: scheduling it again replaces the old one. A fire whose run
cannot start (etcd or Redis away) is retried for about 30 s, then recorded as a failed run.
"""


def _period(ctx: click.Context, _: click.Parameter, value: str | None) -> str | None:
    """Check PERIOD; `tool schedule remove NAME` is pointed to `schedule remove NAME`."""
    if value is None or value in PERIODS:
        return value
    name = ctx.params.get("name")
    if name in SCHEDULE_COMMANDS:
        raise click.UsageError(f"to {name} a schedule, use `maoctl schedule {name} {value}`")
    raise click.BadParameter(f"{value!r} is not one of daily, weekly")


def schedule_options(command: Callable[..., None]) -> Callable[..., None]:
    """The arguments and options of `schedule add` and `tool schedule`."""
    options = (
        click.argument("name"),
        click.argument("period", required=False, callback=_period, metavar="[daily|weekly]"),
        click.option("--at", metavar="HH:MM", help="With daily/weekly: the time of day."),
        click.option("--day", metavar="mon..sun", help="With weekly: the day (default today)."),
        click.option("--tz", metavar="Area/City", help="Time zone of the schedule (default UTC)."),
        click.option("--cron", metavar='"m h dom mon dow"', help="A cron expression."),
        click.option("--every-s", type=float, hidden=True, help="Every SECONDS (for tests)."),
        json_option,
    )
    for option in reversed(options):
        command = option(command)
    return command


def add_schedule(name: str, as_json: bool, options: dict[str, Any]) -> None:
    """Schedule tool `name` as `options` say; print what was done."""
    done = tools.schedule(current_node(), name, **options)
    if as_json:
        render.print_json(done)
    else:
        render.echo_lines(render.scheduled_lines(done))


@tool.command(
    "schedule",
    help=SCHEDULE_HELP + "\nThe same as `maoctl schedule add`.",
    short_help="Schedule tool NAME (as `schedule add`).",
)
@schedule_options
def tool_schedule(name: str, as_json: bool, **options: Any) -> None:
    """`maoctl schedule add`, as the original MAO named it."""
    add_schedule(name, as_json, options)


# ---- runs and notifications ------------------------------------------------------------------


@main.group(cls=MaoGroup)
def run() -> None:
    """Show and forget runs of this node."""


@run.command("show")
@click.argument("run_id")
@json_option
def run_show(run_id: str, as_json: bool) -> None:
    """Show the report of run RUN_ID, or of the one run whose id starts with it (exit 4 if it
    failed or was interrupted)."""
    report = tools.get_run(current_node(), run_id)
    if not report.status.terminal:
        render.note(f"run {report.run_id} is {report.status}")
    show_report(report, as_json)


@run.command("forget")
@click.argument("run_id")
def run_forget(run_id: str) -> None:
    """Remove run RUN_ID's record from this node, readable or not, and free the tool lock it
    holds (a run that has not ended is refused: exit 1). A unique prefix of the id will do."""
    click.echo(f"run {tools.forget_run(current_node(), run_id)} forgotten")


@run.command("cancel")
@click.argument("run_id")
@json_option
def run_cancel(run_id: str, as_json: bool) -> None:
    """Cancel run RUN_ID (a unique prefix of the id will do): stop its container (SIGTERM, then
    SIGKILL after 10 s), mark it cancelled and free its tool. A queued run never starts.

    Idempotent: a run that has already ended is left as it is (exit 0, and says so). Exits 1
    for an unknown run, 3 when Redis or Docker does not answer.
    """
    done = tools.cancel_run(current_node(), run_id, by=_who())
    render.show_cancelled(done, as_json)


def _who() -> str:
    """Who cancels, as recorded in the run: `maoctl (user@host)`."""
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name nor passwd entry for this uid
        user = f"uid {os.getuid()}"
    return f"maoctl ({user}@{socket.gethostname()})"


@run.command("logs")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Stream the output of a run under way.")
@click.option(
    "--tail",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only the last N lines (then, with --follow, what comes).",
)
def run_logs(run_id: str, follow: bool, tail: int | None) -> None:
    """Print run RUN_ID's container output, stdout and stderr interleaved (a unique prefix of
    the id will do), kept after the container is gone: the last 1 MiB of each run, for as
    long as the run is in the history. --follow streams a run under way until it ends."""
    node = current_node()
    try:
        render.show_output(tools.run_output(node, run_id, follow=follow), tail)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


@main.group(cls=MaoGroup)
def notifications() -> None:
    """Spike notifications of the federation."""


@notifications.command("list")
@click.option("--tool", "tool_name", help="Only the notifications of this tool.")
@json_option
def notifications_list(tool_name: str | None, as_json: bool) -> None:
    """List spike notifications, oldest first."""
    found, invalid, _ = current_node().registry.notifications(tool=tool_name)
    render.warn_invalid(invalid)
    render.show_notifications(found, as_json, invalid)


# ---- datasets --------------------------------------------------------------------------------


@main.group(cls=MaoGroup)
def dataset() -> None:
    """List, register, remove and clone datasets."""


@dataset.command("get")
@click.argument("name", required=False)
@json_option
def dataset_get(name: str | None, as_json: bool) -> None:
    """List registered datasets, or show every field of dataset NAME."""
    show_entry("dataset", name, as_json)


@dataset.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--description", default="", help="What the dataset holds.")
@click.option("--branch", metavar="NAME", help="Branch to clone (default: the remote's HEAD).")
def dataset_add(name: str, url: str, description: str, branch: str | None) -> None:
    """Register dataset NAME, a git repository at URL."""
    tools.register(
        current_node(), "dataset", name=name, url=url, description=description, branch=branch
    )
    click.echo(f"dataset {name} registered")


@dataset.command("remove")
@click.argument("name")
def dataset_remove(name: str) -> None:
    """Remove dataset NAME from the registry (a local clone is kept)."""
    tools.remove(current_node(), "dataset", name)
    click.echo(f"dataset {name} removed")


@dataset.command("clone")
@click.argument("name")
@click.option("--update", is_flag=True, help="Fast-forward an existing clone instead.")
def dataset_clone(name: str, update: bool) -> None:
    """Clone dataset NAME into importdir/NAME (or fast-forward it with --update)."""
    node = current_node()
    dest, head = tools.clone_dataset(node, name, update=update, before_clone=render.cloning)
    if head is not None:
        click.echo(f"dataset {name} updated to {head[:12]} in {dest}")
    else:
        click.echo(f"dataset {name} cloned into {dest}")


@dataset.command("list-local")
@json_option
def dataset_list_local(as_json: bool) -> None:
    """List the data directories under importdir (from the file system)."""
    from mao_celery import datasets

    render.show_local_datasets(datasets.list_local(current_node().settings.importdir), as_json)


# ---- schedules -------------------------------------------------------------------------------


@main.group("schedule", cls=MaoGroup)
def schedule_group() -> None:
    """Add, list, pause, resume and remove the tool schedules of this node."""


@schedule_group.command("add", help=SCHEDULE_HELP, short_help="Schedule tool NAME.")
@schedule_options
def schedule_add(name: str, as_json: bool, **options: Any) -> None:
    """Schedule tool NAME (see SCHEDULE_HELP)."""
    add_schedule(name, as_json, options)


@schedule_group.command("list")
@json_option
def schedule_list(as_json: bool) -> None:
    """List this node's tool schedules: state, next run (UTC and local), last fire, its run
    and that run's result.

    An entry that cannot be read is listed as invalid with its key (and a warning on stderr);
    `schedule remove NAME` removes it.
    """
    infos = tools.list_schedules(current_node())
    render.warn_invalid_schedules(infos)
    render.SCHEDULES.show(infos, as_json, render.schedule_warnings(infos))


@schedule_group.command("next")
@click.argument("name")
@click.option("--count", type=click.IntRange(1, 1000), default=5, show_default=True)
@json_option
def schedule_next(name: str, count: int, as_json: bool) -> None:
    """Show the next COUNT fire times of tool NAME's schedule, in UTC and in its zone (none
    while it is paused)."""
    info, fires = tools.next_fires(current_node(), name, count)
    render.show_next_fires(info, fires, as_json)


@schedule_group.command("pause")
@click.argument("name")
def schedule_pause(name: str) -> None:
    """Pause tool NAME's schedule: it fires no more until resumed (a run under way goes on)."""
    tools.pause_schedule(current_node(), name, paused=True)
    click.echo(f"schedule of tool {name} paused")


@schedule_group.command("resume")
@click.argument("name")
def schedule_resume(name: str) -> None:
    """Resume tool NAME's schedule from its next fire time (fires missed while paused are not
    made up)."""
    info = tools.pause_schedule(current_node(), name, paused=False)
    click.echo(f"schedule of tool {name} resumed; next run {info.next_run_at:{render.TIME}} UTC")


@schedule_group.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Remove tool NAME's schedule, valid or not (a run under way goes on)."""
    tools.remove_schedule(current_node(), name)
    click.echo(f"schedule of tool {name} removed")


# ---- the node --------------------------------------------------------------------------------


@main.command()
@json_option
def members(as_json: bool) -> None:
    """List the live members of the federation (nodes whose heartbeat lease has not expired)."""
    found, invalid = current_node().registry.members()
    render.warn_invalid(invalid)
    render.MEMBERS.show(found, as_json, invalid)


@main.group("node", cls=MaoGroup)
def node_group() -> None:
    """Operate this node's own processes."""


@node_group.command("interrupt-runs")
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    required=True,
    help="The grace period that ran out, in seconds (quoted in the runs' error).",
)
def node_interrupt_runs(grace_s: float) -> None:
    """Interrupt the runs of this node still in their containers (worker.sh, at the end of a
    shutdown's grace period): mark them interrupted, then stop their containers.

    Exits 3 when Docker or Redis does not answer.
    """
    from mao_celery.shutdown import interrupt_running_runs

    node = current_node()
    click.echo(render.interrupted_line(interrupt_running_runs(node.docker, node.runs, grace_s)))


@main.command()
@click.option("--yes", is_flag=True, help="Delete the invalid records found.")
@json_option
def repair(yes: bool, as_json: bool) -> None:
    """List this node's records in Redis that cannot be read (run records and indexes, tool
    locks, node state); with --yes, delete them. Schedules are not checked here.
    """
    render.show_repair(tools.repair(current_node(), delete=yes), yes, as_json)


@main.command("config")
@click.option(
    "--effective",
    is_flag=True,
    help="Also show the settings each worker published when it started, next to the local ones.",
)
@json_option
def config_show(effective: bool, as_json: bool) -> None:
    """Show the settings in force: MAO_* variables, then MAO_CONFIG's file, then defaults,
    with derived values filled in (e.g. the broker's visibility timeout).

    With --effective, the settings each worker runs with are shown next to these (workers
    publish theirs in Redis when they start; one not answering a ping is marked stale).
    Exits 1 naming the first invalid setting. Passwords in URLs are masked.
    """
    node = current_node()
    if not effective:
        render.show_settings(node.settings, as_json)
        return
    published, answering, invalid = tools.worker_settings(node)
    render.warn_records(invalid)
    render.show_effective_settings(node.settings, published, answering, as_json)


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Check this node: etcd (a linearizable read), Redis, the Docker daemon, importdir, its
    workers (ping and inspect: how many, concurrency, active runs) and its beat (the RedBeat
    lock's holder and its last tick).

    Exits 3 when any of them is not usable or missing, 1 when that is because of a setting.
    """
    from mao_celery.health import check_all

    node = current_node()
    checks = check_all(node.settings, node.app)
    render.show_checks(checks, as_json)
    if any(check.invalid_setting for check in checks):
        sys.exit(EXIT_CODES[errors.InvalidInput])
    if not all(check.ok for check in checks):
        sys.exit(EXIT_CODES[errors.ServiceUnavailable])


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print maoctl's shell completion script for SHELL (click's own completion).

    \b
    bash  eval "$(maoctl completion bash)"     in ~/.bashrc
    zsh   eval "$(maoctl completion zsh)"      in ~/.zshrc
    fish  maoctl completion fish > ~/.config/fish/completions/maoctl.fish
    """

    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None  # click knows the three shells of the choice
    click.echo(completion_class(main, {}, "maoctl", "_MAOCTL_COMPLETE").source())


if __name__ == "__main__":
    main(prog_name=Path(sys.argv[0]).stem if sys.argv[0].endswith("maoctl") else "cli.py")
