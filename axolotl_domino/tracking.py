"""The synthesis stage's numbers and plots, sent to the experiment trackers the user's YAML turns on.

Training stages report through the HF Trainer's own callbacks; synthesis has no Trainer, so the
pipeline sends its counts, throughput, scorecard metrics and plots here once the stage has run:
tensorboard (`use_tensorboard`, under `<output_dir>/runs/domino-synthesis`, beside the SFT's runs) and
wandb (`use_wandb`: a run of its own named `<wandb_name>-domino-synthesis` in the same project).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

LOG = logging.getLogger("axolotl.integrations.domino.tracking")

PREFIX = "domino/synthesis"
UNSUPPORTED = ("use_mlflow", "use_comet", "use_trackio")


def flat_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a nested mapping as {"a/b/c": value} (booleans and None left out)."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flat_numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def report_synthesis(trackers: Mapping[str, Any], output_dir: str, metrics: dict[str, float], images: list[Path]) -> list[str]:
    """Log `metrics` and the PNG `images` to every tracker `trackers` (the outer YAML's keys) enables; return their names."""
    used = []
    if trackers.get("use_tensorboard"):
        from matplotlib.image import imread
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(output_dir) / "runs" / "domino-synthesis")) as writer:
            for name, value in metrics.items():
                writer.add_scalar(f"{PREFIX}/{name}", value, 0)
            for image in images:
                writer.add_image(f"{PREFIX}/{image.stem}", imread(image)[..., :3], 0, dataformats="HWC")
        used.append("tensorboard")
    if trackers.get("use_wandb"):
        import wandb

        name = trackers.get("wandb_name")
        run = wandb.init(
            project=trackers.get("wandb_project"), entity=trackers.get("wandb_entity"),
            name=f"{name}-domino-synthesis" if name else None, mode=trackers.get("wandb_mode"),
            job_type="domino-synthesis", dir=output_dir,
        )
        run.log({**{f"{PREFIX}/{k}": v for k, v in metrics.items()},
                 **{f"{PREFIX}/{image.stem}": wandb.Image(str(image)) for image in images}})
        run.finish()
        used.append("wandb")
    others = [key for key in UNSUPPORTED if trackers.get(key)]
    if others:
        LOG.info("domino: synthesis metrics go to tensorboard and wandb only, not %s; they are in the manifest and "
                 "scorecard.json", ", ".join(key.removeprefix("use_") for key in others))
    return used
