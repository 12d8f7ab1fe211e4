"""`maoctl repair`: the node-local records in Redis that cannot be read, found and deleted.

Checked: run records (`mao:run:*`, a valid report of their own run), run indexes (`mao:runs:*`,
sorted sets), tool locks (`mao:lock:*`, a run id whose record, if any, can be read), resumption
claims (`mao:resumed:*`) and the node state keys of node_state.py. RedBeat's keys (`mao:beat:*`,
schedules.py) and Celery's own are not this module's. A run record is deleted with
`RunStore.forget` (out of its index, its lock freed); any other key is deleted.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from mao_celery.exceptions import InvalidState, NotFound
from mao_celery.models import RUN_ID_RE
from mao_celery.node_state import PARSERS, PREFIX
from mao_celery.records import NONE, STRING, ZSET, InvalidRecord, wrong_type
from mao_celery.redis_calls import redis_call
from mao_celery.runs import LOCK_KEY, RESUMED_KEY, RUN_KEY, RUNS_KEY, RunStore, parse_report

Parse = Callable[[redis.Redis, str, str], object]
"""Checks the string value of a key (client, key, value); raises ValueError or InvalidState."""


@dataclass(frozen=True)
class Rule:
    """What the keys starting with `prefix` (or equal to it, when `exact`) must hold."""

    prefix: str
    kind: str
    parse: Parse | None = None
    exact: bool = False

    def applies(self, key: str) -> bool:
        """Whether `key` is one of this rule's keys."""
        return key == self.prefix if self.exact else key.startswith(self.prefix)


def _run_record(_: redis.Redis, key: str, raw: str) -> object:
    return parse_report(key, raw)


def _lock(client: redis.Redis, key: str, raw: str) -> object:
    """A lock holds a run id; the record of that run, if there is one, must be readable."""
    if not RUN_ID_RE.fullmatch(raw):
        raise ValueError("it does not hold a run id")
    record = RUN_KEY + raw
    kind = str(client.type(record))
    if kind == NONE:
        return raw
    try:
        if kind != STRING:
            raise InvalidState(record, kind)
        return parse_report(record, cast(str, client.get(record)))
    except InvalidState as e:
        raise ValueError(f"held by run {raw}, whose record {record} cannot be read") from e


def _node_value(parse: Callable[[str], object]) -> Parse:
    return lambda _client, _key, raw: parse(raw)


RULES = (
    Rule(RUN_KEY, STRING, _run_record),
    Rule(RUNS_KEY, ZSET),
    Rule(LOCK_KEY, STRING, _lock),
    Rule(RESUMED_KEY, STRING),
    *(Rule(PREFIX + key, STRING, _node_value(parse), exact=True) for key, parse in PARSERS.items()),
)


def find_invalid(client: redis.Redis, url: str) -> list[InvalidRecord]:
    """The node-local records on the Redis of `client` (at `url`) that cannot be read, by key.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """

    def scan() -> list[InvalidRecord]:
        found = (_check(client, key) for key in client.scan_iter(match=PREFIX + "*"))
        return sorted((record for record in found if record), key=lambda r: r.key)

    return redis_call(url, scan)


def _check(client: redis.Redis, key: str) -> InvalidRecord | None:
    """Why `key` cannot be read, or None when it can (or is not a key this module checks)."""
    rule = next((rule for rule in RULES if rule.applies(key)), None)
    if rule is None:
        return None
    kind = str(client.type(key))
    if kind == NONE:
        return None
    if kind != rule.kind:
        return wrong_type(key, kind, rule.kind)
    if rule.parse is None:
        return None
    raw = cast(str | None, client.get(key))
    try:
        rule.parse(client, key, raw or "")
    except InvalidState as e:
        return InvalidRecord(key, e.reason)
    except ValueError as e:
        return InvalidRecord(key, f"not a valid value: {str(e).splitlines()[0]}")
    return None


def delete_invalid(client: redis.Redis, url: str, runs: RunStore) -> list[InvalidRecord]:
    """Delete the records `find_invalid` finds; returns them.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    invalid = find_invalid(client, url)
    for record in invalid:
        if record.key.startswith(RUN_KEY):
            with contextlib.suppress(NotFound):  # removed a moment ago by someone else
                runs.forget(record.key.removeprefix(RUN_KEY))
        else:
            redis_call(url, functools.partial(client.delete, record.key))
    return invalid
