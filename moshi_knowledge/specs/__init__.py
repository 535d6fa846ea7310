"""Config schemas kept with what they configure, so each setting has one home.

A light class's schema is read off its constructor (`init_schema`: the defaults stay the constructor's). A class
in a torch module gets its settings as a plain dataclass in this package (`lora`, `model`, `nan_guard`, `tiny`):
model/ and train/nan_guard import torch on import, and composing a config or completing the shell must not load it.
config_schema registers every SCHEMAS mapping.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

from omegaconf import MISSING


def init_schema(cls: type) -> type:
    """A dataclass with `_target_` (the import path of `cls`) and one field per parameter of `cls.__init__`, typed
    and defaulted as there (a parameter without a default is required: `???` until the preset or the command line
    sets it), so Hydra rejects an unknown key or a wrong type when the config is composed. A parameter typed as a
    dataclass (a Connection, a list of Voice) adds `_convert_: object`, so the constructor gets those objects, not
    config nodes."""
    fields: list[tuple[str, typing.Any, typing.Any]] = [("_target_", str, f"{cls.__module__}.{cls.__qualname__}")]
    if cls.__init__ is object.__init__:  # a class without settings
        return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)
    hints = typing.get_type_hints(cls.__init__)
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{cls.__qualname__}.__init__: *{p.name} cannot be a setting; name each one")
        fields.append((p.name, hints[p.name], MISSING if p.default is inspect.Parameter.empty else p.default))
    if any(_holds_dataclass(hint) for _, hint, _ in fields):
        fields.append(("_convert_", str, "object"))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields)


def _holds_dataclass(hint: typing.Any) -> bool:
    return dataclasses.is_dataclass(hint) or any(_holds_dataclass(arg) for arg in typing.get_args(hint))
