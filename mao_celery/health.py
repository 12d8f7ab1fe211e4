"""Checks of the services a node depends on, for `maoctl status`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import docker
import pyetcd
import redis
from pyetcd import etcdrpc

from mao_celery.exceptions import MaoError
from mao_celery.registry import Etcd
from mao_celery.settings import Settings
from mao_celery.text import redact_url


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


def check_etcd(settings: Settings) -> Check:
    """etcd serves a linearizable read (so it has quorum) at one of the configured endpoints.

    A failure reads as every other etcd command's (registry.Etcd.call): "etcd unreachable (no
    member answers)", "etcd cluster has no quorum (k of n members answer)", or etcd's refusal.
    """
    etcd = Etcd(settings.etcd_endpoints, settings.etcd_timeout_s)
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
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    shown = redact_url(settings.redis_url)
    try:
        client.ping()
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


def _database_out_of_range(url: str, shown: str) -> str:
    """The one-line detail of a Redis URL whose database the server does not have."""
    index = urlsplit(url).path.lstrip("/") or "0"
    server = redis.Redis.from_url(url, db=0, socket_timeout=3, socket_connect_timeout=3)
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


def check_all(settings: Settings) -> list[Check]:
    """Every check, in the order `maoctl status` prints them."""
    return [check_etcd(settings), check_redis(settings), check_docker(), check_importdir(settings)]
