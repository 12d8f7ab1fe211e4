"""This node's membership of the federation: a member record in etcd on a lease that the
heartbeat refreshes, so a node that stops disappears within the lease's time to live.

The heartbeat runs on a thread of every beat process of the node (periodic.py), not as a task
the beat fires: a beat waiting for RedBeat's lock (up to `MAO_BEAT_LOCK_TIMEOUT_S` after the
holder was killed) still beats, and no heartbeat waits in the queue behind long runs.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import datetime

from mao_celery import __version__
from mao_celery.models import Member, utcnow
from mao_celery.node_state import LEASE_KEY, STARTED_KEY, NodeState
from mao_celery.registry import Registry


def heartbeat(
    registry: Registry,
    state: NodeState,
    node_id: str,
    ttl_s: int,
    *,
    workers: int | None = None,
    tools: Sequence[str] = (),
) -> Member:
    """Write this node's member record with a fresh `last_seen`, keeping its lease alive;
    `workers` (how many answer, None: unknown) and `tools` (those it schedules) go into it.

    The lease id and the node's start time are kept in the node's state (Redis), so every worker
    process refreshes the same lease; a lease that expired (the node was down longer than `ttl_s`
    seconds) is replaced by a new one and the start time is reset.

    Raises:
        ServiceUnavailable: etcd or Redis did not answer.
    """
    now = utcnow()
    lease_id = state.get(LEASE_KEY)
    alive = lease_id is not None and registry.refresh_member_lease(int(lease_id))
    started = state.get(STARTED_KEY) if alive else None
    member = Member(
        node_id=node_id,
        hostname=socket.gethostname(),
        version=__version__,
        started_at=datetime.fromisoformat(started) if started else now,
        last_seen=now,
        workers=workers,
        tools=sorted(tools),
    )
    if alive and lease_id is not None:
        registry.put_member(member, int(lease_id))
    else:
        state.set(LEASE_KEY, str(registry.register_member(member, ttl_s)))
        state.set(STARTED_KEY, member.started_at.isoformat())
    return member


def leave(registry: Registry, state: NodeState) -> None:
    """Remove this node's member record now (revoke its lease), on a clean shutdown.

    Raises:
        ServiceUnavailable: etcd or Redis did not answer.
    """
    lease_id = state.get(LEASE_KEY)
    if lease_id is not None:
        registry.revoke_member_lease(int(lease_id))
        state.delete(LEASE_KEY)
