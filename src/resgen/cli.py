"""The ``resgen`` command: LightningCLI (fit / validate / test / predict) plus ``modalities``.

``resgen predict --ckpt_path X`` (or ``test``) with no ``--config``/``--model`` rebuilds the
model from the configuration stored in the checkpoint, so a checkpoint alone is enough.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI

from resgen.checkpoint import CheckpointError, read_checkpoint, stored_config, without_evaluator
from resgen.config import class_path, import_object
from resgen.plugins import PluginError, get_modality, load_plugins

CHECKPOINT_SUBCOMMANDS = ("predict", "test", "validate")


class ResGenCLI(LightningCLI):
    """LightningCLI with a default prediction writer from the model's modality plugin."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--output_dir", type=str, default="outputs/predict",
            help="Where `predict` writes samples when no prediction writer is configured.",
        )

    def before_predict(self) -> None:
        bind = getattr(self.datamodule, "bind_model", None)
        if callable(bind):
            bind(self.model)
        if any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            return
        codec = getattr(self.model, "codec", None)
        modality = getattr(codec, "modality", "")
        if not modality:
            raise RuntimeError(
                "predict needs a prediction writer: add one to trainer.callbacks, or use a model "
                "whose codec belongs to an installed modality plugin."
            )
        output_dir = self.config[self.subcommand]["output_dir"]
        self.trainer.callbacks.append(get_modality(modality).prediction_writer(output_dir))


def _class_given(args: list[str], key: str) -> bool:
    """Whether ``args`` choose the class of ``key`` (``--key X`` or ``--key.class_path X``);
    nested overrides such as ``--key.init_args.x`` do not count."""
    names = (f"--{key}", f"--{key}.class_path")
    return any(a in names or a.startswith(tuple(n + "=" for n in names)) for a in args)


def _option_value(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def inject_checkpoint_config(args: list[str]) -> list[str]:
    """For ``predict``/``test``/``validate --ckpt_path X`` without a model config, add the
    model (and for predict, the modality's default data) stored in the checkpoint."""
    if not args or args[0] not in CHECKPOINT_SUBCOMMANDS:
        return args
    ckpt_path = _option_value(args, "--ckpt_path")
    config_given = any(a in ("-c", "--config") or a.startswith("--config=") for a in args)
    if ckpt_path is None or config_given or _class_given(args, "model"):
        return args
    ckpt = read_checkpoint(ckpt_path)
    config = stored_config(ckpt, ckpt_path)
    if args[0] == "predict":  # sampling needs no judge (whose weights may live elsewhere)
        config = without_evaluator(config)
    extra = ["--model", json.dumps(config)]
    if args[0] == "predict" and not _class_given(args, "data"):
        if not callable(getattr(import_object(config["class_path"]), "generate", None)):
            raise CheckpointError(
                f"{ckpt_path} holds a {config['class_path']} (not a generator): sampling needs a "
                "generator checkpoint (resgen.ResGen), or pass --data with inputs to reconstruct."
            )
        modality = ckpt.get("resgen", {}).get("modality", "")
        plugin = get_modality(modality)
        if plugin.predict_data is None:
            raise RuntimeError(f"modality {modality!r} has no default prediction data; pass --data.")
        extra += ["--data", json.dumps({"class_path": class_path(plugin.predict_data)})]
    return [args[0], *extra, *args[1:]]


def print_modalities() -> None:
    plugins = load_plugins()
    if not plugins:
        print("no resgen modality plugins installed")
    for name, plugin in sorted(plugins.items()):
        print(f"{name:12s} {plugin.description}")


def main(args: list[str] | None = None) -> ResGenCLI | None:
    """Entry point of the ``resgen`` command; tests call it in-process with ``args``."""
    args = list(sys.argv[1:] if args is None else args)
    load_plugins()  # import plugin classes before configs or checkpoints refer to them
    if args[:1] == ["modalities"]:
        print_modalities()
        return None
    args = inject_checkpoint_config(args)
    # The arguments are always explicit here; LightningCLI warns when it also sees the
    # process's own argv (pytest's, the demo's), so hide it while the CLI runs.
    argv, sys.argv[1:] = sys.argv[1:], []
    try:
        return ResGenCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
        )
    finally:
        sys.argv[1:] = argv


USER_ERRORS = (CheckpointError, PluginError, ValueError, FileNotFoundError, OSError, FloatingPointError)


def run() -> None:
    """Console-script entry point (``resgen ...``).

    Errors caused by input (bad values, missing or corrupt files, unwritable folders) are
    printed as one ``error:`` line with exit status 2; set ``RESGEN_DEBUG=1`` for the traceback.
    """
    try:
        main()
    except USER_ERRORS as err:
        if os.environ.get("RESGEN_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run()
