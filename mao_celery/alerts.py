"""Alerts to people: a spike notification sent to the node's alert targets.

Targets are the apprise URLs of `MAO_NOTIFY_URLS` (mail, Matrix, Slack, webhooks, ...; apprise
is imported when an alert is sent) and the command of `MAO_NOTIFY_COMMAND`, run without a shell
with the alert as JSON on its standard input (nothing from the notification is put in its
arguments). A target is named by its position (`url:0`, `url:1`, ..., `command`), so that a
task's arguments never hold a URL's tokens. The node alerts only for the tools it follows
(`NodeState.following`; default all). Delivery once per node and retries: periodic.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Sequence
from typing import Any

from mao_celery.exceptions import InvalidInput, ServiceUnavailable
from mao_celery.models import Notification
from mao_celery.settings import Settings, mask_notify_url, notify_argv
from mao_celery.text import format_gain_pct, printable

COMMAND = "command"
URL_TARGET = "url:"
COMMAND_TIMEOUT_S = 30.0
"""Seconds the notify command may take before it is killed and the alert counted as failed."""
REASON_MAX_CHARS = 300
"""How much of a failure's reason (the command's stderr, apprise's log) is kept."""


def targets(settings: Settings) -> list[str]:
    """The names of the node's alert targets: `url:<i>` per `MAO_NOTIFY_URLS` entry, then
    `command` when `MAO_NOTIFY_COMMAND` is set."""
    names = [f"{URL_TARGET}{i}" for i in range(len(settings.notify_urls))]
    return names + ([COMMAND] if settings.notify_command else [])


def follows(following: frozenset[str] | None, tool: str) -> bool:
    """Whether a node following `following` (None: all tools) alerts for `tool`."""
    return following is None or tool in following


def title(notification: Notification) -> str:
    """The alert's one-line title, e.g. "MAO spike: demo on node-a"."""
    return f"MAO spike: {notification.tool} on {notification.node}"


def body(key: str, notification: Notification) -> str:
    """The alert's text: what was detected, the run and the notification's key (escaped)."""
    n = notification
    return printable(
        f"Tool {n.tool} on node {n.node}: control value {n.control_value}, baseline "
        f"{n.baseline}, gain {format_gain_pct(n.gain_pct)} (run {n.run_id}, {key})"
    )


def payload(key: str, notification: Notification) -> dict[str, Any]:
    """The alert as JSON data (the notify command's standard input): `key`, `title`, `body`,
    `notification` (the notification's fields)."""
    return {
        "key": key,
        "title": title(notification),
        "body": body(key, notification),
        "notification": notification.model_dump(mode="json"),
    }


def send(settings: Settings, target: str, key: str, notification: Notification) -> None:
    """Send the alert of `notification` (at etcd key `key`) to `target` (see `targets`).

    Raises:
        ServiceUnavailable: the target refused or did not answer (the reason, shortened).
        InvalidInput: `target` is not one of this node's targets (its settings changed).
    """
    if target == COMMAND and settings.notify_command:
        run_command(notify_argv(settings.notify_command), payload(key, notification))
        return
    urls = dict(zip(targets(settings), settings.notify_urls, strict=False))
    if target not in urls:
        raise InvalidInput(f"alert target {target!r} is not configured on this node")
    send_url(urls[target], title(notification), body(key, notification))


def send_url(url: str, alert_title: str, alert_body: str) -> None:
    """Send one alert through apprise URL `url`.

    Raises:
        InvalidInput: apprise does not know the URL.
        ServiceUnavailable: the service refused or did not answer (apprise's reason).
    """
    import apprise

    shown = mask_notify_url(url)
    notifier = apprise.Apprise()
    if not notifier.add(url):
        raise InvalidInput(f"notify URL {shown} is not a URL apprise supports")
    with apprise.LogCapture(level=logging.WARNING) as log:  # type: ignore[no-untyped-call]
        sent = notifier.notify(body=alert_body, title=alert_title)
    if not sent:
        reason = " ".join(_reasons(log.getvalue().splitlines())) or "not sent"
        raise ServiceUnavailable("alert target", shown, _short(reason))


def _reasons(lines: Sequence[str]) -> list[str]:
    """apprise's log lines without their time stamp and level ("... - WARNING - reason")."""
    return [line.rsplit(" - ", 1)[-1] for line in lines if line.strip()]


def run_command(argv: list[str], data: dict[str, Any]) -> None:
    """Run `argv` (no shell) with `data` as JSON on its standard input.

    Raises:
        ServiceUnavailable: the command could not start, exited non-zero (its stderr, shortened)
            or took longer than `COMMAND_TIMEOUT_S`.
    """
    shown = printable(argv[0])
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(data, allow_nan=False),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ServiceUnavailable(
            "notify command", shown, f"no exit within {COMMAND_TIMEOUT_S:g} s"
        ) from None
    except OSError as e:
        raise ServiceUnavailable("notify command", shown, e.strerror or str(e)) from e
    if done.returncode != 0:
        detail = f"exit {done.returncode}: {done.stderr.strip()}" if done.stderr.strip() else ""
        raise ServiceUnavailable(
            "notify command", shown, _short(detail or f"exit {done.returncode}")
        )


def _short(text: str) -> str:
    """`text` on one printable line, at most `REASON_MAX_CHARS` characters."""
    line = printable(" ".join(text.split()))
    return line if len(line) <= REASON_MAX_CHARS else line[: REASON_MAX_CHARS - 3] + "..."
