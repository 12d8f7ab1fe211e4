"""maoctl: the command line of a MAO node (also `python cli.py`).

Thin by design: parse, call the package, print. Imports of the package's heavier modules
(etcd/gRPC, Docker, Celery, GitPython, rich) happen inside the commands that need them, so each
command pays only for what it uses (the one exception to "imports at the top", for start-up time).

Exit codes: 0 ok; 1 not found, already exists, already running or invalid input; 2 usage;
3 a service (etcd, Redis, Docker, git remote) is unreachable; 4 a tool run failed;
5 `tool run --wait-timeout-s` stopped waiting before the run ended.

Output rules (mao_celery/text.py): registry values, tools and containers are untrusted, so every
string shown for people goes through `printable` where it is printed (`fail`, `print_table`,
`warn_invalid`, `echo_lines`), and URLs through `redact_url`. JSON stays JSON: `json.dumps`
escapes control characters itself, and NaN/Infinity are refused.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

from mao_celery import exceptions as errors
from mao_celery.text import printable, printable_lines, redact_url

if TYPE_CHECKING:
    from pydantic import BaseModel

    from mao_celery.models import RunReport
    from mao_celery.node import Node
    from mao_celery.registry import Collection, InvalidEntry, Registry
    from mao_celery.settings import Settings

EXIT_CODES: dict[type[errors.MaoError], int] = {
    errors.NotFound: 1,
    errors.AlreadyExists: 1,
    errors.AlreadyRunning: 1,
    errors.InvalidInput: 1,
    errors.ServiceUnavailable: 3,
    errors.RunFailed: 4,
}
EXIT_STILL_RUNNING = 5


def fail(error: errors.MaoError) -> NoReturn:
    """Print `error` as one printable line on stderr and exit with its code."""
    click.echo(f"error: {printable(error)}", err=True)
    code = next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1)
    sys.exit(code)


class MaoGroup(click.Group):
    """A click group that turns MAO errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.MaoError as e:
            fail(e)


def current_node() -> Node:
    """The node of this command: its settings, read once, and its clients, each built on first
    use and closed when the command ends.

    Raises:
        InvalidInput: a setting is invalid.
    """
    from mao_celery.node import Node
    from mao_celery.settings import load_settings

    ctx = click.get_current_context()
    if "mao.node" not in ctx.meta:
        ctx.meta["mao.node"] = built = Node(load_settings())
        ctx.find_root().call_on_close(built.close)
    return cast("Node", ctx.meta["mao.node"])


def settings() -> Settings:
    return current_node().settings


def registry() -> Registry:
    return current_node().registry


def print_json(data: Any) -> None:
    """Print `data` (models are dumped in JSON mode) as indented JSON on stdout."""

    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):
            return value.model_dump(mode="json")
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    click.echo(json.dumps(plain(data), indent=2, allow_nan=False))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a table for people (rich); each cell is shown `printable`."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not markup: registry values come from any member of the federation.
        table.add_row(*(Text("" if cell is None else printable(cell)) for cell in row))
    if not table.row_count:
        click.echo(f"{title}: none")
        return
    console = Console()
    if not console.is_terminal:  # piped: keep long ids and URLs on one line
        console = Console(width=max(console.width, 200))
    console.print(table)


def warn_invalid(invalid: Iterable[InvalidEntry]) -> None:
    """Tell the user on stderr about registry entries that failed validation (one printable line
    each; the reason never holds a URL's credentials: `exceptions.describe_validation_error`)."""
    for entry in invalid:
        click.echo(f"warning: skipped {printable(entry.reason)}", err=True)


def echo_lines(lines: Iterable[str]) -> None:
    """Print `lines` for people on stdout, each made `printable` (a value holding a newline or an
    escape sequence cannot add a line or drive the terminal)."""
    for line in lines:
        click.echo(printable(line))


def show_entries(
    items: Sequence[BaseModel],
    as_json: bool,
    title: str,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[object]],
) -> None:
    """Print registry entries as JSON or as a table."""
    if as_json:
        print_json(list(items))
    else:
        print_table(title, columns, (row(item) for item in items))


def show_collection(
    collection: Collection[Any],
    name: str | None,
    as_json: bool,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[object]],
) -> None:
    """Print entry `name` of a registry collection, or all of them (warning about invalid ones)."""
    if name is not None:
        item = collection.get(name)
        if as_json:
            print_json(item)
            return
        items = [item]
    else:
        items, invalid = collection.list()
        warn_invalid(invalid)
    show_entries(items, as_json, f"{collection.kind.capitalize()}s", columns, row)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(cls=MaoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mao-orchestrator", prog_name="maoctl")
def main() -> None:
    """MAO Orchestrator: register, run and schedule data collectors (tools) and datasets."""


# ---- tools -----------------------------------------------------------------------------------


@main.group(cls=MaoGroup)
def tool() -> None:
    """List, register, remove and run tools."""


TOOL_COLUMNS = ("name", "author", "image", "data repo", "artefact", "description")


def tool_row(t: Any) -> Sequence[object]:
    return (t.name, t.author, t.image, redact_url(t.data_repo), t.artefact, t.description)


@tool.command("get")
@click.argument("name", required=False)
@json_option
def tool_get(name: str | None, as_json: bool) -> None:
    """List registered tools, or show tool NAME."""
    show_collection(registry().tools, name, as_json, TOOL_COLUMNS, tool_row)


@tool.command("add")
@click.argument("name")
@click.argument("author")
@click.argument("image")
@click.argument("data_repo")
@click.argument("code_repo")
@click.argument("artefact")
@click.option("--description", default="", help="What the tool collects.")
@click.option(
    "--spike-window",
    type=click.IntRange(1, 1000),
    help="Values averaged into the baseline (node default: 2).",
)
@click.option(
    "--spike-threshold",
    type=click.FloatRange(min=0, min_open=True),
    help="Spike when |gain| exceeds this many percent (node default: 20).",
)
@click.option(
    "--network",
    metavar="NAME",
    help="Docker network the tool needs, e.g. bridge; default: the node's MAO_TOOL_NETWORK "
    "(none); nodes run it only if they allow it.",
)
@click.option(
    "--writable-rootfs",
    is_flag=True,
    help="Let the tool write outside its data directory and /tmp (root file system writable).",
)
def tool_add(
    name: str,
    author: str,
    image: str,
    data_repo: str,
    code_repo: str,
    artefact: str,
    description: str,
    spike_window: int | None,
    spike_threshold: float | None,
    network: str | None,
    writable_rootfs: bool,
) -> None:
    """Register tool NAME: its Docker IMAGE runs against a clone of DATA_REPO.

    CODE_REPO is where its source lives; ARTEFACT is the kind of artefact it targets. The tool
    runs as an unprivileged user, without network and with a read-only root file system unless
    --network or --writable-rootfs say otherwise.
    """
    from mao_celery.models import Tool, build

    node = settings().node_id
    tool_ = build(
        Tool,
        name=name,
        author=author,
        image=image,
        data_repo=data_repo,
        code_repo=code_repo,
        artefact=artefact,
        description=description,
        spike_window=spike_window,
        spike_threshold_pct=spike_threshold,
        network=network,
        read_only_rootfs=not writable_rootfs,
        created_by=node,
    )
    registry().tools.add(tool_)
    click.echo(f"tool {name} registered")


@tool.command("remove")
@click.argument("name")
def tool_remove(name: str) -> None:
    """Remove tool NAME from the registry (its local data directory is kept)."""
    registry().tools.remove(name)
    unschedule(name)
    click.echo(f"tool {name} removed")


@tool.command("run")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Print the run id and return at once.")
@click.option(
    "--wait-timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop waiting after this many seconds (the run goes on); exit 5.",
)
@json_option
def tool_run(name: str, no_wait: bool, wait_timeout_s: float | None, as_json: bool) -> None:
    """Run tool NAME now on this node's workers and print its report.

    Exits 0 when the run succeeded, 4 when it failed (the reason on stderr), 5 when
    --wait-timeout-s passed first.
    """
    from mao_celery.enqueue import start_run

    ctx = current_node()
    runs = ctx.runs
    report = start_run(ctx.app, name, conf=ctx.settings, registry=ctx.registry, runs=runs)
    if no_wait:
        click.echo(report.run_id)
        return
    report = wait_for_run(runs, report.run_id, wait_timeout_s)
    if not report.status.terminal:
        click.echo(f"run {report.run_id} is still {report.status}: see `maoctl run show`", err=True)
        sys.exit(EXIT_STILL_RUNNING)
    show_report(report, as_json)


def wait_for_run(runs: Any, run_id: str, timeout_s: float | None) -> RunReport:
    """Poll run `run_id` until it ends or `timeout_s` seconds pass, showing its stage on stderr."""
    from rich.console import Console
    from rich.text import Text

    deadline = time.monotonic() + timeout_s if timeout_s else math.inf

    stages = {
        "queued": "queued, waiting for a worker (is one running? see `worker.sh`)",
        "preparing": "preparing the dataset (cloning on first use)",
        "running": "running the container",
        "detecting": "detecting spikes",
        "publishing": "publishing the notification",
    }
    with Console(stderr=True).status(Text(printable(f"run {run_id}: queued"))) as shown:
        report = runs.get(run_id)
        while not report.status.terminal and time.monotonic() < deadline:
            stage = stages.get(report.status, report.status)
            shown.update(Text(printable(f"run {run_id}: {stage}")))
            report = runs.wait(
                run_id, lambda r, s=report.status: r.status != s, timeout_s=1.0, poll_s=0.05
            )
    return cast("RunReport", report)


def show_report(report: RunReport, as_json: bool) -> None:
    """Print a run report; exit 4 with the reason on stderr when the run failed or was
    interrupted (a run still under way exits 0)."""
    if as_json:
        print_json(report)
    else:
        echo_lines(report_lines(report))
    if report.status.terminal and report.status != "succeeded":
        fail(errors.RunFailed(f"run {report.run_id} {report.status}: {report.error}"))


@tool.command("runs")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@json_option
def tool_runs(name: str, limit: int, as_json: bool) -> None:
    """List the recent runs of tool NAME on this node, newest first."""
    reports = current_node().runs.recent(name, limit)
    if as_json:
        print_json(reports)
        return
    print_table(
        f"Runs of {name}",
        ("run", "status", "queued", "finished", "exit", "spike", "gain %", "error"),
        (
            (
                r.run_id,
                r.status,
                f"{r.queued_at:%Y-%m-%d %H:%M:%S}",
                f"{r.finished_at:%H:%M:%S}" if r.finished_at else "",
                r.exit_code,
                ("yes" if r.spike.spike else "no") if r.spike else "",
                f"{r.spike.gain_pct:+.1f}" if r.spike and r.spike.gain_pct is not None else "",
                r.error,
            )
            for r in reports
        ),
    )


@main.group(cls=MaoGroup)
def run() -> None:
    """Show runs of this node."""


@run.command("show")
@click.argument("run_id")
@json_option
def run_show(run_id: str, as_json: bool) -> None:
    """Show the report of run RUN_ID (exit 4 if it failed or was interrupted)."""
    report = current_node().runs.get(run_id)
    if not report.status.terminal:
        click.echo(f"run {run_id} is {report.status}", err=True)
    show_report(report, as_json)


@main.group(cls=MaoGroup)
def notifications() -> None:
    """Spike notifications of the federation."""


@notifications.command("list")
@click.option("--tool", "tool_name", help="Only the notifications of this tool.")
@json_option
def notifications_list(tool_name: str | None, as_json: bool) -> None:
    """List spike notifications, oldest first."""
    found, invalid, _ = registry().notifications(tool=tool_name)
    warn_invalid(invalid)
    if as_json:
        print_json([{"key": key} | n.model_dump(mode="json") for key, n in found])
        return
    print_table(
        "Notifications",
        ("detected", "tool", "node", "value", "baseline", "gain %", "run"),
        (
            (
                f"{n.detected_at:%Y-%m-%d %H:%M:%S}",
                n.tool,
                n.node,
                n.control_value,
                n.baseline,
                "undefined" if n.gain_pct is None else f"{n.gain_pct:+.1f}",
                n.run_id,
            )
            for _, n in found
        ),
    )


# ---- datasets --------------------------------------------------------------------------------


@main.group(cls=MaoGroup)
def dataset() -> None:
    """List, register, remove and clone datasets."""


@dataset.command("get")
@click.argument("name", required=False)
@json_option
def dataset_get(name: str | None, as_json: bool) -> None:
    """List registered datasets, or show dataset NAME."""
    columns = ("name", "url", "description")
    show_collection(
        registry().datasets,
        name,
        as_json,
        columns,
        lambda d: (d.name, redact_url(d.url), d.description),
    )


@dataset.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--description", default="", help="What the dataset holds.")
def dataset_add(name: str, url: str, description: str) -> None:
    """Register dataset NAME, a git repository at URL."""
    from mao_celery.models import Dataset, build

    item = build(
        Dataset, name=name, url=url, description=description, created_by=settings().node_id
    )
    registry().datasets.add(item)
    click.echo(f"dataset {name} registered")


@dataset.command("remove")
@click.argument("name")
def dataset_remove(name: str) -> None:
    """Remove dataset NAME from the registry (a local clone is kept)."""
    registry().datasets.remove(name)
    click.echo(f"dataset {name} removed")


@dataset.command("clone")
@click.argument("name")
@click.option("--update", is_flag=True, help="Fast-forward an existing clone instead.")
def dataset_clone(name: str, update: bool) -> None:
    """Clone dataset NAME into importdir/NAME (or fast-forward it with --update)."""
    from mao_celery import datasets

    conf = settings()
    dest = datasets.local_path(conf.importdir, name)
    item = registry().datasets.get(name)
    if update:
        head = datasets.update(dest, url=item.url, credentials=conf.git_credentials_file)
        click.echo(f"dataset {name} updated to {head[:12]} in {dest}")
        return
    from mao_celery.text import redact_url

    click.echo(f"cloning {redact_url(item.url)} into {dest} ...", err=True)
    datasets.clone(item.url, dest, credentials=conf.git_credentials_file)
    click.echo(f"dataset {name} cloned into {dest}")


@dataset.command("list-local")
@json_option
def dataset_list_local(as_json: bool) -> None:
    """List the data directories under importdir (from the file system)."""
    from mao_celery import datasets

    local = datasets.list_local(settings().importdir)
    if as_json:
        print_json([asdict(item) | {"path": str(item.path)} for item in local])
    else:
        print_table(
            "Local datasets",
            ("name", "path", "git", "head", "remote"),
            ((d.name, d.path, "yes" if d.is_git else "no", d.head, d.remote) for d in local),
        )


# ---- schedules -------------------------------------------------------------------------------


def unschedule(name: str) -> None:
    """Remove tool NAME's schedule on this node, if it has one (for `tool remove`)."""
    from mao_celery import schedules

    try:
        schedules.remove(current_node().app, name)
    except errors.NotFound:
        return


@tool.command("schedule")
@click.argument("name")
@click.argument("period", required=False, type=click.Choice(["daily", "weekly"]))
@click.option("--at", metavar="HH:MM", help="With daily/weekly: run at this time of day.")
@click.option("--day", metavar="mon..sun", help="With weekly --at: the day (default mon).")
@click.option("--tz", metavar="Area/City", help="Time zone of --at (default UTC).")
@click.option("--cron", metavar='"m h dom mon dow"', help="A cron expression, in UTC.")
@click.option("--every-s", type=float, hidden=True, help="Every SECONDS (for tests).")
def tool_schedule(
    name: str,
    period: str | None,
    at: str | None,
    day: str | None,
    tz: str | None,
    cron: str | None,
    every_s: float | None,
) -> None:
    """Run tool NAME periodically on this node's workers (needs `celery beat` running).

    \b
    daily / weekly       every 24 h / 7 days, counted from now
    daily --at 06:30     each day at 06:30 (weekly: on --day, default mon)
    --cron "0 6 * * 1-5" a cron expression (minute hour day-of-month month day-of-week)

    Times are UTC unless --tz names a zone (e.g. Europe/Paris). RedBeat stores cron fields
    without a time zone, so --at is converted to UTC when the schedule is created (with the
    offset in force then): after a daylight-saving change the run happens an hour earlier or
    later in local time; schedule the tool again to follow it. `schedule list` shows both.

    A tool has at most one schedule: scheduling it again replaces the old one.
    """
    from mao_celery import schedules

    spec = schedules.make_spec(period, at=at, day=day, tz=tz, cron=cron, every_s=every_s)
    registry().tools.get(name)
    done = schedules.add(current_node().app, name, spec)
    if done.replaced is not None:
        click.echo(f"tool {name}: replaced its schedule ({done.replaced})")
    next_run = f"{schedules.next_run_at(done.entry):%Y-%m-%d %H:%M:%S} UTC"
    click.echo(f"tool {name} scheduled {spec.description}; next run {next_run}")


@main.group("schedule", cls=MaoGroup)
def schedule_group() -> None:
    """List and remove the tool schedules of this node."""


@schedule_group.command("list")
@json_option
def schedule_list(as_json: bool) -> None:
    """List this node's tool schedules with their next run and the tool's last result.

    Times are UTC; --at times given in another zone were converted to UTC when scheduled.
    """
    from mao_celery import schedules

    infos = schedules.list_schedules(current_node().app, current_node().runs)
    if as_json:
        print_json(infos)
        return
    print_table(
        "Schedules (times in UTC)",
        ("tool", "schedule", "next run", "last run", "last result"),
        (
            (
                i.tool,
                i.schedule,
                f"{i.next_run_at:%Y-%m-%d %H:%M:%S}",
                f"{i.last_run_at:%Y-%m-%d %H:%M:%S}" if i.last_run_at else "never",
                i.last_result,
            )
            for i in infos
        ),
    )


@schedule_group.command("remove")
@click.argument("name")
def schedule_remove(name: str) -> None:
    """Remove tool NAME's schedule (a run under way goes on)."""
    from mao_celery import schedules

    schedules.remove(current_node().app, name)
    click.echo(f"schedule of tool {name} removed")


# ---- members ---------------------------------------------------------------------------------


@main.command()
@json_option
def members(as_json: bool) -> None:
    """List the live members of the federation (nodes whose heartbeat lease has not expired)."""
    found, invalid = registry().members()
    warn_invalid(invalid)
    show_entries(
        found,
        as_json,
        "Members",
        ("node", "host", "version", "started", "last seen"),
        lambda m: (
            m.node_id,
            m.hostname,
            m.version,
            f"{m.started_at:%Y-%m-%d %H:%M:%S}",
            f"{m.last_seen:%Y-%m-%d %H:%M:%S}",
        ),
    )


# ---- node ------------------------------------------------------------------------------------


@main.group("node", cls=MaoGroup)
def node_group() -> None:
    """Operate this node's own processes."""


@node_group.command("interrupt-runs")
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    required=True,
    help="The grace period that ran out, in seconds (quoted in the runs' error).",
)
def node_interrupt_runs(grace_s: float) -> None:
    """Interrupt the runs of this node still in their containers (worker.sh, at the end of a
    shutdown's grace period): mark them interrupted, then stop their containers.

    Exits 3 when Docker or Redis does not answer.
    """
    from mao_celery.shutdown import interrupt_running_runs

    ctx = current_node()
    interrupted = interrupt_running_runs(ctx.docker, ctx.runs, grace_s)
    if interrupted:
        click.echo(
            f"shutdown: interrupted {len(interrupted)} run(s), their containers stopped: "
            + " ".join(interrupted)
        )
    else:
        click.echo("shutdown: no run of this node had a running container")


@main.command("config")
@json_option
def config_show(as_json: bool) -> None:
    """Show the settings in force: MAO_* variables, then MAO_CONFIG's file, then defaults.

    Exits 1 naming the first invalid setting. Passwords in URLs are masked.
    """
    values = settings().model_dump(mode="json")
    values["redis_url"] = redact_url(values["redis_url"])
    if as_json:
        print_json(values)
    else:
        echo_lines(f"{name:<28} {value}" for name, value in values.items())


@main.command()
@json_option
def status(as_json: bool) -> None:
    """Check this node's dependencies: etcd, Redis, the Docker daemon, importdir.

    Exits 3 when any of them is not usable.
    """
    from mao_celery.health import check_all

    checks = check_all(settings())
    if as_json:
        print_json([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])
    else:
        echo_lines(f"{c.name:<10} {'OK' if c.ok else 'FAIL'}  {c.detail}" for c in checks)
    if not all(check.ok for check in checks):
        sys.exit(EXIT_CODES[errors.ServiceUnavailable])


def report_lines(report: RunReport) -> list[str]:
    """A run report as lines for people, to print with `echo_lines` (so a value from the tool,
    e.g. a control file's name, cannot add a line). The log tail is split into its lines, each
    `printable` and indented by two spaces."""
    lines = [
        f"run        {report.run_id}",
        f"tool       {report.tool}  (node {report.node})",
        f"status     {report.status}",
        f"image      {report.image or 'n/a'}",
        f"data dir   {report.data_dir or 'n/a'}",
    ]
    if report.exit_code is not None:
        lines.append(f"exit code  {report.exit_code}")
    spike = report.spike
    if spike is not None:
        files = "file" if len(spike.files) == 1 else "files"
        lines += [
            f"snapshots  {len(spike.files)} valid control {files} ({len(spike.new_files)} new)",
            f"baseline   {_or_na(spike.baseline)}",
            f"current    {_or_na(spike.latest)}",
            f"difference {_or_na(spike.difference)}",
            f"gain       {'undefined' if spike.gain_pct is None else f'{spike.gain_pct:+.2f}%'}",
            f"spike      {'YES' if spike.spike else 'no'}  ({spike.reason})",
        ]
        lines += [f"invalid    {f.name}: {f.reason}" for f in spike.invalid]
        lines += [f"ignored    {name}" for name in spike.ignored]
        if spike.compliance_warning:
            lines.append(f"warning    {spike.compliance_warning}")
    if report.notification_key:
        lines.append(f"notified   {report.notification_key}")
    if report.error:
        lines.append(f"error      {report.error}")
    if report.log_tail and report.status != "succeeded":
        lines.append("log tail:")
        lines += ["  " + line for line in printable_lines(report.log_tail)]
    return lines


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else str(value)


if __name__ == "__main__":
    main(prog_name=Path(sys.argv[0]).stem if sys.argv[0].endswith("maoctl") else "cli.py")
