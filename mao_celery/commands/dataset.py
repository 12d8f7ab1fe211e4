"""`maoctl dataset ...`: list, register, remove and clone datasets."""

from __future__ import annotations

import click

from mao_celery import render, tools
from mao_celery.commands.common import MaoGroup, current_node, json_option, paging_options
from mao_celery.commands.tool import show_listing


@click.group("dataset", cls=MaoGroup)
def dataset() -> None:
    """List, register, remove and clone datasets."""


@dataset.command("get")
@click.argument("name", required=False)
@paging_options
@json_option
def dataset_get(name: str | None, as_json: bool, limit: int | None, after: str | None) -> None:
    """List registered datasets by name, a page at a time (see --limit, --after), or show
    every field of dataset NAME."""
    show_listing("dataset", name, as_json, limit, after)


@dataset.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--description", default="", help="What the dataset holds.")
@click.option("--branch", metavar="NAME", help="Branch to clone (default: the remote's HEAD).")
def dataset_add(name: str, url: str, description: str, branch: str | None) -> None:
    """Register dataset NAME, a git repository at URL."""
    tools.register(
        current_node(), "dataset", name=name, url=url, description=description, branch=branch
    )
    click.echo(f"dataset {name} registered")


@dataset.command("remove")
@click.argument("name")
def dataset_remove(name: str) -> None:
    """Remove dataset NAME from the registry (a local clone is kept)."""
    tools.remove(current_node(), "dataset", name)
    click.echo(f"dataset {name} removed")


@dataset.command("clone")
@click.argument("name")
@click.option("--update", is_flag=True, help="Fast-forward an existing clone instead.")
def dataset_clone(name: str, update: bool) -> None:
    """Clone dataset NAME into importdir/NAME (or fast-forward it with --update).

    With --update, a NAME that is a tool (and no dataset) has its data updated as
    `maoctl tool update-data NAME` does.
    """
    node = current_node()
    tool_only = (
        update
        and not tools.is_registered(node, "dataset", name)
        and tools.is_registered(node, "tool", name)
    )
    if tool_only:
        render.note(f"{name} is a tool: updating its data as `maoctl tool update-data` does")
        render.show_data_update(name, tools.update_tool_data(node, name), as_json=False)
        return
    dest, head = tools.clone_dataset(node, name, update=update, before_clone=render.cloning)
    if head is not None:
        click.echo(f"dataset {name} updated to {head[:12]} in {dest}")
    else:
        click.echo(f"dataset {name} cloned into {dest}")


@dataset.command("list-local")
@json_option
def dataset_list_local(as_json: bool) -> None:
    """List the data directories under importdir (from the file system)."""
    render.show_local_datasets(tools.local_datasets(current_node()), as_json)
