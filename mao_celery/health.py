"""Checks of the services a node depends on, for `maoctl status`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import docker
import redis

from mao_celery.exceptions import ServiceUnavailable
from mao_celery.registry import Etcd
from mao_celery.settings import Settings
from mao_celery.text import redact_url


@dataclass(frozen=True)
class Check:
    """One dependency: its name, whether it is usable, and what was found (one line)."""

    name: str
    ok: bool
    detail: str


def check_etcd(settings: Settings) -> Check:
    """etcd answers a status request at one of the configured endpoints."""
    etcd = Etcd(settings.etcd_endpoints, settings.etcd_timeout_s)
    try:
        status = etcd.call(lambda client: client.status())
    except ServiceUnavailable as e:
        return Check("etcd", False, str(e))
    finally:
        etcd.close()
    return Check("etcd", True, f"{','.join(etcd.endpoints)} (etcd {status.version})")


def check_redis(settings: Settings) -> Check:
    """Redis answers PING at the configured URL."""
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as e:
        return Check("Redis", False, f"unreachable at {redact_url(settings.redis_url)}: {e}")
    finally:
        client.close()
    return Check("Redis", True, redact_url(settings.redis_url))


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
