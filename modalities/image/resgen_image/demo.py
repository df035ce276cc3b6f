"""The main demo (``make demo``): digits codec + ResGen generator, samples, metrics.

Trains the RQ-VAE and the generator with the shipped configs (``configs/image``), samples
``per_class`` digits of each class from the generator checkpoint alone, and writes
``<out>/samples.png`` (10 x 10 grid: one row per class), ``<out>/samples/*.png`` and
``<out>/metrics.json``.

    python -m resgen_image.demo --out outputs/demo/image
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from resgen.checkpoint import load_model
from resgen.cli import main as resgen
from resgen.metrics import GenerativeEvaluator, frechet_distance
from resgen_image.classifier import DigitsClassifier
from resgen_image.data import DigitsDataModule

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "image"


def _retarget(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """Point a shipped config's outputs (logs, checkpoints) into ``root``."""
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(root)
    if isinstance(trainer.get("logger"), dict):
        trainer["logger"]["init_args"]["save_dir"] = str(root)
    for cb in trainer.get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(root / "checkpoints")
    return config


def _write_config(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _atomic_json(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(out: Path, *, codec_config: Path, generator_config: Path, per_class: int, extra: list[str]) -> dict[str, Any]:
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    # 1. codec
    codec_cfg = _retarget(yaml.safe_load(codec_config.read_text()), out / "codec")
    cli = resgen(["fit", "-c", str(_write_config(codec_cfg, out / "configs" / "codec.yaml"))])
    codec_ckpt = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    # 2. generator
    gen_cfg = _retarget(yaml.safe_load(generator_config.read_text()), out / "resgen")
    gen_cfg["model"]["init_args"]["codec"] = codec_ckpt
    cli = resgen(["fit", "-c", str(_write_config(gen_cfg, out / "configs" / "resgen.yaml")), *extra])
    gen_ckpt = cli.trainer.checkpoint_callback.last_model_path
    train_seconds = time.time() - start
    # 3. sample from the checkpoint alone
    t = time.time()
    resgen([
        "predict", "--ckpt_path", gen_ckpt, "--output_dir", str(out),
        "--data.init_args.per_class", str(per_class), "--data.init_args.batch_size", "500",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    ])
    sample_seconds = time.time() - t
    # 4. metrics against the held-out (test) split
    model = load_model(gen_ckpt)
    samples = torch.load(out / "samples.pt", weights_only=True)
    fake = samples["images"].float() / 127.5 - 1
    data = DigitsDataModule()
    real = torch.stack([s["input"] for s in data.test_dataset])
    real_labels = torch.as_tensor([int(s["cond"]) for s in data.test_dataset])
    train = torch.stack([s["input"] for s in data.train_dataset])
    subset = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: len(real)]]
    judge = DigitsClassifier()
    evaluator = GenerativeEvaluator(judge)
    with torch.no_grad():
        recon = model.codec.decode(model.codec.encode(real)).clamp(-1, 1)
    evaluator.update(real=real, fake=fake, recon=recon, labels=samples["labels"], real_labels=real_labels)
    metrics = evaluator.compute()
    metrics["fid_real"] = frechet_distance(judge, real, subset)
    sampling = model.sampling
    metrics.update(
        steps=sampling.steps, cfg_scale=sampling.cfg_scale, temperature=sampling.temperature,
        top_p=sampling.top_p, depth=model.codec.depth, codebook_size=model.codec.codebook_size,
        positions=model.codec.num_positions, num_samples=int(fake.shape[0]),
        train_seconds=round(train_seconds, 1), sample_seconds=round(sample_seconds, 1),
        wall_seconds=round(time.time() - start, 1),
    )
    _atomic_json(metrics, out / "metrics.json")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/demo/image"))
    parser.add_argument("--codec-config", type=Path, default=CONFIGS / "digits_codec.yaml")
    parser.add_argument("--generator-config", type=Path, default=CONFIGS / "digits_resgen.yaml")
    parser.add_argument("--per-class", type=int, default=100)
    args, extra = parser.parse_known_args(argv)
    metrics = run(args.out, codec_config=args.codec_config, generator_config=args.generator_config,
                  per_class=args.per_class, extra=extra)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'metrics.json'}")


if __name__ == "__main__":
    main()
