"""Wall time and peak memory of the quickstart, end to end, as a user runs it.

Runs a command (default: `axolotl train example_yamls/quickstart.yaml` from the repository root, with
fresh `domino_out/` and `outputs/quickstart/` so no stage is skipped) and samples the memory of the
whole process tree (launcher, trainer, the stages' child processes, dataset workers) every 0.5 s:
the summed RSS, which counts pages that forked processes share once per process (an upper bound),
and the summed PSS, which splits shared pages among their users (what the machine must hold).
Before the run it asks `axolotl domino plan CONFIG --json` for its estimates (on the same machine, so
the planner's measured matmul rate is this machine's), and after it prints each stage's estimate
beside what the run took: induction from `domino_stage.json`, synthesis from the manifest (sampling,
responses, filters), the total against the wall time.
It also prints where the wall time went, from the timestamps of the run's own log lines (the stages'
children stream theirs into the outer run's output): each process's start-up, the induction's steps and
evals, sampling, answers, filters, scorecard and SFT (`timeline`).
Last line: `quickstart: wall_s=<s> peak_rss_gib=<GiB> peak_pss_gib=<GiB> plan_s=<s>`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def tree_memory(root: psutil.Process) -> tuple[int, int]:
    """(summed RSS, summed PSS) of `root` and all its descendants, in bytes."""
    rss = pss = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss, pss


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
    planned = subprocess.run(["axolotl", "domino", "plan", args.config, "--json"], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
    plan = json.loads(planned.stdout.strip().splitlines()[-1])
    log_path = REPO / "outputs" / "quickstart_e2e.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started, started_at = time.perf_counter(), datetime.now()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(["axolotl", "train", args.config], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        root, peak_rss, peak_pss = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            rss, pss = tree_memory(root)
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(0.5)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"quickstart failed with exit code {proc.returncode}; its output is in {log_path}")
    print(f"timeline (from {log_path}):")
    for name, seconds in timeline(log_path.read_text(encoding="utf-8", errors="replace"), started_at, wall):
        print(f"  {name:58s} {seconds:6.1f} s")
    measured = measured_stages(REPO / "domino_out")
    print(f"plan ({plan['hardware']}, efficiency {plan['efficiency']}):")  # train / generate
    estimate = {row["stage"]: row["seconds"] for row in plan["stages"]}
    pairs = {
        "induction (the child's run)": (estimate["induction"], measured["induction"]),
        "synthesis + responses (to the merge)": (estimate["synthesis"] + estimate.get("responses", 0.0), measured["synthesis"]),
        "total (wall: start-ups, stages, SFT)": (plan["total_seconds"], wall),
    }
    for name, (planned_s, took) in pairs.items():
        print(f"  {name:38s} estimate {planned_s:6.0f} s  measured {took:6.0f} s  ratio {planned_s / took:.2f}")
    print(f"quickstart: wall_s={wall:.0f} peak_rss_gib={peak_rss / 2**30:.2f} peak_pss_gib={peak_pss / 2**30:.2f} "
          f"plan_s={plan['total_seconds']:.0f}")


# (phase, the log line that ends it), in the order a quickstart from scratch logs them.
MARKS = [
    ("outer start-up: axolotl train, accelerate, config, preflight", "domino: inducing the domain: "),
    ("induction child start-up: imports, tokenising, model", "[axolotl.train] Starting trainer"),
    ("induction steps and evals", "[axolotl.train] Training completed!"),
    ("induction save and exit", "domino: synthesising"),
    ("synthesis child start-up: imports", "domino: local models"),
    ("sampling from D* (model load included)", "domino: sampled"),
    ("answers", "domino: answered"),
    ("filters", "domino: filters in"),
    ("dataset files", "domino: wrote"),
    ("scorecard", "domino: scorecard in"),
    ("synthesis exit, trackers, SFT config", "domino: fine-tuning on"),
    ("SFT start-up: tokenising, model, LoRA", "[axolotl.train] Starting trainer"),
    ("SFT steps", "[axolotl.train] Training completed!"),
]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def timeline(output: str, started_at: datetime, wall: float) -> list[tuple[str, float]]:
    """Seconds per phase: between the timestamped log lines that end consecutive phases (MARKS), in order.

    A phase whose line is missing (code from before that line existed) is counted with the next one."""
    lines = [(m, line) for line in output.splitlines() if (m := STAMP.match(line))]
    rows, previous, position, pending = [], started_at, 0, []
    for name, needle in MARKS:
        found = next((i for i in range(position, len(lines)) if needle in lines[i][1]), None)
        if found is None:
            pending.append(name)
            continue
        at = datetime.strptime(lines[found][0].group(1), "%Y-%m-%d %H:%M:%S,%f")
        rows.append((" + ".join(pending + [name]), (at - previous).total_seconds()))
        previous, position, pending = at, found + 1, []
    evals = [float(m) for m in re.findall(r"induction eval at step \d+ took ([\d.]+) s", output)]
    if evals:
        rows.append((f"  of which induction evals ({len(evals)})", sum(evals)))
    rows.append(("SFT save and exit", wall - (previous - started_at).total_seconds()))
    return rows


def measured_stages(domino_out: Path) -> dict[str, float]:
    """Seconds the DOMINO stages recorded: the induction's child, and synthesis up to the merge (sampling and
    responses; the filters and the scorecard come after)."""
    stage = json.loads((domino_out / "induction" / "adapter" / "domino_stage.json").read_text())
    (manifest,) = (domino_out / "synthesis").glob("*/manifest.json")
    return {"induction": stage["seconds"], "synthesis": json.loads(manifest.read_text())["seconds_rank0_this_run"]}


if __name__ == "__main__":
    main()
