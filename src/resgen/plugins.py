"""Modality plugins, found through the Python entry-point group ``resgen.modalities``.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."resgen.modalities"]
    mymodality = "my_package:plugin"

where ``plugin`` is a :class:`Modality`. Built-in plugins register exactly this way; the
core never imports a plugin by name. Loading a plugin imports its classes, which
LightningCLI and checkpoint loading need before they can rebuild them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

GROUP = "resgen.modalities"


@dataclass(frozen=True)
class Modality:
    """What a plugin brings.

    Attributes:
        name: the modality's name; codecs of this modality set ``RVQCodec.modality`` to it.
        description: one line for ``resgen modalities``.
        prediction_writer: ``output_dir -> BasePredictionWriter`` used by ``resgen predict``
            when no writer is configured (PNG for images, WAV for speech).
        predict_data: builds the default prediction data module for ``resgen predict
            --ckpt_path X`` with no config (e.g. class labels to sample); it may define
            ``bind_model(model)`` to read what it needs from the model.
        configs: names of example config files the plugin ships (informational).
    """

    name: str
    description: str
    prediction_writer: Callable[[str], BasePredictionWriter]
    predict_data: Callable[[], L.LightningDataModule] | None = None
    configs: tuple[str, ...] = field(default_factory=tuple)


_REGISTRY: dict[str, Modality] = {}


class PluginError(RuntimeError):
    """A plugin cannot be loaded or is not installed."""


def load_plugins(reload: bool = False) -> dict[str, Modality]:
    """Import every installed plugin (entry points of group ``resgen.modalities``)."""
    if _REGISTRY and not reload:
        return dict(_REGISTRY)
    _REGISTRY.clear()
    for ep in entry_points(group=GROUP):
        try:
            plugin = ep.load()
        except Exception as err:
            raise PluginError(f"cannot load resgen plugin {ep.name!r} ({ep.value}): {err}") from err
        if not isinstance(plugin, Modality):
            raise PluginError(
                f"entry point {ep.name!r} ({ep.value}) must point to a resgen.plugins.Modality, "
                f"got {type(plugin).__name__}."
            )
        _REGISTRY[plugin.name] = plugin
    return dict(_REGISTRY)


def register(plugin: Modality) -> None:
    """Register a plugin by hand (for code that is not installed as a package)."""
    _REGISTRY[plugin.name] = plugin


def get_modality(name: str) -> Modality:
    """The installed plugin called ``name``."""
    plugins = load_plugins()
    if name not in plugins:
        installed = ", ".join(sorted(plugins)) or "none"
        raise PluginError(
            f"no resgen plugin for modality {name!r} is installed (installed: {installed}); "
            f"install the package that provides it (entry-point group {GROUP!r})."
        )
    return plugins[name]
