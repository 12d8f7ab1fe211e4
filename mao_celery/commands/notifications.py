"""`maoctl notifications ...`: the spike notifications of the federation."""

from __future__ import annotations

import click

from mao_celery import render
from mao_celery.commands.common import MaoGroup, current_node, json_option


@click.group("notifications", cls=MaoGroup)
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


@notifications.command("test")
def notifications_test() -> None:
    """Send a test alert to every alert target of this node (MAO_NOTIFY_URLS,
    MAO_NOTIFY_COMMAND) now. Exits 3 naming the target and reason when one fails, 1 when none
    is configured."""
    from mao_celery.periodic import send_test_alert

    for target in send_test_alert(current_node().settings):
        click.echo(f"test alert sent to {target}")


@notifications.command("follow")
@click.argument("tool", required=False)
@click.option("--all", "every", is_flag=True, help="Alert for every tool again (the default).")
def notifications_follow(tool: str | None, every: bool) -> None:
    """Alert for TOOL's spikes on this node (following all tools, the default, this narrows to
    the tools followed); with --all, alert for every tool again."""
    from mao_celery.exceptions import InvalidInput
    from mao_celery.models import validate_name

    state = current_node().state
    if every == (tool is not None):
        raise InvalidInput("give either a TOOL or --all")
    if tool is None:
        state.follow_all()
        click.echo("following all tools")
        return
    try:
        state.follow(validate_name(tool))
    except ValueError as e:
        raise InvalidInput(str(e)) from e
    click.echo(f"following {tool}")


@notifications.command("unfollow")
@click.argument("tool")
def notifications_unfollow(tool: str) -> None:
    """Stop alerting for TOOL on this node (it must be followed: see `following`)."""
    from mao_celery.exceptions import InvalidInput

    state = current_node().state
    if state.following() is None:
        raise InvalidInput(
            "this node follows all tools: `notifications follow` the ones to alert for instead"
        )
    if not state.unfollow(tool):
        raise InvalidInput(f"tool {tool!r} is not followed")
    click.echo(f"not following {tool}")


@notifications.command("following")
@json_option
def notifications_following(as_json: bool) -> None:
    """Show the tools this node alerts for ("all" by default)."""
    render.show_following(current_node().state.following(), as_json)
