"""The node's Redis client and the one mapping of its errors, shared by the run store and the
node state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import redis

from mao_celery.exceptions import MaoError, ServiceUnavailable
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


class RedisAccessDenied(ServiceUnavailable):
    """Redis refused the client's password (or wants one): exit 3 like an unreachable Redis,
    but the message says "Redis authentication failed at URL: DETAIL" and where the password
    goes.

    Args:
        url: the Redis URL (shown with its password masked).
        detail: Redis's reason, one line.
    """

    def __init__(self, url: str, detail: str) -> None:
        MaoError.__init__(
            self,
            f"Redis authentication failed at {redact_url(url)}: {detail}; check the password "
            "in MAO_REDIS_URL (redis://:PASSWORD@host:port/db, or rediss:// for TLS)",
        )
        self.service = "Redis"
        self.endpoint = redact_url(url)


def redis_error(url: str, error: redis.RedisError) -> ServiceUnavailable:
    """The one-line error of a Redis call that failed with `error` at `url`: authentication
    (RedisAccessDenied), else unreachable or refused (ServiceUnavailable)."""
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, redis.AuthenticationError):
        return RedisAccessDenied(url, detail)
    return ServiceUnavailable("Redis", redact_url(url), detail)


def redis_call(url: str, operation: Callable[[], T]) -> T:
    """`operation()`, with any Redis error turned into ServiceUnavailable naming `url` (masked).

    Raises:
        RedisAccessDenied: Redis refused the password, or wants one (ServiceUnavailable).
        ServiceUnavailable: Redis did not answer (or refused the call); the first line of its
            message as the detail.
    """
    try:
        return operation()
    except redis.RedisError as e:
        raise redis_error(url, e) from e
