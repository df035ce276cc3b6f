"""End-to-end tests of the ``resgen`` command (LightningCLI) on the seconds-long debug configs.

A module-scoped fixture trains the debug codec and then the debug generator in a temporary
working directory (the debug configs write to ``outputs/debug/...`` relative to the current
directory and the generator reads the codec from there). The other tests reuse those
checkpoints: ``test``, ``predict`` with the config, checkpoint-only ``predict`` in a fresh
process, ``modalities``, ``--print_config`` of every shipped config, the paper-scale sizes
and the errors the CLI gives on bad input.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import resgen
from resgen.checkpoint import CheckpointError, load_codec, load_model
from resgen.cli import main
from resgen.config import import_object
from resgen.network import ResGenNet

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "image"
DEBUG_CODEC = str(CONFIGS / "debug_codec.yaml")
DEBUG_RESGEN = str(CONFIGS / "debug_resgen.yaml")
ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))

CODEC_CKPT = Path("outputs/debug/codec/checkpoints/last.ckpt")
RESGEN_CKPT = Path("outputs/debug/resgen/checkpoints/last.ckpt")


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run ``resgen fit`` of the debug codec, then of the debug generator, in a temp cwd.

    The working directory and ``RESGEN_CACHE`` stay set for the whole module (the debug
    generator config refers to the codec checkpoint by a relative path) and are restored
    afterwards.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("RESGEN_CACHE", str(tmp_path_factory.mktemp("cli_cache")))
    workdir = tmp_path_factory.mktemp("cli_run")
    mp.chdir(workdir)
    try:
        codec_cli = main(["fit", "-c", DEBUG_CODEC])
        resgen_cli = main(["fit", "-c", DEBUG_RESGEN])
        yield {
            "workdir": workdir,
            "codec_ckpt": (workdir / CODEC_CKPT).resolve(),
            "resgen_ckpt": (workdir / RESGEN_CKPT).resolve(),
            "codec_cli": codec_cli,
            "resgen_cli": resgen_cli,
        }
    finally:
        mp.undo()


# --------------------------------------------------------------------------- fit


def test_fit_writes_checkpoints(trained: dict) -> None:
    assert trained["codec_ckpt"].is_file()
    assert trained["resgen_ckpt"].is_file()
    assert trained["codec_cli"].trainer.global_step > 0
    assert trained["resgen_cli"].trainer.global_step == 6  # max_steps of debug_resgen.yaml
    for key in ("train/loss",):
        assert math.isfinite(float(trained["resgen_cli"].trainer.callback_metrics[key]))


def test_generator_checkpoint_stores_full_codec_config(trained: dict) -> None:
    ckpt = _load(trained["resgen_ckpt"])
    config = ckpt["resgen"]["model"]
    assert import_object(config["class_path"]) is resgen.ResGen
    codec_config = config["init_args"]["codec"]
    assert isinstance(codec_config, dict), f"codec stored as {codec_config!r}, not as a config"
    from resgen_image import RQVAE

    assert import_object(codec_config["class_path"]) is RQVAE
    # the stored codec config is the one of debug_codec.yaml (plus defaults)
    yaml_args = yaml.safe_load(Path(DEBUG_CODEC).read_text())["model"]["init_args"]["codec"]["init_args"]
    for key, value in yaml_args.items():
        assert codec_config["init_args"][key] == value, key
    assert ckpt["resgen"]["modality"] == "image"


def test_load_model_rebuilds_generator(trained: dict) -> None:
    ckpt = _load(trained["resgen_ckpt"])
    model = load_model(trained["resgen_ckpt"])
    assert isinstance(model, resgen.ResGen)
    state = model.state_dict()
    assert set(state) == set(ckpt["state_dict"])
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(state[key], value), key
    assert model.codec.fingerprint() == ckpt["resgen"]["codec"]["fingerprint"]
    # the generator was trained on (and stores) exactly the codec of the codec checkpoint
    codec_ckpt = _load(trained["codec_ckpt"])
    assert ckpt["resgen"]["codec"]["fingerprint"] == codec_ckpt["resgen"]["codec_fingerprint"]


def test_load_model_and_load_codec_rebuild_codec(trained: dict) -> None:
    ckpt = _load(trained["codec_ckpt"])
    module = load_model(trained["codec_ckpt"])
    assert isinstance(module, resgen.CodecModule)
    state = module.state_dict()
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(state[key], value), key
    assert module.codec.fingerprint() == ckpt["resgen"]["codec_fingerprint"]
    codec, config = load_codec(trained["codec_ckpt"])
    assert codec.fingerprint() == ckpt["resgen"]["codec_fingerprint"]
    assert config == ckpt["resgen"]["model"]["init_args"]["codec"]


# -------------------------------------------------------------------- test / predict


def test_test_subcommand_logs_finite_metrics(trained: dict) -> None:
    cli = main(["test", "-c", DEBUG_RESGEN, "--ckpt_path", str(trained["resgen_ckpt"])])
    metrics = cli.trainer.callback_metrics
    for key in ("test/fid", "test/kid", "test/class_accuracy", "test/fid_recon"):
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
        assert math.isfinite(float(metrics[key])), (key, metrics[key])
    assert 0.0 <= float(metrics["test/class_accuracy"]) <= 1.0


def _check_image_predictions(out: Path, expected: int | None = None) -> dict:
    assert (out / "samples.png").is_file()
    pngs = sorted((out / "samples").glob("*.png"))
    assert pngs, f"no per-sample PNGs in {out / 'samples'}"
    saved = torch.load(out / "samples.pt", weights_only=True)
    images, labels = saved["images"], saved["labels"]
    assert images.dtype == torch.uint8
    assert images.ndim == 4 and tuple(images.shape[1:]) == (1, 8, 8), images.shape
    assert labels.shape == (images.shape[0],)
    assert len(pngs) == images.shape[0]
    if expected is not None:
        assert images.shape[0] == expected
    return saved


def test_predict_with_config(trained: dict, tmp_path: Path) -> None:
    """The documented ``resgen predict -c debug_resgen.yaml --ckpt_path ...``."""
    out = tmp_path / "predict"
    main(["predict", "-c", DEBUG_RESGEN, "--ckpt_path", str(trained["resgen_ckpt"]), "--output_dir", str(out)])
    _check_image_predictions(out)


def test_predict_with_config_and_label_data(trained: dict, tmp_path: Path) -> None:
    """Same, with the prediction data given explicitly (class labels to sample)."""
    out = tmp_path / "predict"
    main([
        "predict", "-c", DEBUG_RESGEN, "--ckpt_path", str(trained["resgen_ckpt"]), "--output_dir", str(out),
        "--data", "resgen_image.LabelsDataModule", "--data.init_args.per_class", "1",
    ])
    saved = _check_image_predictions(out, expected=10)
    assert saved["labels"].tolist() == list(range(10))


def test_checkpoint_only_predict_accepts_nested_overrides(trained: dict, tmp_path: Path) -> None:
    """``--model.init_args.sampling.*`` overrides apply on top of the stored config."""
    out = tmp_path / "nested"
    cli = main([
        "predict", "--ckpt_path", str(trained["resgen_ckpt"]), "--output_dir", str(out),
        "--model.init_args.sampling.steps", "3", "--model.init_args.sampling.cfg_scale", "0.5",
        "--data.init_args.per_class", "1", "--trainer.logger", "false",
    ])
    assert cli.model.sampling.steps == 3 and cli.model.sampling.cfg_scale == 0.5
    assert cli.model.net.conditioner.num_classes == 10  # the rest comes from the checkpoint
    _check_image_predictions(out, expected=10)


def test_checkpoint_only_predict_refuses_codec_checkpoint(trained: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a generator"):
        main(["predict", "--ckpt_path", str(trained["codec_ckpt"]), "--output_dir", str(tmp_path)])
    assert not (tmp_path / "samples.png").exists()


def test_checkpoint_only_predict_in_fresh_process(trained: dict, tmp_path: Path) -> None:
    """``python -m resgen.cli predict --ckpt_path X`` from an unrelated directory, twice."""
    command = [
        sys.executable, "-m", "resgen.cli", "predict", "--ckpt_path", str(trained["resgen_ckpt"]),
        "--output_dir", "pred", "--data.init_args.per_class", "2", "--trainer.logger", "false",
    ]
    runs = [tmp_path / "a", tmp_path / "b"]
    for cwd in runs:
        cwd.mkdir()
    # the two runs are independent: run them side by side
    procs = [
        subprocess.Popen(command, cwd=cwd, env=dict(os.environ), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for cwd in runs
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    saved = []
    for cwd in runs:
        out = cwd / "pred"
        pngs = sorted(p.name for p in (out / "samples").glob("*.png"))
        assert len(pngs) == 20, pngs  # 10 classes x 2
        assert sorted(int(n.split("_c")[1].split(".")[0]) for n in pngs) == sorted(list(range(10)) * 2)
        saved.append(_check_image_predictions(out, expected=20))
    assert saved[0]["labels"].tolist() == [c for c in range(10) for _ in range(2)]
    assert torch.equal(saved[0]["images"], saved[1]["images"]), "checkpoint-only predict is not seeded"
    assert torch.equal(saved[0]["labels"], saved[1]["labels"])


# ------------------------------------------------------------------ modalities / configs


def test_modalities_lists_image(capsys: pytest.CaptureFixture) -> None:
    assert main(["modalities"]) is None
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == "image" for line in lines if line.strip()), lines


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=[p.name for p in ALL_CONFIGS])
def test_print_config(config: Path, capsys: pytest.CaptureFixture, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``--print_config`` exits before instantiation, so configs whose checkpoints or data
    do not exist here (CIFAR-10, ImageNet) still print."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["class_path"].rsplit(".", 1)[-1] == source["model"]["class_path"].rsplit(".", 1)[-1]
    for key, value in source["model"]["init_args"].items():
        if not isinstance(value, dict):
            assert printed["model"]["init_args"][key] == value, key
    assert not list(tmp_path.iterdir()), "--print_config wrote files"


# ------------------------------------------------------------------------- paper scale


def _init_args(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]


def test_imagenet_codec_config_shape_on_meta() -> None:
    from resgen_image import RQVAE

    codec_args = _init_args("imagenet256_codec.yaml")["codec"]["init_args"]
    with torch.device("meta"):
        codec = RQVAE(**codec_args)
    assert codec.num_positions == 64  # 256 / 2**5 = 8 -> 8 x 8
    assert codec.depth == codec_args["depth"] == 16
    assert codec.codebook_size == codec_args["codebook_size"]
    assert codec.embed_dim == codec_args["embed_dim"]
    assert all(p.device.type == "meta" for p in codec.parameters())


def test_imagenet_generator_config_parameter_count_on_meta() -> None:
    """The paper-scale generator (~570M parameters) as configured, built without memory."""
    codec_args = _init_args("imagenet256_codec.yaml")["codec"]["init_args"]
    gen = _init_args("imagenet256_resgen.yaml")
    defaults = {k: p.default for k, p in inspect.signature(resgen.ResGen.__init__).parameters.items()}

    def arg(name: str):
        return gen.get(name, defaults[name])

    cond = gen["conditioner"]
    assert import_object(cond["class_path"]) is resgen.ClassConditioner
    with torch.device("meta"):
        codec_grid = codec_args["image_size"] // 2 ** (len(codec_args["channel_mult"]) - 1)
        net = ResGenNet(
            depth=codec_args["depth"],
            embed_dim=codec_args["embed_dim"],
            max_positions=codec_grid**2,
            conditioner=resgen.ClassConditioner(**cond["init_args"]),
            width=arg("width"),
            num_layers=arg("num_layers"),
            num_heads=arg("num_heads"),
            mlp_ratio=arg("mlp_ratio"),
            dropout=arg("dropout"),
            num_components=arg("num_components"),
            head_rank=arg("head_rank"),
        )
    assert (arg("width"), arg("num_layers"), arg("num_heads"), arg("num_components"), arg("head_rank")) == (
        1280, 28, 16, 64, 128
    )
    count = sum(p.numel() for p in net.parameters())
    assert 540e6 <= count <= 600e6, f"{count / 1e6:.1f}M parameters"
    assert all(p.device.type == "meta" for p in net.parameters())


# ------------------------------------------------------------------------- bad input


def test_mistyped_config_key_exits_nonzero(trained: dict, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "-c", DEBUG_RESGEN, "--model.init_args.widht", "3"])
    assert exc.value.code not in (0, None)
    captured = capsys.readouterr()
    assert "widht" in captured.err + captured.out


def test_predict_missing_checkpoint(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "missing.ckpt"
    with pytest.raises(CheckpointError) as exc:
        main(["predict", "--ckpt_path", str(missing)])
    assert str(missing) in str(exc.value)


def test_predict_truncated_checkpoint(trained: dict, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained["resgen_ckpt"].read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as exc:
        main(["predict", "--ckpt_path", str(truncated)])
    assert str(truncated) in str(exc.value)


def test_console_reports_input_errors_in_one_line(tmp_path: Path) -> None:
    """The `resgen` command prints `error: ...` (no traceback) and exits with status 2."""
    missing = tmp_path / "missing.ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "resgen.cli", "predict", "--ckpt_path", str(missing)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "RESGEN_DEBUG": ""},
    )
    assert proc.returncode == 2
    assert f"error: checkpoint not found: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_main_hides_and_restores_process_argv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Explicit args win; the caller's own argv (pytest's here) neither warns nor leaks, and is restored."""
    monkeypatch.setattr(sys, "argv", ["pytest", "-q", "tests"])
    import warnings

    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("always")
        main(["fit", "-c", DEBUG_CODEC, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert sys.argv == ["pytest", "-q", "tests"]
    assert not [w for w in caught if "args parameter" in str(w.message)]
