"""Small node-local values in this node's Redis (design.md §1: nothing node-local goes to etcd).

Keys are `mao:<key>`: the member lease id and start time (members.py) and the notification
listener's cursor (periodic.py). One string value each.
"""

from __future__ import annotations

from typing import cast

import redis

from mao_celery.redis_calls import redis_call


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
            ServiceUnavailable: Redis did not answer.
        """
        return redis_call(self._url, lambda: cast(str | None, self._redis.get(f"mao:{key}")))

    def set(self, key: str, value: str) -> None:
        """Set `key` to `value`.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        redis_call(self._url, lambda: self._redis.set(f"mao:{key}", value))

    def delete(self, key: str) -> None:
        """Delete `key` (nothing happens when it is not set).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        redis_call(self._url, lambda: self._redis.delete(f"mao:{key}"))

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
