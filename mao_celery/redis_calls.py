"""The node's Redis client and the one mapping of its errors, shared by the run store and the
node state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis

from mao_celery.exceptions import ServiceUnavailable
from mao_celery.text import redact_url

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5
CALL_TIMEOUT_S = 30


def redis_client(url: str) -> redis.Redis:
    """A client of the Redis at `url` returning `str`; connects on first use (5 s to connect,
    30 s per call)."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=CALL_TIMEOUT_S,
        decode_responses=True,
    )


def redis_call(url: str, operation: Callable[[], T]) -> T:
    """`operation()`, with any Redis error turned into ServiceUnavailable naming `url` (masked).

    Raises:
        ServiceUnavailable: Redis did not answer (or refused the call); the first line of its
            message as the detail.
    """
    try:
        return operation()
    except redis.RedisError as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ServiceUnavailable("Redis", redact_url(url), detail) from e
