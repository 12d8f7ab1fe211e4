"""Small node-local values in this node's Redis (design.md §1: nothing node-local goes to etcd).

Keys are `mao:<key>`: the member lease id and start time (members.py) and the notification
listener's cursor (periodic.py). One string value each; `PARSERS` says what each must hold
(`maoctl repair` checks them). A key of another Redis type is `InvalidState`, not an outage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import cast

import redis

from mao_celery.records import STRING, checked_call

PREFIX = "mao:"
LEASE_KEY = "member:lease"
STARTED_KEY = "member:started_at"
CURSOR_KEY = "notifications:cursor"


def _whole_number(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number


PARSERS: dict[str, Callable[[str], object]] = {
    LEASE_KEY: int,
    STARTED_KEY: datetime.fromisoformat,
    CURSOR_KEY: _whole_number,
}
"""What the value of each node-state key must parse as (a ValueError when it does not)."""


class NodeState:
    """Get, set and delete the node-local string values under `mao:`.

    Args:
        client: a Redis client with `decode_responses=True`.
        url: the Redis URL, for error messages (shown with its password masked).
    """

    def __init__(self, client: redis.Redis, url: str) -> None:
        self._redis = client
        self._url = url

    def get(self, key: str) -> str | None:
        """The value of `key`, or None when it is not set.

        Raises:
            InvalidState: the key holds another Redis type than a string.
            ServiceUnavailable: Redis did not answer.
        """
        full = PREFIX + key
        return checked_call(
            self._redis, self._url, lambda: cast(str | None, self._redis.get(full)), {full: STRING}
        )

    def set(self, key: str, value: str) -> None:
        """Set `key` to `value` (replacing a value of any type).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        checked_call(self._redis, self._url, lambda: self._redis.set(PREFIX + key, value), {})

    def delete(self, key: str) -> None:
        """Delete `key` (nothing happens when it is not set).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        checked_call(self._redis, self._url, lambda: self._redis.delete(PREFIX + key), {})

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
