"""The one exception hierarchy of MAO (design.md §7).

The CLI maps each class to an exit code; tasks record them in the run report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mao_celery.text import redact_urls

if TYPE_CHECKING:  # pydantic is not loaded by `maoctl --help`, which imports this module
    from pydantic import ValidationError


class MaoError(Exception):
    """Base of every error MAO raises on purpose; its message is one line for a person."""


class NotFound(MaoError):
    """A tool, dataset, run or other named thing does not exist."""


class AlreadyExists(MaoError):
    """A create-only write found the name taken; nothing was changed."""


class InvalidInput(MaoError):
    """A value failed validation (name, URL, image, schedule, ...); nothing was changed."""


class AmbiguousId(InvalidInput):
    """A run id prefix matches more than one run: "ambiguous (N runs)"."""


class InvalidState(MaoError):
    """A stored record (a Redis key, an etcd entry, a schedule) cannot be read: wrong type, not
    JSON, or not valid. The message names the key; `maoctl repair` removes such records.

    Args:
        key: the key of the record, e.g. "mao:run:1234".
        reason: why it cannot be read, one line.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid state at {key}: {reason}")
        self.key = key
        self.reason = reason


class Conflict(MaoError):
    """A compare-and-swap write found the entry changed since it was read (a concurrent update);
    nothing was written: read it again and retry."""


class AlreadyRunning(MaoError):
    """A run of this tool is already under way on this node."""

    def __init__(self, tool: str, run_id: str) -> None:
        super().__init__(f"tool {tool!r} is already running (run {run_id})")
        self.tool = tool
        self.run_id = run_id


class ServiceUnavailable(MaoError):
    """A service (etcd, Redis, Docker, git remote) did not answer.

    Args:
        service: the service's name as a person knows it, e.g. "etcd".
        endpoint: what was tried, e.g. "127.0.0.1:2379".
        detail: the underlying error, one line.
    """

    def __init__(self, service: str, endpoint: str, detail: str = "") -> None:
        message = f"{service} unreachable at {endpoint}"
        if detail:
            message += f": {detail}"
        super().__init__(message)
        self.service = service
        self.endpoint = endpoint


class RunFailed(MaoError):
    """A tool run ended without success; the message is the reason recorded in its report."""


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic validation error: `field: message`.

    Only the error's location and message are used, never pydantic's `input_value` (the refused
    value itself); any URL in them is shown through `text.redact_url`, so a secret in a refused
    value (a registry entry written by another client) is not repeated. The text may still hold
    control characters (a field name comes from the input): output makes it `text.printable`.
    """
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "value"
    return redact_urls(f"{where}: {str(first['msg']).removeprefix('Value error, ')}")
