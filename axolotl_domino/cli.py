"""`axolotl domino ...` subcommands (registered through the `axolotl.cli_commands` entry point)."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.group(name="domino", help="DOMINO: induce a domain from references, synthesise data, fine-tune.")
def domino() -> None:
    """Command group; the subcommands below do the work."""


@domino.command(name="prepare-model")
@click.argument("name")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to create (built next to it, then renamed into place).",
)
@click.option("--force", is_flag=True, help="Rebuild, replacing whatever is at --output.")
def prepare_model_command(name: str, output: Path, force: bool) -> None:
    """Convert an embedded model into a Hugging Face folder and print its path.

    NAME is one of axolotl_domino.models.EMBEDDED_MODELS, e.g. smollm2-135m-instruct. A no-op when
    --output already holds it, so scripts can run it unconditionally.
    """
    from axolotl_domino import models  # torch/transformers load only when a conversion runs

    if name not in models.EMBEDDED_MODELS:
        raise click.BadParameter(f"choose one of: {', '.join(sorted(models.EMBEDDED_MODELS))}", param_hint="NAME")
    # `axolotl` leaves non-`axolotl.*` loggers at the root's WARNING; show the conversion's progress.
    if models.LOG.getEffectiveLevel() > logging.INFO:
        models.LOG.setLevel(logging.INFO)
    try:
        path = models.prepare_model(name, output, force=force)
    except (FileExistsError, models.EmbeddedModelNotInstalled) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(path)  # last line of stdout (after axolotl's banner and logs), for scripts
