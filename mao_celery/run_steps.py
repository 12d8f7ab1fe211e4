"""The steps of a tool run as plain functions (design.md §4): each takes the node's clients and
the run's report and returns a new report, failed with a reason when the step cannot do its part.
tasks.py wraps each in a Celery task; the order is `enqueue.RUN_STEPS`.

prepare (clone and hand over the data directory) -> run (the tool's container) -> detect (the
spike rule on the control files) -> publish (the notification of a spike; the run ends).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mao_celery import containers, dataplane, datasets, gitcmd, spike
from mao_celery.enqueue import RUN_CONTAINER
from mao_celery.exceptions import InvalidInput, MaoError, NotFound
from mao_celery.models import TERMINAL_STATUSES, Notification, RunReport, RunStatus, utcnow
from mao_celery.node import Node
from mao_celery.runs import RunStore

ADOPTION_WAIT_S = 60.0
"""How long a twin task waits for the outcome recorded by the task whose container it adopted."""


def prepare(ctx: Node, report: RunReport) -> RunReport:
    """Read the tool from the registry, clone its data repository on first use (else refresh the
    clone: `dataplane.sync`) and hand the data directory to the tool's user. The report records
    the commit the tool runs on and each failed try of git; git's own retries are bounded
    (`gitcmd.GitLimits`), so a data repository host that cannot be read fails the run at once
    instead of the step's retries.

    The run's limits (timeout, memory, CPUs) are the tool's, else the node's defaults; a tool
    asking for more than this node's maxima fails the run before anything is cloned."""
    tool = ctx.registry.tools.get(report.tool)
    conf = ctx.settings
    try:
        limits = conf.run_limits(tool.timeout_s, tool.memory_bytes, tool.cpus)
    except InvalidInput as e:
        return report.failed(f"tool {tool.name!r} asks for more than this node allows: {e}")
    data_dir = datasets.local_path(conf.importdir, tool.name)
    tries: list[str] = []
    try:
        head = dataplane.sync(tool, conf, tries=tries)
    except gitcmd.GitUnavailable as e:
        return report.updated(git_tries=tries).failed(str(e))
    datasets.hand_over(data_dir, *conf.tool_uid_gid)
    return report.updated(
        data_commit=head,
        git_tries=tries,
        started_at=utcnow(),
        timeout_s=limits.timeout_s,
        memory_bytes=limits.memory_bytes,
        cpus=limits.cpus,
        image=tool.image,
        data_dir=str(data_dir),
        spike_window=tool.spike_window or conf.spike_window,
        spike_threshold_pct=tool.spike_threshold_pct or conf.spike_threshold_pct,
        control_marker=spike.control_marker(data_dir),
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
    system the tool asks for (see `tool_box`), within the limits `prepare` chose (timeout,
    memory, CPUs); the report records the user and network.

    Raises:
        RunFailed: the node does not allow the tool's network (no container is started).
    """
    conf = ctx.settings
    asked, read_only_rootfs = tool_box(ctx, report.tool)
    network = containers.granted_network(
        report.tool, asked, conf.tool_network, conf.tool_networks_allowed
    )
    report = report.updated(user=conf.tool_user, network=network)
    # the limits chosen by `prepare`; a report prepared by an older worker has none: the node's
    memory_bytes, cpus = report.memory_bytes, report.cpus
    if memory_bytes is None:
        memory_bytes, cpus = conf.run_memory_bytes, conf.cpus_default
    spec = containers.ContainerSpec(
        run_id=report.run_id,
        tool=report.tool,
        image=report.image,
        data_dir=Path(report.data_dir),
        user=report.user,
        timeout_s=report.timeout_s,
        memory_bytes=memory_bytes,
        nano_cpus=int(cpus * 1e9) if cpus else None,
        network_mode=network,
        read_only_rootfs=read_only_rootfs,
        adopt_only=report.resumed_step,
    )
    try:
        outcome = containers.run_container(
            ctx.docker,
            spec,
            log_sink=RunLog(ctx.runs, report.run_id),
            cancelled=lambda: ctx.runs.get(report.run_id).status == RunStatus.CANCELLED,
        )
    except containers.ContainerGone:
        return adopted_outcome(ctx, report)
    datasets.hand_over(Path(report.data_dir), *conf.tool_uid_gid)  # no setuid file left behind
    stored = ctx.runs.get(report.run_id)
    if stored.status == RunStatus.INTERRUPTED:
        return stored
    if stored.status == RunStatus.CANCELLED:  # stopped by `run cancel` or a Celery revoke
        return stored.updated(exit_code=outcome.exit_code, log_tail=outcome.log_tail)
    report = report.updated(
        container_name=outcome.container_name,
        exit_code=outcome.exit_code,
        log_tail=outcome.log_tail,
        image_digest=outcome.image_id,
    )
    if outcome.failure is not None:  # containers.judge: timeout, memory, signal or exit code
        return report.failed(outcome.failure)
    return report


@dataclass(frozen=True)
class RunLog:
    """A run's container output, kept next to its record (`RunStore.append_log`: the last
    `runs.LOG_MAX_BYTES` bytes); a `containers.LogSink`."""

    runs: RunStore
    run_id: str

    def restart(self) -> None:
        """Forget the output kept so far (the container's output is read again from its start).

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        self.runs.clear_log(self.run_id)

    def write(self, data: bytes) -> None:
        """Keep `data`, the next bytes of the container's output.

        Raises:
            InvalidState: the log key is of the wrong Redis type.
            ServiceUnavailable: Redis did not answer.
        """
        self.runs.append_log(self.run_id, data)


def adopted_outcome(ctx: Node, report: RunReport) -> RunReport:
    """The report recorded by the twin task that finished and removed this run's container."""

    def recorded(r: RunReport) -> bool:
        return RUN_CONTAINER in r.steps_done or r.status in TERMINAL_STATUSES

    done = ctx.runs.wait(report.run_id, recorded, ADOPTION_WAIT_S)
    if not recorded(done):
        return report.failed("the run's container vanished before its outcome was recorded")
    return done


def detect(ctx: Node, report: RunReport) -> RunReport:
    """Read the control files and apply the spike rule, commit what the run wrote (`commit`);
    fail the run when the tool, though it exited 0, wrote no new control file (most often: it
    cannot write its data directory)."""
    result = spike.detect_spike(
        Path(report.data_dir),
        window=report.spike_window,
        threshold_pct=report.spike_threshold_pct,
        before=report.control_marker,
    )
    report = commit(ctx, report.updated(spike=result))
    if not result.new_files:
        return report.failed(
            f"the tool wrote no new control file in {containers.DATA_MOUNT} (it runs as uid:gid "
            f"{report.user}; the data directory must be writable by that user, and the image must "
            "write control-<value>.csv there)"
        )
    return report


def commit(ctx: Node, report: RunReport) -> RunReport:
    """Commit what the run changed in its data directory, as the node, the run's provenance in
    the commit's trailers (`dataplane.run_trailers`); the report records the commit.

    Raises:
        InvalidInput: git could not commit (its reason).
    """
    made = dataplane.commit_run(
        Path(report.data_dir),
        identity=dataplane.Identity.of_node(ctx.settings.node_id),
        trailers=dataplane.run_trailers(report),
    )
    return report.updated(run_commit=made)


def push(ctx: Node, report: RunReport) -> RunReport:
    """Push the data directory's commits to the tool's push branch when the tool or the node
    pushes (`dataplane.push_branch`); the report records the branch or why the push failed (a
    failed push does not fail the run: the next run's push carries the commits). A tool
    removed since the run started is not pushed."""
    try:
        tool = ctx.registry.tools.get(report.tool)
    except NotFound:
        return report
    conf = ctx.settings
    try:
        branch = dataplane.push_branch(tool, conf)
        if branch is None:
            return report
        dataplane.push(
            Path(report.data_dir),
            ref=branch,
            url=tool.data_repo,
            branch=tool.branch,
            identity=dataplane.Identity.of_node(conf.node_id),
            credentials=conf.git_credentials_file,
            limits=gitcmd.GitLimits.from_settings(conf),
        )
    except MaoError as e:
        return report.updated(push_error=str(e))
    return report.updated(pushed_to=branch)


def publish(ctx: Node, report: RunReport) -> RunReport:
    """Push the run's commit (`push`); on a spike, publish the run's notification to etcd (once
    per run); end the run."""
    report = push(ctx, report)
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
