"""The node's beat scheduler: RedBeat, made to ride through a Redis outage.

RedBeat's own scheduler lets a Redis error escape from `tick`, which ends the beat process, and
starts without its lock when Redis is down at start-up. This one logs the error, retries every
`RETRY_S` seconds, and takes the lock (again) once Redis answers: a restart of Redis, with its
append-only file, then costs the schedules a few seconds, not the node's beat.

Why not RedBeat's `redbeat_redis_options={"retry_period": ...}` (issue 8, item 4): it wraps
only the methods called on the client itself (`get_redis(app).zrange(...)`) in tenacity retries
(`RetryingConnection`). A tick's Redis traffic does not go through them: `tick` first calls
`self.lock.extend`, and the lock holds the plain `Redis` client (made by the proxied
`client.lock(...)`), then reads the due entries with `pipeline().execute()`, which is not
proxied either. Measured (celery-redbeat 2.4.2, real redis-server stopped for 4 s):

- in-process, `retry_period` 10 s: a direct `client.zrange` waited and returned after 7 s (its
  backoff 1, 2, 4 s), while `RedBeatScheduler.tick()` raised `ConnectionError` after 0.0 s,
  from `lock.extend`, and again after 0.0 s from the pipeline with the lock out of the way;
- the Redis outage test of tests/integration/test_schedules.py, run with this class minus its
  `RedisError` catch and with `retry_period` 60 s: beat died on the first tick without Redis
  ("beat raised exception ConnectionError", from `lock.extend` in redbeat's `tick`), no retry
  logged; the test failed ("not within 20 s: a firing after a Redis outage").

Nor does it help as an addition: a retried call blocks the tick for up to `retry_period` with
backoff up to 30 s, during which the lock (30 s) is not extended; and the option applies to
every user of RedBeat's client of the app, so the CLI's `schedule list` (`ScheduleStore`) would
wait out the retry period instead of failing at once with exit 3 (a negative period: forever).

Entries are read as `schedules.ScheduleEntry` (cron schedules in a time zone). An entry that
cannot be read (not JSON, a field out of range, a key of the wrong Redis type) is logged once,
with its key, and taken out of RedBeat's schedule index (RedBeat's own handling of a missing
entry), so beat goes on firing the others and never warns about it again; the key stays for
`maoctl schedule list` to show and `maoctl schedule remove` to delete.

A paused entry is parked in RedBeat's index (score `schedules.PARKED`, below the range a tick
reads), so a tick reads only the entries due and the next one, however many are paused.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler as _RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

from mao_celery.exceptions import InvalidState
from mao_celery.schedules import PARK_IF_PAUSED, UNREADABLE, ScheduleEntry

log = logging.getLogger(__name__)

RETRY_S = 2.0
"""Seconds between two attempts while Redis does not answer."""


class BeatEntry(ScheduleEntry):
    """The entry beat reads: one that cannot be read is logged and reported missing. Its
    schedule is checked when beat asks it (`RedBeatScheduler.maybe_due`), not on reading."""

    check_on_read = False

    @classmethod
    def from_key(cls, key: str, app: Any = None) -> ScheduleEntry:
        """The entry at `key`.

        Raises:
            KeyError: no entry, or an invalid one (logged): RedBeat then removes `key` from
                its schedule index.
        """
        try:
            return super().from_key(key, app=app)
        except InvalidState as e:
            _log_skipped(key, e.reason)
            raise KeyError(key) from e


def _log_skipped(key: str, reason: str) -> None:
    """Log, once, that beat skips the invalid entry at `key` (and takes it out of its index)."""
    log.warning(
        "beat: skipped the invalid schedule entry %s (%s); `maoctl schedule remove` deletes it",
        key,
        reason,
    )


class RedBeatScheduler(_RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler that survives Redis outages and invalid entries (use with
    `celery beat -S`)."""

    Entry = BeatEntry
    lock: Any  # RedBeat's redis-py Lock, or None while this beat does not hold it

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One beat: fire what is due, or wait `RETRY_S` seconds while Redis is away or the
        lock is held by another beat. Returns the seconds until the next tick."""
        try:
            if self.lock_key and self.lock is None and not self._take_lock():
                return float(self.max_interval)
            return float(super().tick(*args, **kwargs))
        except redis.exceptions.LockNotOwnedError:
            log.warning("beat: lost the RedBeat lock; waiting to take it again")
            self.lock = None
            return float(self.max_interval)
        except redis.RedisError as e:
            log.warning("beat: Redis unavailable (%s); retrying in %g s", e, RETRY_S)
            return RETRY_S

    def maybe_due(self, entry: ScheduleEntry, **kwargs: Any) -> float | None:
        """RedBeat's: fire `entry` if due, return the seconds until it is next due. A paused
        entry (one paused by an older version, which left it due) is parked in the index
        (`schedules.PARKED`) instead of being read again on every tick; an entry whose schedule
        cannot answer is logged and taken out of the index, as an unreadable one.

        Raises:
            redis.RedisError: Redis did not answer.
        """
        client, index = get_redis(self.app), self.app.redbeat_conf.schedule_key
        if not entry.enabled:
            client.register_script(PARK_IF_PAUSED)(keys=[entry.key, index])
            return None
        try:
            due_in: float | None = super().maybe_due(entry, **kwargs)
        except UNREADABLE as e:
            _log_skipped(entry.key, f"{type(e).__name__}: {e}")
            client.zrem(index, entry.key)
            return None
        return due_in

    def _take_lock(self) -> bool:
        """Take RedBeat's lock without waiting; False when another beat holds it."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        if not lock.acquire(blocking=False):
            return False
        log.info("beat: Acquired lock")
        self.lock = lock
        return True
