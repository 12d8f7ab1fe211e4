"""`maoctl run ...`: show, follow the output of, cancel and forget runs of this node."""

from __future__ import annotations

import sys

import click

from mao_celery import render, tools
from mao_celery.commands.common import (
    EXIT_INTERRUPTED,
    MaoGroup,
    current_node,
    json_option,
    show_report,
)


@click.group("run", cls=MaoGroup)
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
    done = tools.cancel_run(current_node(), run_id, by=tools.caller())
    render.show_cancelled(done, as_json)


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
