"""scripts/federation-demo.sh end to end: a 3-member etcd with TLS and auth, two nodes (worker
and beat each, through worker.sh) on a private redis-server, node A's run logged and alerted on
node B, both members listed, both nodes still working with one etcd member stopped; then
`scripts/stop.sh federation` (only the demo's processes: never the shared services) stops it.
Its own directory, ports and Redis, so a developer's running demo is left alone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.node import REPO_ROOT
from tests.fixtures.services import RedisServer, free_ports, require_root

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 170.0
SPIKE_ON_B = "[federation] node-b log: "
ALERT_ON_B = "[federation] node-b alert "


@pytest.fixture
def demo_redis(tmp_path: Path) -> Iterator[RedisServer]:
    (port,) = free_ports(1)
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(port, data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pids_of(run_dir: Path) -> dict[str, int]:
    """The demo's processes by pid file name (node-a, etcd-0, ...)."""
    return {path.stem: int(path.read_text()) for path in run_dir.glob("*.pid")}


def runs(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (the demo's processes are orphans: who
    reaps them is the machine's init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.slow
def test_the_federation_demo_runs_survives_a_member_stop_and_stops(
    demo_redis: RedisServer, tmp_path: Path
) -> None:
    require_root()
    fed_dir = tmp_path / "federation"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAO_", "ETCDCTL_"))}
    env |= {
        "MAO_FED_DIR": str(fed_dir),
        "MAO_FED_ETCD_PORTS": " ".join(map(str, free_ports(6))),
        "MAO_FED_REDIS": f"redis://127.0.0.1:{demo_redis.port}",
        "MAO_FED_SETUP": "0",
    }
    try:
        demo = subprocess.run(
            ["bash", "scripts/federation-demo.sh"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
            check=False,
        )
        started = pids_of(fed_dir / "run")
    finally:
        stop = subprocess.run(
            ["bash", "scripts/stop.sh", "federation"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    out = demo.stdout
    spikes = [line for line in out.splitlines() if line.startswith(SPIKE_ON_B)]
    alerts = [line for line in out.splitlines() if line.startswith(ALERT_ON_B)]
    assert len(spikes) == 2
    assert all("spike: tool demo on node node-a" in s for s in spikes)
    assert len(alerts) == 2
    assert all('"title": "MAO spike: demo on node-a"' in a for a in alerts)
    before, _, after = out.partition("etcd: stopping member fed-2")
    assert after, out
    for members in (before.split("maoctl members")[-1], after.split("maoctl members")[-1]):
        assert "node-a" in members
        assert "node-b" in members
    assert "done: the federation keeps running on 2 etcd members" in after
    assert set(started) == {"node-a", "node-b", "etcd-0", "etcd-1"}
    assert stop.returncode == 0, stop.stderr
    assert not list((fed_dir / "run").glob("*.pid"))
    assert [name for name, pid in started.items() if runs(pid)] == []
