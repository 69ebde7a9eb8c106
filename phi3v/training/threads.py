"""How many threads a run computes with on the CPU, and how its OpenMP threads wait (`hardware.threads`).

Another program busy on one core is the normal state of a user's machine, and torch's default (one
OpenMP thread per core, each spinning ~3 ms at every barrier for the others) collapses there: a
spinning thread burns the time slice its descheduled partner needs. The demo's 300 steps on 2 cores
beside one busy loop in another session ran at 0.28 it/s with 2 threads against 15.4 with 1; idle, 2
threads ran 22.6 it/s against 14.1 with 1 (benchmarks/threads.py). No fixed count wins both, so:

- `hardware.threads=auto` (the default): threads follow the free cores. The cores this process may use
  (its CPU affinity, a cgroup CPU quota, physical cores only) less those other programs keep busy,
  measured from the kernel's CPU counters over a window less this job's own CPU time (this process,
  the processes it started, and the launcher's other ranks), split between the local ranks. Training
  re-measures every `INTERVAL_S` (ThreadGovernor in callbacks.py) and follows the load.
- `hardware.threads=<n>`: n threads throughout. Float sums depend on the thread count, so figures
  are reproducible only at a fixed one.
- OpenMP threads spin ~1 ms before sleeping instead of ~3 ms (`WAIT_ENV`). Idle, the demo's 2 threads
  keep the speed of long spins (22.0 it/s at GOMP_SPINCOUNT=100000, 22.6 at the default 300000, but 16.7
  at 10000: shorter spins put a thread to sleep between two operations). Beside a busy program a team
  of 2 collapses whatever the spin (0.3-3.2 it/s), which is why `auto` measures the load and drops to 1
  thread within INTERVAL_S; a fixed count is the user's call. The runtimes read it once, when torch
  loads them: train.py sets it before anything imports torch, and every process it starts inherits it.
  A wait policy already in the environment (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is kept.

hardware.threads decides, not OMP_NUM_THREADS: torchrun sets that to 1 for every rank and Lightning's DDP
launcher to cores // ranks, whatever the load. DataLoader workers run 1 thread each (torch sets it in
every worker), and their CPU time counts as this job's.

Torch-free at import: train.py calls this before torch is imported. The counters come from psutil
(/proc/stat and /proc/<pid>/stat on Linux, the equivalent calls on macOS and Windows); the cgroup
quota, which psutil does not read, from /sys/fs/cgroup. Where a counter is missing (no affinity call
on macOS, no cgroup files), the cores present count as usable.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import psutil

AUTO = "auto"
# libgomp (torch's Linux wheels) spins GOMP_SPINCOUNT times (~10 ns each) before sleeping; unset, 300,000
# (~3 ms). LLVM's and Intel's OpenMP (macOS wheels, some conda builds) spin KMP_BLOCKTIME ms (default 200).
WAIT_ENV = {"GOMP_SPINCOUNT": "100000", "KMP_BLOCKTIME": "1"}  # ~1 ms both
WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Load elsewhere below this many cores (a terminal, an idle browser) still leaves a core its thread: on 2
# idle cores 2 threads beat 1 by ~55% (22.0 vs 14.1 it/s), while a core fully taken leaves a team of 2 at
# 0.3-3.2 it/s whatever the spin.
SLACK = 0.3
INTERVAL_S = 10.0  # seconds of wall time between measurements while training and evaluating
CGROUP = Path("/sys/fs/cgroup")


def set_openmp_wait(environ: MutableMapping[str, str]) -> None:
    """Short spin-waits for the OpenMP runtime (WAIT_ENV) unless `environ` chose a wait policy. Call
    before torch is imported: the runtime reads the variables once, when torch loads it."""
    if not any(key in environ for key in WAIT_KEYS):
        environ.update(WAIT_ENV)


def openmp_wait(environ: Mapping[str, str]) -> str:
    """The wait settings in `environ`, for the start line."""
    return " ".join(f"{key}={environ[key]}" for key in WAIT_KEYS if key in environ) or "OpenMP default waits"


def parse_threads(value: int | str) -> int | None:
    """hardware.threads: None for auto, else the fixed count (config_checks.py checks the range)."""
    return None if value == AUTO else int(value)


def threads_for(free: float, ranks: int) -> int:
    """Threads per rank: the free cores, with SLACK of background load counted as free, split between
    the `ranks` processes of this machine; at least 1."""
    return max(1, math.floor((free + SLACK) / ranks))


def start_line(threads: int, ranks: int, cores: float, fixed: int | None, busy: float,
               environ: Mapping[str, str]) -> str:
    """The line a run prints when it has chosen its threads, e.g.
    `threads: 2 of 2 cores (hardware.threads=auto: 0.1 CPUs busy elsewhere; GOMP_SPINCOUNT=100000 ...)`."""
    count = f"{threads}" if ranks == 1 else f"{threads} per rank x {ranks} ranks"
    how = f"hardware.threads={fixed}" if fixed is not None else f"hardware.threads=auto: {busy:.1f} CPUs busy elsewhere"
    return f"threads: {count} of {cores:g} cores ({how}; {openmp_wait(environ)})"


# ---- what this process may use -----------------------------------------------------------------
def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (all of them where the platform has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(psutil.cpu_count() or 1))


def core_share() -> float:
    """Physical cores per logical CPU (0.5 with two hardware threads a core): OpenMP teams gain nothing
    from a core's second hardware thread, so torch's own default counts physical cores too."""
    logical, physical = psutil.cpu_count(), psutil.cpu_count(logical=False)
    return physical / logical if logical and physical else 1.0


def cgroup_cpu_limit(root: Path = CGROUP, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs the CFS quota of this process's cgroup allows (a container's `--cpus`), None without one.
    cgroup v2 (`cpu.max`: "<quota> <period>" or "max <period>") and v1 (`cpu.cfs_quota_us`, -1 = none);
    the smallest over the cgroup and its parents."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            limits += [q for d in _ancestors(root, path) if (q := _quota(d / "cpu.max", None)) is not None]
        elif "cpu" in controllers.split(","):
            for base in dict.fromkeys((root / controllers, root / "cpu")):
                limits += [q for d in _ancestors(base, path)
                           if (q := _quota(d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us")) is not None]
    return min(limits) if limits else None


def _ancestors(base: Path, path: str) -> Iterator[Path]:
    """base/a/b, base/a, base for path "/a/b" (inside a container the path is often just "/")."""
    parts = [p for p in path.split("/") if p]
    for end in range(len(parts), -1, -1):
        yield base.joinpath(*parts[:end])


def _quota(quota_file: Path, period_file: Path | None) -> float | None:
    try:
        text = quota_file.read_text().split()
        quota, period = text[0], text[1] if period_file is None else period_file.read_text().strip()
    except (OSError, IndexError):
        return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def free_cores(cpus: int, busy: float, share: float, quota: float | None) -> float:
    """Cores a team of threads can use: the allowed CPUs less those busy elsewhere, as physical cores
    (`share`, see core_share), within the cgroup quota."""
    free = max(0.0, cpus - busy) * share
    return min(free, quota) if quota is not None else free


# ---- what the others use ----------------------------------------------------------------------
@dataclass(frozen=True)
class CpuSample:
    """CPU time counters at one moment (seconds)."""

    at: float  # time.monotonic()
    busy: float  # busy time of the allowed CPUs, all processes together, since boot
    job: float  # CPU time of this job's processes (each with the children it has waited for)


def busy_seconds(times) -> float:
    """Busy time of one CPU: everything but idle and I/O wait; guest time is already in user time."""
    waiting = ("idle", "iowait", "guest", "guest_nice")
    return sum(getattr(times, field) for field in times._fields if field not in waiting)


def job_root(environ: Mapping[str, str]) -> int:
    """The process whose descendants are this job: for a rank that a launcher started (Lightning's rank
    0 starts ranks 1.. as its children; torchrun's agent and srun's step daemon start every local rank)
    the launcher, else this process."""
    started = int(environ.get("LOCAL_RANK", "0") or 0) > 0 or "TORCHELASTIC_RUN_ID" in environ \
        or "SLURM_STEP_ID" in environ
    return os.getppid() if started else os.getpid()


def job_seconds(root: int) -> float:
    """CPU time of `root` and its descendants (loader workers, DDP ranks, the W&B service). A child's
    time moves into its parent's children_* once waited for, so the sum stays continuous."""
    try:
        processes = [psutil.Process(root)]
        processes += processes[0].children(recursive=True)
    except psutil.Error:
        processes = [psutil.Process()]
    total = 0.0
    for process in processes:
        try:
            t = process.cpu_times()
        except psutil.Error:  # ended since listed
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_sample(cpus: list[int], root: int) -> CpuSample:
    per_cpu = psutil.cpu_times(percpu=True)
    busy = sum(busy_seconds(per_cpu[c]) for c in cpus if c < len(per_cpu))
    return CpuSample(time.monotonic(), busy, job_seconds(root))


def busy_elsewhere(first: CpuSample, last: CpuSample) -> float:
    """Cores other programs kept busy between two samples, on average."""
    wall = last.at - first.at
    if wall <= 0:
        return 0.0
    return max(0.0, (last.busy - first.busy - (last.job - first.job)) / wall)


@dataclass
class LoadMeter:
    """The load of other programs on this process's CPUs, over windows from one reading to the next."""

    cpus: list[int]
    share: float  # core_share
    quota: float | None  # cgroup_cpu_limit
    root: int  # job_root
    last: CpuSample

    @classmethod
    def start(cls, environ: Mapping[str, str] = os.environ) -> LoadMeter:
        cpus, root = allowed_cpus(), job_root(environ)
        return cls(cpus, core_share(), cgroup_cpu_limit(), root, cpu_sample(cpus, root))

    def seconds_since_reading(self) -> float:
        return time.monotonic() - self.last.at

    def read(self) -> float:
        """CPUs busy elsewhere since the last reading (or the start), on average; starts the next window."""
        sample = cpu_sample(self.cpus, self.root)
        busy, self.last = busy_elsewhere(self.last, sample), sample
        return busy

    def free_cores(self, busy: float = 0.0) -> float:
        return free_cores(len(self.cpus), busy, self.share, self.quota)
