"""Flower started by `worker.sh flower` (mao_celery/flower.py), a real process on a free loopback
port: with basic auth on, every endpoint, `/metrics` and `/healthcheck` included, asks for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fixtures.node import WORKER_READY_TIMEOUT_S, NodeUnderTest
from tests.fixtures.services import LOOPBACK, free_ports
from tests.helpers import Script

pytestmark = pytest.mark.integration

USER = "mao"
PATHS = ["/metrics", "/healthcheck", "/api/workers", "/api/tasks", "/", "/tasks", "/broker",
         "/static/css/flower.css", "/no-such-page"]  # fmt: skip


@pytest.fixture
def flower(node: NodeUnderTest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Flower with basic auth (user `mao`, a random password); yields (base URL, password)."""
    (port,) = free_ports(1)
    password = uuid.uuid4().hex
    env = {"MAO_FLOWER_PORT": str(port), "MAO_FLOWER_USER": USER, "MAO_FLOWER_PASSWORD": password}
    script = Script("flower", node.env | env, tmp_path / "flower.log", cwd=tmp_path)
    try:
        script.wait_for_log("Visit me at", WORKER_READY_TIMEOUT_S)
        yield f"http://{LOOPBACK}:{port}", password
    finally:
        script.kill_group()


@pytest.mark.parametrize("path", PATHS)
def test_every_endpoint_answers_401_without_valid_credentials(
    flower: tuple[str, str], path: str
) -> None:
    base, password = flower

    anonymous = requests.get(base + path, timeout=10, allow_redirects=False)
    wrong = requests.get(base + path, auth=(USER, password + "x"), timeout=10)

    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="flower"'
    assert "celery" not in anonymous.text
    assert wrong.status_code == 401


@pytest.mark.parametrize("path", ["/metrics", "/healthcheck", "/api/workers", "/"])
def test_an_endpoint_answers_with_the_credentials(flower: tuple[str, str], path: str) -> None:
    base, password = flower

    response = requests.get(base + path, auth=(USER, password), timeout=30)

    assert response.status_code == 200, response.text
    if path == "/metrics":
        assert "flower_events_total" in response.text
