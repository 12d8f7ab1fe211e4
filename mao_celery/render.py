"""maoctl's output: tables, report lines, JSON, the stages of a run being waited for.

Output rules (text.py): registry values, tools and containers are untrusted, so every string
shown for people goes through `printable` here, where it is printed (`print_table`,
`echo_lines`, `warn_invalid`, `error`), and URLs through `redact_url`. JSON stays JSON:
`json.dumps` escapes control characters itself, and NaN/Infinity are refused.

rich is imported by the functions that draw with it (maoctl's start-up time: `maoctl --help`
and the commands that print lines do not load it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from mao_celery.text import format_gain_pct, printable, printable_lines, redact_url

if TYPE_CHECKING:
    from mao_celery.datasets import LocalDataset
    from mao_celery.health import Check
    from mao_celery.models import Notification, RunReport
    from mao_celery.records import InvalidRecord
    from mao_celery.registry import InvalidEntry
    from mao_celery.schedules import Scheduled, ScheduleInfo
    from mao_celery.settings import Settings

TIME = "%Y-%m-%d %H:%M:%S"
STAGES = {
    "queued": "queued, waiting for a worker (is one running? see `worker.sh`)",
    "preparing": "preparing the dataset (cloning on first use)",
    "running": "running the container",
    "detecting": "detecting spikes",
    "publishing": "publishing the notification",
}
"""What a run waited for is doing, by status (other statuses are shown as they are)."""


# ---- the output boundary ---------------------------------------------------------------------


def error(message: object) -> None:
    """Print `message` as one printable `error: ...` line on stderr."""
    click.echo(f"error: {printable(message)}", err=True)


def note(message: object) -> None:
    """Print `message` as one printable line on stderr (progress, hints)."""
    click.echo(printable(message), err=True)


def echo_lines(lines: Iterable[str]) -> None:
    """Print `lines` for people on stdout, each made `printable` (a value holding a newline or an
    escape sequence cannot add a line or drive the terminal)."""
    for line in lines:
        click.echo(printable(line))


def warn_invalid(invalid: Iterable[InvalidEntry]) -> None:
    """Tell the user on stderr about registry entries that failed validation (one printable line
    each; the reason never holds a URL's credentials: `exceptions.describe_validation_error`)."""
    for entry in invalid:
        click.echo(f"warning: skipped {printable(entry.reason)}", err=True)


def warn_records(invalid: Iterable[InvalidRecord]) -> None:
    """Tell the user on stderr about node-local records that cannot be read and were skipped,
    one printable line each naming the key and the command that removes them."""
    for record in invalid:
        click.echo(
            f"warning: skipped invalid state at {printable(record.key)}: "
            f"{printable(record.reason)} (`maoctl repair` removes it)",
            err=True,
        )


def plain(value: Any) -> Any:
    """`value` as plain JSON data: models dumped in JSON mode, lists item by item."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """Print `data` (models are dumped in JSON mode) as indented JSON on stdout."""
    click.echo(json.dumps(plain(data), indent=2, allow_nan=False))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a table for people (rich); each cell is shown `printable`; "TITLE: none" when
    there is no row."""
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


# ---- listings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """How a list of entries is shown for people: a titled table, one row per entry."""

    title: str
    columns: tuple[str, ...]
    row: Callable[[Any], Sequence[object]]

    def show(self, items: Sequence[Any], as_json: bool) -> None:
        """Print `items` as JSON, or as this table."""
        if as_json:
            print_json(list(items))
        else:
            print_table(self.title, self.columns, (self.row(item) for item in items))


def _time(value: Any, fmt: str = TIME) -> str:
    return "" if value is None else format(value, fmt)


TOOLS = Listing(
    "Tools",
    ("name", "author", "image", "data repo", "artefact", "description"),
    lambda t: (t.name, t.author, t.image, redact_url(t.data_repo), t.artefact, t.description),
)
DATASETS = Listing(
    "Datasets", ("name", "url", "description"), lambda d: (d.name, redact_url(d.url), d.description)
)
MEMBERS = Listing(
    "Members",
    ("node", "host", "version", "started", "last seen"),
    lambda m: (m.node_id, m.hostname, m.version, _time(m.started_at), _time(m.last_seen)),
)


def _local(value: Any) -> str:
    """An aware time in its own zone, with the zone's abbreviation ("2026-03-29 06:00 CEST")."""
    return "" if value is None else format(value, "%Y-%m-%d %H:%M %Z")


def schedule_row(i: ScheduleInfo) -> Sequence[object]:
    """A schedule as a row of `SCHEDULES`; an invalid entry shows its key and the reason."""
    if i.state == "invalid":
        return (i.tool, "invalid", f"{i.key}: {i.error}", "", "", "", "", "")
    result = i.last_result if i.last_run_id else "never fired"
    return (
        i.tool,
        i.state,
        f"{i.schedule} ({i.explained})",
        _time(i.next_run_at) if i.next_run_at else "paused",
        _local(i.next_run_local),
        _time(i.last_fired_at),
        i.last_run_id,
        result,
    )


SCHEDULES = Listing(
    "Schedules (times in UTC; next local: in the schedule's zone)",
    ("tool", "state", "schedule", "next run", "next local", "last fire", "last run", "result"),
    schedule_row,
)


def warn_invalid_schedules(infos: Iterable[ScheduleInfo]) -> None:
    """Tell the user on stderr about schedule entries that cannot be read (one line each)."""
    for i in infos:
        if i.state == "invalid":
            click.echo(
                f"warning: invalid schedule entry {printable(i.key)}: {printable(i.error)} "
                f"(`maoctl schedule remove {printable(i.tool)}` removes it)",
                err=True,
            )


def scheduled_lines(done: Scheduled) -> list[str]:
    """What `schedule add` did, for people: the schedule it replaced, the new one and its
    first fire in UTC and in the schedule's zone."""
    lines = [] if done.replaced is None else [f"tool {done.tool}: replaced {done.replaced}"]
    first = f"{_time(done.next_run_at)} UTC ({_local(done.next_run_local)})"
    lines.append(f"tool {done.tool} scheduled {done.schedule} ({done.explained}); next run {first}")
    return lines


def show_next_fires(info: ScheduleInfo, fires: Sequence[datetime], as_json: bool) -> None:
    """Print a schedule's next fire times (aware, UTC) in UTC and in its zone, as JSON
    (`{"tool", "schedule", "tz", "state", "fires": [{"utc", "local"}]}`) or as a table."""
    zone = ZoneInfo(info.tz or "UTC")
    pairs = [(fire, fire.astimezone(zone)) for fire in fires]
    if as_json:
        print_json(
            {
                "tool": info.tool,
                "schedule": info.schedule,
                "tz": info.tz,
                "state": info.state,
                "fires": [{"utc": u.isoformat(), "local": lt.isoformat()} for u, lt in pairs],
            }
        )
        return
    title = f"Next fires of {info.tool}: {info.schedule}" + (" (paused)" if not fires else "")
    print_table(title, ("UTC", f"local ({info.tz})"), ((_time(u), _local(lt)) for u, lt in pairs))


LISTINGS = {"tool": TOOLS, "dataset": DATASETS}


def run_row(r: RunReport) -> Sequence[object]:
    """A run as a row of `show_runs`."""
    return (
        r.run_id,
        r.status,
        _time(r.queued_at),
        _time(r.finished_at, "%H:%M:%S"),
        r.exit_code,
        ("yes" if r.spike.spike else "no") if r.spike else "",
        format_gain_pct(r.spike.gain_pct if r.spike else None, unit="", undefined=""),
        r.error,
    )


def show_runs(tool: str, reports: Sequence[RunReport], as_json: bool) -> None:
    """Print the runs of `tool` as JSON or as a table."""
    columns = ("run", "status", "queued", "finished", "exit", "spike", "gain %", "error")
    Listing(f"Runs of {tool}", columns, run_row).show(reports, as_json)


def show_repair(invalid: Sequence[InvalidRecord], deleted: bool, as_json: bool) -> None:
    """Print what `maoctl repair` found (and deleted, when `deleted`) as JSON
    (`{"invalid": [{"key", "reason"}], "deleted": bool}`) or as lines."""
    if as_json:
        print_json({"invalid": [asdict(record) for record in invalid], "deleted": deleted})
        return
    if not invalid:
        click.echo("no invalid record on this node")
        return
    echo_lines(f"invalid  {record.key}  {record.reason}" for record in invalid)
    if deleted:
        click.echo(f"deleted {len(invalid)} invalid record(s)")
    else:
        click.echo(f"{len(invalid)} invalid record(s); `maoctl repair --yes` deletes them")


def notification_row(n: Notification) -> Sequence[object]:
    """A notification as a row of `show_notifications`."""
    gain = format_gain_pct(n.gain_pct, unit="")
    return (_time(n.detected_at), n.tool, n.node, n.control_value, n.baseline, gain, n.run_id)


def show_notifications(found: Sequence[tuple[str, Notification]], as_json: bool) -> None:
    """Print notifications (with their etcd keys) as JSON or as a table."""
    if as_json:
        print_json([{"key": key} | n.model_dump(mode="json") for key, n in found])
        return
    columns = ("detected", "tool", "node", "value", "baseline", "gain %", "run")
    print_table("Notifications", columns, (notification_row(n) for _, n in found))


def show_local_datasets(local: Sequence[LocalDataset], as_json: bool) -> None:
    """Print the data directories under importdir as JSON or as a table."""
    if as_json:
        print_json([asdict(item) | {"path": str(item.path)} for item in local])
        return
    print_table(
        "Local datasets",
        ("name", "path", "git", "head", "remote"),
        ((d.name, d.path, "yes" if d.is_git else "no", d.head, d.remote) for d in local),
    )


# ---- the node --------------------------------------------------------------------------------


def settings_values(conf: Settings) -> dict[str, Any]:
    """The settings as JSON data, passwords in URLs masked."""
    values = conf.model_dump(mode="json")
    values["redis_url"] = redact_url(values["redis_url"])
    return values


def show_settings(conf: Settings, as_json: bool) -> None:
    """Print the settings (passwords in URLs masked) as JSON or as `name value` lines."""
    values = settings_values(conf)
    if as_json:
        print_json(values)
    else:
        echo_lines(f"{name:<28} {value}" for name, value in values.items())


def show_checks(checks: Sequence[Check], as_json: bool) -> None:
    """Print the health checks as JSON or as `name OK|FAIL detail` lines."""
    if as_json:
        print_json([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])
    else:
        echo_lines(f"{c.name:<10} {'OK' if c.ok else 'FAIL'}  {c.detail}" for c in checks)


def interrupted_line(run_ids: Sequence[str]) -> str:
    """What `node interrupt-runs` did, in one line."""
    if not run_ids:
        return "shutdown: no run of this node had a running container"
    shown = " ".join(run_ids)
    return f"shutdown: interrupted {len(run_ids)} run(s), their containers stopped: {shown}"


# ---- runs ------------------------------------------------------------------------------------


def stage_line(run_id: str, status: str) -> str:
    """What run `run_id` is doing, for the line shown while waiting for it."""
    return f"run {run_id}: {STAGES.get(status, status)}"


def follow(report: RunReport, reports: Iterable[RunReport]) -> RunReport:
    """Show run `report`'s status, then the stage of each report of `reports` (tools.follow_run),
    on stderr, on one line redrawn in place, until they end; return the last one."""
    from rich.console import Console
    from rich.text import Text

    run_id = report.run_id
    with Console(stderr=True).status(Text(printable(f"run {run_id}: {report.status}"))) as shown:
        for report in reports:
            shown.update(Text(printable(stage_line(run_id, report.status))))
    return report


def cloning(url: str, dest: Path) -> None:
    """Say on stderr that a clone of `url` (its credentials masked) into `dest` starts."""
    note(f"cloning {redact_url(url)} into {dest} ...")


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
            f"gain       {format_gain_pct(spike.gain_pct, digits=2)}",
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


def show_report(report: RunReport, as_json: bool) -> None:
    """Print a run report as JSON or as lines for people."""
    if as_json:
        print_json(report)
    else:
        echo_lines(report_lines(report))


def _or_na(value: float | None) -> str:
    return "n/a" if value is None else str(value)
