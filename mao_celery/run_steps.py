"""The steps of a tool run as plain functions (design.md §4): each takes the node's clients and
the run's report and returns a new report, failed with a reason when the step cannot do its part.
tasks.py wraps each in a Celery task; the order is `enqueue.RUN_STEPS`.

prepare (clone and hand over the data directory) -> run (the tool's container) -> detect (the
spike rule on the control files) -> publish (the notification of a spike; the run ends).
"""

from __future__ import annotations

from pathlib import Path

from mao_celery import containers, datasets, spike
from mao_celery.enqueue import RUN_CONTAINER
from mao_celery.exceptions import NotFound
from mao_celery.models import TERMINAL_STATUSES, Notification, RunReport, RunStatus, utcnow
from mao_celery.node import Node

ADOPTION_WAIT_S = 60.0
"""How long a twin task waits for the outcome recorded by the task whose container it adopted."""


def prepare(ctx: Node, report: RunReport) -> RunReport:
    """Read the tool from the registry, clone its data repository on first use and hand the data
    directory to the tool's user. The report records the commit the tool runs on and each
    failed try of git; git's own retries are bounded (`datasets.GitLimits`), so a data
    repository host that cannot be read fails the run at once instead of the step's retries."""
    tool = ctx.registry.tools.get(report.tool)
    conf = ctx.settings
    data_dir = datasets.local_path(conf.importdir, tool.name)
    tries: list[str] = []
    try:
        datasets.ensure_clone(
            tool.data_repo,
            data_dir,
            credentials=conf.git_credentials_file,
            branch=tool.branch,
            limits=datasets.GitLimits.from_settings(conf),
            tries=tries,
        )
    except datasets.GitUnavailable as e:
        return report.updated(git_tries=tries).failed(str(e))
    datasets.hand_over(data_dir, *conf.tool_uid_gid)
    return report.updated(
        data_commit=datasets.head_commit(data_dir),
        git_tries=tries,
        started_at=utcnow(),
        timeout_s=conf.run_timeout_s,
        image=tool.image,
        data_dir=str(data_dir),
        spike_window=tool.spike_window or conf.spike_window,
        spike_threshold_pct=tool.spike_threshold_pct or conf.spike_threshold_pct,
        control_files_before=spike.list_control_names(data_dir),
    )


def tool_box(ctx: Node, name: str) -> tuple[str | None, bool]:
    """What tool `name` asks of its container: (network or None for the node's default,
    read-only root file system). A tool removed since its run was prepared gets the strictest
    box, (None, True), so that a redelivered run step still adopts and ends the run's container.

    Raises:
        ServiceUnavailable: etcd did not answer.
        InvalidInput: the tool's registry entry is not valid.
    """
    try:
        tool = ctx.registry.tools.get(name)
    except NotFound:
        return None, True
    return tool.network, tool.read_only_rootfs


def run(ctx: Node, report: RunReport) -> RunReport:
    """Run the tool's container on the data directory (or adopt the run's container), as the
    node's `tool_user`, on the network the tool asks for if the node allows it, with the root file
    system the tool asks for (see `tool_box`); the report records the user and network.

    Raises:
        RunFailed: the node does not allow the tool's network (no container is started).
    """
    conf = ctx.settings
    asked, read_only_rootfs = tool_box(ctx, report.tool)
    network = containers.granted_network(
        report.tool, asked, conf.tool_network, conf.tool_networks_allowed
    )
    report = report.updated(user=conf.tool_user, network=network)
    spec = containers.ContainerSpec(
        run_id=report.run_id,
        tool=report.tool,
        image=report.image,
        data_dir=Path(report.data_dir),
        user=report.user,
        timeout_s=report.timeout_s,
        memory_bytes=conf.run_memory_bytes,
        nano_cpus=int(conf.run_cpus * 1e9) if conf.run_cpus else None,
        network_mode=network,
        read_only_rootfs=read_only_rootfs,
    )
    try:
        outcome = containers.run_container(ctx.docker, spec)
    except containers.ContainerGone:
        return adopted_outcome(ctx, report)
    datasets.hand_over(Path(report.data_dir), *conf.tool_uid_gid)  # no setuid file left behind
    stored = ctx.runs.get(report.run_id)
    if stored.status == RunStatus.INTERRUPTED:
        return stored
    report = report.updated(
        container_name=outcome.container_name,
        exit_code=outcome.exit_code,
        log_tail=outcome.log_tail,
    )
    if outcome.failure is not None:  # containers.judge: timeout, memory, signal or exit code
        return report.failed(outcome.failure)
    return report


def adopted_outcome(ctx: Node, report: RunReport) -> RunReport:
    """The report recorded by the twin task that finished and removed this run's container."""

    def recorded(r: RunReport) -> bool:
        return RUN_CONTAINER in r.steps_done or r.status in TERMINAL_STATUSES

    done = ctx.runs.wait(report.run_id, recorded, ADOPTION_WAIT_S)
    if not recorded(done):
        return report.failed("the run's container vanished before its outcome was recorded")
    return done


def detect(ctx: Node, report: RunReport) -> RunReport:
    """Read the control files and apply the spike rule; fail the run when the tool, though it
    exited 0, wrote no new control file (most often: it cannot write its data directory)."""
    result = spike.detect_spike(
        Path(report.data_dir),
        window=report.spike_window,
        threshold_pct=report.spike_threshold_pct,
        seen_before=report.control_files_before,
    )
    report = report.updated(spike=result)
    if not result.new_files:
        return report.failed(
            f"the tool wrote no new control file in {containers.DATA_MOUNT} (it runs as uid:gid "
            f"{report.user}; the data directory must be writable by that user, and the image must "
            "write control-<value>.csv there)"
        )
    return report


def publish(ctx: Node, report: RunReport) -> RunReport:
    """On a spike, publish the run's notification to etcd (once per run); end the run."""
    result = report.spike
    key = None
    if result is not None and result.spike and result.latest is not None:
        notification = Notification(
            tool=report.tool,
            node=report.node,
            run_id=report.run_id,
            control_value=result.latest,
            baseline=result.baseline,
            gain_pct=result.gain_pct,
            threshold_pct=result.threshold_pct,
            detected_at=utcnow(),
        )
        key, _ = ctx.registry.publish_notification(
            notification,
            report.started_at or report.queued_at,
            ctx.settings.notification_retention_s,
        )
    return report.updated(notification_key=key, status=RunStatus.SUCCEEDED, finished_at=utcnow())
