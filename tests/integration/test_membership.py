"""Membership against a private etcd and Redis: an entry without a lease is not live; the member
record of a node shows its workers and scheduled tools, and does not flap when the beat holding
RedBeat's lock is killed (the heartbeat is a thread of every beat process, periodic.py)."""

import time

import pytest

from mao_celery.models import Member, utcnow
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import EtcdServer, connect_etcd
from tests.helpers import listing, listing_warnings, register, wait_until

HEARTBEAT_S, MEMBER_TTL_S, LOCK_TIMEOUT_S = 1, 3, 6
"""Short times: a heartbeat every second on a 3 s lease, and RedBeat's lock going stale only
6 s after its holder died (longer than the lease: the old heartbeat-as-beat-task flapped)."""
POLL_S = 0.05
"""Seconds between two samples of the member record."""
LOCK_TAKEN = "beat: Acquired lock"  # logged by RedBeat and mao_celery/beat.py


def test_a_member_entry_without_a_lease_is_not_live(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    now = utcnow().isoformat()
    forged = {"node_id": "ghost", "hostname": "h", "version": "1", "started_at": now}
    with connect_etcd(etcd_server.port) as client:
        client.put(registry.member_key("ghost"), str(forged | {"last_seen": now}).replace("'", '"'))

    result = node.maoctl("members", "--json")
    table = node.maoctl("members")

    assert result.returncode == 0, result.stderr
    assert listing(result.stdout) == []
    (warning,) = listing_warnings(result.stdout)
    assert warning["key"] == registry.member_key("ghost")
    assert "has no lease" in warning["reason"]
    assert table.returncode == 0, table.stderr
    assert "has no lease" in table.stderr
    assert "ghost" not in table.stdout


def node_a(registry: Registry) -> Member | None:
    """Node node-a's live member record, or None when it is not listed."""
    return next((m for m in registry.members()[0] if m.node_id == "node-a"), None)


def with_workers(member: Member | None, workers: int) -> Member | None:
    """`member` when it counts `workers` workers, else None."""
    return member if member is not None and member.workers == workers else None


@pytest.mark.slow
def test_members_show_workers_and_scheduled_tools_and_do_not_flap_when_the_lock_holder_dies(
    node: NodeUnderTest, registry: Registry
) -> None:
    node.env |= {
        "MAO_HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        "MAO_MEMBER_TTL_S": str(MEMBER_TTL_S),
        "MAO_BEAT_LOCK_TIMEOUT_S": str(LOCK_TIMEOUT_S),
    }
    register(node, "collector", "mao-demo:latest", "https://example.org/data.git")
    assert node.maoctl("tool", "schedule", "collector", "daily").returncode == 0
    node.start_worker()
    beats = [node.start_beat(), node.start_beat()]
    holder = wait_until(
        lambda: next((b for b in beats if LOCK_TAKEN in b.log()), None),
        30,
        what="a beat to take RedBeat's lock",
    )
    assert holder is not None
    (survivor,) = [b for b in beats if b is not holder]
    before = wait_until(
        lambda: with_workers(node_a(registry), 1),
        30,
        what="node-a listed with its worker",
        details=lambda: str(registry.members()),
    )
    assert before is not None
    assert before.tools == ["collector"]
    shown = node.maoctl("members", env={"COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    assert "collector" in shown.stdout

    holder.kill()
    killed_at = time.monotonic()
    samples = 0
    # Sample the member record until the survivor has taken the lock over and two leases have
    # passed: at every sample node-a is listed, with the start time it had before the kill.
    while time.monotonic() - killed_at < 2 * MEMBER_TTL_S or LOCK_TAKEN not in survivor.log():
        assert time.monotonic() - killed_at < 30, "the surviving beat never took the lock"
        member = node_a(registry)
        assert member is not None, f"node-a dropped out {time.monotonic() - killed_at:.1f} s in"
        assert member.started_at == before.started_at
        samples += 1
        time.sleep(POLL_S)
    after = node_a(registry)
    assert after is not None
    assert after.last_seen > before.last_seen
    assert samples > 10
