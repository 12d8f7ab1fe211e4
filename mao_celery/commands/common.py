"""What maoctl's command modules share: MAO errors turned into one line and an exit code
(`MaoGroup`, `fail`), the `--json` option, the node of a command (`current_node`) and the
printing of registry entries and run reports. Exit codes: cli.py's docstring."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import click

from mao_celery import exceptions as errors
from mao_celery import render, tools

if TYPE_CHECKING:
    from mao_celery.models import RunReport
    from mao_celery.node import Node

EXIT_CODES: dict[type[errors.MaoError], int] = {
    errors.NotFound: 1,
    errors.AlreadyExists: 1,
    errors.AlreadyRunning: 1,
    errors.Conflict: 1,
    errors.InvalidInput: 1,
    errors.InvalidState: 1,
    errors.ServiceUnavailable: 3,
    errors.RunFailed: 4,
}
EXIT_STILL_RUNNING = 5
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT) stopped a command that waited: 128 + 2, as shells report it."""
ERROR_KINDS: dict[type[errors.MaoError], str] = {
    errors.NotFound: "not_found",
    errors.AlreadyExists: "already_exists",
    errors.AlreadyRunning: "already_running",
    errors.Conflict: "conflict",
    errors.AmbiguousId: "ambiguous",
    errors.InvalidState: "invalid_state",
    errors.InvalidInput: "invalid_input",
    errors.ServiceUnavailable: "unavailable",
    errors.RunFailed: "run_failed",
}
"""The `kind` of an error printed as JSON (`--json`), by class; the first match counts."""
JSON_REQUESTED = "mao.json"


def json_requested() -> bool:
    """Whether the command being run was given --json (its errors are then JSON too)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and bool(ctx.find_root().meta.get(JSON_REQUESTED))


def show_error(error: errors.MaoError) -> int:
    """Print `error` on stderr, as one printable line or, under --json, as the object
    `{"error": {"kind", "message"}}`; return its exit code."""
    kind = next((k for cls, k in ERROR_KINDS.items() if isinstance(error, cls)), "error")
    render.error(error, kind=kind, as_json=json_requested())
    return next((c for cls, c in EXIT_CODES.items() if isinstance(error, cls)), 1)


def exit_now(code: str | int | None) -> NoReturn:
    """End the process with `code` (as `sys.exit` reads it: None is 0, a text is printed on
    stderr and exits 1) once stdout and stderr are flushed, without the interpreter's teardown:
    freeing the thousand modules a command may load (Celery, gRPC, pydantic, Docker) takes
    0.1-0.2 s (bench/cli_speed.py). The command has closed its clients by then (its context's
    `call_on_close`); no atexit handler of these libraries matters to a finished command.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # stdout is a closed pipe: the interpreter's own exit would say 120
        status = status or 120
    os._exit(status)


def fail(error: errors.MaoError) -> NoReturn:
    """Print `error` on stderr (`show_error`) and exit with its code."""
    sys.exit(show_error(error))


class MaoGroup(click.Group):
    """A click group that turns MAO errors into one-line messages and exit codes, and lists its
    commands with their whole summaries (click would cut them to the terminal's width).

    As the program's root (`main()` with the arguments of `sys.argv`), it ends the process at
    once when the command is done (`exit_now`)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """click's `main`; run as the program (`args` None: `sys.argv`), the process then ends
        with the command's exit code through `exit_now`. Given `args` (tests, CliRunner), click's
        own `main` as it is."""
        run = functools.partial(
            super().main, args, prog_name, complete_var, standalone_mode, windows_expand_args
        )
        if args is not None:
            return run(**extra)
        try:
            run(**extra)
        except SystemExit as e:
            exit_now(e.code)
        exit_now(0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except errors.MaoError as e:
            fail(e)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands, each with its full first sentence (wrapped, never cut with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


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


def show_entry(kind: tools.Kind, name: str | None, as_json: bool) -> Any:
    """Print registry entry `name` of `kind` and return it, or print all of them (warning about
    invalid ones) and return None."""
    collection = tools.collection(current_node(), kind)
    if name is None:
        items, invalid = collection.list()
        render.warn_invalid(invalid)
        render.LISTINGS[kind].show(items, as_json, invalid)
        return None
    entry = collection.get(name)
    render.show_detail(entry, as_json)
    return entry


def show_report(report: RunReport, as_json: bool) -> None:
    """Print a run report; exit 4 with the reason on stderr when the run failed or was
    interrupted (a run still under way exits 0)."""
    render.show_report(report, as_json)
    if report.status.terminal and report.status != "succeeded":
        fail(errors.RunFailed(f"run {report.run_id} {report.status}: {report.error}"))


def _remember_json(ctx: click.Context, _: click.Parameter, value: bool) -> bool:
    """Note that --json was given, so that errors are printed as JSON too (`fail`)."""
    if value:
        ctx.find_root().meta[JSON_REQUESTED] = True
    return value


json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    callback=_remember_json,
    help="Print JSON for scripts (errors too, on stderr).",
)


TABLE_PAGE = 100
"""Entries a listing's table shows when --limit is not given (its JSON: all of them)."""


def paging_options(command: Callable[..., None]) -> Callable[..., None]:
    """The --limit and --after options of a listing shown a page at a time (`schedule list`,
    `tool get`, `dataset get`)."""
    limit = click.option(
        "--limit",
        type=click.IntRange(min=1),
        help=f"List at most N entries (default: {TABLE_PAGE} in the table, all with --json).",
    )
    after = click.option(
        "--after", metavar="NAME", help="List the entries whose name sorts after NAME."
    )
    return limit(after(command))


def page_size(limit: int | None, as_json: bool) -> int | None:
    """How many entries a paged listing reads: `limit`, else all for JSON (None), else
    `TABLE_PAGE` for the table."""
    return limit if limit is not None or as_json else TABLE_PAGE
