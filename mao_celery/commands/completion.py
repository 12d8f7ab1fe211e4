"""`maoctl completion SHELL`: click's shell completion script for maoctl."""

from __future__ import annotations

import click


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print maoctl's shell completion script for SHELL (click's own completion).

    \b
    bash  eval "$(maoctl completion bash)"     in ~/.bashrc
    zsh   eval "$(maoctl completion zsh)"      in ~/.zshrc
    fish  maoctl completion fish > ~/.config/fish/completions/maoctl.fish
    """
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    assert completion_class is not None  # click knows the three shells of the choice
    root = ctx.find_root().command
    click.echo(completion_class(root, {}, "maoctl", "_MAOCTL_COMPLETE").source())
