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
import os
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

import click

from mao_celery.text import format_gain_pct, printable, printable_lines, redact_url

if TYPE_CHECKING:
    from mao_celery.cancel import Cancelled
    from mao_celery.dataplane import HistoryPoint
    from mao_celery.datasets import LocalDataset
    from mao_celery.health import Check
    from mao_celery.models import Notification, RunReport, Tool
    from mao_celery.records import InvalidRecord
    from mao_celery.registry import EntryPage, InvalidEntry
    from mao_celery.schedules import Scheduled, ScheduleInfo
    from mao_celery.settings import Settings
    from mao_celery.tools import DataUpdate, RunOutput, ToolHistory
    from mao_celery.worker_info import PublishedSettings

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


def error(message: object, *, kind: str = "error", as_json: bool = False) -> None:
    """Print `message` as one printable `error: ...` line on stderr; with `as_json` (a command
    given --json) as one JSON object instead: `{"error": {"kind": KIND, "message": ...}}`."""
    if as_json:
        shown = {"error": {"kind": kind, "message": str(message)}}
        click.echo(json.dumps(shown, allow_nan=False), err=True)
    else:
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


class Skipped(Protocol):
    """Something a listing left out: an invalid registry entry or node-local record."""

    @property
    def key(self) -> str: ...

    @property
    def reason(self) -> str: ...


def listing_json(items: Iterable[Any], warnings: Iterable[Skipped] = ()) -> dict[str, Any]:
    """The one JSON shape of every `--json` listing: `{"items": [...], "warnings": [{"key",
    "reason"}]}`, the warnings naming what was skipped (or, for schedules, listed as invalid)."""
    return {
        "items": plain(list(items)),
        "warnings": [{"key": w.key, "reason": w.reason} for w in warnings],
    }


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


def table_width() -> int | None:
    """The width tables are drawn to: COLUMNS when set, else the terminal's; piped without
    COLUMNS, 200 (long values stay on one line for grep)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    return None


def print_table(
    title: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    folded: Iterable[str] = (),
) -> None:
    """Print a table for people (rich); each cell is shown `printable`; "TITLE: none" when
    there is no row.

    Drawn for the width of the screen (80 columns included): columns without vertical rules,
    the cells of the `folded` columns (long free text: descriptions, URLs, errors) folded over
    lines, every other cell (ids, times, numbers, states) kept on one line.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    fold = set(folded)
    for column in columns:
        if column in fold:
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, no_wrap=True, overflow="ellipsis")
    for row in rows:
        # Text, not markup: registry values come from any member of the federation.
        table.add_row(*(Text("" if cell is None else printable(cell)) for cell in row))
    if not table.row_count:
        click.echo(f"{title}: none")
        return
    width = table_width()
    console = Console(width=width) if width else Console()
    if width is None and not console.is_terminal:  # piped: keep long ids and URLs on one line
        console = Console(width=200)
    console.print(table)


# ---- listings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """How a list of entries is shown for people: a titled table, one row per entry, the cells
    of the `folded` columns folded over lines."""

    title: str
    columns: tuple[str, ...]
    row: Callable[[Any], Sequence[object]]
    folded: tuple[str, ...] = ()

    def show(self, items: Sequence[Any], as_json: bool, warnings: Iterable[Skipped] = ()) -> None:
        """Print `items` as this table, or as JSON (`listing_json`: with the `warnings`)."""
        if as_json:
            print_json(listing_json(items, warnings))
        else:
            print_table(self.title, self.columns, (self.row(item) for item in items), self.folded)

    def show_page(
        self,
        items: Sequence[Any],
        as_json: bool,
        warnings: Iterable[Skipped],
        paging: tuple[str | None, int | None],
        command: str,
    ) -> None:
        """Print one page of a listing, `paging` = (next_after, limit): the name to continue
        after (None: the last page) and the user's --limit (None: not given). As the table, then
        (`echo_more`) the `maoctl COMMAND --after NAME` line when there are more; or as JSON
        (`listing_json`, plus `"next_after"` when a limit was given: the NAME for --after, null
        on the last page)."""
        next_after, limit = paging
        if not as_json:
            self.show(items, as_json=False)
            echo_more(command, next_after, limit)
            return
        data = listing_json(items, warnings)
        if limit is not None:
            data["next_after"] = next_after
        print_json(data)


COMPACT_TIME = "%Y-%m-%d %H:%M"
"""Times in tables: to the minute (`run show` and JSON keep the seconds)."""


def _time(value: Any, fmt: str = COMPACT_TIME) -> str:
    return "" if value is None else format(value, fmt)


def age(when: datetime, now: datetime | None = None) -> str:
    """How long ago `when` was, in its largest whole unit: `4s ago`, `12m ago`, `5h ago`,
    `3d ago` (up to 119 of one unit before the next); `now` defaults to the current time."""
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


SHORT_ID = 8
SHORT_SHA = 12
"""Commits as people see them: their first 12 hex digits (`datasets.SHORT_SHA_LEN`)."""


def short_id(run_id: str | None) -> str:
    """A run id as tables show it: its first 8 characters (`run show` takes any unique prefix)."""
    return "" if run_id is None else run_id[:SHORT_ID]


def number(value: float | None) -> str:
    """A number for people: at most 10 significant digits (0.10000000000000009 is 0.1); JSON
    keeps the full value. None is "n/a"."""
    if value is None:
        return "n/a"
    return str(float(f"{value:.10g}"))


TOOLS = Listing(
    "Tools",
    ("name", "author", "image", "data repo", "artefact", "description"),
    lambda t: (t.name, t.author, t.image, redact_url(t.data_repo), t.artefact, t.description),
    folded=("author", "image", "data repo", "artefact", "description"),
)
DATASETS = Listing(
    "Datasets",
    ("name", "url", "description"),
    lambda d: (d.name, redact_url(d.url), d.description),
    folded=("url", "description"),
)
MEMBERS = Listing(
    "Members",
    ("node", "host", "version", "started", "seen", "workers", "tools"),
    lambda m: (
        m.node_id,
        m.hostname,
        m.version,
        _time(m.started_at),
        age(m.last_seen),
        "?" if m.workers is None else m.workers,
        ", ".join(m.tools) or "-",
    ),
    folded=("node", "host", "version", "tools"),
)
URL_FIELDS = frozenset({"data_repo", "code_repo", "url"})


def detail_lines(entry: Any) -> list[str]:
    """A registry entry (a tool, a dataset) as `field  value` lines, one per field of its
    model in the model's order (fields added to the model are shown without change here);
    URLs masked, an unset field "-", nested values as compact JSON."""
    values = entry.model_dump(mode="json")
    width = max(len(name) for name in values) + 2
    lines = []
    for name, value in values.items():
        if value is None:
            shown = "-"
        elif name in URL_FIELDS and isinstance(value, str):
            shown = redact_url(value)
        elif isinstance(value, dict | list):
            shown = json.dumps(value, allow_nan=False)
        elif isinstance(value, float):
            shown = number(value)
        else:
            shown = str(value)
        lines.append(f"{name:<{width}}{shown}")
    return lines


def show_detail(entry: Any, as_json: bool) -> None:
    """Print one registry entry as JSON (the model) or as `detail_lines`."""
    if as_json:
        print_json(entry)
    else:
        echo_lines(detail_lines(entry))


def _local(value: Any) -> str:
    """An aware time in its own zone, with the zone's abbreviation ("2026-03-29 06:00 CEST")."""
    return _time(value, f"{COMPACT_TIME} %Z")


def schedule_row(i: ScheduleInfo) -> Sequence[object]:
    """A schedule as a row of `SCHEDULES` (the expression and zone; the description and the
    local next fire are in `schedule next` and `--json`); an invalid entry shows its key and
    the reason."""
    if i.state == "invalid":
        return (i.tool, "invalid", f"{i.key}: {i.error}", "", "", "")
    result = f"{i.last_result}, run {short_id(i.last_run_id)}" if i.last_run_id else "never fired"
    return (
        i.tool,
        i.state,
        i.schedule,
        _time(i.next_run_at) if i.next_run_at else "paused",
        _time(i.last_fired_at),
        result,
    )


SCHEDULES = Listing(
    "Schedules (times in UTC; `schedule next NAME` shows local times)",
    ("tool", "state", "schedule", "next run", "last fire", "last result"),
    schedule_row,
    folded=("schedule", "last result"),
)


def show_schedules(
    infos: Sequence[ScheduleInfo], next_after: str | None, as_json: bool, limit: int | None
) -> None:
    """Print one page of `schedule list` (`Listing.show_page`; the invalid entries as the
    JSON's warnings)."""
    SCHEDULES.show_page(
        infos, as_json, schedule_warnings(infos), (next_after, limit), "schedule list"
    )


def schedule_warnings(infos: Iterable[ScheduleInfo]) -> list[InvalidRecord]:
    """The schedule entries that cannot be read, as the warnings of `schedule list --json`."""
    from mao_celery.records import InvalidRecord

    return [InvalidRecord(i.key, i.error or "invalid") for i in infos if i.state == "invalid"]


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


def show_page(kind: str, page: EntryPage[Any], as_json: bool, limit: int | None) -> None:
    """Print one page of the registry entries of `kind` ("tool", "dataset"), read with the
    user's --limit `limit` (None: not given), as `Listing.show_page` does."""
    LISTINGS[kind].show_page(
        page.items, as_json, page.invalid, (page.next_after, limit), f"{kind} get"
    )


def echo_more(command: str, next_after: str | None, limit: int | None) -> None:
    """After a table that does not show every entry (`next_after` not None: the name of its
    last row), the line giving the command that shows the next page: `... more: maoctl COMMAND
    --after NAME` (with the user's `--limit`, if given)."""
    if next_after is None:
        return
    again = f" --limit {limit}" if limit is not None else ""
    click.echo(f"... more: maoctl {command} --after {shlex.quote(printable(next_after))}{again}")


def run_row(r: RunReport) -> Sequence[object]:
    """A run as a row of `show_runs`: its short id, compact times, the gain rounded."""
    return (
        short_id(r.run_id),
        r.status,
        _time(r.queued_at),
        _time(r.finished_at, "%H:%M:%S"),
        r.exit_code,
        ("yes" if r.spike.spike else "no") if r.spike else "",
        format_gain_pct(r.spike.gain_pct if r.spike else None, unit="", undefined=""),
        r.error,
    )


RUN_COLUMNS = ("run", "status", "queued", "finished", "exit", "spike", "gain %", "error")


def show_runs(
    tool: str, reports: Sequence[RunReport], as_json: bool, warnings: Iterable[Skipped] = ()
) -> None:
    """Print the runs of `tool` as JSON (`listing_json`) or as a table."""
    Listing(f"Runs of {tool}", RUN_COLUMNS, run_row, folded=("error",)).show(
        reports, as_json, warnings
    )


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
    """A notification as a row of `show_notifications`: numbers rounded, the run's short id."""
    gain = format_gain_pct(n.gain_pct, unit="")
    return (
        _time(n.detected_at),
        n.tool,
        n.node,
        number(n.control_value),
        number(n.baseline),
        gain,
        short_id(n.run_id),
    )


def show_notifications(
    found: Sequence[tuple[str, Notification]], as_json: bool, warnings: Iterable[Skipped] = ()
) -> None:
    """Print notifications (with their etcd keys) as JSON (`listing_json`) or as a table."""
    if as_json:
        items = [{"key": key} | n.model_dump(mode="json") for key, n in found]
        print_json(listing_json(items, warnings))
        return
    columns = ("detected", "tool", "node", "value", "baseline", "gain %", "run")
    rows = (notification_row(n) for _, n in found)
    print_table("Notifications", columns, rows, folded=("tool", "node"))


def show_following(following: frozenset[str] | None, as_json: bool) -> None:
    """Print the tools a node alerts for (None: all) as JSON `{"all": bool, "tools": [...]}`
    or as one line."""
    if as_json:
        print_json({"all": following is None, "tools": sorted(following or ())})
    elif following is None:
        click.echo("following all tools")
    else:
        echo_lines([f"following: {', '.join(sorted(following)) or 'no tool'}"])


def show_local_datasets(local: Sequence[LocalDataset], as_json: bool) -> None:
    """Print the data directories under importdir as JSON (`listing_json`) or as a table."""
    if as_json:
        print_json(listing_json(asdict(item) | {"path": str(item.path)} for item in local))
        return
    print_table(
        "Local datasets",
        ("name", "path", "git", "head", "remote"),
        ((d.name, d.path, "yes" if d.is_git else "no", d.head, d.remote) for d in local),
        folded=("name", "path", "remote"),
    )


# ---- the node --------------------------------------------------------------------------------


def show_settings(conf: Settings, as_json: bool) -> None:
    """Print the settings (passwords in URLs masked) as JSON or as `name value` lines."""
    values = conf.effective_values()
    if as_json:
        print_json(values)
    else:
        echo_lines(f"{name:<28} {value}" for name, value in values.items())


def show_checks(checks: Sequence[Check], as_json: bool) -> None:
    """Print the health checks as JSON or as `name OK|FAIL detail` lines."""
    if as_json:
        print_json([{"name": c.name, "ok": c.ok, "detail": c.detail, **c.data} for c in checks])
    else:
        echo_lines(f"{c.name:<10} {'OK' if c.ok else 'FAIL'}  {c.detail}" for c in checks)


def removed_tool_line(name: str, unscheduled: bool, data: Path | None) -> str:
    """What `tool remove` did, in one line: tool `name` removed, whether its schedule went
    with it (`unscheduled`), and its data directory `data` kept (None: it had none)."""
    schedule = "its schedule on this node removed too" if unscheduled else "it had no schedule"
    kept = f"; its data directory {data} is kept" if data is not None else ""
    return f"tool {name} removed; {schedule}{kept}"


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
    if report.host:
        lines.append(f"host       {report.host}")
    if report.exit_code is not None:
        lines.append(f"exit code  {report.exit_code}")
    spike = report.spike
    if spike is not None:
        files = "file" if len(spike.files) == 1 else "files"
        # records of older versions listed every file and counted none (None)
        new = len(spike.new_files) if spike.new_file_count is None else spike.new_file_count
        used = "" if spike.control_files is None else f" used of {spike.control_files} in all"
        lines += [
            f"snapshots  {len(spike.files)} valid control {files}{used} ({new} new)",
            f"baseline   {number(spike.baseline)}",
            f"current    {number(spike.latest)}",
            f"difference {number(spike.difference)}",
            f"gain       {format_gain_pct(spike.gain_pct, digits=2)}",
            f"spike      {'YES' if spike.spike else 'no'}  ({spike.reason})",
        ]
        lines += [f"invalid    {f.name}: {f.reason}" for f in spike.invalid]
        lines += [f"ignored    {name}" for name in spike.ignored]
        if spike.compliance_warning:
            lines.append(f"warning    {spike.compliance_warning}")
    if report.image_digest:
        lines.append(f"image id   {report.image_digest}")
    if report.run_commit:
        lines.append(f"commit     {report.run_commit[:SHORT_SHA]}  (what the run wrote)")
    if report.pushed_to:
        lines.append(f"pushed     to branch {report.pushed_to} of the data repository")
    if report.push_error:
        lines.append(f"push       FAILED: {report.push_error} (the next push carries it)")
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


# ---- tool limits, effective settings (issue 12) ----------------------------------------------


def _size(value: float) -> str:
    """Bytes for people: MiB (or GiB from 1 GiB), e.g. "512 MiB"."""
    return f"{value / (1 << 30):g} GiB" if value >= 1 << 30 else f"{value / (1 << 20):g} MiB"


def tool_limit_lines(tool: Tool, conf: Settings) -> list[str]:
    """What tool `tool` gets on this node: each run limit, whether the tool or the node's
    default sets it, and the node's maximum; a limit above the maximum is marked refused."""
    rows: tuple[tuple[str, float | None, float | None, float, Callable[[float], str]], ...] = (
        ("timeout", tool.timeout_s, conf.run_timeout_s, conf.timeout_max_s, lambda v: f"{v:g} s"),
        ("memory", tool.memory_bytes, conf.run_memory_bytes, conf.memory_max_bytes, _size),
        ("cpus", tool.cpus, conf.cpus_default, conf.cpus_max, lambda v: f"{v:g}"),
    )
    lines = ["on this node:"]
    for what, asked, default, maximum, shown in rows:
        value = asked if asked is not None else default
        origin = "the tool's" if asked is not None else "node default"
        text = "no limit" if value is None else shown(value)
        refused = "  REFUSED: above the maximum" if asked is not None and asked > maximum else ""
        lines.append(f"  {what:<8}{text} ({origin}; max {shown(maximum)}){refused}")
    network = tool.network or conf.tool_network
    allowed = "allowed" if network in conf.tool_networks_allowed else "NOT allowed here"
    lines.append(f"  {'network':<8}{network} ({allowed})")
    lines.append(f"  {'push':<8}{_push_text(tool, conf)}")
    return lines


def _push_text(tool: Tool, conf: Settings) -> str:
    """Where the run commits of `tool` are pushed from this node, and who asked for it."""
    from mao_celery.dataplane import push_branch

    branch = push_branch(tool, conf)
    if branch is None:
        return "no (neither the tool's --push nor the node's MAO_GIT_PUSH)"
    who = "the tool's --push" if tool.push else "the node's MAO_GIT_PUSH"
    return f"to branch {branch} of the data repository ({who})"


def show_effective_settings(
    conf: Settings, published: Sequence[PublishedSettings], answering: Sequence[str], as_json: bool
) -> None:
    """Print the local settings next to those each worker published (`worker_info`), derived
    values filled in; a worker that does not answer a ping is marked stale, and the settings in
    which a worker differs from the local ones are marked `*`."""
    local = conf.effective_values()
    workers: list[dict[str, Any]] = [
        {
            "hostname": p.hostname,
            "pid": p.pid,
            "started_at": p.started_at.isoformat(),
            "answering": p.hostname in answering,
            "settings": p.settings,
        }
        for p in published
    ]
    differing = {
        name: {
            "local": local.get(name),
            **{w["hostname"]: w["settings"].get(name) for w in workers},
        }
        for name in sorted({*local, *(n for w in workers for n in w["settings"])})
        if any(w["settings"].get(name) != local.get(name) for w in workers)
    }
    if as_json:
        print_json({"local": local, "workers": workers, "differences": differing})
        return
    if not workers:
        note("no worker has published its settings (none started since): local settings only")
    for w in workers:
        state = "answering" if w["answering"] else "not answering: stale entry"
        note(f"worker {w['hostname']} (pid {w['pid']}, started {w['started_at']}; {state})")
    names = list(local) + [n for n in differing if n not in local]
    header = "local" + "".join(f" | {w['hostname']}" for w in workers)
    lines = [f"{'setting':<28} {header}"]
    for name in names:
        cells = [str(local.get(name))]
        for w in workers:
            value = w["settings"].get(name)
            cells.append(f"{value}{' *' if name in differing else ''}")
        lines.append(f"{name:<28} {' | '.join(cells)}")
    echo_lines(lines)
    if differing:
        note(f"* differs from the local value: {', '.join(differing)}")


# ---- cancel and output of a run ----------------------------------------------------------------


def show_cancelled(done: Cancelled, as_json: bool) -> None:
    """Print what `run cancel` did as JSON (`{"run_id", "cancelled", "status",
    "container_removed", "report"}`) or as one line: cancelled now, or already ended and how."""
    report = done.report
    if as_json:
        print_json(
            {
                "run_id": report.run_id,
                "cancelled": done.cancelled,
                "status": str(report.status),
                "container_removed": done.container_removed,
                "report": plain(report),
            }
        )
        return
    container = "; its container was stopped and removed" if done.container_removed else ""
    if done.cancelled:
        line = f"run {report.run_id} cancelled; tool {report.tool} is free{container}"
    elif report.cancelled is not None:
        when = _time(report.cancelled.at)
        line = f"run {report.run_id} was already cancelled by {report.cancelled.by} at {when} UTC"
        line += container
    else:
        line = f"run {report.run_id} already ended ({report.status}); nothing to cancel"
    echo_lines([line])


def interrupted_follow_lines(run_id: str) -> list[str]:
    """What Ctrl-C in `tool run` says: the run goes on, and how to follow or cancel it."""
    return [
        f"stopped waiting; run {run_id} goes on",
        f"  follow it:  maoctl run show {run_id}   or   maoctl run logs {run_id} --follow",
        f"  cancel it:  maoctl run cancel {run_id}",
    ]


def show_output(pieces: Iterable[RunOutput], tail: int | None) -> None:
    """Print a run's output (`tools.run_output`) on stdout line by line, each line `printable`
    (a tool's output cannot drive the terminal), a line cut between two pieces printed once
    whole; with `tail`, only the last `tail` lines of the first piece (what was kept so far).
    Bytes no longer kept are said on stderr."""
    pending = b""
    first = True
    for piece in pieces:
        if piece.tail_only:
            note("only the last lines of this run's output were kept (an older run)")
        elif piece.skipped:
            note(f"[{piece.skipped} bytes of output not kept: a run keeps its last 1 MiB]")
        pending += piece.data
        complete, newline, pending = pending.rpartition(b"\n")
        lines = complete.decode("utf-8", errors="replace").split("\n") if newline else []
        if first and tail is not None:  # the last `tail` lines, a last one without \n counted
            kept = tail - (1 if pending and tail else 0)
            lines = lines[max(0, len(lines) - kept) :] if kept else []
            pending = pending if tail else b""
        first = False
        for line in lines:
            click.echo(printable(line))
    if pending:
        click.echo(printable(pending.decode("utf-8", errors="replace")))


# ---- the data plane: update-data, the metric over time (issue 10) ------------------------------


def _short(sha: str | None) -> str:
    return "(no commit)" if sha is None else sha[:SHORT_SHA]


def data_update_lines(tool: str, done: DataUpdate) -> list[str]:
    """What `tool update-data` did, for people: the clone's new head (short) and what changed."""
    lines = (
        [f"tool {tool}: origin of {done.path} set to the registered URL"] if done.url_set else []
    )
    if done.cloned:
        lines.append(f"tool {tool}: data cloned into {done.path} at {_short(done.after)}")
    elif done.before == done.after:
        lines.append(f"tool {tool}: data in {done.path} already up to date at {_short(done.after)}")
    else:
        lines.append(
            f"tool {tool}: data in {done.path} updated {_short(done.before)} -> "
            f"{_short(done.after)}: {done.commits} new commit(s); files: {done.added} added, "
            f"{done.changed} changed, {done.deleted} deleted"
        )
    return lines


def show_data_update(tool: str, done: DataUpdate, as_json: bool) -> None:
    """Print what `tool update-data` did as JSON (`{"tool", "path", "before", "after",
    "cloned", "url_set", "commits", "added", "changed", "deleted"}`) or as lines."""
    if as_json:
        print_json({"tool": tool, **asdict(done), "path": str(done.path)})
    else:
        echo_lines(data_update_lines(tool, done))


def _spike_mark(spike: bool | None) -> str:
    return "?" if spike is None else "YES" if spike else "no"


def history_row(p: HistoryPoint) -> Sequence[object]:
    """A run commit as a row of `show_history`: compact date (UTC), short run id, the node, the
    value rounded, the gain, the spike verdict (YES / no / ? when unknown), the short commit."""
    return (
        _time(p.committed_at),
        short_id(p.run_id),
        p.node,
        number(p.control_value),
        format_gain_pct(p.gain_pct, unit="", undefined=""),
        _spike_mark(p.spike),
        p.commit[:SHORT_SHA],
    )


HISTORY_COLUMNS = ("committed (UTC)", "run", "node", "value", "gain %", "spike", "commit")


def history_note(history: ToolHistory) -> str | None:
    """Why the history of a tool is empty (None: it is not)."""
    if not history.cloned:
        return (
            f"tool {history.tool} has no data clone on this node yet: its first run, or "
            f"`maoctl tool update-data {history.tool}`, clones it"
        )
    if not history.points:
        return f"tool {history.tool}: no run commit in its data history yet"
    return None


def show_history(history: ToolHistory, as_json: bool) -> None:
    """Print the run commits of a tool, newest first, as JSON (`listing_json`: each point as
    `dataplane.HistoryPoint`) or as a table; an empty history is explained on stderr."""
    empty = history_note(history)
    if empty is not None:
        note(empty)
    title = f"Control values of {history.tool} (newest first)"
    Listing(title, HISTORY_COLUMNS, history_row, folded=("node",)).show(history.points, as_json)


@dataclass(frozen=True)
class Band:
    """The spike threshold band around the baseline before one value: a value outside
    [`low`, `high`] is a spike (the spike rule of spike.py with the tool's settings)."""

    baseline: float
    low: float
    high: float


def history_bands(values: Sequence[float], window: int, threshold_pct: float) -> list[Band | None]:
    """For each value of `values` (oldest first) the band the spike rule put around it: its
    baseline (the mean of the `window` values before it) +- `threshold_pct` percent of the
    baseline; None for the first `window` values (no baseline yet)."""
    from mao_celery.spike import evaluate

    bands: list[Band | None] = []
    for end in range(1, len(values) + 1):
        baseline = evaluate(values[:end], window=window, threshold_pct=threshold_pct)[0]
        if baseline is None:
            bands.append(None)
            continue
        edges = sorted(baseline * (1 + sign * threshold_pct / 100) for sign in (-1, 1))
        bands.append(Band(baseline, edges[0], edges[1]))
    return bands


@dataclass(frozen=True)
class Chart:
    """What a chart of a tool's history draws, oldest first: the values, their times, the
    spike verdicts and the threshold bands."""

    title: str
    values: list[float]
    times: list[datetime]
    spikes: list[bool]
    bands: list[Band | None]

    @classmethod
    def of(cls, history: ToolHistory) -> Chart:
        points = list(reversed(history.points))
        values = [p.control_value for p in points]
        return cls(
            title=(
                f"Control values of {history.tool} (band: baseline of {history.window} ± "
                f"{history.threshold_pct:g} %)"
            ),
            values=values,
            times=[p.committed_at for p in points],
            spikes=[p.spike is True for p in points],
            bands=history_bands(values, history.window, history.threshold_pct),
        )

    def banded(self) -> tuple[list[int], list[Band]]:
        """The indexes (0-based) of the values that have a band, and their bands."""
        found = [(i, b) for i, b in enumerate(self.bands) if b is not None]
        return [i for i, _ in found], [b for _, b in found]


def plot_history(chart: Chart, width: int, height: int = 20) -> str:
    """`chart` drawn for the terminal (plotext), `width` x `height` characters: the values by
    run (1 = the oldest), spikes marked x, the band's edges dotted."""
    import plotext

    figure = plotext.figure
    figure.clear()
    figure.plot_size(width, height)
    runs = list(range(1, len(chart.values) + 1))
    figure.draw(figure.signal(runs, chart.values).lines().label("control value"))
    banded, bands = chart.banded()
    if bands:
        xs = [runs[i] for i in banded]
        figure.draw(figure.signal(xs, [b.low for b in bands], marker="·").label("band"))
        figure.draw(figure.signal(xs, [b.high for b in bands], marker="·"))
    spiked = [i for i, spike in enumerate(chart.spikes) if spike]
    if spiked:
        spikes = [chart.values[i] for i in spiked]
        figure.draw(figure.signal([runs[i] for i in spiked], spikes, marker="x").label("spike"))
    figure.title(chart.title)
    first, last = _time(chart.times[0]), _time(chart.times[-1])
    figure.label(f"run (1 = {first} UTC, {len(runs)} = {last} UTC)", axis="x")
    return str(figure.build().string())


def write_history_png(chart: Chart, path: Path) -> None:
    """Write `chart` as a PNG image to `path` (matplotlib, no display needed): the values by
    commit time, spikes marked in red, the threshold band shaded.

    Raises:
        InvalidInput: matplotlib is not installed (the `charts` extra), or `path` cannot be
            written.
    """
    from mao_celery.exceptions import InvalidInput

    try:
        import numpy
        from matplotlib.figure import Figure
    except ImportError as e:
        raise InvalidInput("--png needs matplotlib: pip install 'mao-orchestrator[charts]'") from e
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.add_subplot()
    naive_utc = [t.astimezone(UTC).replace(tzinfo=None) for t in chart.times]
    times = numpy.array(naive_utc, dtype="datetime64[ms]")
    banded, bands = chart.banded()
    if bands:
        low, high = [b.low for b in bands], [b.high for b in bands]
        axes.fill_between(times[banded], low, high, alpha=0.2, label="threshold band")
        axes.plot(times[banded], [b.baseline for b in bands], "--", label="baseline")
    axes.plot(times, chart.values, "o-", color="black", label="control value")
    spiked = [i for i, spike in enumerate(chart.spikes) if spike]
    if spiked:
        spikes = [chart.values[i] for i in spiked]
        axes.plot(times[spiked], spikes, "o", color="red", markersize=9, label="spike")
    axes.set_title(chart.title)
    axes.set_xlabel("commit time (UTC)")
    axes.set_ylabel("control value")
    axes.legend(loc="best")
    figure.autofmt_xdate()
    try:
        figure.savefig(path, format="png")
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror or e}") from e
