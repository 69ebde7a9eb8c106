"""Tier 2: the thread policy (phi3v.training.threads, hardware.threads) and its governor callback.

The policy is fed fake CPU counters, affinities, cgroup files and environments; the governor a scripted
load; three checks use real processes (a child's CPU time counts as this job's; DataLoader workers; train.py
sets the wait policy before torch is imported, e2e).
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from phi3v.training import threads
from phi3v.training.callbacks import ThreadGovernor
from phi3v.training.threads import (
    WAIT_ENV,
    CpuSample,
    LoadMeter,
    busy_elsewhere,
    busy_seconds,
    cgroup_cpu_limit,
    free_cores,
    job_root,
    job_seconds,
    set_openmp_wait,
    start_line,
    threads_for,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


# ---- the policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("free", "ranks", "expected"),
    [(2.0, 1, 2), (1.0, 1, 1),  # idle 2 cores; one core taken by another program
     (1.7, 1, 2), (1.69, 1, 1),  # background load up to SLACK (0.3 cores) still leaves the core its thread
     (2.0, 2, 1), (16.0, 4, 4), (15.7, 2, 8), (15.6, 2, 7),  # DDP ranks split the free cores
     (0.0, 1, 1), (0.5, 4, 1)],  # never below one thread
)
def test_threads_are_the_free_cores_split_between_the_ranks(free, ranks, expected):
    assert threads_for(free, ranks) == expected


@pytest.mark.parametrize(
    ("cpus", "busy", "share", "quota", "expected"),
    [(2, 0.0, 1.0, None, 2.0), (2, 1.0, 1.0, None, 1.0), (2, 2.6, 1.0, None, 0.0),
     (8, 0.0, 1.0, 1.5, 1.5), (8, 4.0, 1.0, 6.0, 4.0),  # a cgroup quota caps what is free, not the others' load
     (16, 0.0, 0.5, None, 8.0), (16, 2.0, 0.5, None, 7.0)],  # two hardware threads a core: physical cores
)
def test_free_cores_are_the_allowed_cpus_less_the_busy_ones_within_the_quota(cpus, busy, share, quota, expected):
    assert free_cores(cpus, busy, share, quota) == expected


def test_busy_elsewhere_is_the_cpus_busy_time_less_this_jobs_over_the_window():
    start = CpuSample(at=100.0, busy=500.0, job=40.0)
    # 10 s: the CPUs were busy 19 s, 9 of them this job's -> one core busy with something else
    assert busy_elsewhere(start, CpuSample(at=110.0, busy=519.0, job=49.0)) == pytest.approx(1.0)
    assert busy_elsewhere(start, CpuSample(at=110.0, busy=510.0, job=50.0)) == 0.0  # all of it ours
    assert busy_elsewhere(start, CpuSample(at=110.0, busy=509.0, job=50.0)) == 0.0  # tick rounding: not negative
    assert busy_elsewhere(start, start) == 0.0  # no time passed


def test_a_cpus_busy_time_leaves_out_idle_iowait_and_guest_time_which_user_time_holds():
    Times = collections.namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")
    assert busy_seconds(Times(10.0, 1.0, 2.0, 50.0, 3.0, 0.5, 0.25, 0.25, 4.0, 1.0)) == 14.0
    MacTimes = collections.namedtuple("MacTimes", "user nice system idle")  # what psutil gives on macOS
    assert busy_seconds(MacTimes(10.0, 1.0, 2.0, 50.0)) == 13.0


def test_the_cpus_are_this_processs_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 0}, raising=False)
    assert threads.allowed_cpus() == [0, 3]
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has no affinity call: every CPU
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 6)
    assert threads.allowed_cpus() == list(range(6))


def test_core_share_counts_physical_cores(monkeypatch):
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else 8)
    assert threads.core_share() == 0.5
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16 if logical else None)  # unknown: 1 a CPU
    assert threads.core_share() == 1.0


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "membership").write_text(membership)
    return root, tmp_path / "membership"


def test_cgroup_v2_quota_is_the_smallest_on_the_path_up(tmp_path):
    root, membership = cgroups(tmp_path, "0::/user.slice/job\n", {
        "user.slice/job/cpu.max": "150000 100000\n", "user.slice/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, membership) == 1.5
    (root / "user.slice" / "cpu.max").write_text("100000 100000\n")  # a parent's quota is lower
    assert cgroup_cpu_limit(root, membership) == 1.0
    for path in root.rglob("cpu.max"):
        path.write_text("max 100000\n")
    assert cgroup_cpu_limit(root, membership) is None


def test_cgroup_v1_quota_and_a_container_seeing_its_own_cgroup_as_root(tmp_path):
    root, membership = cgroups(tmp_path, "5:memory:/x\n4:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, membership) == 2.0
    # inside the container /proc/self/cgroup names a path its mount does not have: the mount's root holds the quota
    root, membership = cgroups(tmp_path / "container", "4:cpu,cpuacct:/docker/abc\n", {
        "cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, membership) == 0.5
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(root, membership) is None
    assert cgroup_cpu_limit(root, tmp_path / "no-such-file") is None  # no /proc (macOS): no quota


@pytest.mark.parametrize(
    ("environ", "parent"),
    [({}, False), ({"LOCAL_RANK": "0"}, False),  # alone, or Lightning's rank 0: its children are the other ranks
     ({"LOCAL_RANK": "1"}, True),  # a rank Lightning's rank 0 started
     ({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"}, True), ({"SLURM_STEP_ID": "0"}, True)],  # torchrun, srun
)
def test_the_job_is_the_launchers_processes_for_a_launched_rank(environ, parent):
    assert job_root(environ) == (os.getppid() if parent else os.getpid())


def test_a_child_processs_cpu_time_is_this_jobs_while_it_runs_and_after_it_ends():
    before = job_seconds(os.getpid())
    burn = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\ninput()"
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    process = psutil.Process(child.pid)
    while sum(process.cpu_times()[:2]) < 0.4:
        time.sleep(0.05)
    # CPU times come in clock ticks (10 ms) and this process's own time is a sum of rounded parts: 0.39
    assert job_seconds(os.getpid()) - before >= 0.39  # counted as this job's, not as load elsewhere
    child.communicate(b"\n", timeout=60)
    assert job_seconds(os.getpid()) - before >= 0.39  # waited for: now in this process's children_* time


# ---- the OpenMP wait policy and the start line ------------------------------------------------------
def test_openmp_waits_are_short_unless_the_environment_chose_a_policy():
    environ: dict[str, str] = {}
    set_openmp_wait(environ)
    assert environ == WAIT_ENV == {"GOMP_SPINCOUNT": "100000", "KMP_BLOCKTIME": "1"}
    for chosen in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "300000"}, {"KMP_BLOCKTIME": "200"}):
        environ = dict(chosen)
        set_openmp_wait(environ)
        assert environ == chosen
    assert threads.openmp_wait({"OMP_WAIT_POLICY": "PASSIVE", "OTHER": "1"}) == "OMP_WAIT_POLICY=PASSIVE"
    assert threads.openmp_wait({}) == "OpenMP default waits"


@pytest.mark.e2e
def test_train_py_sets_the_wait_policy_before_anything_imports_torch():
    """train.py's __main__ up to Hydra's `--cfg job` (which prints the config and returns): the wait
    variables are set and torch is still not imported, so the OpenMP runtime torch loads reads them."""
    code = ("import os, runpy, sys\nsys.argv = ['train.py', '--cfg', 'job']\n"
            "runpy.run_path('train.py', run_name='__main__')\n"
            "print('GOMP_SPINCOUNT', os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)")
    environment = {k: v for k, v in os.environ.items() if k not in threads.WAIT_KEYS}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "GOMP_SPINCOUNT 100000 False"


def test_the_start_line_says_how_many_threads_of_how_many_cores_and_why():
    wait = {"GOMP_SPINCOUNT": "100000", "KMP_BLOCKTIME": "1"}
    assert start_line(2, 1, 2.0, None, 0.04, wait) == (
        "threads: 2 of 2 cores (hardware.threads=auto: 0.0 CPUs busy elsewhere; GOMP_SPINCOUNT=100000 KMP_BLOCKTIME=1)")
    assert start_line(1, 2, 2.0, None, 0.0, {}) == (
        "threads: 1 per rank x 2 ranks of 2 cores (hardware.threads=auto: 0.0 CPUs busy elsewhere; "
        "OpenMP default waits)")
    assert start_line(3, 1, 1.5, 3, 0.0, {"OMP_WAIT_POLICY": "PASSIVE"}) == (
        "threads: 3 of 1.5 cores (hardware.threads=3; OMP_WAIT_POLICY=PASSIVE)")


# ---- the governor ---------------------------------------------------------------------------------
class ScriptedMeter(LoadMeter):
    """A LoadMeter whose readings are `loads` (CPUs busy elsewhere) on 2 CPUs, with a settable clock."""

    def __init__(self, loads: list[float]):
        super().__init__(cpus=[0, 1], share=1.0, quota=None, root=os.getpid(), last=CpuSample(0.0, 0.0, 0.0))
        self.loads, self.clock, self.readings = list(loads), 0.0, 0

    def seconds_since_reading(self) -> float:
        return self.clock - self.last.at

    def read(self) -> float:
        self.readings += 1
        self.last = CpuSample(self.clock, 0.0, 0.0)
        return self.loads.pop(0)


class FakeTrainer:
    def __init__(self, num_devices: int = 1):
        self.num_devices = num_devices


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("restore_threads")
def test_the_governor_follows_the_load_and_logs_each_change_once(caplog):
    meter = ScriptedMeter([0.0, 0.0, 1.0, 1.0, 0.9, 0.1])
    governor = ThreadGovernor(None, meter, interval_s=10.0)
    with caplog.at_level(logging.INFO, logger="phi3v"):
        governor.setup(FakeTrainer(), None, "fit")
        assert torch.get_num_threads() == 2
        seen = []
        for clock in (5.0, 10.0, 20.0, 25.0, 30.0, 40.0, 50.0):  # readings at 10, 20, 30, 40 and 50 s
            meter.clock = clock
            governor.on_train_batch_end(None, None)
            seen.append(torch.get_num_threads())
        governor.setup(FakeTrainer(), None, "test")  # trainer.test after fit: no new choice, the count kept
    assert seen == [2, 2, 1, 1, 1, 1, 2] and torch.get_num_threads() == 2 and meter.readings == 6
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("threads")]
    assert lines == [
        "threads: 2 of 2 cores (hardware.threads=auto: 0.0 CPUs busy elsewhere; "
        + threads.openmp_wait(os.environ) + ")",
        "threads: 2 -> 1 (1.0 CPUs busy elsewhere over the last 10 s)",
        "threads: 1 -> 2 (0.1 CPUs busy elsewhere over the last 10 s)",
    ]


@pytest.mark.usefixtures("restore_threads")
def test_the_governor_splits_the_cores_between_ranks_and_follows_evaluation_too():
    meter = ScriptedMeter([0.0, 0.0])
    governor = ThreadGovernor(None, meter, interval_s=10.0)
    governor.setup(FakeTrainer(num_devices=2), None, "fit")
    assert torch.get_num_threads() == 1
    meter.clock = 10.0
    governor.on_validation_batch_end(None, None)
    assert meter.readings == 2
    meter.clock = 20.0
    meter.loads.append(0.0)
    governor.on_test_batch_end(None, None)
    assert meter.readings == 3 and torch.get_num_threads() == 1


@pytest.mark.usefixtures("restore_threads")
def test_a_fixed_count_is_applied_and_never_measured(caplog):
    meter = ScriptedMeter([])
    governor = ThreadGovernor(1, meter, interval_s=10.0)
    torch.set_num_threads(2)
    with caplog.at_level(logging.INFO, logger="phi3v"):
        governor.setup(FakeTrainer(), None, "fit")
        meter.clock = 100.0
        governor.on_train_batch_end(None, None)
    assert torch.get_num_threads() == 1 and meter.readings == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"threads: 1 of 2 cores (hardware.threads=1; {threads.openmp_wait(os.environ)})"]


class NumThreads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return torch.get_num_threads()


@pytest.mark.usefixtures("restore_threads")
def test_dataloader_workers_compute_with_one_thread():
    """torch sets 1 thread in every DataLoader worker, whatever the training process runs: the loader
    workers of a recipe (data.num_workers) never compete with its intra-op threads."""
    torch.set_num_threads(2)
    assert [int(n) for n in DataLoader(NumThreads(), batch_size=None, num_workers=1)] == [1, 1]


def test_load_meter_measures_this_machine():
    meter = LoadMeter.start({})
    assert meter.cpus == threads.allowed_cpus() and meter.root == os.getpid()
    time.sleep(0.2)
    busy = meter.read()
    assert 0.0 <= busy <= len(meter.cpus) and meter.seconds_since_reading() < 1.0
    assert 0.0 < meter.free_cores() <= len(meter.cpus)

