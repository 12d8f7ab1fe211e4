"""etcd with authentication and TLS, Redis with a password and with TLS: every client of a
node (maoctl, the registry API, the worker and beat) reaches them with the node's security
settings, and says in one line why when it cannot. The roles are the ones
scripts/etcd-roles.sh creates. Real etcd (TLS to clients and peers, client certificates
required, auth on, 2 s tokens), real redis-server (`--requirepass`, `--tls-port`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import grpc
import pyetcd
import pytest

from mao_celery.models import Member, Notification, Tool
from mao_celery.registry import Forbidden, Registry, connect, etcd_endpoint
from mao_celery.settings import load_settings
from tests import helpers
from tests.fixtures.node import REPO_ROOT, NodeUnderTest
from tests.fixtures.services import (
    EtcdCluster,
    EtcdServer,
    RedisServer,
    client_tls,
    free_ports,
    make_certs,
)
from tests.helpers import maoctl, wait_until

pytestmark = pytest.mark.integration

ROOT_PASSWORD = "root-secret"
TOKEN_TTL_S = 2
"""etcd's simple-token lifetime here (`--auth-token-ttl`; 300 s by default)."""
REDIS_PASSWORD = "redis-secret"
NODES = ("node-a", "node-b")
HEALTHY_WITHIN_S = 60.0


@dataclass(frozen=True)
class SecureEtcd:
    """An etcd cluster with TLS and auth, and the roles of node-a (tools read-only) and node-b
    (may write tools/) on `prefix`, made by scripts/etcd-roles.sh."""

    cluster: EtcdCluster
    cert_dir: Path
    prefix: str
    password_files: dict[str, Path]

    def env(
        self, node: str, *, cert: bool = True, password_file: Path | None = None
    ) -> dict[str, str]:
        """The MAO_* settings of `node` (its user, password file, CA, its certificate)."""
        return {
            "MAO_ETCD_ENDPOINTS": ",".join(self.cluster.endpoints),
            "MAO_ETCD_PREFIX": self.prefix,
            "MAO_ETCD_USER": f"mao-{node}",
            "MAO_ETCD_PASSWORD_FILE": str(password_file or self.password_files[node]),
            "MAO_ETCD_CA": str(self.cert_dir / "ca.pem"),
            "MAO_ETCD_TIMEOUT_S": "3",
            "MAO_ETCD_CERT": str(self.cert_dir / f"mao-{node}.pem"),
            "MAO_ETCD_KEY": str(self.cert_dir / f"mao-{node}-key.pem"),
        }

    def registry(self, node: str) -> Registry:
        """`node`'s registry client, built from its settings."""
        values = {k.removeprefix("MAO_").lower(): v for k, v in self.env(node).items()}
        return connect(load_settings(**values))


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    work = tmp_path_factory.mktemp("secure-etcd")
    cert_dir = make_certs(work / "certs", "server", "root", *(f"mao-{n}" for n in NODES))
    cluster = EtcdCluster(1, work, cert_dir, ("--auth-token-ttl", str(TOKEN_TTL_S)))
    cluster.start()
    try:
        cluster.enable_auth(ROOT_PASSWORD)
        prefix = f"/mao-test/{uuid4().hex[:8]}/"
        password_files = {}
        for node, extra in zip(NODES, ([], ["--tools"]), strict=True):
            password_files[node] = work / f"{node}.password"
            password_files[node].write_text(f"{node}-secret\n")
            roles = ["bash", "scripts/etcd-roles.sh", "--apply", "--prefix", prefix, *extra]
            subprocess.run(
                [*roles, "--password-file", str(password_files[node]), node],
                cwd=REPO_ROOT,
                env=cluster.etcdctl_env(),
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield SecureEtcd(cluster, cert_dir, prefix, password_files)
    finally:
        cluster.stop()


def secure_node(node: NodeUnderTest, etcd: SecureEtcd, name: str = "node-a") -> NodeUnderTest:
    """`node` (its own Redis database, importdir) on the secure etcd as `name`."""
    node.env |= etcd.env(name) | {"MAO_NODE_ID": name}
    return node


def make_tool(name: str) -> Tool:
    return helpers.make_tool(name, created_by="node-b")


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed maoctl: exactly one line on stderr, no traceback."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_right_user_password_ca_and_certificate_read_the_registry(
    secure_etcd: SecureEtcd, node: NodeUnderTest
) -> None:
    tool = f"t{uuid4().hex[:6]}"
    secure_etcd.registry("node-b").tools.add(make_tool(tool))

    result = maoctl(secure_node(node, secure_etcd), "tool", "get", tool)

    assert result.returncode == 0, result.stderr
    assert tool in result.stdout


def test_a_wrong_password_exits_3_naming_authentication_and_the_user(
    secure_etcd: SecureEtcd, node: NodeUnderTest, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    node = secure_node(node, secure_etcd)
    node.env |= secure_etcd.env("node-a", password_file=wrong)

    result = maoctl(node, "tool", "get")

    assert result.returncode == 3
    line = one_line_error(result)
    assert "etcd authentication as user 'mao-node-a' failed" in line
    assert "MAO_ETCD_PASSWORD" in line
    assert "not-the-password" not in result.stderr + result.stdout


def test_no_client_certificate_exits_3_naming_tls_and_the_certificate(
    secure_etcd: SecureEtcd, node: NodeUnderTest
) -> None:
    node = secure_node(node, secure_etcd)
    for key in ("MAO_ETCD_CERT", "MAO_ETCD_KEY"):
        del node.env[key]

    result = maoctl(node, "tool", "get")

    assert result.returncode == 3
    line = one_line_error(result)
    assert "etcd TLS handshake failed" in line
    assert "MAO_ETCD_CERT" in line


def test_a_ca_that_did_not_sign_the_server_exits_3_naming_tls(
    secure_etcd: SecureEtcd, node: NodeUnderTest, tmp_path: Path
) -> None:
    other_ca = make_certs(tmp_path / "other") / "ca.pem"
    node = secure_node(node, secure_etcd)
    node.env["MAO_ETCD_CA"] = str(other_ca)

    result = maoctl(node, "status")

    assert result.returncode == 3
    assert "etcd TLS handshake failed" in result.stdout + result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout + result.stderr


def test_config_masks_the_etcd_password(secure_etcd: SecureEtcd, node: NodeUnderTest) -> None:
    node = secure_node(node, secure_etcd)
    node.env["MAO_ETCD_PASSWORD"] = "shown-nowhere"
    del node.env["MAO_ETCD_PASSWORD_FILE"]

    result = maoctl(node, "config")

    assert result.returncode == 0, result.stderr
    assert "shown-nowhere" not in result.stdout
    assert "mao-node-a" in result.stdout


def test_each_role_may_write_only_what_the_role_layout_grants(secure_etcd: SecureEtcd) -> None:
    node_a, node_b = secure_etcd.registry("node-a"), secure_etcd.registry("node-b")
    tool = f"t{uuid4().hex[:6]}"
    now = datetime.now(UTC)
    member_b = Member(node_id="node-b", hostname="h", version="1", started_at=now, last_seen=now)

    node_b.tools.add(make_tool(tool))  # node-b's role may write tools/
    lease = node_a.register_member(member_b.model_copy(update={"node_id": "node-a"}), 30)
    notification = Notification(
        tool=tool, node="node-a", run_id="r1", control_value=2.0, baseline=1.0,
        gain_pct=100.0, threshold_pct=20.0, detected_at=now,
    )  # fmt: skip
    _, written = node_a.publish_notification(notification, now, 60)

    assert written
    assert [m.node_id for m in node_b.members()[0]] == ["node-a"]
    node_a.revoke_member_lease(lease)
    with pytest.raises(Forbidden, match="permission denied for user 'mao-node-a'"):
        node_a.register_member(member_b, 30)
    with pytest.raises(Forbidden, match="permission denied"):
        node_a.tools.remove(tool)
    with pytest.raises(Forbidden, match="permission denied"):
        node_a.tools.add(make_tool(f"{tool}x"))
    assert node_a.tools.get(tool).name == tool  # reading stays allowed


def test_a_tool_removal_the_role_forbids_exits_1_naming_the_permission(
    secure_etcd: SecureEtcd, node: NodeUnderTest
) -> None:
    tool = f"t{uuid4().hex[:6]}"
    secure_etcd.registry("node-b").tools.add(make_tool(tool))

    result = maoctl(secure_node(node, secure_etcd), "tool", "remove", tool)

    assert result.returncode == 1
    assert "permission denied for user 'mao-node-a'" in one_line_error(result)
    assert secure_etcd.registry("node-b").tools.get(tool).name == tool


def test_an_expired_token_is_replaced_without_the_caller_seeing_it(
    secure_etcd: SecureEtcd,
) -> None:
    registry = secure_etcd.registry("node-a")
    registry.tools.list()
    token = registry.etcd.client.metadata

    def token_expired() -> bool:
        endpoint = etcd_endpoint(
            secure_etcd.cluster.endpoints[0], client_tls(secure_etcd.cert_dir, "mao-node-a")
        )
        with pyetcd.MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=3) as probe:
            probe.metadata = token
            try:
                probe.get(secure_etcd.prefix)
            except grpc.RpcError as e:
                return bool(e.code() == grpc.StatusCode.UNAUTHENTICATED)
        return False

    # Each probe comes after the token's lifetime (a use would extend it).
    wait_until(token_expired, 10 * TOKEN_TTL_S, what="the token to expire", poll_s=TOKEN_TTL_S + 1)

    assert registry.tools.list()[1] == []
    assert registry.etcd.client.metadata != token


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    (port,) = free_ports(1)
    server = RedisServer(port, tmp_path_factory.mktemp("redis-pw"), REDIS_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    work = tmp_path_factory.mktemp("redis-tls")
    (port,) = free_ports(1)
    server = RedisServer(port, work, REDIS_PASSWORD, make_certs(work / "certs", "server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def status_healthy(node: NodeUnderTest) -> subprocess.CompletedProcess[str] | None:
    """Wait until `maoctl status` exits 0 (the worker and beat answer through Redis)."""

    def healthy() -> subprocess.CompletedProcess[str] | None:
        result = maoctl(node, "status")
        return result if result.returncode == 0 else None

    return wait_until(
        healthy,
        HEALTHY_WITHIN_S,
        what="maoctl status to exit 0",
        details=lambda: maoctl(node, "status").stdout,
    )


@pytest.mark.parametrize("server", ["password_redis", "tls_redis"])
def test_a_node_on_redis_with_a_password_works_with_the_right_one(
    server: str, request: pytest.FixtureRequest, node: NodeUnderTest, etcd_server: EtcdServer
) -> None:
    redis_server: RedisServer = request.getfixturevalue(server)
    node.env["MAO_REDIS_URL"] = redis_server.url_with(REDIS_PASSWORD, 1)
    node.start_worker()
    node.start_beat()

    result = status_healthy(node)

    assert result is not None
    assert redis_server.url_with("***", 1) in result.stdout
    assert REDIS_PASSWORD not in result.stdout
    runs = maoctl(node, "tool", "runs", "never-registered")  # Redis read, then etcd: not found
    assert (runs.returncode, one_line_error(runs)) == (1, runs.stderr.strip())


@pytest.mark.parametrize("password", ["wrong-secret", None])
def test_a_wrong_or_missing_redis_password_exits_3_naming_authentication(
    password: str | None, password_redis: RedisServer, node: NodeUnderTest
) -> None:
    node.env["MAO_REDIS_URL"] = password_redis.url_with(password, 1)

    status = maoctl(node, "status")
    runs = maoctl(node, "tool", "runs", "never-registered")

    assert status.returncode == 3
    assert "Redis authentication failed" in status.stdout + status.stderr
    assert runs.returncode == 3
    line = one_line_error(runs)
    assert line.startswith("error: Redis authentication failed at redis://")
    assert "MAO_REDIS_URL" in line
    assert "wrong-secret" not in status.stdout + status.stderr + runs.stderr
