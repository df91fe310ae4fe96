"""The regime study on one GPU: one `bench/regime.py` process per (condition, seed), many at once.

A 135M model leaves a big GPU idle between its small kernels, so runs side by side finish far sooner than
one after another. The queue is seed-major (every condition's seed 0, then seed 1, ...), so that a deadline
cuts whole seeds off the end rather than whole conditions. A run still going at the deadline is killed
and leaves nothing: `regime.py` writes a run's file only when it is done, and skips finished runs on a rerun.

    python bench/regime_parallel.py --out outputs/regime_gpu --seeds 0 1 2 3 4 --jobs 15 --deadline 420 \\
        -- --device cuda --tf32 --defer-scoring --model models/smollm2-135m-instruct

Each run's log is <out>/logs/<condition>-seed<s>.log; the last lines printed say which runs finished.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from regime import CONDITIONS

REGIME = Path(__file__).resolve().parent / "regime.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--conditions", nargs="+", default=["l1_only", "domino_lambda0.1", "domino_lambda1.0",
                                                            "domino_infonce", "domino_sampled"], choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=8, help="runs at once")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds from start; runs still going are killed")
    parser.add_argument("regime_args", nargs=argparse.REMAINDER, help="after --: passed to every regime.py run")
    args = parser.parse_args()
    extra = [a for a in args.regime_args if a != "--"]
    queue = [(condition, seed) for seed in args.seeds for condition in args.conditions]
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    # One CPU thread per run: the GPU does the arithmetic, and many runs share the cores.
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started, running, finished = time.monotonic(), {}, []
    while queue or running:
        while queue and len(running) < args.jobs and time.monotonic() - started < args.deadline:
            condition, seed = queue.pop(0)
            log = open(args.out / "logs" / f"{condition}-seed{seed}.log", "w")
            command = [sys.executable, str(REGIME), "--out", str(args.out), "--conditions", condition,
                       "--seeds", str(seed), *extra]
            running[(condition, seed)] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        time.sleep(1)
        late = time.monotonic() - started > args.deadline
        for key, (process, log) in list(running.items()):
            if late and process.poll() is None:
                process.kill()
            if process.poll() is not None:
                log.close()
                del running[key]
                finished.append(process.returncode)
                print(f"{key[0]} seed {key[1]}: exit {process.returncode} at {time.monotonic() - started:.0f} s", flush=True)
        if late:
            queue.clear()
    done = sum(code == 0 for code in finished)
    print(f"{done} of {len(finished)} started runs finished in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
