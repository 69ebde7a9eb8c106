"""The W&B sweep (`sweep.yaml`): a valid sweep of our config, and agent runs that train and log into their run.

Config tier: the sweep passes the sweep engine's own schema (`sweeps`, W&B's open-source engine), its
command ends in `${args_no_hyphens}`, and every parameter, with values from its range and written the
way an agent writes it, is a valid override of conf/train.yaml on top of the fixed recipe.

Slow tier: `sweeps.next_run` proposes runs from sweep.yaml; each is started exactly as `wandb agent`
starts it (W&B's own macro expansion of the sweep's `command`, the agent's environment and parameter
file) but with the heavy recipe override swapped for a tiny CPU one, and its offline W&B run is read
back: it is the run the agent named (WANDB_RUN_ID, WANDB_SWEEP_ID), has the sampled config and logs
val/price_mape. The second proposal is made after feeding the first run's result back to the engine.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml
from hydra import compose
from omegaconf import OmegaConf

pytestmark = pytest.mark.config

with warnings.catch_warnings():  # sweeps 0.3.0 still spells a pydantic v1 config key
    warnings.simplefilter("ignore", UserWarning)
    import sweeps

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SWEEP = yaml.safe_load((REPO / "sweep.yaml").read_text())
RECIPE = ["experiment=burberry_lora"]  # the fixed overrides of sweep.yaml that make it the real run


def agent_args(params: dict) -> list[str]:
    """`${args_no_hyphens}` for sampled {name: value}: the agent's own formatting (`name=value`)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args_no_hyphens"]


def fixed_overrides(config: dict) -> list[str]:
    """The command items between `${program}` and `${args_no_hyphens}`."""
    command = [str(c) for c in config["command"]]
    return command[command.index("${program}") + 1 : command.index("${args_no_hyphens}")]


def range_values(spec: dict) -> list:
    """Values a parameter can take: all listed values, or the ends and the middle of a range."""
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    middle = math.sqrt(low * high) if spec["distribution"].startswith("log") else (low + high) / 2
    return [low, middle, high]


# ---------------------------------------------------------------------------------------------- config


def test_sweep_config_is_valid_for_the_sweep_engine():
    assert sweeps.schema_violations_from_proposed_config(SWEEP) == []
    filled = sweeps.SweepConfig(SWEEP)  # raises on any violation
    assert filled["program"] == "train.py" and (REPO / filled["program"]).is_file()
    assert filled["method"] == "bayes"
    assert filled["metric"] == {"name": "val/price_mape", "goal": "minimize"}
    assert filled["early_terminate"]["type"] == "hyperband" and filled["early_terminate"]["min_iter"] >= 1
    broken = {**SWEEP, "early_terminate": {"type": "hyperband", "min_iterr": 2}}
    assert sweeps.schema_violations_from_proposed_config(broken), "the schema check is not a no-op"


def test_command_is_a_list_ending_in_hydra_style_args():
    command = SWEEP["command"]
    assert isinstance(command, list) and all(isinstance(c, str) for c in command)
    assert command[:3] == ["${env}", "${interpreter}", "${program}"]
    assert command[-1] == "${args_no_hyphens}"  # name=value (Hydra), not W&B's default --name=value
    assert [c for c in fixed_overrides(SWEEP) if not c.startswith("hydra.")] == RECIPE


def test_metric_is_what_training_monitors(hydra_context):
    from phi3v.config_checks import monitor_keys, monitor_problems

    cfg = compose("train", overrides=RECIPE)
    assert cfg.checkpoint.monitor == SWEEP["metric"]["name"] == "val/price_mape"
    task = OmegaConf.to_object(cfg.data.task)
    assert SWEEP["metric"]["name"] in monitor_keys(task)  # a validation metric of the recipe's fields
    goal = {"minimize": "min", "maximize": "max"}[SWEEP["metric"]["goal"]]
    assert goal == cfg.checkpoint.mode and monitor_problems(SWEEP["metric"]["name"], goal, task) == []


def test_fixed_overrides_are_the_real_recipe_with_one_run_dir_per_run(hydra_context, monkeypatch):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw33p1d0")
    monkeypatch.setenv("WANDB_RUN_ID", "run1d000")
    cfg = compose("train", overrides=fixed_overrides(SWEEP), return_hydra_config=True)
    assert cfg.model.spec.name_or_path == "microsoft/Phi-3-vision-128k-instruct"
    assert cfg.data.source.startswith("DBQ/Burberry") and cfg.hardware.accelerator == "gpu"
    assert cfg.hydra.run.dir == "outputs/sweeps/sw33p1d0/run1d000"  # ${oc.env:...} resolved in the run


def test_an_agent_of_two_gpus_adds_ddp_to_the_command(hydra_context):
    """README: an agent that owns 2 GPUs gets `hardware=ddp hardware.devices=2 hardware.precision=bf16-mixed` in
    the sweep's command (a hardware group on the command line replaces the recipe's whole, precision included);
    the sampled global batch then derives the accumulation over the 2 GPUs."""
    import train

    params = {"data.global_batch_size": 16, "data.batch_size": 4}
    cfg = compose("train", overrides=[*RECIPE, "hardware=ddp", "hardware.devices=2", "hardware.precision=bf16-mixed",
                                      *agent_args(params)])
    assert (cfg.hardware.strategy, cfg.hardware.devices, cfg.hardware.accelerator) == ("ddp", 2, "auto")
    assert cfg.hardware.precision == "bf16-mixed" and train.launch_plan(cfg) == train.Launch(2, 2)  # 16 / (4 x 2)


@pytest.mark.parametrize("name", sorted(SWEEP["parameters"]))
def test_every_parameter_is_an_override_of_our_config(hydra_context, name):
    spec = SWEEP["parameters"][name]
    for value in range_values(spec):
        [override] = agent_args({name: value})
        cfg = compose("train", overrides=[*RECIPE, override])  # unknown keys and wrong types fail here
        composed = OmegaConf.select(cfg, name, throw_on_missing=True)
        assert type(composed) is type(value), (override, composed)  # 2e-05 stays a float, 8 an int
        assert composed == pytest.approx(value), override


def test_a_proposal_composes_as_a_whole(hydra_context):
    for run in sweeps.next_runs(SWEEP, [], n=3):
        params = {k: v["value"] for k, v in json.loads(json.dumps(run.config)).items()}
        cfg = compose("train", overrides=[*RECIPE, *agent_args(params)])
        for name, value in params.items():
            assert OmegaConf.select(cfg, name) == pytest.approx(value)


def test_hyperband_cuts_after_min_iter_validations_then_eta_times_later():
    metric, first = SWEEP["metric"]["name"], SWEEP["early_terminate"]["min_iter"]
    later = first * SWEEP["early_terminate"]["eta"]

    def stopped(histories: dict) -> list[str]:  # one value of the metric per validation
        runs = [sweeps.SweepRun(name=name, state=sweeps.RunState.running, history=[{metric: v} for v in values])
                for name, values in histories.items()]
        return [run.name for run in sweeps.stop_runs(SWEEP, runs)]

    start = {"a": 80.0, "b": 75.0, "c": 90.0, "d": 70.0}
    assert stopped({n: [v] * (first - 1) for n, v in start.items()}) == []  # too early to judge
    assert stopped({n: [v] * first for n, v in start.items()}) == ["c"]  # the trailing run (highest MAPE)
    # Level at the first cut, apart afterwards: judged again at the next band, not before it.
    histories = {n: [80.0] * first + [v] * (later - first) for n, v in {"a": 90.0, "b": 75.0, "d": 70.0}.items()}
    assert stopped({n: h[:-1] for n, h in histories.items()}) == []
    assert stopped(histories) == ["a"]


# ------------------------------------------------------------------------------------------------ slow

# The test copy of the sweep replaces RECIPE: the tiny random model on a 64-product synthetic
# catalogue, 2 training batches with a validation after each (2 values of the metric, as hyperband
# sees them), no test pass or export. The rest of the command and the parameters are sweep.yaml's
# own, except num_crops: at 16 (2,509 image tokens per photo) one tiny run takes ~85 s on 2 CPU cores
# against ~45 s at 4, so the copy draws from 1, 2 and 4 (the config tests compose 8 and 16).
TINY_CROPS = [1, 2, 4]
TINY_RECIPE = [
    "experiment=demo", "data.synthetic.num_products=64", "data.limit=48", "data.val_fraction=0.125",
    "data.test_fraction=0.125", "data.eval_batch_size=8", "evaluation.max_new_tokens=16",
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.val_check_interval=1", "test=false",
    "export=false", "hardware.threads=1",  # as tests/test_train_e2e.py's SMALL
]
VALIDATIONS = 2


def tiny_sweep(data_dir: Path) -> dict:
    command = []
    for item in SWEEP["command"]:
        command += [*TINY_RECIPE, f"data.data_dir={data_dir}"] if item in RECIPE else [item]
    # The agent runs `${program}` from its working directory; the test's is a tmp dir.
    parameters = {**SWEEP["parameters"], "model.spec.num_crops": {"values": TINY_CROPS}}
    return {**SWEEP, "command": command, "program": str(REPO / "train.py"), "parameters": parameters}


def agent_argv(config: dict, args: dict) -> list[str]:
    """The argv `wandb agent` runs for a proposed run: W&B's macro expansion of the sweep's command.

    As in wandb's agent, `${env}` is /usr/bin/env and `${program}` the sweep's program; `${interpreter}`
    (`python` from PATH there) is this interpreter, so the venv's python runs it wherever PATH points.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    macros = create_sweep_command_args({"args": args})
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[config["program"]])
    argv = []
    for item in create_sweep_command(list(config["command"])):
        item = str(item)
        is_macro = item.startswith("${") and item.endswith("}")
        argv += (macros.get(item[2:-1]) or []) if is_macro else [item]
    return argv


def run_as_agent(config: dict, proposal: sweeps.SweepRun, cwd: Path, sweep_id: str) -> tuple[str, dict]:
    """Start the proposed run the way the agent does; returns (run id, its sampled args)."""
    from wandb.sdk.lib import config_util
    from wandb.sdk.lib.runid import generate_id

    run_id = generate_id()
    args = json.loads(json.dumps(proposal.config))  # as the server sends them: plain JSON numbers
    param_file = cwd / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    config_util.save_config_file_from_dict(str(param_file), args)  # wandb.init reads it as the sweep config
    env = {**os.environ, "WANDB_SWEEP_ID": sweep_id, "WANDB_RUN_ID": run_id,
           "WANDB_SWEEP_PARAM_PATH": str(param_file), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    start = time.time()
    process = subprocess.run(agent_argv(config, args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-4000:]
    print(f"run {run_id}: {time.time() - start:.0f} s, {agent_args({k: v['value'] for k, v in args.items()})}")
    return run_id, args


def wandb_records(path: Path):
    """The records of an offline run's `.wandb` file (wandb 0.31 writes no wandb-summary.json offline).

    The file is a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each with a
    7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last); a record is one protobuf
    `Record` split over one or more chunks; a block's tail shorter than a chunk header is padding.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32 * 1024
    assert data[:4] == b":W&B", path
    position, pending = 7, b""
    while position + 7 <= len(data):
        if block - position % block < 7:
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def read_offline_run(run_dir: Path, run_id: str) -> dict:
    [folder] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    [log] = folder.glob("*.wandb")
    out = {"history": [], "summary": {}, "config": {}, "run": None, "exit_code": None}

    def key(item):
        return item.key or "/".join(item.nested_key)

    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update({key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out


def with_ddp(config: dict) -> dict:
    """The sweep as an agent owning two devices runs it (README): DDP overrides before the sampled args;
    here two CPU processes stand in for two GPUs."""
    command = list(config["command"])
    at = command.index("${args_no_hyphens}")
    command[at:at] = ["hardware=ddp", "hardware.accelerator=cpu", "hardware.devices=2"]
    return {**config, "command": command}


@pytest.mark.slow
@pytest.mark.e2e
def test_agent_runs_train_and_log_into_their_sweep_runs(tmp_path):
    """Two proposals, the second after feeding back the first's result; the second runs as an agent
    with two devices does (DDP, 2 processes): still exactly one W&B run, the agent's."""
    metric = SWEEP["metric"]["name"]
    config = tiny_sweep(tmp_path / "data")
    sweep_id = "tst" + str(os.getpid())[-5:]
    finished: list[sweeps.SweepRun] = []
    for attempt in range(2):
        proposal = sweeps.next_run(config, finished, validate=True)
        assert proposal is not None and set(proposal.config) == set(SWEEP["parameters"])
        assert all(p.config != proposal.config for p in finished)  # the engine moved on
        run_id, args = run_as_agent(config if attempt == 0 else with_ddp(config), proposal, tmp_path, sweep_id)

        run_dir = tmp_path / "outputs" / "sweeps" / sweep_id / run_id  # the command's hydra.run.dir
        assert (run_dir / "checkpoints" / "best.ckpt").is_file()
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # one W&B run, whatever the ranks
        if attempt == 1:
            assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran, in the same run dir
        logged = read_offline_run(run_dir, run_id)
        assert (logged["run"].run_id, logged["run"].sweep_id) == (run_id, sweep_id)  # the agent's run
        assert logged["exit_code"] == 0
        for name, spec in args.items():
            assert logged["config"][name] == spec["value"]  # the sweep's view of the run's parameters
            section, _, rest = name.partition(".")  # and the config the run actually trained with
            assert OmegaConf.select(OmegaConf.create(logged["config"][section]), rest) == spec["value"]

        rows = [row for row in logged["history"] if metric in row]
        values = [row[metric] for row in rows]
        assert len(values) == VALIDATIONS and all(type(v) in (int, float) for v in values)  # JSON: 100, NaN
        # The objective counts every product, an unparsed price as a miss (100%): a number in [0, 100] even
        # for a random tiny model trained for two batches, which mostly writes no price (exactly 100 when it
        # wrote none). The parsed-only MAPE beside it is NaN exactly when no price was parsed.
        for row in rows:
            assert 0 <= row[metric] <= 100, row
            assert row["val/parse_rate"] > 0 or row[metric] == 100, row
            assert math.isnan(row["val/price_mape_parsed"]) == (row["val/parse_rate"] == 0), row
        summary = logged["summary"][metric]
        assert summary == values[-1] or (math.isnan(summary) and math.isnan(values[-1]))
        finished.append(sweeps.SweepRun(name=run_id, state=sweeps.RunState.finished, config=proposal.config,
                                        history=rows,
                                        summary_metrics=logged["summary"]))
