"""`maoctl schedule ...`: this node's tool schedules; also the arguments and options of a
schedule request, which `maoctl tool schedule` shares (`schedule_options`, `add_schedule`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mao_celery import render, tools
from mao_celery.commands.common import (
    MaoGroup,
    current_node,
    json_option,
    page_size,
    paging_options,
)

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


@click.group("schedule", cls=MaoGroup)
def schedule_group() -> None:
    """Add, list, pause, resume and remove the tool schedules of this node."""


@schedule_group.command("add", help=SCHEDULE_HELP, short_help="Schedule tool NAME.")
@schedule_options
def schedule_add(name: str, as_json: bool, **options: Any) -> None:
    """Schedule tool NAME (see SCHEDULE_HELP)."""
    add_schedule(name, as_json, options)


@schedule_group.command("list")
@paging_options
@json_option
def schedule_list(as_json: bool, limit: int | None, after: str | None) -> None:
    """List this node's tool schedules by tool name, a page at a time (see --limit, --after):
    state, next run (UTC and local), last fire, its run and that run's result.

    An entry that cannot be read is listed as invalid with its key (and a warning on stderr);
    `schedule remove NAME` removes it.
    """
    size = page_size(limit, as_json)
    infos, next_after = tools.list_schedules(current_node(), after, size)
    render.warn_invalid_schedules(infos)
    render.show_schedules(infos, next_after, as_json, limit)


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
