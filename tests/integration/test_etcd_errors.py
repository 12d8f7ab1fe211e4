"""One mapping of etcd errors (registry.Etcd.call), seen the same way by registry commands,
`maoctl status` and the library: no quorum, unreachable, request too large. Real etcd: the
3-member cluster on loopback with two members stopped, and a closed loopback port.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mao_celery.exceptions import InvalidInput, ServiceUnavailable
from mao_celery.health import check_etcd
from mao_celery.models import Dataset
from mao_celery.registry import EtcdUnavailable, connect
from mao_celery.settings import load_settings
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import EtcdCluster, free_ports
from tests.helpers import maoctl, wait_until

pytestmark = pytest.mark.integration

QUORUM_LOST_WITHIN_S = 30.0


@pytest.fixture
def two_members_down(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster with members 1 and 2 stopped (member 0 alone: no quorum); started again at
    teardown, which waits until each answers with quorum."""
    etcd_cluster.stop_member(1)
    etcd_cluster.stop_member(2)
    try:
        yield etcd_cluster
    finally:
        etcd_cluster.start_member(1)
        etcd_cluster.start_member(2)


def no_quorum_message(cluster: EtcdCluster) -> str:
    return f"etcd cluster has no quorum (1 of 3 members answer) at {','.join(cluster.endpoints)}"


@pytest.mark.slow
def test_status_and_registry_commands_say_no_quorum_with_two_of_three_members_down(
    two_members_down: EtcdCluster, node: NodeUnderTest
) -> None:
    env = {"MAO_ETCD_ENDPOINTS": ",".join(two_members_down.endpoints)}
    expected = no_quorum_message(two_members_down)

    # the member left alone notices within an election timeout that it has no leader
    status = wait_until(
        lambda: (
            (r := maoctl(node, "status", "--json", env=env)).returncode == 3
            and expected in r.stdout
            and r
        ),
        QUORUM_LOST_WITHIN_S,
        what="maoctl status to report no quorum",
    )
    assert status
    listed = maoctl(node, "tool", "get", env=env)
    added = maoctl(node, "dataset", "add", "weather", "https://example.org/w.git", env=env)

    for result in (listed, added):
        assert result.returncode == 3, result.stderr
        assert result.stderr.strip() == f"error: {expected}", result.stderr


@pytest.mark.slow
def test_the_library_raises_the_same_no_quorum_error(
    two_members_down: EtcdCluster, etcd_prefix: str
) -> None:
    settings = load_settings(
        etcd_endpoints=",".join(two_members_down.endpoints), etcd_prefix=etcd_prefix
    )
    registry = connect(settings)
    try:

        def no_quorum() -> EtcdUnavailable | None:
            try:
                registry.tools.list()
            except EtcdUnavailable as e:
                return e if e.answering == 1 else None
            return None

        error = wait_until(no_quorum, QUORUM_LOST_WITHIN_S, what="a read to fail for no quorum")
        assert error is not None
        assert str(error) == no_quorum_message(two_members_down)
        assert (error.answering, error.total, error.service) == (1, 3, "etcd")
        assert isinstance(error, ServiceUnavailable)
        check = check_etcd(settings)
        assert (check.ok, check.detail) == (False, no_quorum_message(two_members_down))
    finally:
        registry.etcd.close()


def test_status_with_no_member_answering_says_unreachable(node: NodeUnderTest) -> None:
    ports = free_ports(2)
    endpoints = ",".join(f"127.0.0.1:{port}" for port in ports)

    status = maoctl(node, "status", env={"MAO_ETCD_ENDPOINTS": endpoints})
    listed = maoctl(node, "tool", "get", env={"MAO_ETCD_ENDPOINTS": endpoints})

    expected = f"etcd unreachable (no member answers) at {endpoints}"
    assert status.returncode == 3
    assert expected in status.stdout, status.stdout
    assert listed.returncode == 3
    assert listed.stderr.strip() == f"error: {expected}"


def test_a_request_too_large_is_invalid_input_not_an_outage(node: NodeUnderTest) -> None:
    registry = node.registry()
    try:
        # etcd's default request limit is 1.5 MiB; the description field allows 4096 characters,
        # so the value is made large through the model's own copy, bypassing the CLI.
        huge = Dataset.model_construct(
            name="huge", url="https://example.org/h.git", description="x" * (2 << 20)
        )
        with pytest.raises(InvalidInput, match=r"^etcd refused the request: request too large \("):
            registry.datasets.add(huge)
        # and nothing was written
        assert registry.datasets.list() == ([], [])
    finally:
        registry.etcd.close()
