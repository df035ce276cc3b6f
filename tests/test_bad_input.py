"""Bad input meets a clear error that names the problem and the fix; nothing half-written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import resgen
from resgen.checkpoint import CheckpointError, load_codec
from resgen_image.writer import ImageWriter

from conftest import build_codec, build_model


def _codec_checkpoint(codec: torch.nn.Module, path: Path) -> Path:
    module = resgen.CodecModule(codec)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


def test_generator_checkpoint_with_another_codec_is_refused() -> None:
    trained = build_model(build_codec(depth=3))
    ckpt = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(ckpt)
    other = build_model(build_codec(depth=2))
    with pytest.raises(CheckpointError, match=r"different codec \(depth: checkpoint 3 vs model 2\)") as err:
        other.on_load_checkpoint(ckpt)
    assert "retrain the generator" in str(err.value)


def test_codec_checkpoint_round_trips_and_detects_tampering(tmp_path: Path) -> None:
    codec = build_codec()
    path = _codec_checkpoint(codec, tmp_path / "codec.ckpt")
    loaded, config = load_codec(path)
    assert config["class_path"] == "resgen_image.codec.RQVAE"
    assert loaded.fingerprint() == codec.fingerprint()
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["codec.quantizer.embed"] += 1.0
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="do not match the fingerprint"):
        load_codec(path)


def test_codec_comes_out_of_a_generator_checkpoint_too(tmp_path: Path) -> None:
    """A generator checkpoint carries its codec; load_codec finds it there as well."""
    model = build_model()
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "gen.ckpt")
    codec, _ = load_codec(tmp_path / "gen.ckpt")
    assert codec.fingerprint() == model.codec.fingerprint()


def test_checkpoint_without_a_codec_is_refused(tmp_path: Path) -> None:
    ckpt = {"state_dict": {}, "resgen": {"model": {"class_path": "resgen.ResGen", "init_args": {}}}}
    torch.save(ckpt, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match="is not a codec checkpoint"):
        load_codec(tmp_path / "odd.ckpt")


def test_non_lightning_file_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_codec(tmp_path / "x.ckpt")


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a regular file, not a folder")
    writer = ImageWriter(output_dir=str(blocker / "out"))
    with pytest.raises(OSError, match="Choose a writable --output_dir"):
        writer.setup(None, None, "predict")
    assert blocker.read_text() == "a regular file, not a folder"


def test_non_finite_loss_stops_with_a_message(model: resgen.ResGen) -> None:
    with torch.no_grad():
        model.net.input_proj.weight.fill_(math.nan)
    batch = {"tokens": torch.zeros(2, model.codec.num_positions, model.codec.depth, dtype=torch.long),
             "cond": torch.tensor([0, 1])}
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        model.training_step(batch, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_components": 4, "loss": "mse"}, "loss must be 'nll' or 'jensen'"),
        ({"sampling": resgen.SamplingConfig(steps=0)}, "steps must be >= 1"),
        ({"sampling": resgen.SamplingConfig(top_p=1.5)}, r"top_p must lie in \(0, 1\]"),
        ({"sampling": resgen.SamplingConfig(cfg_scale=-1.0)}, "cfg_scale must be >= 0"),
        ({"mask_schedule": "cubic"}, "unknown mask schedule 'cubic'"),
    ],
)
def test_bad_model_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model = build_model(**kwargs)
        model.compute_loss(torch.zeros(1, 16, 3, dtype=torch.long), torch.tensor([0]))


def test_images_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"expects images \[B, 1, 8, 8\].*configure image_size"):
        build_codec().encode(torch.zeros(2, 3, 8, 8))
