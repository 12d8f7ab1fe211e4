"""Starting a run when the broker does not take it: the run is recorded failed, its tool freed."""

import pytest
from celery import Celery

from mao_celery.celery_app import configure
from mao_celery.enqueue import start_run
from mao_celery.exceptions import ServiceUnavailable
from mao_celery.models import RunStatus, Tool
from mao_celery.registry import Registry
from tests.fixtures.node import NodeUnderTest
from tests.fixtures.services import free_ports

pytestmark = pytest.mark.integration


def test_a_run_the_broker_refuses_fails_at_once_and_frees_its_tool(
    node: NodeUnderTest, registry: Registry
) -> None:
    registry.tools.add(
        Tool(name="demo", author="t", image="mao-busybox:latest", data_repo="/srv/d.git",
             code_repo="/srv/c.git", artefact="csv")
    )  # fmt: skip
    (closed_port,) = free_ports(1)
    conf = node.settings().model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port}/0"})
    app = Celery("broker-down", set_as_current=False)
    configure(app, conf)
    app.conf.task_publish_retry = False
    app.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 1}}
    runs = node.runs()

    with pytest.raises(ServiceUnavailable, match=f"127.0.0.1:{closed_port}") as first:
        start_run(app, "demo", conf=conf, registry=registry, runs=runs)
    with pytest.raises(ServiceUnavailable):  # not AlreadyRunning: the failed run freed the tool
        start_run(app, "demo", conf=conf, registry=registry, runs=runs)

    [newest, older] = runs.recent("demo", 2)
    assert newest.status == older.status == RunStatus.FAILED
    assert older.error is not None
    assert older.error.startswith("could not send the run to the workers")
    assert "Redis" in str(first.value)
