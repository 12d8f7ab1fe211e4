"""`maoctl node ...` and the top-level commands about this node and its federation: members,
status, config, repair."""

from __future__ import annotations

import sys

import click

from mao_celery import exceptions as errors
from mao_celery import render, tools
from mao_celery.commands.common import EXIT_CODES, MaoGroup, current_node, json_option


@click.command("members")
@json_option
def members(as_json: bool) -> None:
    """List the live members of the federation (nodes whose heartbeat lease has not expired)."""
    found, invalid = current_node().registry.members()
    render.warn_invalid(invalid)
    render.MEMBERS.show(found, as_json, invalid)


@click.group("node", cls=MaoGroup)
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
    click.echo(render.interrupted_line(tools.interrupt_runs(current_node(), grace_s)))


@click.command("repair")
@click.option("--yes", is_flag=True, help="Delete the invalid records found.")
@json_option
def repair(yes: bool, as_json: bool) -> None:
    """List this node's records in Redis that cannot be read (run records and indexes, tool
    locks, node state); with --yes, delete them. Schedules are not checked here.
    """
    render.show_repair(tools.repair(current_node(), delete=yes), yes, as_json)


@click.command("config")
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


@click.command("status")
@json_option
def status(as_json: bool) -> None:
    """Check this node: etcd (a linearizable read), Redis, the Docker daemon, importdir, its
    workers (ping and inspect: how many, concurrency, active runs) and its beat (the RedBeat
    lock's holder and its last tick).

    Exits 3 when any of them is not usable or missing, 1 when that is because of a setting.
    """
    checks = tools.check_node(current_node())
    render.show_checks(checks, as_json)
    if any(check.invalid_setting for check in checks):
        sys.exit(EXIT_CODES[errors.InvalidInput])
    if not all(check.ok for check in checks):
        sys.exit(EXIT_CODES[errors.ServiceUnavailable])
