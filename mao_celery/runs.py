"""This node's run records in its local Redis: the report of each run, the recent runs of each
tool, and the per-tool lock that allows one run of a tool at a time on a node (design.md §4).

Keys: `mao:run:<run_id>` (the report, JSON), `mao:runs:<tool>` (sorted set of run ids by queue
time), `mao:lock:<tool>` (the run id holding the tool, with a time to live), `mao:resumed:<task
id>` (a step of a dead worker resumed by recovery.py, kept a day so it is resumed once),
`mao:log:<run_id>` (the container's output, its last `LOG_MAX_BYTES` bytes) and
`mao:logcut:<run_id>` (how many bytes were cut from its start), deleted with the run's record.
Each write of a run's record (`save`, `cancel`) is published on the channel
`mao:changed:<run_id>` (its new status), so `wait` wakes at once instead of polling.

A record that cannot be read (wrong Redis type, not JSON, not a valid report) is skipped with a
warning by listings and sweeps (`InvalidRecord`) and is `InvalidState` (naming its key) for a
command that needs it; `forget` and `maoctl repair` remove it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar, cast

import redis
from pydantic import ValidationError

from mao_celery.exceptions import (
    AlreadyRunning,
    AmbiguousId,
    InvalidInput,
    InvalidState,
    NotFound,
)
from mao_celery.exceptions import describe_validation_error as describe
from mao_celery.models import RUN_ID_RE, TERMINAL_STATUSES, RunReport
from mao_celery.records import NONE, STRING, ZSET, InvalidRecord, checked_call, type_of, wrong_type
from mao_celery.redis_calls import redis_call, redis_client

T = TypeVar("T")
log = logging.getLogger(__name__)

RUN_KEY = "mao:run:"
RUNS_KEY = "mao:runs:"
LOCK_KEY = "mao:lock:"
RESUMED_KEY = "mao:resumed:"
LOG_KEY = "mao:log:"
LOG_CUT_KEY = "mao:logcut:"
CHANGED_CHANNEL = "mao:changed:"
"""Pub/sub channel prefix: `mao:changed:<run_id>` carries the new status of each write."""
LOG_MAX_BYTES = 1 << 20
"""Most bytes of a run's container output kept (the last ones): 1 MiB per run."""
"""What a run id (models.validate_run_id) or a prefix of one looks like: no glob character."""

# Take the tool's lock for a new run and record the run, atomically. The lock is taken when it is
# free, already held by this run, or held by a run that has ended or left no record (stale). A
# lock, holder's record or index that cannot be read is returned as {'invalid', key, reason}.
_TERMINAL_LUA = ", ".join(f"{status}=true" for status in sorted(TERMINAL_STATUSES))
_ACQUIRE = f"""
local terminal = {{{_TERMINAL_LUA}}}
local function kind(key) return redis.call('TYPE', key)['ok'] end
local function invalid(key, reason) return {{'invalid', key, reason}} end
for i, want in ipairs({{'string', 'string', 'zset'}}) do
  local found = kind(KEYS[i])
  if found ~= 'none' and found ~= want then
    return invalid(KEYS[i], 'a Redis ' .. found .. ' where a ' .. want .. ' belongs')
  end
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  local record = '{RUN_KEY}' .. holder
  local found = kind(record)
  if found ~= 'none' then
    local ok, run = false, nil
    if found == 'string' then ok, run = pcall(cjson.decode, redis.call('GET', record)) end
    if not ok or type(run) ~= 'table' or type(run['status']) ~= 'string' then
      return invalid(KEYS[1], 'held by run ' .. holder .. ', whose record ' .. record ..
        ' cannot be read (maoctl repair, or maoctl run forget ' .. holder .. ')')
    end
    if not terminal[run['status']] then
      return holder
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return false
"""

# Store a run's report unless its stored record says it was cancelled (a cancelled run stays so,
# whatever a step still under way or the recovery writes after it); a run that ended releases its
# tool's lock KEYS[2] in the same step, when it holds it. Returns 1 when written.
_SAVE = f"""
local terminal = {{{_TERMINAL_LUA}}}
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and ARGV[2] ~= 'cancelled' then
  local ok, run = pcall(cjson.decode, redis.call('GET', KEYS[1]))
  if ok and type(run) == 'table' and run['status'] == 'cancelled' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if terminal[ARGV[2]] and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return 1
"""

# Append output to a run's log and keep its last ARGV[2] bytes; the bytes cut are counted.
_APPEND_LOG = """
local size = redis.call('APPEND', KEYS[1], ARGV[1])
local max = tonumber(ARGV[2])
if size > max then
  redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], size - max, -1))
  redis.call('INCRBY', KEYS[2], size - max)
end
return size
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
        self._save = client.register_script(_SAVE)
        pool = client.connection_pool
        kwargs = pool.connection_kwargs | {"decode_responses": False}
        self._bytes = redis.Redis(  # the same Redis, answering bytes (a tool's output)
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
        self._append_log = client.register_script(_APPEND_LOG)

    @classmethod
    def from_url(cls, url: str, history: int = 50) -> RunStore:
        """A store on the Redis at `url` (no network call is made yet)."""
        return cls(redis_client(url), url, history)

    def _call(self, operation: Callable[[], T], expected: Mapping[str, str] | None = None) -> T:
        """`operation()`, the keys of `expected` having to be of those Redis types.

        Raises:
            InvalidState: a key of `expected` has another type.
            ServiceUnavailable: Redis did not answer.
        """
        return checked_call(self._redis, self._url, operation, expected or {})

    def begin(self, report: RunReport, lock_ttl_s: float) -> None:
        """Record a new queued run and take its tool's lock for at most `lock_ttl_s` seconds.

        A lock whose run has ended or has no record is stale and taken over, so a lock left by
        a dead worker blocks the tool no longer than its time to live.

        Raises:
            AlreadyRunning: another run of the tool holds the lock; nothing was recorded.
            InvalidState: the lock, the record of the run holding it, or the tool's run index
                cannot be read (the key is named); nothing was recorded.
            ServiceUnavailable: Redis did not answer.
        """
        answer = self._call(
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
        if isinstance(answer, list):
            _, key, reason = answer
            raise InvalidState(str(key), str(reason))
        if answer:
            raise AlreadyRunning(report.tool, str(answer))

    def save(self, report: RunReport) -> bool:
        """Store the current state of a run; a finished run releases its tool's lock and the
        tool's history is cut to the newest `history` runs. A run stored as cancelled stays
        cancelled: the report is then not written, and False returned (True when written).

        Raises:
            InvalidState: the tool's lock or run index is of the wrong Redis type.
            ServiceUnavailable: Redis did not answer.
        """

        def write() -> bool:
            key, lock = RUN_KEY + report.run_id, _lock_key(report.tool)
            status = str(report.status)
            written = self._save(
                keys=[key, lock], args=[report.model_dump_json(), status, report.run_id]
            )
            if not written:
                return False
            if report.status in TERMINAL_STATUSES:
                self._trim(report.tool)
            self._redis.publish(CHANGED_CHANNEL + report.run_id, status)
            return True

        return self._call(write, self._tool_keys(report.tool))

    def cancel(self, run_id: str, by: str) -> tuple[RunReport, bool]:
        """Mark run `run_id` cancelled by `by` unless it has ended (atomically: a step that
        ends it at the same moment wins or loses whole), releasing its tool's lock. Returns the
        run's report and whether this call cancelled it (False: it had already ended).

        Raises:
            NotFound: no such run.
            InvalidState: its record cannot be read, or its tool's lock or index is of the wrong
                Redis type.
            ServiceUnavailable: Redis did not answer.
        """
        key = RUN_KEY + run_id

        def mark() -> tuple[RunReport | None, bool]:
            with self._redis.pipeline() as pipe:
                while True:
                    try:
                        pipe.watch(key)  # type: ignore[no-untyped-call]
                        raw = cast(str | None, pipe.get(key))
                        if raw is None:
                            return None, False
                        report = parse_report(key, raw)
                        if report.status.terminal:
                            return report, False
                        done = report.cancel(by)
                        pipe.multi()
                        pipe.set(key, done.model_dump_json())
                        lock = _lock_key(report.tool)
                        self._release(keys=[lock], args=[run_id], client=pipe)
                        pipe.execute()
                        return done, True
                    except redis.WatchError:
                        continue

        report, cancelled = self._call(mark, {key: STRING})
        if report is None:
            raise NotFound(f"run {run_id!r} is not known on this node")
        if cancelled:  # the record is written and the lock released: trim the history, tell
            self._call(lambda: self._trim(report.tool), self._tool_keys(report.tool))
            self._call(lambda: self._redis.publish(CHANGED_CHANNEL + run_id, str(report.status)))
        return report, cancelled

    def append_log(self, run_id: str, data: bytes, max_bytes: int = LOG_MAX_BYTES) -> None:
        """Append `data` to run `run_id`'s stored output, keeping its last `max_bytes` bytes.

        Raises:
            InvalidState: the log key is of the wrong Redis type.
            ServiceUnavailable: Redis did not answer.
        """
        keys = [LOG_KEY + run_id, LOG_CUT_KEY + run_id]
        self._call(lambda: self._append_log(keys=keys, args=[data, max_bytes]), {keys[0]: STRING})

    def clear_log(self, run_id: str) -> None:
        """Delete run `run_id`'s stored output (before a container's output is read again).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        self._call(lambda: self._redis.delete(LOG_KEY + run_id, LOG_CUT_KEY + run_id))

    def read_log(self, run_id: str, start: int = 0) -> tuple[bytes, int, int]:
        """Run `run_id`'s stored output from byte `start` of everything it printed (counted
        from the container's first byte, cut bytes included) to what is stored now.

        Returns:
            (the bytes, the position of their first byte, the position after their last byte);
            the first position exceeds `start` when bytes from `start` on were cut (the log
            keeps the last `LOG_MAX_BYTES`).

        Raises:
            InvalidState: a log key is of the wrong Redis type.
            ServiceUnavailable: Redis did not answer.
        """
        log_key, cut_key = LOG_KEY + run_id, LOG_CUT_KEY + run_id

        def read() -> tuple[bytes, int]:
            pipe = self._bytes.pipeline(transaction=True)
            pipe.get(cut_key)
            pipe.strlen(log_key)
            cut_raw, size = pipe.execute()
            cut = int(cut_raw or 0)
            first = max(start, cut)
            if first - cut >= size:
                return b"", cut
            data = cast(bytes, self._bytes.getrange(log_key, first - cut, -1))
            return data, cut

        data, cut = self._call(read, {log_key: STRING, cut_key: STRING})
        first = max(start, cut)
        return data, first, first + len(data)

    def _tool_keys(self, tool: str) -> dict[str, str]:
        """The Redis types of `tool`'s lock and run index (for `_call`)."""
        return {_lock_key(tool): STRING, _runs_key(tool): ZSET}

    def _trim(self, tool: str) -> None:
        runs_key = _runs_key(tool)
        old = cast(list[str], self._redis.zrange(runs_key, 0, -(self._history + 1)))
        if old:
            pipe = self._redis.pipeline()
            pipe.zrem(runs_key, *old)
            pipe.delete(*(RUN_KEY + run_id for run_id in old))
            pipe.delete(*(LOG_KEY + run_id for run_id in old))
            pipe.delete(*(LOG_CUT_KEY + run_id for run_id in old))
            pipe.execute()

    def unfinished(self) -> tuple[list[RunReport], list[InvalidRecord]]:
        """Every run of this node's run indexes that has not ended, and the records (indexes,
        run records) that could not be read on the way.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """

        def indexes() -> list[tuple[str, str]]:
            keys = cast(list[str], list(self._redis.scan_iter(match=RUNS_KEY + "*")))
            return [(key, str(self._redis.type(key))) for key in keys]

        run_ids: list[str] = []
        invalid: list[InvalidRecord] = []
        for key, kind in redis_call(self._url, indexes):
            if kind == ZSET:
                run_ids += redis_call(self._url, functools.partial(self._members, key))
            elif kind != NONE:
                invalid.append(wrong_type(key, kind, ZSET))
        reports, unreadable = self._read(run_ids)
        unfinished = [report for report in reports if not report.status.terminal]
        return unfinished, invalid + unreadable

    def _members(self, index: str) -> list[str]:
        return cast(list[str], self._redis.zrange(index, 0, -1))

    def _read(self, run_ids: list[str]) -> tuple[list[RunReport], list[InvalidRecord]]:
        """The reports of `run_ids` that can be read (in that order, missing ones left out) and
        the records that cannot.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        if not run_ids:
            return [], []
        keys = [RUN_KEY + run_id for run_id in run_ids]
        raws = redis_call(self._url, lambda: cast(list[str | None], self._redis.mget(keys)))
        reports: list[RunReport] = []
        invalid: list[InvalidRecord] = []
        for key, raw in zip(keys, raws, strict=True):
            found = self._parse_or_invalid(key, raw)
            if isinstance(found, RunReport):
                reports.append(found)
            elif found is not None:
                invalid.append(found)
        return reports, invalid

    def _parse_or_invalid(self, key: str, raw: str | None) -> RunReport | InvalidRecord | None:
        """The report stored at `key` (MGET's answer `raw`), why it cannot be read, or None
        when there is no record (MGET answers None for a key of another type too)."""
        if raw is not None:
            try:
                return parse_report(key, raw)
            except InvalidState as e:
                return InvalidRecord(e.key, e.reason)
        kind = type_of(self._redis, self._url, key)
        return None if kind == NONE else wrong_type(key, kind, STRING)

    def get(self, run_id: str) -> RunReport:
        """The report of run `run_id`.

        Raises:
            NotFound: no such run on this node (or it was cut from the history).
            InvalidState: the stored record cannot be read.
            ServiceUnavailable: Redis did not answer.
        """
        report = self.find(run_id)
        if report is None:
            raise NotFound(f"run {run_id!r} is not known on this node")
        return report

    def resolve(self, prefix: str) -> str:
        """The id of the one run of this node whose id is `prefix` or starts with it (like git
        and docker: the 8 characters tables show, or fewer when unique).

        An exact id wins over longer ids it prefixes. Records that cannot be read count (so
        `run forget` reaches them).

        Raises:
            NotFound: no run id starts with `prefix` (or it cannot be a run id).
            AmbiguousId: several do; the message says how many.
            ServiceUnavailable: Redis did not answer.
        """
        if not RUN_ID_RE.fullmatch(prefix):  # a prefix of a run id is shaped like one
            raise NotFound(f"run {prefix!r} is not known on this node")
        exact = RUN_KEY + prefix

        def matches() -> list[str]:
            if self._redis.exists(exact):
                return [prefix]
            keys = cast(list[str], list(self._redis.scan_iter(match=exact + "*", count=1000)))
            return sorted({key.removeprefix(RUN_KEY) for key in keys})

        found = self._call(matches)
        if not found:
            raise NotFound(f"run {prefix!r} is not known on this node")
        if len(found) > 1:
            raise AmbiguousId(
                f"run id prefix {prefix!r} is ambiguous ({len(found)} runs): give more characters"
            )
        return found[0]

    def find(self, run_id: str) -> RunReport | None:
        """The report of run `run_id`, or None when there is none.

        Raises:
            InvalidState: the stored record cannot be read (wrong type, not JSON, not valid).
            ServiceUnavailable: Redis did not answer.
        """
        key = RUN_KEY + run_id
        raw = self._call(lambda: cast(str | None, self._redis.get(key)), {key: STRING})
        return None if raw is None else parse_report(key, raw)

    def recent_checked(
        self, tool: str, limit: int = 20
    ) -> tuple[list[RunReport], list[InvalidRecord]]:
        """The newest `limit` runs of `tool`, newest first, and the records among them that
        cannot be read (left out of the runs).

        Raises:
            InvalidState: the tool's run index is not a sorted set.
            ServiceUnavailable: Redis did not answer.
        """
        index = _runs_key(tool)
        run_ids = self._call(
            lambda: cast(list[str], self._redis.zrevrange(index, 0, limit - 1)), {index: ZSET}
        )
        return self._read(run_ids)

    def recent(self, tool: str, limit: int = 20) -> list[RunReport]:
        """The newest `limit` runs of `tool` that can be read, newest first; a record that
        cannot be read is logged (one warning naming its key) and left out.

        Raises:
            InvalidState: the tool's run index is not a sorted set.
            ServiceUnavailable: Redis did not answer.
        """
        reports, invalid = self.recent_checked(tool, limit)
        log_invalid(invalid)
        return reports

    def holder(self, tool: str) -> str | None:
        """The run id holding `tool`'s lock, if any.

        Raises:
            InvalidState: the lock is not a string.
            ServiceUnavailable: Redis did not answer.
        """
        key = _lock_key(tool)
        return self._call(lambda: cast(str | None, self._redis.get(key)), {key: STRING})

    def claim_resume(self, task_id: str, run_id: str, ttl_s: float = 86400.0) -> bool:
        """Claim the resumption of the step that task `task_id` of run `run_id` was doing; True
        for the first claim of that task (for `ttl_s` seconds, default a day), False after.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        key = RESUMED_KEY + task_id
        claimed = self._call(lambda: self._redis.set(key, run_id, nx=True, px=int(ttl_s * 1000)))
        return bool(claimed)

    def was_resumed(self, task_id: str) -> bool:
        """Whether recovery resumed the step of task `task_id` under another task.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        return bool(self._call(lambda: self._redis.exists(RESUMED_KEY + task_id)))

    def unclaim_resume(self, task_id: str) -> None:
        """Undo `claim_resume` of task `task_id` (its step could not be sent again).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        self._call(lambda: self._redis.delete(RESUMED_KEY + task_id))

    def forget(self, run_id: str) -> list[str]:
        """Remove run `run_id`'s record (readable or not) and its entries in the run indexes,
        and free the lock it holds. Returns the keys deleted or changed.

        Raises:
            NotFound: nothing of the run is stored.
            InvalidInput: the run has not ended (its worker or recovery will end it).
            ServiceUnavailable: Redis did not answer.
        """
        try:
            report = self.find(run_id)
        except InvalidState:
            report = None
        if report is not None and not report.status.terminal:
            raise InvalidInput(
                f"run {run_id} has not ended ({report.status}); a worker or the node's recovery "
                "ends it (see `maoctl run show`)"
            )
        changed = self._call(lambda: self._forget(run_id))
        if not changed:
            raise NotFound(f"run {run_id!r} is not known on this node")
        return changed

    def _forget(self, run_id: str) -> list[str]:
        changed: list[str] = []
        for index in cast(list[str], list(self._redis.scan_iter(match=RUNS_KEY + "*"))):
            if self._redis.type(index) == ZSET and self._redis.zrem(index, run_id):
                changed.append(index)
        for lock in cast(list[str], list(self._redis.scan_iter(match=LOCK_KEY + "*"))):
            if self._redis.type(lock) == STRING and self._release(keys=[lock], args=[run_id]):
                changed.append(lock)
        if self._redis.delete(RUN_KEY + run_id):
            changed.append(RUN_KEY + run_id)
        self._redis.delete(LOG_KEY + run_id, LOG_CUT_KEY + run_id)
        return changed

    def wait(
        self, run_id: str, until: Callable[[RunReport], bool], timeout_s: float, poll_s: float = 0.5
    ) -> RunReport:
        """Read run `run_id` until `until(report)` holds or `timeout_s` seconds pass; return the
        last report read. Each write of the record published on `mao:changed:<run_id>` (`save`,
        `cancel`) wakes the wait at once; without one it reads again every `poll_s` seconds.

        Raises:
            NotFound: no such run.
            InvalidState: its record cannot be read.
            ServiceUnavailable: Redis did not answer.
        """
        deadline = time.monotonic() + timeout_s
        changes = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        with changes:
            self._call(lambda: changes.subscribe(CHANGED_CHANNEL + run_id))
            report = self.get(run_id)  # read after subscribing: no write falls between
            while not until(report) and (left := deadline - time.monotonic()) > 0:
                self._call(functools.partial(changes.get_message, timeout=min(poll_s, left)))
                report = self.get(run_id)
        return report

    def close(self) -> None:
        """Close the connection pools."""
        self._redis.close()
        self._bytes.close()
        self._bytes.connection_pool.disconnect()


def parse_report(key: str, raw: str) -> RunReport:
    """The run report stored at `key` (`mao:run:<run_id>`) as JSON text `raw`.

    Raises:
        InvalidState: `raw` is not a valid report (another version?), or its run id is not the
            key's.
    """
    try:
        report = RunReport.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidState(key, f"not a valid run record (another version?): {describe(e)}") from e
    if RUN_KEY + report.run_id != key:
        raise InvalidState(key, f"the record is of run {report.run_id!r}, not of its key")
    return report


def log_invalid(invalid: Iterable[InvalidRecord]) -> None:
    """Log one warning per record that cannot be read, naming its key."""
    for record in invalid:
        log.warning("skipped invalid state at %s: %s", record.key, record.reason)


def _lock_key(tool: str) -> str:
    return LOCK_KEY + tool


def _runs_key(tool: str) -> str:
    return RUNS_KEY + tool
