"""Tier 1: every config group option composes, every node builds its spec, typos name the key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from hydra import compose
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from phi3v.config_checks import config_problems

pytestmark = [pytest.mark.config, pytest.mark.usefixtures("hydra_context")]

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("model", "data", "optimizer", "scheduler", "hardware", "logger", "experiment")
}
SCHEDULER_KINDS = ("cosine", "linear", "constant")  # phi3v.training.schedules.KINDS, as a user writes them


def test_every_group_has_the_documented_options():
    assert {"tiny", "phi3v", "phi35v"} <= set(GROUPS["model"])
    assert {"sample", "burberry", "table"} <= set(GROUPS["data"])
    assert GROUPS["scheduler"] == ["warmup"]  # its decay is a key: scheduler.kind (SCHEDULER_KINDS)
    assert {"cpu", "gpu", "auto", "ddp", "fsdp", "multinode"} <= set(GROUPS["hardware"])
    assert {"wandb", "csv", "none"} <= set(GROUPS["logger"])
    assert {"demo", "burberry_lora"} <= set(GROUPS["experiment"])


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_option_composes_and_builds_its_specs(group, option, tmp_path):
    from phi3v.data.spec import DataSpec
    from phi3v.modeling.model_spec import ModelSpec
    from phi3v.training.schedules import WarmupSchedule
    from phi3v.training.specs import EvalSpec, HardwareSpec, LoraSpec

    overrides = [f"{group}={option}"] + (["data.source=x.csv"] if option in ("table", "cars") else [])
    cfg = compose("train", overrides=overrides)
    specs = {"model.spec": ModelSpec, "model.lora": LoraSpec, "data": DataSpec, "scheduler": WarmupSchedule,
             "hardware": HardwareSpec, "evaluation": EvalSpec}
    for key, spec in specs.items():  # the schema is the class: the node builds exactly it
        assert OmegaConf.get_type(OmegaConf.select(cfg, key)) is spec
        assert type(OmegaConf.to_object(OmegaConf.select(cfg, key))) is spec, key
    instantiate(cfg.optimizer)
    if cfg.get("logger"):
        instantiate(cfg.logger, save_dir=str(tmp_path), **({"mode": "disabled"} if "wandb" in str(cfg.logger) else {}))


@pytest.mark.parametrize("kind", SCHEDULER_KINDS)
def test_every_scheduler_kind_composes_and_instantiates(kind):
    cfg = compose("train", overrides=[f"scheduler.kind={kind}"])
    assert OmegaConf.to_object(cfg.scheduler).kind == kind


def test_defaults_are_the_offline_demo_and_real_run_has_gpu_defaults():
    demo = compose("train")
    assert (demo.model.spec.name_or_path, demo.data.source, demo.hardware.accelerator) == ("tiny", "synthetic", "cpu")
    assert compose("train", overrides=["model=phi35v"]).hardware.precision == "bf16-mixed"
    cpu_override = compose("train", overrides=["model=phi3v", "hardware.accelerator=cpu"])
    assert cpu_override.hardware.accelerator == "cpu"  # the command line still wins
    real = compose("train", overrides=["model=phi3v", "data=burberry"])
    assert (real.hardware.accelerator, real.hardware.precision) == ("gpu", "bf16-mixed")
    assert real.model.spec.name_or_path == "microsoft/Phi-3-vision-128k-instruct"
    assert real.model.spec.dtype == "bfloat16" and real.model.spec.activation_checkpointing
    assert 16 <= real.model.lora.r <= 64 and 1e-4 <= real.optimizer.lr <= 2e-4
    gpu = compose("train", overrides=["experiment=burberry_lora"])
    assert gpu.hardware.precision == "bf16-mixed" and gpu.data.source.startswith("DBQ/Burberry")


def test_the_demo_recipe_is_rank_32_lora_with_the_fused_adamw_update():
    """conf/model/tiny.yaml + conf/model_tuning/tiny.yaml: what keeps make train within its time on one thread
    (README, "The demo learns"); a real model keeps torch's own choice of AdamW implementation."""
    demo = compose("train")
    assert (demo.model.lora.r, demo.model.lora.alpha) == (32, 32)
    weight = torch.nn.Parameter(torch.zeros(2))
    assert instantiate(demo.optimizer)([weight]).defaults["fused"] is True
    real = instantiate(compose("train", overrides=["model=phi3v"]).optimizer)([weight])
    assert real.defaults["fused"] is None and real.defaults["foreach"] is None
    # Lightning refuses to clip a fused optimizer's gradients under mixed precision: the recipe then keeps
    # AdamW's loop, and a fused one asked for is refused at start, by key
    for precision in ("bf16-mixed", "16-mixed"):
        recipe = compose("train", overrides=[f"hardware.precision={precision}"])
        assert instantiate(recipe.optimizer)([weight]).defaults["fused"] is False and not config_problems(recipe)
    mixed = compose("train", overrides=["hardware.precision=bf16-mixed", "optimizer.fused=true"])
    assert config_problems(mixed) == [
        "optimizer.fused=true: Lightning cannot clip a fused optimizer's gradients under hardware.precision=bf16-mixed;"
        " set optimizer.fused=false or hardware.gradient_clip_val=null"]
    assert config_problems(compose("train", overrides=["hardware.precision=bf16-mixed", "optimizer.fused=true",
                                                       "hardware.gradient_clip_val=null"])) == []


@pytest.mark.parametrize(("model", "base", "num_crops"), [
    ("tiny", "tiny", 1),  # the demo's recipe: 1 crop + the global view (conf/model/tiny.yaml)
    ("phi3v", "random:phi3v", 16), ("phi35v", "random:phi35v", 4),  # null: the base's own (released files)
])
def test_each_model_states_num_crops_once(model, base, num_crops):
    from phi3v.modeling.model_spec import load_processor

    cfg = compose("train", overrides=[f"model={model}", f"model.spec.name_or_path={base}"])
    assert cfg.model.spec.num_crops == (1 if model == "tiny" else None)
    assert load_processor(OmegaConf.to_object(cfg.model.spec)).image_processor.num_crops == num_crops


def test_all_combinations_of_small_groups_compose():
    for model, optimizer, kind, hardware in itertools.product(
        GROUPS["model"], GROUPS["optimizer"], SCHEDULER_KINDS, GROUPS["hardware"]
    ):
        compose("train", overrides=[f"model={model}", f"optimizer={optimizer}", f"scheduler.kind={kind}",
                                    f"hardware={hardware}"])


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.lora.rr=3", "rr"), ("model.lora.r=abc", "model.lora.r"), ("data.batch_sizee=3", "batch_sizee"),
     ("hardware.num_nodes=x", "hardware.num_nodes"), ("data.columns.imagee=x", "imagee")],
)
def test_typos_and_wrong_types_fail_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as raised:
        compose("train", overrides=[override])
    message = str(raised.value) + str(raised.value.__cause__)
    assert key in message


def test_job_config_has_no_now_interpolation():
    """DDP children re-resolve the job config: a ${now:} there would differ per rank."""
    text = "\n".join(p.read_text() for p in CONF.rglob("*.yaml") if p.name != "train.yaml")
    job_part = (CONF / "train.yaml").read_text().split("\nhydra:")[0]
    assert "${now:" not in text + job_part


def test_hardware_options_build_their_strategies_and_every_field_is_overridable():
    from lightning.pytorch.strategies import DDPStrategy

    import train
    from phi3v.training.strategies import FullyShardedStrategy, build_strategy

    cfg = compose("train", overrides=["hardware=fsdp", "hardware.devices=8", "hardware.num_nodes=2",
                                      "hardware.precision=bf16-mixed", "hardware.accumulate_grad_batches=4",
                                      "hardware.fsdp.reshard_after_forward=false"])
    hardware = cfg.hardware
    assert (hardware.devices, hardware.num_nodes, hardware.precision, hardware.accumulate_grad_batches) == (
        8, 2, "bf16-mixed", 4)
    assert isinstance(build_strategy(hardware.strategy, OmegaConf.to_object(hardware.ddp)), FullyShardedStrategy)
    spec = train.sharding_spec(cfg)  # bf16 precision: weights gathered in bf16, gradients reduced in fp32
    assert (spec.param_dtype, spec.reduce_dtype, spec.reshard_after_forward) == ("bfloat16", "float32", False)
    assert train.sharding_spec(compose("train", overrides=["hardware=fsdp"])).param_dtype is None
    ddp_cfg = compose("train", overrides=["hardware=ddp", "hardware.ddp.static_graph=true"])
    ddp = build_strategy(ddp_cfg.hardware.strategy, OmegaConf.to_object(ddp_cfg.hardware.ddp), 5)
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs["static_graph"] is True
    assert ddp._ddp_kwargs["find_unused_parameters"] is False
    multinode = compose("train", overrides=["hardware=multinode"]).hardware
    assert (multinode.num_nodes, multinode.strategy) == (2, "ddp")
    for name in ("cpu", "gpu", "auto"):
        assert compose("train", overrides=[f"hardware={name}"]).hardware.strategy == "auto"


@pytest.mark.parametrize(("override", "key"), [("hardware.strategy=deepspeed", "hardware.strategy"),
                                                 ("hardware.fsdp.param_dtype=fp8", "hardware.fsdp.param_dtype")])
def test_unknown_strategy_settings_fail_naming_the_key(override, key):
    import train
    from phi3v.training.strategies import build_strategy

    cfg = compose("train", overrides=["hardware=fsdp", override])
    with pytest.raises(Exception, match=key.replace(".", r"\.")):  # ValueError, or Hydra's wrapping it
        build_strategy(cfg.hardware.strategy, OmegaConf.to_object(cfg.hardware.ddp))
        train.sharding_spec(cfg)


def test_run_dirs_follow_the_launch_time_shared_by_all_ranks(monkeypatch):
    monkeypatch.setenv("PHI3V_LAUNCH_TIME", "2026-01-02T03:04:05")
    cfg = compose("train", return_hydra_config=True)
    assert OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"] == "outputs/2026-01-02/03-04-05"


def launch_check(*overrides: str):
    """train.py's start-up check on a composed config (as Hydra would run it)."""
    from hydra.core.hydra_config import HydraConfig

    import train

    cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        train.check_launch(cfg)
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize(("overrides", "fix"), [
    (["model=phi3v", "hardware.precision=16-mixed"], "model.spec.dtype=float16"),  # the recipe's bf16 weights
    (["model=phi35v", "hardware.precision=16"], "model.spec.dtype=float16"),  # Lightning's older spelling
    (["model=phi3v", "model.spec.dtype=float16"], "model.spec.dtype=bfloat16"),  # bf16-mixed over fp16 weights
])
def test_mixed_precision_with_weights_of_the_other_half_type_fails_saying_what_to_set(overrides, fix):
    with pytest.raises(ValueError, match=fix.replace(".", r"\.")) as raised:
        launch_check(*overrides)
    assert "hardware.precision" in str(raised.value) and "float32" in str(raised.value)


@pytest.mark.parametrize("overrides", [
    ["model=phi3v", "hardware.precision=16-mixed", "model.spec.dtype=float16"],  # pre-Ampere GPUs
    ["model=phi3v", "hardware.precision=16-mixed", "model.spec.dtype=float32"],  # classic AMP
    ["model=phi3v"], ["model=phi35v"], [],  # the recipes as shipped, and the CPU demo (32-true, float32)
    ["model=phi3v", "hardware.precision=32-true", "hardware.accelerator=cpu"],
])
def test_matching_precision_and_weights_start(overrides):
    launch_check(*overrides)


def test_global_batch_is_the_same_on_1_and_8_gpus():
    import train

    def global_batch(*overrides: str) -> int:
        cfg = compose("train", overrides=["experiment=burberry_lora", *overrides])
        launch = train.launch_plan(cfg)
        assert launch.world_size == cfg.hardware.devices * cfg.hardware.num_nodes
        return cfg.data.batch_size * launch.world_size * launch.accumulate_grad_batches

    assert train.launch_plan(compose("train", overrides=["experiment=burberry_lora"])) == train.Launch(1, 4)
    assert global_batch() == 16  # 4 x 1 GPU x 4 accumulated, the recipe
    assert global_batch("hardware.devices=8", "data.batch_size=2") == 16  # 2 x 8 GPUs, no accumulation
    assert global_batch("hardware.devices=2") == 16  # 4 x 2 GPUs x 2 accumulated
    assert global_batch("hardware.devices=4", "hardware.num_nodes=2", "data.batch_size=1") == 16
    with pytest.raises(ValueError, match=r"data\.global_batch_size=16 .* data\.batch_size x devices x hardware\.num_"
                                         r"nodes = 4 x 8 x 1 = 32: set data\.batch_size=2"):
        launch_check("experiment=burberry_lora", "hardware.devices=8")
    with pytest.raises(ValueError, match=r"hardware\.accumulate_grad_batches=2 contradicts data\.global_batch_size"):
        launch_check("experiment=burberry_lora", "hardware.accumulate_grad_batches=2")
    with pytest.raises(ValueError, match=r"multiple of 32"):  # 8 ranks x 4 nodes cannot make 16
        launch_check("experiment=burberry_lora", "hardware.devices=8", "hardware.num_nodes=4")
    # Without it (the CPU demo), accumulation is hardware.accumulate_grad_batches as set.
    assert train.launch_plan(compose("train", overrides=["hardware.accumulate_grad_batches=3"])) == train.Launch(1, 3)


def test_the_trainer_accumulates_what_the_global_batch_asks(tmp_path):
    import train

    cfg = compose("train", overrides=["data.global_batch_size=24", "data.batch_size=4", "logger=none"])
    assert train.build_trainer(cfg, tmp_path, None, train.launch_plan(cfg)).accumulate_grad_batches == 6  # 24 / (4 x 1)
    cfg = compose("train", overrides=["logger=none", "hardware.accumulate_grad_batches=3"])
    assert train.build_trainer(cfg, tmp_path, None, train.launch_plan(cfg)).accumulate_grad_batches == 3


def test_real_recipe_loaders_keep_workers_and_pin_memory():
    data = compose("train", overrides=["experiment=burberry_lora"]).data
    assert data.num_workers > 0 and data.persistent_workers and data.pin_memory
    assert data.val_limit == 64 and compose("train").data.val_limit is None  # the demo scores all of val


# ---- precedence: command line > experiment > model recipe > group defaults ---------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # accumulation stays 1 in the groups: the recipe's data.global_batch_size derives it (tested below)
        (["model=phi3v"], ("gpu", "bf16-mixed", 1, 1)),  # the model's own hardware: one GPU
        (["model=phi3v", "hardware=cpu"], ("cpu", "32-true", 1, 1)),  # the command line's group, whole
        (["hardware=cpu", "model=phi3v"], ("cpu", "32-true", 1, 1)),  # order on the command line is irrelevant
        (["model=phi35v", "hardware=cpu"], ("cpu", "32-true", 1, 1)),
        (["model=phi3v", "hardware=ddp"], ("auto", "32-true", "auto", 1)),
        (["model=phi3v", "hardware=fsdp"], ("auto", "32-true", "auto", 1)),
        (["experiment=burberry_lora"], ("gpu", "bf16-mixed", 1, 1)),
        (["experiment=burberry_lora", "hardware=cpu"], ("cpu", "32-true", 1, 1)),
        (["experiment=burberry_lora", "hardware=ddp", "hardware.devices=8"], ("auto", "32-true", 8, 1)),
        (["experiment=burberry_lora", "hardware=fsdp", "hardware.precision=bf16-mixed"],
         ("auto", "bf16-mixed", "auto", 1)),
        (["model=phi3v", "hardware=cpu", "hardware.accumulate_grad_batches=2"], ("cpu", "32-true", 1, 2)),
        (["model=phi3v", "hardware.accelerator=cpu"], ("cpu", "bf16-mixed", 1, 1)),  # a key changes only itself
        (["model=tiny"], ("cpu", "32-true", 1, 1)),
    ],
)
def test_command_line_hardware_beats_the_model_recipe(overrides, expected):
    hardware = compose("train", overrides=overrides).hardware
    assert (hardware.accelerator, hardware.precision, hardware.devices, hardware.accumulate_grad_batches) == expected


def test_recipe_keys_beat_group_defaults_and_lose_to_the_experiment_and_the_command_line():
    assert compose("train", overrides=["model=phi3v"]).data.batch_size == 4  # recipe over data/sample
    tiny = compose("train", overrides=["model=tiny"])  # model_tuning/tiny over optimizer/adamw and data/sample
    assert (tiny.optimizer.lr, tiny.data.batch_size, tiny.data.val_fraction) == (1.0e-3, 2, 0.05)
    assert compose("train", overrides=["model=tiny", "data.batch_size=8"]).data.batch_size == 8
    burberry = compose("train", overrides=["experiment=burberry_lora", "hardware=cpu", "trainer.max_epochs=1"])
    assert (burberry.trainer.max_epochs, burberry.trainer.val_check_interval) == (1, 0.5)
    assert compose("train", overrides=["experiment=burberry_lora"]).trainer.max_epochs == 3


# ---- every key typed (at composition) and range-checked (right after) -------------------------
@pytest.mark.parametrize(
    "override",
    ["optimizer.lr=abc", "trainer.max_steps=abc", "evaluation.max_new_tokens=abc", "scheduler.warmup_ratio=abc",
     "scheduler.min_lr_ratio=abc", "scheduler.kindd=cosine", "checkpoint.every_n_train_steps=abc",
     "checkpoint.modee=min", "test=maybe", "export=maybe", "seed=x", "trainer.max_epochs=1.5",
     "optimizer.betas=abc", "evaluation.table_samples=x", "trainer.foo=1", "hardware.precision=[1]"],
)
def test_wrongly_typed_keys_fail_at_composition_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigCompositionException) as raised:
        compose("train", overrides=[override])
    assert f"full_key: {key}" in str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [("optimizer.lr=-1", "optimizer.lr=-1.0: must be > 0"), 
     ("scheduler.kind=step", "scheduler.kind=step: must be one of cosine, linear, constant"),
     ("scheduler.warmup_ratio=1.5", "scheduler.warmup_ratio=1.5: must be in [0, 1)"),
     ("trainer.max_steps=0", "trainer.max_steps=0: must be >= 1, or -1"),
     ("trainer.val_check_interval=2.5", "trainer.val_check_interval=2.5: must be a fraction"),
     ("checkpoint.mode=up", "checkpoint.mode=up: must be one of min, max"),
     ("checkpoint.every_n_train_steps=0", "checkpoint.every_n_train_steps=0: must be >= 1"),
     ("evaluation.max_new_tokens=0", "evaluation.max_new_tokens=0: must be >= 1"),
     ("hardware.strategy=deepspeed", "hardware.strategy=deepspeed: must be one of auto, ddp, fsdp"),
     ("hardware.precision=bf15", "hardware.precision=bf15: must be one of"),
     ("seed=-1", "seed=-1: must be >= 0"), ("resume=/no/such/run", "resume=/no/such/run: no such run dir"),
     ("optimizer.betas=[0.9,1.5]", "optimizer.betas=[0.9, 1.5]: must be two numbers in [0, 1)"),
     ("hardware.threads=0", "hardware.threads=0: must be auto or a count >= 1"),
     ("hardware.threads=1.5", "hardware.threads=1.5: must be auto or a count >= 1"),
     ("hardware.threads=all", "hardware.threads=all: must be auto or a count >= 1")],
)
def test_values_out_of_range_fail_naming_the_key_and_what_is_allowed(override, message):
    from phi3v.config_checks import ConfigError, check_config

    with pytest.raises(ConfigError) as raised:
        check_config(compose("train", overrides=[override]))
    assert message in str(raised.value)


@pytest.mark.parametrize("value", ["auto", 1, 16])
def test_hardware_threads_is_auto_or_a_count(value):
    from phi3v.config_checks import check_config

    cfg = compose("train", overrides=[f"hardware.threads={value}"])
    check_config(cfg)
    assert cfg.hardware.threads == value and compose("train").hardware.threads == "auto"


# Both sides of every bound and every choice of every range rule (config_checks.rules): key -> (values it
# accepts, values it refuses), as a user writes them on the command line.
BOUNDS = {
    "seed": (["0", "7"], ["-1"]),
    "optimizer.lr": (["1e-12", "2"], ["0", "-1"]),
    "optimizer.weight_decay": (["0", "0.1"], ["-1e-9"]),
    "optimizer.betas": (["[0,0.999]", "[0.9,0]"], ["[0.9,1]", "[1,0.9]", "[-0.1,0.9]", "[0.9]"]),
    "optimizer.eps": (["1e-12"], ["0", "-1e-8"]),
    "optimizer.momentum": (["0", "0.9"], ["-0.1"]),
    "optimizer.dampening": (["0", "0.5"], ["-0.1"]),
    "scheduler.kind": (list(SCHEDULER_KINDS), ["step"]),
    "scheduler.warmup_ratio": (["0", "0.999"], ["1.0", "-0.01"]),
    "scheduler.min_lr_ratio": (["0", "1.0"], ["1.01", "-0.01"]),
    "trainer.max_epochs": (["-1", "1"], ["0", "-2"]),
    "trainer.max_steps": (["-1", "1"], ["0", "-2"]),
    "trainer.val_check_interval": (["1.0", "0.01", "0", "5"], ["0.0", "1.01", "-1"]),
    "trainer.check_val_every_n_epoch": (["null", "1"], ["0"]),
    "trainer.limit_train_batches": (["1.0", "0.5", "0", "3"], ["0.0", "1.5", "-1"]),
    "trainer.limit_val_batches": (["1.0", "0", "3"], ["0.0", "1.5", "-1"]),
    "trainer.limit_test_batches": (["1.0", "0", "3"], ["0.0", "1.5", "-1"]),
    "trainer.num_sanity_val_steps": (["-1", "0"], ["-2"]),
    "trainer.log_every_n_steps": (["1"], ["0"]),
    "checkpoint.mode": (["min", "max"], ["up"]),
    "checkpoint.every_n_train_steps": (["1"], ["0"]),
    "evaluation.max_new_tokens": (["1"], ["0"]),
    "evaluation.table_samples": (["0"], ["-1"]),
    "evaluation.max_nonfinite_steps": (["1"], ["0"]),
    "hardware.accelerator": (["cpu", "gpu", "cuda", "mps", "tpu", "auto"], ["xpu"]),
    "hardware.devices": (["auto", "1", "-1", "[0,1]", "[0]"], ["0", "-2", "[-1]"]),
    "hardware.num_nodes": (["1", "2"], ["0"]),
    "hardware.strategy": (["auto", "ddp", "fsdp"], ["deepspeed"]),
    "hardware.precision": (["32-true", "bf16-mixed", "16-mixed", "bf16", "64-true"], ["bf15", "8-mixed"]),
    "hardware.accumulate_grad_batches": (["1", "4"], ["0"]),
    "hardware.gradient_clip_val": (["null", "1e-9", "1.0"], ["0", "-1"]),
    "hardware.timeout_minutes": (["1"], ["0"]),
    "hardware.threads": (["auto", "1", "16"], ["0", "1.5", "all"]),
    "hardware.fsdp.param_dtype": (["null", "float32", "bfloat16", "float16"], ["fp8"]),
    "hardware.fsdp.reduce_dtype": (["float32", "bfloat16", "float16"], ["fp8"]),
    "model.spec.dtype": (["float32", "bfloat16", "float16"], ["int8"]),
    "model.spec.activation_checkpointing": (["false", "true", "selective", "offload"], ["partial"]),
    "model.spec.kernels": (["null"], ["triton"]),
    "logger.mode": (["auto", "online", "offline", "disabled"], ["sometimes"]),
}
NEEDS = {"optimizer.momentum": ["optimizer=sgd"], "optimizer.dampening": ["optimizer=sgd"],
         "checkpoint.mode": ["checkpoint.monitor=null"]}  # a monitored metric fixes the mode (test_monitor_*)


@pytest.mark.parametrize(("key", "low"), [("batch_size", 1), ("eval_batch_size", 1), ("global_batch_size", 1),
                                          ("val_limit", 1)])
def test_the_data_spec_accepts_its_lowest_batch_values_and_refuses_below(key, low):
    from phi3v.data.spec import DataSpec

    assert getattr(DataSpec(**{key: low}), key) == low
    with pytest.raises(ValueError, match=rf"data\.{key}"):
        DataSpec(**{key: low - 1})
    if key in ("global_batch_size", "val_limit"):
        assert getattr(DataSpec(**{key: None}), key) is None  # null: accumulation as set / the whole split


def test_every_range_rule_has_its_bounds_tested():
    from phi3v.config_checks import rules

    assert set(BOUNDS) == set(rules())


@pytest.mark.parametrize(("key", "value", "accepted"), [
    (key, value, accepted) for key, (good, bad) in BOUNDS.items()
    for accepted, values in ((True, good), (False, bad)) for value in values
])
def test_each_range_rule_accepts_its_bounds_and_refuses_past_them(key, value, accepted):
    from phi3v.config_checks import config_problems

    problems = config_problems(compose("train", overrides=[*NEEDS.get(key, []), f"{key}={value}"]))
    named = [problem for problem in problems if problem.startswith(f"{key}=")]
    assert bool(named) is not accepted, (key, value, problems)
    assert len(problems) == len(named)  # no other key is touched


def test_every_option_passes_the_range_checks():
    from phi3v.config_checks import check_config

    for group, options in GROUPS.items():
        for option in options:
            check_config(compose("train", overrides=[f"{group}={option}"]))


@pytest.mark.parametrize(("schema", "optimizer"), [("AdamWSchema", "AdamW"), ("SGDSchema", "SGD")])
def test_optimizer_schemas_are_torchs_arguments_and_defaults(schema, optimizer):
    """The optimizers are torch's classes: their schemas list torch's arguments with torch's defaults."""
    import dataclasses
    import inspect

    import torch

    import phi3v.config_schema as config_schema

    fields = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
              for f in dataclasses.fields(getattr(config_schema, schema)) if f.name not in ("_target_", "_partial_")}
    parameters = inspect.signature(getattr(torch.optim, optimizer)).parameters
    assert fields.keys() <= parameters.keys()
    for name, default in fields.items():
        assert default == (list(parameters[name].default) if name == "betas" else parameters[name].default), name


def test_lightning_choices_and_arguments_are_lightnings():
    """config_checks copies Lightning's lists (importing Lightning takes seconds); the trainer schema and
    the hardware spec name Trainer arguments (train.py passes them as they are)."""
    import dataclasses
    import inspect
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    from lightning.pytorch import Trainer
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from phi3v.config_checks import ACCELERATORS, PRECISIONS
    from phi3v.config_schema import TrainerSchema
    from phi3v.training.specs import HardwareSpec

    assert PRECISIONS == typing.get_args(_PRECISION_INPUT_STR) + typing.get_args(_PRECISION_INPUT_STR_ALIAS)
    # the registered accelerators and the two names Lightning's accelerator connector resolves itself
    assert set(ACCELERATORS) == set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"}
    arguments = inspect.signature(Trainer).parameters
    assert {f.name for f in dataclasses.fields(TrainerSchema)} <= arguments.keys()
    trainer_keys = {"accelerator", "devices", "num_nodes", "precision", "accumulate_grad_batches", "gradient_clip_val"}
    assert trainer_keys <= {f.name for f in dataclasses.fields(HardwareSpec)} and trainer_keys <= arguments.keys()


def test_composing_the_config_imports_no_torch():
    """A typo or --help is answered without torch, Lightning or transformers (seconds of imports): the
    schemas are registered, every option composed and every spec built without them."""
    import subprocess
    import sys

    code = """
import sys
import train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from phi3v.config_checks import check_config
from phi3v.config_schema import register_schemas

register_schemas()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    for overrides in ([], ["experiment=burberry_lora", "hardware=fsdp"], ["data=table", "data.source=x.csv"]):
        cfg = compose("train", overrides=overrides)
        check_config(cfg)
        for key in ("model.spec", "model.lora", "data", "scheduler", "hardware", "evaluation"):
            OmegaConf.to_object(OmegaConf.select(cfg, key))
heavy = [m for m in ("torch", "lightning", "transformers") if m in sys.modules]
assert not heavy, heavy
"""
    done = subprocess.run([sys.executable, "-c", code, str(CONF)], cwd=CONF.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_resume_points_hydra_at_the_run_dir_it_continues(tmp_path):
    run = tmp_path / "outputs" / "2026-01-02" / "03-04-05"
    (run / "checkpoints").mkdir(parents=True)
    for resume in (run, run / "checkpoints" / "last.ckpt"):
        hydra = compose("train", overrides=[f"resume={resume}"], return_hydra_config=True).hydra
        assert hydra.run.dir == str(run) and hydra.output_subdir.startswith(".hydra/resumed_")
    fresh = compose("train", return_hydra_config=True).hydra
    assert fresh.run.dir.startswith("outputs/") and fresh.output_subdir == ".hydra"


# ---- data.task: the fields as configuration (issue 22) ---------------------------------------------------
SEED_PROMPT = "<|user|>\n<|image_1|>What is shown in this image?<|end|>\n<|assistant|>\n"


@pytest.mark.parametrize("data", ["sample", "burberry", "table"])
def test_the_seed_wording_is_byte_for_byte_todays(data):
    """data=sample, burberry and table ask and answer exactly as before the fields were configurable."""
    cfg = compose("train", overrides=[f"data={data}", *(["data.source=x.csv"] if data == "table" else [])])
    task = OmegaConf.to_object(cfg.data).task
    assert task.prompt() == SEED_PROMPT
    values = {"title": "Vintage Check Scarf", "category": "SCARVES", "price": 1250.0}
    assert task.answer_for(values) == "Product: Vintage Check Scarf, Category: SCARVES, Full Price: 1250.0"
    assert task.answer == "Product: {title}, Category: {category}, Full Price: {price}"
    columns = {"sample": ("title", "category3_code", "full_price"), "burberry": ("title", "category3_code",
               "full_price"), "table": ("title", "category", "price")}[data]
    assert tuple(f.column for f in task.fields) == columns and [f.type for f in task.fields] == [
        "text", "category", "number"]


def test_fields_given_on_the_command_line_build_the_task():
    cfg = compose("train", overrides=[
        "data.task.fields=[{name: make, type: category}, {name: year, type: integer}, "
        "{name: mileage, column: km, type: number, format: '{:,.0f} km'}]", "checkpoint.monitor=val/mileage_mape"])
    task = OmegaConf.to_object(cfg.data).task
    assert task.answer == "Make: {make}, Year: {year}, Mileage: {mileage}"
    assert task.answer_for({"make": "Audi", "year": 2019, "mileage": 85000.0}) == (
        "Make: Audi, Year: 2019, Mileage: 85,000 km")
    from phi3v.config_checks import check_config

    check_config(cfg)


def test_a_typo_in_a_field_names_its_key_at_composition():
    with pytest.raises(ConfigCompositionException) as raised:
        compose("train", overrides=["data.task.fields=[{name: make, typ: category}]"])
    assert "Key 'typ' not in 'FieldSpec'" in str(raised.value.__cause__)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.task.fields=[{name: make, type: colour}]"],
     "data.task.fields[0].type 'colour' is not a field type; use one of number, integer, category, text"),
    (["data.task.fields=[{name: year, type: integer, format: '{:.2e}'}]"],
     "data.task.fields[0].format '{:.2e}' writes 2019 as '2.02e+03'"),
    (["data.task.answer='Product: {title}, Price: {price}'"],
     "data.task.fields[1] (category) is not in data.task.answer 'Product: {title}, Price: {price}'"),
    (["data.task.answer='Product: {title}, Category: {category}, Full Price: {price}, Colour: {colour}'"],
     "data.task.answer has {colour} but no field of data.task.fields is named 'colour'"),
])
def test_a_bad_task_is_one_error_at_start_naming_the_key(overrides, message):
    from phi3v.config_checks import ConfigError, check_config

    with pytest.raises(ConfigError) as raised:
        check_config(compose("train", overrides=[*overrides, "checkpoint.monitor=null"]))
    assert message in str(raised.value)


def test_monitor_must_be_a_validation_metric_of_the_tasks_fields():
    from phi3v.config_checks import ConfigError, check_config, monitor_keys

    check_config(compose("train"))  # the default, val/price_mape, unchanged
    valid = (("val/category_accuracy", "max"), ("val/loss", "min"), ("val/parse_rate", "max"), (None, "min"))
    for monitor, mode in valid:
        check_config(compose("train", overrides=[f"checkpoint.monitor={'null' if monitor is None else monitor}",
                                                 f"checkpoint.mode={mode}"]))
    with pytest.raises(ConfigError) as raised:
        check_config(compose("train", overrides=["checkpoint.monitor=val/price_mpe"]))
    message = str(raised.value)
    assert "checkpoint.monitor=val/price_mpe: not a validation metric of data.task's fields; choose one of " in message
    assert ", ".join(monitor_keys(OmegaConf.to_object(compose("train").data.task))) in message
    cars = ["data.task.fields=[{name: make, type: category}, {name: year, type: integer}]"]
    with pytest.raises(ConfigError, match="checkpoint.monitor=val/price_mape: not a validation metric"):
        check_config(compose("train", overrides=cars))  # the default monitor names a field the task lacks
    check_config(compose("train", overrides=[*cars, "checkpoint.monitor=val/year_mape"]))
    assert monitor_keys(OmegaConf.to_object(compose("train", overrides=cars).data.task))[:3] == (
        "val/make_accuracy", "val/make_macro_f1", "val/make_parse_rate")


@pytest.mark.parametrize(("monitor", "mode"), [("val/category_accuracy", "min"), ("val/price_mape", "max"),
                                               ("val/loss", "max"), ("val/title_similarity", "min")])
def test_the_mode_must_follow_the_monitored_metrics_direction(monitor, mode):
    from phi3v.config_checks import ConfigError, check_config

    wanted = "max" if mode == "min" else "min"
    with pytest.raises(ConfigError, match=rf"checkpoint.mode={mode}: {monitor} is better "
                                          rf"{'lower' if wanted == 'min' else 'higher'}.*set checkpoint.mode={wanted}"):
        check_config(compose("train", overrides=[f"checkpoint.monitor={monitor}", f"checkpoint.mode={mode}"]))
