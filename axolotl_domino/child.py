"""Entry point of the synthesis stage's child process (one per rank): `python -m axolotl_domino.child CONFIG`.

The pipeline resolves the stage's inputs once (`write_config`) and every rank's child reads the same
JSON, so no child needs Axolotl's config loading (which would set up the outer run's DeepSpeed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from axolotl_domino.errors import user_errors
from axolotl_domino.args import DominoConfig, parse_domino
from axolotl_domino.files import digest, write_atomic
from axolotl_domino.layout import Layout
from axolotl_domino.synthesize import synthesize


def write_config(domino: DominoConfig, base_model: str, trust_remote_code: bool) -> Path:
    """The resolved stage config the children read, under a name that changes with its content."""
    resolved = {"base_model": base_model, "trust_remote_code": trust_remote_code, "domino": domino.model_dump(mode="json")}
    path = Layout.of(domino).synthesis_config(digest(resolved))
    write_atomic(path, json.dumps(resolved, indent=2).encode())
    return path


def command(config: Path, rank: int, world_size: int) -> list[str]:
    return [sys.executable, "-m", "axolotl_domino.child", str(config), "--rank", str(rank), "--world-size", str(world_size)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the JSON written by write_config")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s")
    resolved = json.loads(args.config.read_text())
    with user_errors():
        domino = parse_domino(resolved["domino"], str(args.config))
        synthesize(domino, resolved["base_model"], args.rank, args.world_size, resolved["trust_remote_code"])


if __name__ == "__main__":
    main()
