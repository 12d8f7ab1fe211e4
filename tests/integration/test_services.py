"""The service fixtures give real, working servers: Redis, etcd (one node, a cluster), Docker."""

import docker
import pytest
import redis

from tests.fixtures.services import EtcdCluster, EtcdServer, RedisServer, connect_etcd

pytestmark = pytest.mark.integration


def test_redis_value_survives_restart(redis_server: RedisServer, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        client.set("key", "value")
    redis_server.restart()
    with redis.Redis.from_url(redis_url) as client:
        assert client.get("key") == b"value"


def test_redis_url_gives_an_empty_database_other_than_0(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.connection_pool.connection_kwargs["db"] != 0
        assert client.dbsize() == 0


def test_etcd_put_then_get_on_single_node(etcd_server: EtcdServer, etcd_prefix: str) -> None:
    with connect_etcd(etcd_server.port) as client:
        client.put(f"{etcd_prefix}key", "value")
        value, _ = client.get(f"{etcd_prefix}key")
    assert value == b"value"


def test_etcd_cluster_replicates_a_write_to_other_members(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    first, _, last = etcd_cluster.members
    with connect_etcd(first.port) as writer:
        writer.put(f"{etcd_prefix}key", "value")
    with connect_etcd(last.port) as reader:
        value, _ = reader.get(f"{etcd_prefix}key")
    assert value == b"value"


def test_etcd_cluster_accepts_writes_with_one_member_down(
    etcd_cluster: EtcdCluster, etcd_prefix: str
) -> None:
    first, _, last = etcd_cluster.members
    etcd_cluster.stop_member(2)
    try:
        with connect_etcd(first.port) as writer:
            writer.put(f"{etcd_prefix}key", "written with 2 of 3")
    finally:
        etcd_cluster.start_member(2)
    with connect_etcd(last.port) as reader:
        value, _ = reader.get(f"{etcd_prefix}key")
    assert value == b"written with 2 of 3"


def test_busybox_image_runs_a_command_without_network(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    output = docker_client.containers.run(
        busybox_image,
        ["sh", "-c", "echo hello > /tmp/out && cat /tmp/out"],
        network_mode="none",
        remove=True,
    )
    assert output == b"hello\n"
