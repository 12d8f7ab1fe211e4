"""This node's run records in its local Redis: the report of each run, the recent runs of each
tool, and the per-tool lock that allows one run of a tool at a time on a node (design.md §4).

Keys: `mao:run:<run_id>` (the report, JSON), `mao:runs:<tool>` (sorted set of run ids by queue
time), `mao:lock:<tool>` (the run id holding the tool, with a time to live).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, cast

import redis
from pydantic import ValidationError

from mao_celery.exceptions import (
    AlreadyRunning,
    InvalidInput,
    NotFound,
    describe_validation_error,
)
from mao_celery.models import TERMINAL_STATUSES, RunReport
from mao_celery.redis_calls import redis_call, redis_client

T = TypeVar("T")

RUN_KEY = "mao:run:"

# Take the tool's lock for a new run and record the run, atomically. The lock is taken when it is
# free, already held by this run, or held by a run that has ended or left no record (stale).
_TERMINAL_LUA = ", ".join(f"{status}=true" for status in sorted(TERMINAL_STATUSES))
_ACQUIRE = f"""
local terminal = {{{_TERMINAL_LUA}}}
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local raw = redis.call('GET', '{RUN_KEY}' .. holder)
  if raw and not terminal[cjson.decode(raw)['status']] then
    return holder
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return false
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RunStore:
    """Run reports, run history and tool locks of one node, in Redis.

    Args:
        client: a Redis client with `decode_responses=True`.
        url: the Redis URL, for error messages.
        history: how many runs per tool are kept (older reports are deleted).
    """

    def __init__(self, client: redis.Redis, url: str, history: int = 50) -> None:
        self._redis = client
        self._url = url
        self._history = history
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def from_url(cls, url: str, history: int = 50) -> RunStore:
        """A store on the Redis at `url` (no network call is made yet)."""
        return cls(redis_client(url), url, history)

    def _call(self, operation: Callable[[], T]) -> T:
        return redis_call(self._url, operation)

    def begin(self, report: RunReport, lock_ttl_s: float) -> None:
        """Record a new queued run and take its tool's lock for at most `lock_ttl_s` seconds.

        A lock whose run has ended or has no record is stale and taken over, so a lock left by
        a dead worker blocks the tool no longer than its time to live.

        Raises:
            AlreadyRunning: another run of the tool holds the lock; nothing was recorded.
            ServiceUnavailable: Redis did not answer.
        """
        holder = self._call(
            lambda: self._acquire(
                keys=[_lock_key(report.tool), RUN_KEY + report.run_id, _runs_key(report.tool)],
                args=[
                    report.run_id,
                    report.model_dump_json(),
                    int(lock_ttl_s * 1000),
                    report.queued_at.timestamp(),
                ],
            )
        )
        if holder:
            raise AlreadyRunning(report.tool, str(holder))

    def save(self, report: RunReport) -> None:
        """Store the current state of a run; a finished run releases its tool's lock and the
        tool's history is cut to the newest `history` runs.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """

        def write() -> None:
            self._redis.set(RUN_KEY + report.run_id, report.model_dump_json())
            if report.status in TERMINAL_STATUSES:
                self._release(keys=[_lock_key(report.tool)], args=[report.run_id])
                self._trim(report.tool)

        self._call(write)

    def _trim(self, tool: str) -> None:
        runs_key = _runs_key(tool)
        old = cast(list[str], self._redis.zrange(runs_key, 0, -(self._history + 1)))
        if old:
            pipe = self._redis.pipeline()
            pipe.zrem(runs_key, *old)
            pipe.delete(*(RUN_KEY + run_id for run_id in old))
            pipe.execute()

    def fail_lost(self, older_than_s: float) -> list[str]:
        """Mark failed ("lost") every run queued more than `older_than_s` seconds ago that has
        not ended: its worker and its task were both lost, so nothing else will end it. Saving
        it releases its tool's lock. Returns the run ids.

        Raises:
            InvalidInput: a stored record is invalid.
            ServiceUnavailable: Redis did not answer.
        """
        cutoff_ts = time.time() - older_than_s

        def read() -> list[str | None]:
            run_ids = [
                run_id
                for key in self._redis.scan_iter(match=_runs_key("*"))
                for run_id in cast(list[str], self._redis.zrangebyscore(key, 0, cutoff_ts))
            ]
            if not run_ids:
                return []
            return cast(list[str | None], self._redis.mget([RUN_KEY + r for r in run_ids]))

        reports = [_parse("a tool", raw) for raw in self._call(read) if raw]
        lost = [report for report in reports if report.status not in TERMINAL_STATUSES]
        reason = f"lost: not finished {older_than_s:g} s after it was queued (worker and task lost)"
        for report in lost:
            self.save(report.failed(reason))
        return [report.run_id for report in lost]

    def get(self, run_id: str) -> RunReport:
        """The report of run `run_id`.

        Raises:
            NotFound: no such run on this node (or it was cut from the history).
            ServiceUnavailable: Redis did not answer.
        """
        report = self.find(run_id)
        if report is None:
            raise NotFound(f"run {run_id!r} is not known on this node")
        return report

    def find(self, run_id: str) -> RunReport | None:
        """The report of run `run_id`, or None when there is none.

        Raises:
            InvalidInput: the stored record is invalid.
            ServiceUnavailable: Redis did not answer.
        """
        raw = self._call(lambda: cast(str | None, self._redis.get(RUN_KEY + run_id)))
        return None if raw is None else _parse(run_id, raw)

    def recent(self, tool: str, limit: int = 20) -> list[RunReport]:
        """The newest `limit` runs of `tool`, newest first.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """

        def read() -> list[str | None]:
            run_ids = cast(list[str], self._redis.zrevrange(_runs_key(tool), 0, limit - 1))
            if not run_ids:
                return []
            return cast(list[str | None], self._redis.mget([RUN_KEY + r for r in run_ids]))

        return [_parse(tool, raw) for raw in self._call(read) if raw]

    def holder(self, tool: str) -> str | None:
        """The run id holding `tool`'s lock, if any.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        return self._call(lambda: cast(str | None, self._redis.get(_lock_key(tool))))

    def wait(
        self, run_id: str, until: Callable[[RunReport], bool], timeout_s: float, poll_s: float = 0.5
    ) -> RunReport:
        """Poll run `run_id` until `until(report)` holds or `timeout_s` seconds pass; return the
        last report read.

        Raises:
            NotFound: no such run.
            ServiceUnavailable: Redis did not answer.
        """
        deadline = time.monotonic() + timeout_s
        report = self.get(run_id)
        while not until(report) and time.monotonic() < deadline:
            time.sleep(poll_s)
            report = self.get(run_id)
        return report

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()


def _parse(what: str, raw: str) -> RunReport:
    try:
        return RunReport.model_validate_json(raw)
    except ValidationError as e:
        reason = describe_validation_error(e)
        raise InvalidInput(f"run record of {what} is invalid (another version?): {reason}") from e


def _lock_key(tool: str) -> str:
    return f"mao:lock:{tool}"


def _runs_key(tool: str) -> str:
    return f"mao:runs:{tool}"
