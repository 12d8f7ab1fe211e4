"""maoctl: the command line of a MAO node (also `python cli.py`).

Argument handling only: parse, call the service (mao_celery/tools.py and the package), print
(mao_celery/render.py, where every string shown for people is made `printable` and URLs are
redacted). This root registers the command groups of mao_celery/commands/ (one module per
group; what they share is in commands/common.py). Imports of the package's heavier modules
(etcd/gRPC, Docker, Celery, GitPython, rich, the models) happen inside the functions that need
them, so each command pays only for what it uses (the one exception to "imports at the top",
for start-up time).

Exit codes: 0 ok; 1 not found, already exists, already running or invalid input; 2 usage;
3 a service (etcd, Redis, Docker, git remote) is unreachable; 4 a tool run failed (or was
interrupted or cancelled); 5 `tool run --wait-timeout-s` stopped waiting before the run ended;
130 Ctrl-C stopped waiting (the run goes on).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mao_celery.commands import completion, dataset, node, notifications, run, schedule, tool
from mao_celery.commands.common import MaoGroup


@click.group(cls=MaoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mao-orchestrator", prog_name="maoctl")
def main() -> None:
    """MAO Orchestrator: register, run and schedule data collectors (tools) and datasets."""


main.add_command(tool.tool)
main.add_command(run.run)
main.add_command(notifications.notifications)
main.add_command(dataset.dataset)
main.add_command(schedule.schedule_group)
main.add_command(node.node_group)
main.add_command(node.members)
main.add_command(node.repair)
main.add_command(node.config_show)
main.add_command(node.status)
main.add_command(completion.completion)


if __name__ == "__main__":
    main(prog_name=Path(sys.argv[0]).stem if sys.argv[0].endswith("maoctl") else "cli.py")
