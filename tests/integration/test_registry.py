"""The etcd registry (mao_celery.registry) against real etcd: one server, and a 3-member cluster."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from datetime import UTC, datetime, timedelta

import pytest

from mao_celery.exceptions import AlreadyExists, InvalidInput, NotFound, ServiceUnavailable
from mao_celery.models import Dataset, Member, Notification, Tool, utcnow
from mao_celery.node import Node
from mao_celery.node_state import CURSOR_KEY
from mao_celery.periodic import Listener, log_notification
from mao_celery.registry import Registry, connect
from mao_celery.settings import load_settings
from tests import helpers
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import EtcdCluster, EtcdServer, connect_etcd, free_ports
from tests.helpers import listing, wait_until

pytestmark = pytest.mark.integration

STARTED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RETENTION_S = 3600
MEMBER_TTL_S = 2
MEMBER_GONE_WITHIN_S = 6.0


def make_tool(name: str, author: str = "tester") -> Tool:
    return helpers.make_tool(
        name,
        author=author,
        description="counts things",
        spike_window=3,
        spike_threshold_pct=12.5,
        created_by="node-a",
    )


def make_dataset(name: str) -> Dataset:
    return Dataset(name=name, url="/srv/git/data.git", description="weather", created_by="node-a")


def make_notification(run_id: str, tool: str = "demo") -> Notification:
    return Notification(
        tool=tool,
        node="node-a",
        run_id=run_id,
        control_value=146.0,
        baseline=101.0,
        gain_pct=44.55,
        threshold_pct=20.0,
        detected_at=utcnow(),
    )


def raw_keys(etcd_server: EtcdServer, prefix: str) -> list[str]:
    """The keys under `prefix`, read with a client of our own."""
    with connect_etcd(etcd_server.port) as client:
        return sorted(meta.key.decode() for _, meta in client.get_prefix(prefix))


def test_a_tool_is_added_got_listed_and_removed(registry: Registry) -> None:
    tool = make_tool("demo")

    registry.tools.add(tool)

    assert registry.tools.get("demo") == tool
    assert registry.tools.list() == ([tool], [])
    registry.tools.remove("demo")
    with pytest.raises(NotFound, match="tool 'demo' is not registered"):
        registry.tools.get("demo")
    with pytest.raises(NotFound, match="tool 'demo' is not registered"):
        registry.tools.remove("demo")
    assert registry.tools.list() == ([], [])


def test_a_dataset_is_added_got_listed_and_removed(registry: Registry) -> None:
    dataset = make_dataset("weather")

    registry.datasets.add(dataset)

    assert registry.datasets.get("weather") == dataset
    assert registry.datasets.list() == ([dataset], [])
    assert registry.tools.list() == ([], [])
    registry.datasets.remove("weather")
    with pytest.raises(NotFound, match="dataset 'weather' is not registered"):
        registry.datasets.get("weather")
    assert registry.datasets.list() == ([], [])


def test_a_second_add_of_a_name_fails_and_changes_nothing(
    registry: Registry, etcd_server: EtcdServer
) -> None:
    first = make_tool("demo", author="first")
    registry.tools.add(first)

    with pytest.raises(AlreadyExists, match="tool 'demo' already exists"):
        registry.tools.add(make_tool("demo", author="second"))

    assert registry.tools.get("demo") == first
    assert raw_keys(etcd_server, registry.prefix) == [registry.tools.key("demo")]


def test_a_list_of_many_entries_is_complete_and_sorted_by_name(registry: Registry) -> None:
    names = [f"set{i}" for i in range(46)] + ["a-b", "a.b", "a_b", "0a"]
    for name in random.sample(names, len(names)):
        registry.datasets.add(make_dataset(name))

    listed, invalid = registry.datasets.list()

    assert [d.name for d in listed] == sorted(names)
    assert invalid == []


def test_a_value_that_does_not_validate_is_reported_not_returned(
    node: NodeUnderTest, registry: Registry, etcd_server: EtcdServer
) -> None:
    registry.tools.add(make_tool("good"))
    good = make_tool("good").model_dump(mode="json")
    written = {  # as another member's client may write them
        "bad": json.dumps(good | {"name": "Bad Name"}),
        "junk": b"not json \xff",
        "nan": json.dumps(good | {"name": "nan", "spike_threshold_pct": float("nan")}),
        "url": json.dumps(good | {"name": "url", "data_repo": "ext::sh -c touch% /tmp/x"}),
    }
    keys = [registry.tools.key(name) for name in written]
    with connect_etcd(etcd_server.port) as client:
        for key, value in zip(keys, written.values(), strict=True):
            client.put(key, value)

    for name, key in zip(written, keys, strict=True):
        with pytest.raises(InvalidInput, match=f"registry entry {re.escape(key)} is invalid"):
            registry.tools.get(name)
    listed, invalid = registry.tools.list()
    shown = node.maoctl("tool", "get", "--json")

    assert [t.name for t in listed] == ["good"]
    assert [entry.key for entry in invalid] == sorted(keys)
    assert shown.returncode == 0, shown.stderr
    assert [t["name"] for t in listing(shown.stdout)] == ["good"]
    warnings = shown.stderr.splitlines()
    assert len(warnings) == len(keys)
    for key, line in zip(sorted(keys), warnings, strict=True):
        assert line.startswith(f"warning: skipped registry entry {key} is invalid"), line


def test_a_notification_is_published_once_per_run(
    registry: Registry, etcd_server: EtcdServer
) -> None:
    notification = make_notification("run-1")

    first = registry.publish_notification(notification, STARTED_AT, RETENTION_S)
    again = registry.publish_notification(notification, STARTED_AT, RETENTION_S)

    key = f"{registry.notifications_prefix}20260102T030405.678901Z-node-a-demo"
    assert first == (key, True)
    assert again == (key, False)
    assert raw_keys(etcd_server, registry.notifications_prefix) == [key]
    with connect_etcd(etcd_server.port) as client:
        _, meta = client.get(key)
        ttl_s = client.get_lease_info(meta.lease_id).TTL
    assert RETENTION_S - 60 < ttl_s <= RETENTION_S


def test_another_run_with_the_same_key_is_refused(registry: Registry) -> None:
    registry.publish_notification(make_notification("run-1"), STARTED_AT, RETENTION_S)

    with pytest.raises(AlreadyExists, match="belongs to another run"):
        registry.publish_notification(make_notification("run-2"), STARTED_AT, RETENTION_S)

    found, _, _ = registry.notifications()
    assert [n.run_id for _, n in found] == ["run-1"]


def test_notifications_are_read_after_a_revision_and_by_tool(registry: Registry) -> None:
    registry.publish_notification(make_notification("run-1", "demo"), STARTED_AT, RETENTION_S)
    _, _, revision = registry.notifications()
    later = STARTED_AT + timedelta(seconds=1)
    registry.publish_notification(make_notification("run-2", "demo"), later, RETENTION_S)
    registry.publish_notification(make_notification("run-3", "other"), later, RETENTION_S)

    newer, _, newest = registry.notifications(after_revision=revision)
    everything, invalid, _ = registry.notifications()
    of_demo, _, _ = registry.notifications(tool="demo")
    nothing_newer, _, _ = registry.notifications(after_revision=newest)

    assert [n.run_id for _, n in newer] == ["run-2", "run-3"]
    assert newest > revision
    assert [n.run_id for _, n in everything] == ["run-1", "run-2", "run-3"]
    assert invalid == []
    assert [n.run_id for _, n in of_demo] == ["run-1", "run-2"]
    assert nothing_newer == []


def test_new_notifications_are_logged_once(
    node: NodeUnderTest,
    registry: Registry,
    etcd_server: EtcdServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mao_celery.periodic")
    ctx = Node(node.settings())
    ctx.state.set(CURSOR_KEY, "0")  # a node that has read nothing yet
    handed: list[str] = []

    def log_it(key: str, raw: str) -> None:
        handed.append(key)
        log_notification(key, raw)

    listener = Listener(ctx.settings, ctx.registry, ctx.state, log_it)

    def catch_up() -> list[str]:
        handed.clear()
        listener.catch_up()
        return list(handed)

    key_1, _ = registry.publish_notification(make_notification("run-1"), STARTED_AT, RETENTION_S)
    later = STARTED_AT + timedelta(seconds=1)
    key_2, _ = registry.publish_notification(make_notification("run-2"), later, RETENTION_S)

    first = catch_up()
    second = catch_up()
    key_3, _ = registry.publish_notification(
        make_notification("run-3"), later + timedelta(seconds=1), RETENTION_S
    )
    junk_key = f"{registry.notifications_prefix}junk"
    with connect_etcd(etcd_server.port) as client:
        client.put(junk_key, "not json")
    third = catch_up()
    fourth = catch_up()

    assert (first, second, third, fourth) == ([key_1, key_2], [], [key_3, junk_key], [])
    spikes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spike:")]
    assert len(spikes) == 3
    for run_id, message in zip(("run-1", "run-2", "run-3"), spikes, strict=True):
        assert f"(run {run_id}," in message
        assert "gain +44.5%" in message
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert junk_key in errors[0]


def test_a_member_on_a_lease_vanishes_without_refresh(registry: Registry) -> None:
    now = utcnow()
    member = Member(
        node_id="node-x", hostname="host-x", version="0.1.0", started_at=now, last_seen=now
    )

    registry.register_member(member, ttl_s=MEMBER_TTL_S)
    registered = time.monotonic()
    listed, invalid = registry.members()
    wait_until(
        lambda: registry.members() == ([], []),
        MEMBER_GONE_WITHIN_S,
        what="the member gone with its lease",
        poll_s=0.2,
    )
    gone_after_s = time.monotonic() - registered

    assert (listed, invalid) == ([member], [])
    assert registry.members() == ([], [])
    assert MEMBER_TTL_S - 0.5 < gone_after_s < MEMBER_GONE_WITHIN_S


def test_an_unreachable_etcd_raises_service_unavailable_on_every_call(
    etcd_prefix: str,
) -> None:
    (port,) = free_ports(1)
    endpoint = f"127.0.0.1:{port}"
    registry = connect(load_settings(etcd_endpoints=endpoint, etcd_prefix=etcd_prefix))
    try:
        for attempt in range(3):
            with pytest.raises(
                ServiceUnavailable, match=rf"^etcd unreachable \(no member answers\) at {endpoint}$"
            ) as e:
                registry.tools.list()
            assert (e.value.service, e.value.endpoint, attempt) == ("etcd", endpoint, attempt)
    finally:
        registry.etcd.close()


def test_a_registry_on_three_members_fails_over_when_its_member_stops(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    settings = load_settings(
        etcd_endpoints=",".join(etcd_cluster.endpoints), etcd_prefix=etcd_prefix
    )
    registry = connect(settings)
    try:
        before = make_dataset("before")
        registry.datasets.add(before)
        in_use = etcd_cluster.endpoints.index(registry.etcd.client.endpoint_in_use.netloc)
        with connect_etcd(etcd_cluster.members[(in_use + 1) % 3].port) as other_member:
            raw, _ = other_member.get(registry.datasets.key("before"))
        assert Dataset.model_validate_json(raw) == before

        etcd_cluster.stop_member(in_use)
        try:
            registry.datasets.add(make_dataset("during"))
            got = registry.datasets.get("before")
            listed, _ = registry.datasets.list()
            registry.datasets.remove("before")
            key, created = registry.publish_notification(
                make_notification("run-1"), STARTED_AT, RETENTION_S
            )
            after_failover = registry.etcd.client.endpoint_in_use.netloc
        finally:
            etcd_cluster.start_member(in_use)

        assert got == before
        assert [d.name for d in listed] == ["before", "during"]
        assert created
        assert after_failover != etcd_cluster.endpoints[in_use]
        with connect_etcd(etcd_cluster.members[in_use].port) as restarted:
            assert restarted.get(key)[0] is not None
            assert restarted.get(registry.datasets.key("before"))[0] is None
    finally:
        registry.etcd.close()


def test_an_entry_whose_name_is_not_its_key_is_invalid(
    registry: Registry, etcd_server: EtcdServer
) -> None:
    registry.tools.add(make_tool("sch"))
    liar_key = registry.tools.key("e05b")
    with connect_etcd(etcd_server.port) as client:
        client.put(liar_key, make_tool("sch").model_dump_json())

    with pytest.raises(InvalidInput, match="its name is 'sch', not the one in its key"):
        registry.tools.get("e05b")
    listed, invalid = registry.tools.list()

    assert [t.name for t in listed] == ["sch"]
    assert [entry.key for entry in invalid] == [liar_key]
