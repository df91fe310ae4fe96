"""Wall time and peak memory of the quickstart, end to end, as a user runs it.

Runs a command (default: `axolotl train example_yamls/quickstart.yaml` from the repository root, with
fresh `domino_out/` and `outputs/quickstart/` so no stage is skipped) and samples the memory of the
whole process tree (launcher, trainer, the stages' child processes, dataset workers) every 0.5 s (PSS, which
costs the machine more to read, every 2 s near the RSS peak):
the summed RSS, which counts pages that forked processes share once per process (an upper bound),
and the summed PSS, which splits shared pages among their users (what the machine must hold).
Before the run it asks `axolotl domino plan CONFIG --json` for its estimates (on the same machine, so
the stages the planner times on a slice of the model run on this machine's cores), and after it prints each
stage's estimate beside what the run took: induction from `domino_stage.json`, sampling, answers, filters,
scorecard and SFT from the timeline below, the total against the wall time.
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


def tree_memory(root: psutil.Process, pss: bool) -> tuple[int, int]:
    """(summed RSS, summed PSS or 0) of `root` and all its descendants, in bytes. PSS walks every page table
    (15 ms for a 2 GiB process), so the caller asks for it less often than for RSS (cheap)."""
    rss_sum = pss_sum = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            if pss:
                info = proc.memory_full_info()
                rss_sum, pss_sum = rss_sum + info.rss, pss_sum + info.pss
            else:
                rss_sum += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return rss_sum, pss_sum


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
        root, peak_rss, peak_pss, tick = psutil.Process(proc.pid), 0, 0, 0
        while proc.poll() is None:
            # RSS every 0.5 s; PSS every 2 s, and only near a new peak of RSS (where its own peak is)
            rss, _ = tree_memory(root, pss=False)
            if rss > 0.9 * peak_rss and tick % 4 == 0:
                pss = tree_memory(root, pss=True)[1]
                peak_pss = max(peak_pss, pss)
            peak_rss, tick = max(peak_rss, rss), tick + 1
            time.sleep(0.5)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"quickstart failed with exit code {proc.returncode}; its output is in {log_path}")
    print(f"timeline (from {log_path}):")
    phases = timeline(log_path.read_text(encoding="utf-8", errors="replace"), started_at, wall)
    for name, seconds in phases:
        print(f"  {name:58s} {seconds:6.1f} s")
    print(f"plan ({plan['hardware']}), estimate against measured, stage by stage:")
    for name, planned_s, took in compare(plan, measured_stages(REPO / "domino_out"), dict(phases), wall):
        print(f"  {name:12s} estimate {planned_s:6.0f} s  measured {took:6.0f} s  ratio {planned_s / took:.2f}")
    print(f"quickstart: wall_s={wall:.0f} peak_rss_gib={peak_rss / 2**30:.2f} peak_pss_gib={peak_pss / 2**30:.2f} "
          f"plan_s={plan['total_seconds']:.0f}")


def compare(plan: dict, stages: dict[str, float], phases: dict[str, float], wall: float) -> list[tuple[str, float, float]]:
    """(stage, the plan's estimate, what the run took): induction from its stage file, the synthesis stage's parts
    and the SFT from the timeline's phases, the total against the wall time."""
    estimate = {row["stage"]: row["seconds"] for row in plan["stages"]}
    measured = {
        "induction": stages["induction"],
        "synthesis": phases.get("sampling from D* (model load included)"),
        "responses": phases.get("answers"),
        "filters": phases.get("filters"),
        "scorecard": phases.get("scorecard"),
        "sft": sum(phases.get(name, 0.0) for name in ("SFT start-up: tokenising, model, LoRA", "SFT steps", "SFT save and exit")),
    }
    rows = [(name, estimate[name], took) for name, took in measured.items() if name in estimate and took]
    return rows + [("total", plan["total_seconds"], wall)]


# (phase, the log line that ends it), in the order a quickstart from scratch logs them.
MARKS = [
    ("outer start-up: axolotl train, accelerate, config, preflight", "domino: estimating the stages"),
    ("the plan's estimates (timed on a slice of the model)", "domino: estimated the stages"),
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
