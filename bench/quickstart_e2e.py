"""Wall time and peak memory of the quickstart, end to end, as a user runs it.

Runs a command (default: `axolotl train example_yamls/quickstart.yaml` from the repository root, with
fresh `domino_out/` and `outputs/quickstart/` so no stage is skipped) and samples the summed resident
memory (RSS) of the whole process tree (launcher, trainer, the stages' child processes) every
0.25 s. The sum over the tree is what the machine must hold; a single process's peak understates it.
Last line: `quickstart: wall_s=<s> peak_rss_gib=<GiB>`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="example_yamls/quickstart.yaml")
    parser.add_argument("--keep-outputs", action="store_true", help="Do not clear earlier outputs (measures skipping).")
    args = parser.parse_args()
    if not args.keep_outputs:
        for folder in ("domino_out", "outputs/quickstart"):
            shutil.rmtree(REPO / folder, ignore_errors=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update({"AXOLOTL_DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    started = time.perf_counter()
    proc = subprocess.Popen(["axolotl", "train", args.config], cwd=REPO, env=env)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(root))
        time.sleep(0.25)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"quickstart failed with exit code {proc.returncode}")
    print(f"quickstart: wall_s={wall:.0f} peak_rss_gib={peak / 2**30:.2f}")


if __name__ == "__main__":
    main()
