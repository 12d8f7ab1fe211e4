"""Checks of the services a node depends on, for `maoctl status`: etcd, Redis, Docker,
importdir, the node's Celery workers (ping and inspect over its broker) and its beat (the
RedBeat lock in its Redis)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyetcd
import redis
from pyetcd import etcdrpc

from mao_celery.enqueue import RUN_STEPS
from mao_celery.exceptions import MaoError, ServiceUnavailable
from mao_celery.redis_calls import redis_error
from mao_celery.registry import Etcd
from mao_celery.settings import BEAT_MAX_LOOP_INTERVAL_S, Settings
from mao_celery.text import redact_url

if TYPE_CHECKING:
    from celery import Celery

PING_TIMEOUT_S = 1.0
"""Seconds the node's workers get to answer a ping (their main process answers, busy or not)."""
BEAT_STALE_S = 3 * BEAT_MAX_LOOP_INTERVAL_S
"""A beat whose last tick is older than this many seconds is taken for dead (it ticks at most
`BEAT_MAX_LOOP_INTERVAL_S` apart and extends RedBeat's lock on each tick)."""


@dataclass(frozen=True)
class Check:
    """One dependency: its name, whether it is usable, and what was found (one line).

    `invalid_setting` is True when it is unusable because of a setting (e.g. a Redis database
    the server does not have), not because the service does not answer.
    """

    name: str
    ok: bool
    detail: str
    invalid_setting: bool = False
    data: dict[str, Any] = field(default_factory=dict)
    """What a script may read besides `detail` (workers: their list; beat: its lock)."""


class NoWorker(ServiceUnavailable):
    """No Celery worker of this node answers a ping on its broker.

    Args:
        broker: the broker URL, passwords masked.
        timeout_s: how long the workers were given to answer, in seconds.
        hint: what else the user may do, appended after the advice to start a worker.
    """

    def __init__(self, broker: str, timeout_s: float, hint: str = "") -> None:
        MaoError.__init__(
            self,
            f"no worker answers on this node's broker {broker} (ping, {timeout_s:g} s): start one "
            f"with `worker.sh worker`{', ' + hint if hint else ''}",
        )
        self.service = "worker"
        self.endpoint = broker


@dataclass(frozen=True)
class WorkerInfo:
    """A worker that answered: its host name (`celery@host`), its pool's concurrency (None when
    it did not say), the tasks it executes now and the run ids among them."""

    hostname: str
    concurrency: int | None
    active_tasks: int
    active_runs: tuple[str, ...]


def _broker(app: Celery) -> str:
    """`app`'s broker URL, passwords masked."""
    return redact_url(str(app.conf.broker_url))


def ping_workers(
    app: Celery, timeout_s: float = PING_TIMEOUT_S, limit: int | None = None
) -> list[str]:
    """The host names of the workers answering a ping on `app`'s broker within `timeout_s`
    seconds (stop at `limit` answers).

    Raises:
        ServiceUnavailable: the broker (Redis) did not answer.
    """
    broker = _broker(app)
    try:
        replies = app.control.ping(timeout=timeout_s, limit=limit) or []
    except Exception as e:  # kombu/redis raise several kinds for a broker that is away
        raise ServiceUnavailable("Redis", broker, f"cannot ask the workers: {e}") from e
    return sorted(host for reply in replies for host in reply)


def inspect_workers(app: Celery, timeout_s: float = PING_TIMEOUT_S) -> list[WorkerInfo]:
    """Every worker answering a ping, with its concurrency and active runs (Celery inspect).

    Raises:
        ServiceUnavailable: the broker (Redis) did not answer.
    """
    hosts = ping_workers(app, timeout_s)
    if not hosts:
        return []
    broker = _broker(app)
    inspect = app.control.inspect(destination=hosts, timeout=timeout_s, limit=len(hosts))
    try:
        stats = inspect.stats() or {}
        active = inspect.active() or {}
    except Exception as e:
        raise ServiceUnavailable("Redis", broker, f"cannot inspect the workers: {e}") from e
    found = []
    for host in hosts:
        pool = stats.get(host, {}).get("pool", {})
        concurrency = pool.get("max-concurrency") if isinstance(pool, dict) else None
        tasks = active.get(host) or []
        runs = sorted({run for task in tasks if (run := _run_id(task))})
        found.append(
            WorkerInfo(
                host, concurrency if isinstance(concurrency, int) else None, len(tasks), tuple(runs)
            )
        )
    return found


def _run_id(task: Any) -> str | None:
    """The run id of an active task of a run step (its argument is the run's report), or None."""
    if not isinstance(task, dict) or task.get("name") not in RUN_STEPS:
        return None
    args = task.get("args")
    if isinstance(args, (list, tuple)) and args and isinstance(args[0], dict):
        run_id = args[0].get("run_id")
        return str(run_id) if run_id else None
    return None


def check_workers(app: Celery) -> Check:
    """The node's workers answer a ping: how many, each one's concurrency and active runs."""
    try:
        workers = inspect_workers(app)
    except ServiceUnavailable as e:
        return Check("workers", False, str(e))
    if not workers:
        broker = _broker(app)
        return Check("workers", False, str(NoWorker(broker, PING_TIMEOUT_S)), data={"workers": []})
    parts = []
    for w in workers:
        runs = f", runs {' '.join(r[:8] for r in w.active_runs)}" if w.active_runs else ""
        parts.append(
            f"{w.hostname} (concurrency {w.concurrency or '?'}, {w.active_tasks} active{runs})"
        )
    data = {
        "workers": [
            {
                "hostname": w.hostname,
                "concurrency": w.concurrency,
                "active_tasks": w.active_tasks,
                "active_runs": list(w.active_runs),
            }
            for w in workers
        ]
    }
    return Check("workers", True, f"{len(workers)}: {'; '.join(parts)}", data=data)


def beat_lock_key(app: Celery) -> str:
    """RedBeat's lock key: `<redbeat_key_prefix>:lock` (`mao:beat::lock`)."""
    return f"{app.conf.redbeat_key_prefix}:lock"


def check_beat(app: Celery, settings: Settings) -> Check:
    """A beat holds RedBeat's lock and ticked lately.

    RedBeat keeps, under its `mao:beat:` prefix, its schedule index (`mao:beat::schedule`, a
    sorted set of entry keys by next fire), the names of the static entries
    (`mao:beat::statics`), one hash per entry (`definition`, `meta` with `last_run_at`) and its
    lock (`mao:beat::lock`: a redis-py lock whose value is the holder's random token). The holder
    sets the lock's expiry back to `MAO_BEAT_LOCK_TIMEOUT_S` on each tick, so its last tick was
    (lock timeout - time left) seconds ago.
    """
    key = beat_lock_key(app)
    client = _redis(settings.redis_url)
    try:
        token = client.get(key)
        left_ms = client.pttl(key)
    except redis.RedisError as e:
        return Check("beat", False, f"cannot read {key}: Redis unreachable: {e}")
    finally:
        client.close()
    if token is None or left_ms < 0:
        return Check(
            "beat",
            False,
            f"no beat holds the RedBeat lock {key}: start one with `worker.sh beat`",
            data={"lock_key": key, "holder": None},
        )
    holder = token.decode("ascii", "replace") if isinstance(token, bytes) else str(token)
    ago_s = max(0.0, settings.beat_lock_timeout_s - left_ms / 1000)
    data = {"lock_key": key, "holder": holder, "last_tick_s_ago": round(ago_s, 1)}
    if ago_s > BEAT_STALE_S:
        return Check(
            "beat",
            False,
            f"the holder of {key} (token {holder[:8]}) last ticked {ago_s:.0f} s ago: dead? its "
            f"lock frees in {left_ms / 1000:.0f} s; start a beat with `worker.sh beat`",
            data=data,
        )
    return Check(
        "beat",
        True,
        f"lock {key} held (token {holder[:8]}), last tick {ago_s:.0f} s ago",
        data=data,
    )


def check_etcd(settings: Settings) -> Check:
    """etcd serves a linearizable read (so it has quorum) at one of the configured endpoints.

    A failure reads as every other etcd command's (registry.Etcd.call): "etcd unreachable (no
    member answers)", "etcd cluster has no quorum (k of n members answer)", or etcd's refusal.
    """
    etcd = Etcd.from_settings(settings)
    probe_key = f"{settings.etcd_prefix}status-probe"

    def read(client: pyetcd.MultiEndpointEtcd3Client) -> str:
        client.get(probe_key)  # needs a leader and a quorum, unlike the status request below
        status = client.maintenancestub.Status(etcdrpc.StatusRequest(), etcd.timeout_s)
        return str(status.version)

    try:
        version = etcd.call(read)
    except MaoError as e:
        return Check("etcd", False, str(e))
    finally:
        etcd.close()
    return Check("etcd", True, f"{','.join(etcd.endpoints)} (etcd {version})")


def check_redis(settings: Settings) -> Check:
    """Redis answers PING at the configured URL, and has the URL's database.

    A database index beyond the server's `databases` setting is an invalid setting, not an
    outage: the detail says which range the server has.
    """
    client = _redis(settings.redis_url)
    shown = redact_url(settings.redis_url)
    try:
        client.ping()
    except redis.AuthenticationError as e:
        return Check("Redis", False, str(redis_error(settings.redis_url, e)))
    except redis.ResponseError as e:
        if "out of range" not in str(e).lower():
            return Check("Redis", False, f"refused at {shown}: {e}")
        detail = _database_out_of_range(settings.redis_url, shown)
        return Check("Redis", False, detail, invalid_setting=True)
    except redis.RedisError as e:
        return Check("Redis", False, f"unreachable at {shown}: {e}")
    finally:
        client.close()
    return Check("Redis", True, shown)


def _redis(url: str, **options: Any) -> redis.Redis:
    """A client of the Redis at `url` for a check: 3 s to connect, 3 s per call."""
    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3, **options)


def _database_out_of_range(url: str, shown: str) -> str:
    """The one-line detail of a Redis URL whose database the server does not have."""
    index = urlsplit(url).path.lstrip("/") or "0"
    server = _redis(url, db=0)
    try:
        count = server.config_get("databases").get("databases")
    except redis.RedisError:
        count = None  # CONFIG may be renamed or disabled
    finally:
        server.close()
    has = f"0-{int(count) - 1}" if count else "fewer"
    return (
        f"invalid setting MAO_REDIS_URL {shown}: database {index} is out of the server's range "
        f"({has}); choose another database number"
    )


def check_docker() -> Check:
    """The Docker daemon named by the environment (DOCKER_HOST, or the default socket) answers."""
    import docker  # here: `tool run` imports this module for its worker ping, not for Docker

    try:
        client = docker.from_env(timeout=5)
        version = client.version()["Version"]
        client.close()
    except docker.errors.DockerException as e:
        return Check("Docker", False, f"daemon unreachable: {str(e).splitlines()[0]}")
    return Check("Docker", True, f"daemon {version}")


def check_importdir(settings: Settings) -> Check:
    """importdir exists (or can be created) and is writable."""
    path = settings.importdir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return Check("importdir", False, f"{path} cannot be created: {e.strerror}")
    if not os.access(path, os.W_OK | os.X_OK):
        return Check("importdir", False, f"{path} is not writable")
    return Check("importdir", True, str(path))


def check_all(settings: Settings, app: Celery) -> list[Check]:
    """Every check, in the order `maoctl status` prints them; the workers and the beat are not
    asked when Redis (their broker) is not usable."""
    checks = [
        check_etcd(settings),
        check_redis(settings),
        check_docker(),
        check_importdir(settings),
    ]
    if not checks[1].ok:
        skipped = "not checked: Redis (the broker) is not usable"
        return [*checks, Check("workers", False, skipped), Check("beat", False, skipped)]
    return [*checks, check_workers(app), check_beat(app, settings)]
