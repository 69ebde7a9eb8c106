"""Structured-config schemas for `conf/`, derived from the constructors they configure.

Each YAML node with a `_target_` gets a dataclass schema whose fields are exactly the target's
arguments (names, types, defaults), so one grep finds the YAML key and the Python argument, and
Hydra rejects a typo or a wrong type with a message naming the key:
`Key 'rr' not in 'LoraSpecSchema'` / `Value 'x' of type 'str' could not be converted to Integer`.
Entry points call `register_schemas()` before Hydra composes the config.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from phi3v.data.catalogue import ColumnMap
from phi3v.data.datamodule import ProductDataModule
from phi3v.data.download import DownloadSettings
from phi3v.data.prompts import PromptTemplate
from phi3v.data.synthetic import SyntheticSpec
from phi3v.training.launch import launch_time
from phi3v.training.lora import LoraSpec
from phi3v.training.model_spec import ModelSpec
from phi3v.training.module import EvalSpec
from phi3v.training.sharding import ShardingSpec
from phi3v.training.strategies import DDPSettings

# Nested arguments that are themselves configured objects (a `_target_` node in YAML).
NESTED = {ColumnMap, PromptTemplate, DownloadSettings, SyntheticSpec}
_SCHEMAS: dict[type, type] = {}


def _field_type(annotation: Any) -> Any:
    """An OmegaConf-compatible annotation for a constructor argument annotation."""
    if isinstance(annotation, str) or annotation is inspect.Parameter.empty:
        return Any
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in arguments if a is not type(None)]
        inner = _field_type(rest[0]) if len(rest) == 1 else Any
        return Optional[inner] if type(None) in arguments else inner  # noqa: UP045 (OmegaConf reads Optional)
    if origin in (tuple, list) and arguments:
        item = arguments[0]
        return list[item] if item in (str, int, float, bool) else list[Any]
    if annotation in NESTED:
        return schema_for(annotation)
    if annotation in (int, float, str, bool):
        return annotation
    return Any


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty or value is dataclasses.MISSING:
        return dataclasses.MISSING
    if isinstance(value, tuple):
        return list(value)
    return value


def schema_for(target: type) -> type:
    """A dataclass with `_target_` plus one typed field per argument of `target`."""
    if target in _SCHEMAS:
        return _SCHEMAS[target]
    hints = typing.get_type_hints(target if dataclasses.is_dataclass(target) else target.__init__)
    fields = [("_target_", str, dataclasses.field(default=f"{target.__module__}.{target.__qualname__}"))]
    for name, annotation, default in _arguments(target, hints):
        kind = _field_type(annotation)
        if dataclasses.is_dataclass(kind) or isinstance(default, (list, dict)):
            factory = (lambda k=kind: k()) if dataclasses.is_dataclass(kind) else (lambda d=default: list(d))
            fields.append((name, kind, dataclasses.field(default_factory=factory)))
        elif default is dataclasses.MISSING:
            fields.append((name, kind, dataclasses.field(default=None if _optional(kind) else dataclasses.MISSING)))
        else:
            fields.append((name, kind, dataclasses.field(default=default)))
    schema = dataclasses.make_dataclass(f"{target.__name__}Schema", fields)
    _SCHEMAS[target] = schema
    return schema


def _arguments(target: type, hints: dict) -> list[tuple[str, Any, Any]]:
    """(name, annotation, default or MISSING) of every constructor argument."""
    if dataclasses.is_dataclass(target):
        out = []
        for f in dataclasses.fields(target):
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out.append((f.name, hints.get(f.name, Any), _default(default)))
        return out
    parameters = inspect.signature(target).parameters
    return [(n, hints.get(n, p.annotation), _default(p.default)) for n, p in parameters.items()]


def _optional(kind: Any) -> bool:
    return typing.get_origin(kind) is typing.Union and type(None) in typing.get_args(kind)


@dataclasses.dataclass
class ModelSchema:
    spec: schema_for(ModelSpec) = dataclasses.field(default_factory=lambda: schema_for(ModelSpec)())  # type: ignore[valid-type]
    lora: schema_for(LoraSpec) = dataclasses.field(default_factory=lambda: schema_for(LoraSpec)())  # type: ignore[valid-type]


@dataclasses.dataclass
class HardwareSchema:
    accelerator: str = "cpu"
    devices: Any = 1  # an int, a list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp (phi3v.training.strategies)
    precision: Any = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 1.0  # noqa: UP045 (OmegaConf reads Optional)
    timeout_minutes: int = 30  # how long ranks wait for each other in a collective before failing
    ddp: schema_for(DDPSettings) = dataclasses.field(default_factory=lambda: schema_for(DDPSettings)())  # type: ignore[valid-type]
    fsdp: schema_for(ShardingSpec) = dataclasses.field(default_factory=lambda: schema_for(ShardingSpec)())  # type: ignore[valid-type]


def data_schema() -> type:
    return schema_for(ProductDataModule)


def register_schemas() -> None:
    """Store the schemas (YAML group files list `<group>_schema` first in their defaults) and the
    `launch_time` resolver that names run dirs (one start time for all ranks, see training/launch.py)."""
    OmegaConf.register_new_resolver("launch_time", lambda pattern: launch_time().strftime(pattern), replace=True)
    store = ConfigStore.instance()
    store.store(group="model", name="model_schema", node=ModelSchema)
    store.store(group="data", name="data_schema", node=data_schema())
    store.store(group="hardware", name="hardware_schema", node=HardwareSchema)
    store.store(name="evaluation_schema", node=schema_for(EvalSpec))
