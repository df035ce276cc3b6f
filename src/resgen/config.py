"""Recording and rebuilding component configurations.

Classes that inherit :class:`Configurable` remember the arguments they were built with
(``class_path`` + ``init_args``, the LightningCLI format). Checkpoints store that
configuration, so a model can be rebuilt in a fresh process from its checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from typing import Any


def class_path(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def to_config(value: Any) -> Any:
    """Turn an init argument into plain data (nested configs for Configurable objects)."""
    if isinstance(value, Configurable):
        return value.config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)  # plain fields, as LightningCLI writes dataclasses
    if isinstance(value, (list, tuple)):
        return [to_config(v) for v in value]
    if isinstance(value, dict):
        return {k: to_config(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"cannot record init argument of type {type(value).__name__}; make it Configurable, "
        "a dataclass, or plain data."
    )


class Configurable:
    """Mixin: records the most-derived ``__init__`` arguments as :meth:`config`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: Any, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))  # self
                for name, p in signature.parameters.items():
                    if p.kind is inspect.Parameter.VAR_KEYWORD:
                        arguments.update(arguments.pop(name, {}))
                object.__setattr__(self, "_init_args", arguments)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` that :func:`instantiate` rebuilds."""
        args = self.__dict__.get("_init_args", {})
        return {"class_path": class_path(self), "init_args": {k: to_config(v) for k, v in args.items()}}


def import_object(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        # nested qualname (Outer.Inner): walk down from the longest importable module
        module, _, outer = module.rpartition(".")
        obj = getattr(importlib.import_module(module), outer)
    return getattr(obj, name)


def instantiate(config: Any) -> Any:
    """Rebuild an object from :meth:`Configurable.config` output (recursively)."""
    if isinstance(config, dict) and "class_path" in config:
        cls = import_object(config["class_path"])
        args = {k: instantiate(v) for k, v in config.get("init_args", {}).items()}
        return cls(**args)
    if isinstance(config, list):
        return [instantiate(v) for v in config]
    return config
