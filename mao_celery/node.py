"""One node's clients, built from its `Settings` in one place: the CLI and the worker use a `Node`.

Nothing connects when a `Node` is made: each client is built on first use (a worker process
builds its own after the pool forks) and a network call happens only when one is used. The
modules behind the clients are imported on first use too (the one exception to "imports at the
top", for the CLI's start-up time: `maoctl tool get` needs etcd, not Docker nor Celery).
"""

from __future__ import annotations

from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING

from mao_celery.settings import Settings

if TYPE_CHECKING:
    import docker
    from celery import Celery

    from mao_celery.node_state import NodeState
    from mao_celery.registry import Registry
    from mao_celery.runs import RunStore
    from mao_celery.schedules import ScheduleStore


DOCKER_CALLS_PER_STEP = 2
"""HTTP connections a container step holds while its container runs: its wait and its log
stream."""
DOCKER_SPARE_CONNECTIONS = 10
"""Connections kept besides those, for short calls (create, inspect, remove, recovery)."""


def docker_pool_size(settings: Settings) -> int:
    """How many HTTP connections to the Docker daemon a node's client keeps for reuse: two per
    container slot (`MAO_CONTAINER_SLOTS`) and `DOCKER_SPARE_CONNECTIONS` more."""
    return DOCKER_CALLS_PER_STEP * settings.container_slots + DOCKER_SPARE_CONNECTIONS


class Node:
    """The clients of one node: `registry` (etcd), `runs`, `state` and `schedules` (its Redis),
    `docker`, and `app` (its Celery app). A context manager: leaving it closes the clients that
    were built.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def registry(self) -> Registry:
        """The federation's registry on the etcd endpoints and prefix of the settings."""
        from mao_celery.registry import connect

        return connect(self.settings)

    @cached_property
    def runs(self) -> RunStore:
        """This node's run records, history and tool locks."""
        from mao_celery.runs import RunStore

        return RunStore.from_url(self.settings.redis_url, self.settings.run_history)

    @cached_property
    def state(self) -> NodeState:
        """This node's small local values (member lease, listener cursor)."""
        from mao_celery.node_state import NodeState
        from mao_celery.redis_calls import redis_client

        return NodeState(redis_client(self.settings.redis_url), self.settings.redis_url)

    @cached_property
    def docker(self) -> docker.DockerClient:
        """A client of the Docker daemon named by DOCKER_HOST (or the default socket), its
        connection pool sized for `MAO_CONTAINER_SLOTS` container steps at once
        (`docker_pool_size`).

        Raises:
            ServiceUnavailable: no daemon configuration could be found.
        """
        from mao_celery import containers

        return containers.connect(max_pool_size=docker_pool_size(self.settings))

    @cached_property
    def schedules(self) -> ScheduleStore:
        """This node's tool schedules (RedBeat entries in its Redis)."""
        from mao_celery.schedules import ScheduleStore

        return ScheduleStore(self.app)

    @cached_property
    def app(self) -> Celery:
        """The node's Celery app, configured from these settings."""
        from mao_celery.celery_app import app, configure

        configure(app, self.settings)
        return app

    def close(self) -> None:
        """Close the clients that were built (the Celery app stays: it is the process's)."""
        built = vars(self)
        if "registry" in built:
            self.registry.etcd.close()
        if "runs" in built:
            self.runs.close()
        if "state" in built:
            self.state.close()
        if "docker" in built:
            self.docker.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
