"""maoctl: the command line of a MAO node (also `python cli.py`).

Argument handling only: parse, call the service (mao_celery/tools.py and the package), print
(mao_celery/render.py, where every string shown for people is made `printable` and URLs are
redacted). Imports of the package's heavier modules (etcd/gRPC, Docker, Celery, GitPython,
rich, the models) happen inside the commands that need them, so each command pays only for
what it uses (the one exception to "imports at the top", for start-up time).

Exit codes: 0 ok; 1 not found, already exists, already running or invalid input; 2 usage;
3 a service (etcd, Redis, Docker, git remote) is unreachable; 4 a tool run failed;
5 `tool run --wait-timeout-s` stopped waiting before the run ended.
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
    errors.InvalidInput: 1,
    errors.InvalidState: 1,
    errors.ServiceUnavailable: 3,
    errors.RunFailed: 4,
}
EXIT_STILL_RUNNING = 5


def fail(error: errors.MaoError) -> NoReturn:
    """Print `error` as one printable line on stderr and exit with its code."""
    render.error(error)
    sys.exit(next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1))


class MaoGroup(click.Group):
    """A click group that turns MAO errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.MaoError as e:
            fail(e)


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


def show_entry(kind: tools.Kind, name: str | None, as_json: bool) -> None:
    """Print registry entry `name` of `kind`, or all of them (warning about invalid ones)."""
    collection = tools.collection(current_node(), kind)
    if name is None:
        items, invalid = collection.list()
        render.warn_invalid(invalid)
        render.LISTINGS[kind].show(items, as_json)
    elif as_json:
        render.print_json(collection.get(name))
    else:
        render.LISTINGS[kind].show([collection.get(name)], as_json)


def show_report(report: RunReport, as_json: bool) -> None:
    """Print a run report; exit 4 with the reason on stderr when the run failed or was
    interrupted (a run still under way exits 0)."""
    render.show_report(report, as_json)
    if report.status.terminal and report.status != "succeeded":
        fail(errors.RunFailed(f"run {report.run_id} {report.status}: {report.error}"))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


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
    """List registered tools, or show tool NAME."""
    show_entry("tool", name, as_json)


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
def tool_add(name: str, writable_rootfs: bool, **fields: Any) -> None:
    """Register tool NAME: its Docker IMAGE runs against a clone of DATA_REPO.

    CODE_REPO is where its source lives; ARTEFACT is the kind of artefact it targets. The tool
    runs as an unprivileged user, without network and with a read-only root file system unless
    --network or --writable-rootfs say otherwise.
    """
    node = current_node()
    tools.register(node, "tool", name=name, read_only_rootfs=not writable_rootfs, **fields)
    click.echo(f"tool {name} registered")


@tool.command("remove")
@click.argument("name")
def tool_remove(name: str) -> None:
    """Remove tool NAME from the registry and its schedule on this node, the schedule first
    (its local data directory is kept)."""
    if tools.remove(current_node(), "tool", name):
        click.echo(f"schedule of tool {name} removed")
    click.echo(f"tool {name} removed")


@tool.command("run")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
@click.option(
    "--wait-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds (the run goes on); exit 5.",
)
@json_option
def tool_run(name: str, no_wait: bool, wait_timeout_s: float | None, as_json: bool) -> None:
    """Run tool NAME now on this node's workers and print its report.

    Exits 0 when the run succeeded, 4 when it failed (the reason on stderr), 5 when
    --wait-timeout-s passed first.
    """
    node = current_node()
    report = tools.start_run(node, name)
    if no_wait:
        click.echo(report.run_id)
        return
    report = render.follow(report, tools.follow_run(node.runs, report.run_id, wait_timeout_s))
    if not report.status.terminal:
        render.note(f"run {report.run_id} is still {report.status}: see `maoctl run show`")
        sys.exit(EXIT_STILL_RUNNING)
    show_report(report, as_json)


@tool.command("runs")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def tool_runs(name: str, limit: int, as_json: bool) -> None:
    """List the recent runs of tool NAME on this node, newest first."""
    reports, invalid = tools.recent_runs(current_node(), name, limit)
    render.warn_records(invalid)
    render.show_runs(name, reports, as_json)


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
    """Show the report of run RUN_ID (exit 4 if it failed or was interrupted)."""
    report = tools.get_run(current_node(), run_id)
    if not report.status.terminal:
        render.note(f"run {run_id} is {report.status}")
    show_report(report, as_json)


@run.command("forget")
@click.argument("run_id")
def run_forget(run_id: str) -> None:
    """Remove run RUN_ID's record from this node, readable or not, and free the tool lock it
    holds (a run that has not ended is refused: exit 1)."""
    tools.forget_run(current_node(), run_id)
    click.echo(f"run {run_id} forgotten")


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
    render.show_notifications(found, as_json)


# ---- datasets --------------------------------------------------------------------------------


@main.group(cls=MaoGroup)
def dataset() -> None:
    """List, register, remove and clone datasets."""


@dataset.command("get")
@click.argument("name", required=False)
@json_option
def dataset_get(name: str | None, as_json: bool) -> None:
    """List registered datasets, or show dataset NAME."""
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
    render.SCHEDULES.show(infos, as_json)


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
    render.MEMBERS.show(found, as_json)


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
@json_option
def config_show(as_json: bool) -> None:
    """Show the settings in force: MAO_* variables, then MAO_CONFIG's file, then defaults.

    Exits 1 naming the first invalid setting. Passwords in URLs are masked.
    """
    render.show_settings(current_node().settings, as_json)


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Check this node's dependencies: etcd, Redis, the Docker daemon, importdir.

    Exits 3 when any of them is not usable, 1 when that is because of a setting.
    """
    from mao_celery.health import check_all

    checks = check_all(current_node().settings)
    render.show_checks(checks, as_json)
    if any(check.invalid_setting for check in checks):
        sys.exit(EXIT_CODES[errors.InvalidInput])
    if not all(check.ok for check in checks):
        sys.exit(EXIT_CODES[errors.ServiceUnavailable])


if __name__ == "__main__":
    main(prog_name=Path(sys.argv[0]).stem if sys.argv[0].endswith("maoctl") else "cli.py")
