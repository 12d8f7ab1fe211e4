"""The registry at federation scale against real etcd: listings paged below gRPC's 4 MiB message
limit (10,000 tools, values of over a megabyte), and an answer too large even for one key
reported as "request too large" (exit 1), never as an outage. Timings live in bench/registry.py.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mao_celery.models import Tool
from mao_celery.registry import PAGE_KEYS, Registry
from tests import helpers
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import EtcdServer, connect_etcd, free_ports, unique_name
from tests.helpers import listing, listing_warnings

pytestmark = pytest.mark.integration

MANY_TOOLS = 10_000
ETCD_TXN_OPS = 128
"""Puts per transaction when a test writes many keys (etcd's default --max-txn-ops)."""
MIB = 1 << 20
TXN_BYTES = MIB
"""Value bytes per transaction at most when a test writes many keys (etcd's default request
limit is 1.5 MiB)."""
GRPC_MESSAGE_LIMIT = 4 * MIB
"""What a gRPC client receives at most in one message (grpc's default)."""


def make_tool(name: str) -> Tool:
    """A valid tool of about 1 KB."""
    return helpers.make_tool(name, description="d" * 750)


def oversized_value(name: str, size: int) -> str:
    """The JSON of tool `name` with a description of `size` characters: no valid tool is that
    large (descriptions stop at 4096), so it lists as an invalid entry."""
    tool = make_tool(name).model_copy(update={"description": "x" * size})
    return tool.model_dump_json()


def batches(keys: list[str], values: dict[str, str]) -> Iterator[list[str]]:
    """`keys` in batches of at most `ETCD_TXN_OPS` keys whose values hold at most
    `TXN_BYTES` characters (a larger value alone)."""
    batch: list[str] = []
    size = 0
    for key in keys:
        if batch and (len(batch) == ETCD_TXN_OPS or size + len(values[key]) > TXN_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(key)
        size += len(values[key])
    if batch:
        yield batch


def write_raw(etcd_port: int, values: dict[str, str]) -> None:
    """Write `values` (key -> value) in a random order, in transactions (`batches`)."""
    keys = list(values)
    random.shuffle(keys)
    with connect_etcd(etcd_port, timeout_s=30) as client:
        for batch in batches(keys, values):
            puts = [client.transactions.put(key, values[key]) for key in batch]
            client.transaction(compare=[], success=puts, failure=[])


def test_ten_thousand_tools_are_listed_completely_and_in_order(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    expected = [make_tool(f"tool-{i:05d}") for i in range(MANY_TOOLS)]
    write_raw(etcd_server.port, {registry.tools.key(t.name): t.model_dump_json() for t in expected})
    assert sum(len(t.model_dump_json()) for t in expected) > 2 * GRPC_MESSAGE_LIMIT

    assert registry.tools.list() == (expected, [])
    shown = node.maoctl("tool", "get", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [t["name"] for t in listing(shown.stdout)] == [t.name for t in expected]
    one = node.maoctl("tool", "get", "tool-04321", "--json")
    assert one.returncode == 0, one.stderr


def test_a_listing_is_read_page_by_page_from_where_the_last_page_ended(
    registry: Registry, etcd_server: EtcdServer
) -> None:
    expected = [make_tool(f"tool-{i:04d}") for i in range(2 * PAGE_KEYS + 7)]
    write_raw(etcd_server.port, {registry.tools.key(t.name): t.model_dump_json() for t in expected})

    pages = [registry.tools.page(limit=PAGE_KEYS)]
    while pages[-1].next_after is not None:
        pages.append(registry.tools.page(start_after=pages[-1].next_after, limit=PAGE_KEYS))

    assert [len(page.items) for page in pages] == [PAGE_KEYS, PAGE_KEYS, 7]
    assert [item for page in pages for item in page.items] == expected
    assert registry.tools.page(start_after="tool-0003", limit=2).items == expected[4:6]


def test_values_too_large_for_one_page_still_list_and_are_reported_invalid(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    # etcd takes requests up to 1.5 MiB: four values of 1.3 MiB are more than one gRPC message
    small = [make_tool(f"tool-{i}") for i in range(0, 9, 2)]
    large = [registry.tools.key(f"tool-{i}") for i in range(1, 9, 2)]
    values = {registry.tools.key(t.name): t.model_dump_json() for t in small}
    values |= {key: oversized_value(key.rpartition("/")[2], int(1.3 * MIB)) for key in large}
    write_raw(etcd_server.port, values)
    assert sum(map(len, values.values())) > GRPC_MESSAGE_LIMIT

    items, invalid = registry.tools.list()

    assert items == small
    assert [entry.key for entry in invalid] == large
    assert all("at most 4096 characters" in entry.reason for entry in invalid)
    shown = node.maoctl("tool", "get", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [t["name"] for t in listing(shown.stdout)] == [t.name for t in small]
    assert [w["key"] for w in listing_warnings(shown.stdout)] == large


@pytest.fixture
def roomy_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A private etcd that takes requests of up to 8 MiB, so that it can hold one value larger
    than a gRPC client receives (4 MiB)."""
    client_port, peer_port = free_ports(2)
    name = unique_name("roomy")
    server = EtcdServer(
        name, client_port, peer_port, f"{name}=http://127.0.0.1:{peer_port}", tmp_path
    )
    server.argv.append(f"--max-request-bytes={8 * MIB}")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_value_too_large_to_receive_is_request_too_large_exit_1_not_an_outage(
    node: NodeUnderTest, roomy_etcd: EtcdServer
) -> None:
    prefix = node.env["MAO_ETCD_PREFIX"]
    write_raw(roomy_etcd.port, {f"{prefix}tools/huge": oversized_value("huge", 5 * MIB)})
    env = {"MAO_ETCD_ENDPOINTS": roomy_etcd.endpoint}

    listed = node.maoctl("tool", "get", env=env)
    got = node.maoctl("tool", "get", "huge", env=env)

    for result in (listed, got):
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("error: etcd refused the request: request too large ("), (
            result.stderr
        )
        assert "larger than max" in result.stderr
        assert "unreachable" not in result.stderr
