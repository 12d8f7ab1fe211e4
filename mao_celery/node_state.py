"""Small node-local values in this node's Redis (design.md §1: nothing node-local goes to etcd).

Keys are `mao:<key>`: the member lease id and start time (members.py) and the notification
listener's cursor and the etcd cluster it was read from (periodic.py). One string value each;
`PARSERS` says what each must hold (`maoctl repair` checks them). A key of another Redis type is
`InvalidState`, not an outage.

Besides: `mao:notified:<notification key>`, one per notification this node delivered, with the
notification's retention as TTL (`claim`), and `mao:notifications:following`, the set of tools
this node alerts for (absent: all; alerts.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar, cast

import redis

from mao_celery.records import STRING, checked_call

T = TypeVar("T")

PREFIX = "mao:"
LEASE_KEY = "member:lease"
STARTED_KEY = "member:started_at"
CURSOR_KEY = "notifications:cursor"
CLUSTER_KEY = "notifications:cluster"
NOTIFIED_PREFIX = "notified:"
FOLLOWING_KEY = "notifications:following"
FOLLOWING_ALL_MARK = ""
"""A member of the following set that is no tool name: it keeps the set (and so "only these
tools") alive when the last tool is unfollowed."""
SET = "set"


def _whole_number(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{number} is negative")
    return number


PARSERS: dict[str, Callable[[str], object]] = {
    LEASE_KEY: int,
    STARTED_KEY: datetime.fromisoformat,
    CURSOR_KEY: _whole_number,
    CLUSTER_KEY: _whole_number,
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

    def claim(self, key: str, ttl_s: int) -> bool:
        """Mark `key` (e.g. a notification key) as handled by this node for `ttl_s` seconds, in
        one atomic step; True when this call marked it, False when it was marked already.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        full = PREFIX + NOTIFIED_PREFIX + key
        done = self._call(lambda: self._redis.set(full, "1", nx=True, ex=ttl_s))
        return bool(done)

    def release(self, key: str) -> None:
        """Undo `claim(key)` (its hand-over failed; the next pass claims it again).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        self.delete(NOTIFIED_PREFIX + key)

    def following(self) -> frozenset[str] | None:
        """The tools this node alerts for; None: all tools.

        Raises:
            InvalidState: the key is not a Redis set.
            ServiceUnavailable: Redis did not answer.
        """
        full = PREFIX + FOLLOWING_KEY
        members = checked_call(
            self._redis,
            self._url,
            lambda: frozenset(map(str, self._redis.smembers(full))),
            {full: SET},
        )
        return (members - {FOLLOWING_ALL_MARK}) if members else None

    def follow(self, tool: str) -> None:
        """Alert for `tool` (from following all tools, this narrows to `tool` only).

        Raises:
            InvalidState: the key is not a Redis set.
            ServiceUnavailable: Redis did not answer.
        """
        full = PREFIX + FOLLOWING_KEY
        checked_call(
            self._redis,
            self._url,
            lambda: self._redis.sadd(full, FOLLOWING_ALL_MARK, tool),
            {full: SET},
        )

    def unfollow(self, tool: str) -> bool:
        """Stop alerting for `tool`; False when it was not followed (nothing changed).

        Raises:
            InvalidState: the key is not a Redis set.
            ServiceUnavailable: Redis did not answer.
        """
        full = PREFIX + FOLLOWING_KEY
        removed = checked_call(
            self._redis, self._url, lambda: self._redis.srem(full, tool), {full: SET}
        )
        return bool(removed)

    def follow_all(self) -> None:
        """Alert for every tool again (the default).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        self.delete(FOLLOWING_KEY)

    def _call(self, operation: Callable[[], T]) -> T:
        return checked_call(self._redis, self._url, operation, {})

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
