"""Structured-config schemas for `conf/`: every key typed, so Hydra rejects a typo or a wrong type at
composition with a message naming the key (`Key 'rr' not in 'LoraSpecSchema'`,
`Value 'abc' of type 'str' could not be converted to Float ... full_key: optimizer.lr`).

The schema of a YAML node with a `_target_` is derived from the constructor it configures: one field
per argument, with its type and default, so one grep finds the YAML key and the Python argument and
the two cannot drift apart. The constructors are read from their *source* (`ast`), not imported:
importing torch, transformers and Lightning takes ~10 s, and a typo must be answered at once.
tests/test_config.py checks the schemas read from source equal the imported signatures.

Hand-written schemas remain for what has no constructor of ours: the optimizers (torch classes),
`trainer`, `checkpoint`, `hardware` and the top-level flags. Ranges and choices (`optimizer.lr > 0`,
`checkpoint.mode: min | max`) are checked by `check_config` (config_checks.py) right after composition.
Entry points call `register_schemas()` before Hydra composes the config.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

# Nested arguments that are themselves configured objects (a `_target_` node in YAML).
NESTED = {
    "phi3v.data.catalogue.ColumnMap", "phi3v.task.prompt.PromptTemplate",
    "phi3v.data.download.DownloadSettings", "phi3v.data.synthetic.SyntheticSpec",
}
SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
_SCHEMAS: dict[str, type] = {}


# ---- reading constructors from source ------------------------------------------------------------
@functools.cache
def _module_tree(module: str) -> ast.Module:
    path = _source_path(module)
    return ast.parse(path.read_text(), str(path))


def _source_path(module: str) -> Path:
    """The file of `module`, found without importing its parent packages (`find_spec` of a submodule
    imports them, and `phi3v.modeling`'s __init__ imports torch and transformers)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"config schema: no source for module {module}")
    for location in spec.submodule_search_locations:
        base = Path(location).joinpath(*rest)
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return path
    raise ImportError(f"config schema: no source for module {module}")


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.rsplit(".", node.level)[0]
    return f"{package}.{node.module}" if node.module else package


def source_definition(module: str, name: str) -> tuple[str, ast.AST]:
    """(module, definition node) of `name` as seen from `module`, following `from x import name`."""
    for node in _module_tree(module).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return module, node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return module, node
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return source_definition(_absolute(module, node), alias.name)
    raise LookupError(f"config schema: {name} not found in {module}")


def _qualified(module: str, name: str) -> str:
    try:
        found, _ = source_definition(module, name)
    except (LookupError, ImportError):
        return name
    return f"{found}.{name}"


def _field_type(module: str, annotation: ast.expr | None) -> Any:
    """An OmegaConf-compatible type for an argument annotation (Any where OmegaConf has none)."""
    if annotation is None:
        return Any
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # a quoted annotation
        return _field_type(module, ast.parse(annotation.value, mode="eval").body)
    if isinstance(annotation, ast.Name):
        if annotation.id in SCALARS:
            return SCALARS[annotation.id]
        qualified = _qualified(module, annotation.id)
        return schema_for(qualified) if qualified in NESTED else Any
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        members = _union_members(annotation)
        rest = [m for m in members if not (isinstance(m, ast.Constant) and m.value is None)]
        inner = _field_type(module, rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if len(rest) < len(members) else inner  # noqa: UP045 (OmegaConf reads Optional)
    if isinstance(annotation, ast.Subscript) and isinstance(annotation.value, ast.Name):
        if annotation.value.id in ("tuple", "list", "Sequence"):
            item = annotation.slice.elts[0] if isinstance(annotation.slice, ast.Tuple) else annotation.slice
            kind = SCALARS.get(item.id) if isinstance(item, ast.Name) else None
            return list[kind] if kind else list[Any]
    return Any


def _union_members(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_members(node.left) + _union_members(node.right)
    return [node]


def _default(module: str, node: ast.expr | None, where: str) -> Any:
    """The literal value of a default: a constant, a module-level constant, or field(default...)."""
    if node is None:
        return dataclasses.MISSING
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "field":
        for keyword in node.keywords:
            if keyword.arg == "default":
                return _default(module, keyword.value, where)
            if keyword.arg == "default_factory" and getattr(keyword.value, "id", None) in ("tuple", "list"):
                return []
        return dataclasses.MISSING
    if isinstance(node, ast.Name):
        found, definition = source_definition(module, node.id)
        if isinstance(definition, (ast.Assign, ast.AnnAssign)) and definition.value is not None:
            return _default(found, definition.value, where)
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise TypeError(f"config schema: the default of {where} is not a literal; use a constant") from None
    return list(value) if isinstance(value, tuple) else value


def _is_dataclass(node: ast.ClassDef) -> bool:
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if getattr(target, "id", None) == "dataclass":
            return True
    return False


def _arguments(module: str, node: ast.AST, qualified: str) -> list[tuple[str, ast.expr | None, Any]]:
    """(name, annotation, default or MISSING) of every constructor argument, in order."""
    if isinstance(node, ast.ClassDef) and _is_dataclass(node):
        return [
            (item.target.id, item.annotation, _default(module, item.value, f"{qualified}.{item.target.id}"))
            for item in node.body
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            and "ClassVar" not in ast.unparse(item.annotation)
        ]
    if isinstance(node, ast.ClassDef):
        node = next(f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
        positional = node.args.args[1:]  # without self
    else:
        positional = node.args.args
    defaults = [None] * (len(positional) - len(node.args.defaults)) + list(node.args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(node.args.kwonlyargs, node.args.kw_defaults))
    return [(a.arg, a.annotation, _default(module, d, f"{qualified}.{a.arg}")) for a, d in pairs]


def schema_for(target: str, supplied: tuple[str, ...] = ()) -> type:
    """A dataclass with `_target_` plus one typed field per argument of `target` ("module.Name"),
    read from its source. `supplied`: arguments the entry point passes itself (not config keys)."""
    key = f"{target}:{','.join(supplied)}"
    if key in _SCHEMAS:
        return _SCHEMAS[key]
    module, name = target.rsplit(".", 1)
    module, node = source_definition(module, name)
    fields: list[tuple[str, Any, Any]] = [("_target_", str, dataclasses.field(default=target))]
    if isinstance(node, ast.FunctionDef):  # a factory used with _partial_: true
        fields.append(("_partial_", bool, dataclasses.field(default=False)))
    for argument, annotation, default in _arguments(module, node, target):
        if argument in supplied:
            continue
        kind = _field_type(module, annotation)
        if dataclasses.is_dataclass(kind):
            fields.append((argument, kind, dataclasses.field(default_factory=kind)))
        elif isinstance(default, list):
            fields.append((argument, kind, dataclasses.field(default_factory=lambda d=default: list(d))))
        elif default is dataclasses.MISSING:
            optional = type(None) in getattr(kind, "__args__", ())
            fields.append((argument, kind, dataclasses.field(default=None if optional else dataclasses.MISSING)))
        else:
            fields.append((argument, kind, dataclasses.field(default=default)))
    schema = dataclasses.make_dataclass("".join(p[:1].upper() + p[1:] for p in name.split("_")) + "Schema", fields)
    _SCHEMAS[key] = schema
    return schema


def _node(target: str, supplied: tuple[str, ...] = ()) -> Any:
    """A dataclass field holding the schema of `target` with its defaults."""
    return dataclasses.field(default_factory=schema_for(target, supplied))


# ---- schemas of nodes without a constructor of ours ----------------------------------------------
@dataclasses.dataclass
class ModelSchema:
    spec: Any = _node("phi3v.modeling.model_spec.ModelSpec")
    lora: Any = _node("phi3v.training.lora.LoraSpec")


@dataclasses.dataclass
class HardwareSchema:
    accelerator: str = "cpu"  # cpu | gpu | cuda | mps | auto
    devices: Any = 1  # an int, a list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (phi3v.training.strategies)
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0  # noqa: UP045 (OmegaConf reads Optional)
    timeout_minutes: int = 30  # how long ranks wait for each other in a collective before failing
    threads: Any = "auto"  # auto | a count >= 1: CPU threads per rank (phi3v/training/threads.py)
    ddp: Any = _node("phi3v.training.strategies.DDPSettings")
    fsdp: Any = _node("phi3v.training.sharding.ShardingSpec")


@dataclasses.dataclass
class AdamWSchema:  # torch.optim.AdamW's arguments (train.py passes the parameters)
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 1e-3
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 1e-2
    amsgrad: bool = False


@dataclasses.dataclass
class SGDSchema:  # torch.optim.SGD's arguments (train.py passes the parameters)
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclasses.dataclass
class TrainerSchema:  # arguments of lightning.Trainer that runs may set (hardware.* holds the others)
    max_epochs: int = 1
    max_steps: int = -1
    val_check_interval: Any = 1.0  # a fraction of an epoch (float) or a number of steps (int)
    check_val_every_n_epoch: Optional[int] = 1  # noqa: UP045
    limit_train_batches: Any = 1.0  # a fraction (float) or a number of batches (int)
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10


@dataclasses.dataclass
class CheckpointSchema:
    monitor: Optional[str] = "val/price_mape"  # noqa: UP045 (null: no best.ckpt)
    mode: str = "min"  # min | max
    every_n_train_steps: int = 50


@dataclasses.dataclass
class TrainSchema:
    """The top level of conf/train.yaml; the groups bring their own schemas."""

    model: ModelSchema = dataclasses.field(default_factory=ModelSchema)
    data: Any = None
    optimizer: Any = None
    scheduler: Any = None
    hardware: HardwareSchema = dataclasses.field(default_factory=HardwareSchema)
    logger: Any = None
    seed: int = 0
    resume: Optional[str] = None  # noqa: UP045
    test: bool = True
    export: bool = True
    trainer: TrainerSchema = dataclasses.field(default_factory=TrainerSchema)
    checkpoint: CheckpointSchema = dataclasses.field(default_factory=CheckpointSchema)
    evaluation: Any = _node("phi3v.training.module.EvalSpec")


def data_schema() -> type:
    return schema_for("phi3v.data.datamodule.ProductDataModule")


def scheduler_schema() -> type:
    return schema_for("phi3v.training.schedules.warmup_schedule", supplied=("optimizer", "total_steps"))


def register_schemas() -> None:
    """Store the schemas (YAML files list `<group>_schema` first in their defaults) and the resolvers
    that name run dirs (one start time for all ranks, see training/launch.py; `resume=` continues in
    the run dir it names)."""
    from phi3v.training.launch import launch_time, resume_subdir, run_dir_for  # light: no torch at import

    OmegaConf.register_new_resolver("launch_time", lambda pattern: launch_time().strftime(pattern), replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir_for, replace=True)
    OmegaConf.register_new_resolver("resume_subdir", resume_subdir, replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainSchema)
    store.store(group="model", name="model_schema", node=ModelSchema)
    store.store(group="data", name="data_schema", node=data_schema())
    store.store(group="hardware", name="hardware_schema", node=HardwareSchema)
    store.store(group="optimizer", name="adamw_schema", node=AdamWSchema)
    store.store(group="optimizer", name="sgd_schema", node=SGDSchema)
    store.store(group="scheduler", name="scheduler_schema", node=scheduler_schema())
