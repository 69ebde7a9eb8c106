"""The demo's speed under thread policies, on an idle machine and beside busy programs: README, "Threads".

Run on an otherwise idle machine: `python benchmarks/threads.py` (6 policies x 3 loads of 300 demo steps:
~35 min on 2 cores), `--full` for whole `make train` runs instead (wall time and verdict; pick policies
with `--policies one,auto`: 6 runs, ~40 min).
Prints a markdown table; `--out FILE` also writes it.

Each cell runs `train.py trainer.max_steps=300 trainer.limit_val_batches=0 test=false logger=none
export=false` and reads the progress bar's rate (steps / seconds since the first step: tqdm's
smoothing=0). Loads: `idle`, or N busy loops, each in its own session as another application would be
(`setsid sh -c 'while :; do :; done'`): Linux shares the CPU between sessions (autogroups) whatever
their nice value. Policies (`--policies`):

  spin     all cores, libgomp's default 3 ms spin-waits (GOMP_SPINCOUNT=300000): torch's default before
           hardware.threads
  passive  all cores, OMP_WAIT_POLICY=PASSIVE (threads sleep at once)
  spin100k all cores, train.py's own GOMP_SPINCOUNT=100000 (~1 ms)
  short    all cores, GOMP_SPINCOUNT=10000 (~0.1 ms; train.py's before 2026-12-06)
  one      hardware.threads=1
  auto     hardware.threads=auto, the default (phi3v/training/threads.py)

The busy loops are started before the run and killed (their whole session) after it, also on errors. A
run of steps still going after `--limit` seconds (240) is stopped and rated by the steps it made so far
(the bar refreshes every 10 steps), marked "(stopped)".
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
STEPS = ["trainer.limit_val_batches=0", "test=false", "logger=none", "export=false"]
# name -> (description, train.py overrides, environment)
POLICIES = {
    "spin": (f"{CORES} threads, 3 ms spins (before)", [f"hardware.threads={CORES}"], {"GOMP_SPINCOUNT": "300000"}),
    "passive": (f"{CORES} threads, OMP_WAIT_POLICY=PASSIVE", [f"hardware.threads={CORES}"],
                {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin100k": (f"{CORES} threads, GOMP_SPINCOUNT=100000 (train.py's)", [f"hardware.threads={CORES}"], {}),
    "short": (f"{CORES} threads, GOMP_SPINCOUNT=10000", [f"hardware.threads={CORES}"],
              {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "1"}),
    "one": ("1 thread", ["hardware.threads=1"], {}),
    "auto": ("auto (default)", ["hardware.threads=auto"], {}),
}
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
# the training bar's last update: "300/1350 [00:25<01:30, 11.70it/s" (or "3.70s/it" below 1 step/s)
RATE = re.compile(r"\d+/\d+ \[[\d:]+<[^,]*, +([\d.]+)(it/s|s/it)")


def load_name(busy: int) -> str:
    return "idle" if busy == 0 else f"{busy} busy loop" + ("s" if busy > 1 else "")


def start_busy_loops(count: int) -> list[subprocess.Popen]:
    """`count` shell busy loops, each in a new session (its own autogroup), as another application."""
    return [subprocess.Popen(["sh", "-c", "while :; do :; done"], start_new_session=True) for _ in range(count)]


def stop(loops: list[subprocess.Popen]) -> None:
    for loop in loops:
        os.killpg(loop.pid, signal.SIGKILL)  # the session's process group: the shell and anything it forked
        loop.wait()


def run_cell(policy: str, busy: int, steps: int, full: bool, limit: float, out: Path) -> dict:
    """One train.py run under `policy` beside `busy` loops: its rate, wall time and threads line. A run
    of steps still going after `limit` seconds is stopped and rated by the steps it made (a collapsed
    policy makes 300 steps in half an hour)."""
    _, overrides, environment = POLICIES[policy]
    run_dir = out / f"{policy}-{busy}"
    command = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    if not full:
        command += [f"trainer.max_steps={steps}", *STEPS]
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(environment, WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    loops = start_busy_loops(busy)
    stopped = False
    try:
        start = time.perf_counter()
        run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = run.communicate(timeout=None if full else limit)
        except subprocess.TimeoutExpired:
            run.kill()
            output, stopped = run.communicate()[0], True
        wall = time.perf_counter() - start
    finally:
        stop(loops)
    if run.returncode != 0 and not stopped:
        raise SystemExit(f"{policy} beside {load_name(busy)} failed:\n{output[-3000:]}")
    rates = RATE.findall(output.replace("\r", "\n"))
    value, unit = rates[-1] if rates else ("nan", "it/s")
    rate = float(value) if unit == "it/s" else 1 / float(value)
    lines = [s[s.index("threads: "):] for s in output.splitlines() if "threads: " in s]
    verdict = next((s for s in output.splitlines() if s.startswith("verdict: ")), "")
    return {"rate": rate, "wall": wall, "threads": lines[0] if lines else "", "changes": len(lines[1:]),
            "verdict": verdict, "stopped": stopped}


def table(cells: dict, policies: list[str], loads: list[int], full: bool) -> str:
    unit = "wall, verdict" if full else "it/s"
    lines = ["| policy | " + " | ".join(f"{load_name(b)} ({unit})" for b in loads) + " |",
             "|---" * (len(loads) + 1) + "|"]
    for policy in policies:
        values = []
        for busy in loads:
            cell = cells[policy, busy]
            if full:
                minutes, seconds = divmod(round(cell["wall"]), 60)
                learned = "learned" if "the model learned" in cell["verdict"] else "NOT every baseline"
                values.append(f"{minutes} min {seconds:02d} s, {learned}")
            else:
                values.append(f"{cell['rate']:.2f}" + (" (stopped)" if cell["stopped"] else ""))
        lines.append(f"| {POLICIES[policy][0]} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of {list(POLICIES)}")
    parser.add_argument("--loads", default="0,1,2", help="busy loops beside each run, comma-separated (0 = idle)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (>= 10: the bar shows every 10)")
    parser.add_argument("--limit", type=float, default=240.0,
                        help="seconds after which a run of --steps is stopped and rated by the steps it made")
    parser.add_argument("--full", action="store_true", help="whole default runs (make train) instead of --steps")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    arguments = parser.parse_args()
    policies = arguments.policies.split(",")
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        parser.error(f"--policies: unknown {unknown}; choose from {list(POLICIES)}")
    loads = [int(n) for n in arguments.loads.split(",")]
    cells = {}
    with tempfile.TemporaryDirectory(prefix="phi3v-threads-") as tmp:
        for busy in loads:
            for policy in policies:
                cells[policy, busy] = cell = run_cell(policy, busy, arguments.steps, arguments.full, arguments.limit,
                                                      Path(tmp))
                print(f"{policy} beside {load_name(busy)}: {cell['rate']:.2f} it/s, {cell['wall']:.0f} s wall; "
                      f"{cell['threads']}, {cell['changes']} changes; {cell['verdict']}", flush=True)
    what = "whole `make train` runs" if arguments.full else f"{arguments.steps} demo steps"
    text = f"{what} on {CORES} cores\n\n" + table(cells, policies, loads, arguments.full)
    print("\n" + text)
    if arguments.out:
        arguments.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
