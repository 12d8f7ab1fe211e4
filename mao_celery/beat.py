"""The node's beat scheduler: RedBeat, made to ride through a Redis outage.

RedBeat's own scheduler lets a Redis error escape from `tick`, which ends the beat process, and
starts without its lock when Redis is down at start-up. This one logs the error, retries every
`RETRY_S` seconds, and takes the lock (again) once Redis answers: a restart of Redis, with its
append-only file, then costs the schedules a few seconds, not the node's beat.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from redbeat import RedBeatScheduler as _RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis

log = logging.getLogger(__name__)

RETRY_S = 2.0
"""Seconds between two attempts while Redis does not answer."""


class RedBeatScheduler(_RedBeatScheduler):  # type: ignore[misc]
    """RedBeat's scheduler that survives Redis outages (use with `celery beat -S`)."""

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
