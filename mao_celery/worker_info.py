"""The settings each worker runs with, published in the node's Redis when it starts, so that
`maoctl config --effective` shows what the workers use next to the shell's own settings.

Key `mao:worker:<hostname>:settings` (JSON `PublishedSettings`), written at `worker_ready`,
deleted at a clean `worker_shutdown`; a killed worker's entry stays, and `config --effective`
tells it from a live one by pinging the workers. Passwords in URLs are masked before writing.
"""

from __future__ import annotations

import os
from contextlib import closing
from datetime import datetime
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mao_celery.exceptions import describe_validation_error
from mao_celery.models import utcnow
from mao_celery.records import InvalidRecord
from mao_celery.redis_calls import redis_call, redis_client
from mao_celery.settings import Settings

KEY_PREFIX = "mao:worker:"
KEY_SUFFIX = ":settings"


class PublishedSettings(BaseModel):
    """What a worker published: its host name (`celery@host`), pid, start time (UTC) and its
    effective settings (`Settings.effective_values`: derived values filled in, passwords
    masked)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hostname: str = Field(min_length=1, max_length=512)
    pid: int
    started_at: datetime
    settings: dict[str, Any]


def key(hostname: str) -> str:
    """The Redis key of worker `hostname`'s published settings."""
    return f"{KEY_PREFIX}{hostname}{KEY_SUFFIX}"


def publish(settings: Settings, hostname: str) -> PublishedSettings:
    """Write this worker's effective settings under `key(hostname)` in the node's Redis.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    published = PublishedSettings(
        hostname=hostname,
        pid=os.getpid(),
        started_at=utcnow(),
        settings=settings.effective_values(),
    )
    with closing(redis_client(settings.redis_url)) as client:
        redis_call(
            settings.redis_url, lambda: client.set(key(hostname), published.model_dump_json())
        )
    return published


def withdraw(settings: Settings, hostname: str) -> None:
    """Delete worker `hostname`'s published settings (at a clean shutdown).

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    with closing(redis_client(settings.redis_url)) as client:
        redis_call(settings.redis_url, lambda: client.delete(key(hostname)))


def read_all(settings: Settings) -> tuple[list[PublishedSettings], list[InvalidRecord]]:
    """Every worker's published settings in the node's Redis, by host name, and the entries
    that cannot be read (not JSON, not valid, wrong type).

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    found: list[PublishedSettings] = []
    invalid: list[InvalidRecord] = []
    with closing(redis_client(settings.redis_url)) as client:

        def scan() -> list[tuple[str, str | None]]:
            keys = sorted(client.scan_iter(f"{KEY_PREFIX}*{KEY_SUFFIX}"))
            values: list[tuple[str, str | None]] = []
            for k in keys:
                try:
                    raw = client.get(k)
                    values.append((str(k), None if raw is None else str(raw)))
                except redis.ResponseError:
                    values.append((k, None))  # WRONGTYPE
            return values

        entries = redis_call(settings.redis_url, scan)
    for k, raw in entries:
        if raw is None:
            invalid.append(InvalidRecord(k, "not a string (wrong type) or gone"))
            continue
        try:
            found.append(PublishedSettings.model_validate_json(raw))
        except ValidationError as e:
            invalid.append(InvalidRecord(k, describe_validation_error(e)))
    return found, invalid
