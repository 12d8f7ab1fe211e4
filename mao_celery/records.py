"""Node-local records in Redis that may not be what they should: the one place that tells an
unreadable record (wrong Redis type, not JSON, not valid) from an unreachable Redis.

A wrong-type key makes Redis answer WRONGTYPE; redis_calls.redis_call would report that as
"Redis unreachable" (exit 3). `checked_call` names the key instead (`InvalidState`, exit 1), and
listings collect `InvalidRecord`s to warn about and go on. `maoctl repair` removes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import redis

from mao_celery.exceptions import InvalidState, ServiceUnavailable
from mao_celery.redis_calls import redis_call

T = TypeVar("T")

STRING, ZSET, NONE = "string", "zset", "none"
"""Redis type names, as TYPE answers them."""


@dataclass(frozen=True)
class InvalidRecord:
    """A node-local record that cannot be read: its Redis key and why, one line."""

    key: str
    reason: str

    def error(self) -> InvalidState:
        """This record as the error of a command that needs it."""
        return InvalidState(self.key, self.reason)


def wrong_type(key: str, actual: str, expected: str) -> InvalidRecord:
    """The record at `key`, of Redis type `actual` where one of type `expected` belongs."""
    return InvalidRecord(key, f"a Redis {actual} where a {expected} belongs")


def checked_call(
    client: redis.Redis, url: str, operation: Callable[[], T], expected: Mapping[str, str]
) -> T:
    """`operation()` on Redis at `url`, where the keys of `expected` must have the Redis types
    it gives (or not exist).

    Raises:
        InvalidState: Redis answered WRONGTYPE; the first key of `expected` whose type is wrong.
        ServiceUnavailable: Redis did not answer (or refused the call for another reason).
    """
    try:
        return redis_call(url, operation)
    except ServiceUnavailable as e:
        cause = e.__cause__
        if not isinstance(cause, redis.ResponseError) or "WRONGTYPE" not in str(cause):
            raise
        for key, want in expected.items():
            actual = type_of(client, url, key)
            if actual not in (want, NONE):
                raise wrong_type(key, actual, want).error() from cause
        keys = ", ".join(expected) or "a key"
        raise InvalidState(keys, "a key of the wrong Redis type") from cause


def type_of(client: redis.Redis, url: str, key: str) -> str:
    """The Redis type of `key` ("none" when it does not exist).

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    return redis_call(url, lambda: str(client.type(key)))
