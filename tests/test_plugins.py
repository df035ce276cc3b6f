"""Modality plugins: a third-party package, written here to a temp folder (outside ``src/`` and
``modalities/``), registers a toy 1-D modality through the ``resgen.modalities`` entry point
and goes through ``fit`` (codec), ``fit`` (generator) and checkpoint-only ``predict`` with
no change to the core.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from resgen.cli import main
from resgen.plugins import GROUP, Modality, PluginError, get_modality, load_plugins

TOY_PACKAGE = '''
"""toy_modality: a throwaway third-party resgen plugin for 1-D signals [B, 16]."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn
from torch.utils.data import DataLoader

from resgen.codec import CodecOutput, RVQCodec
from resgen.plugins import Modality
from resgen.quantize import ResidualQuantizer


class ToyCodec(RVQCodec):
    """Linear encoder [B, length] -> [B, positions, embed_dim], RVQ, linear decoder."""

    modality = "toy"

    def __init__(self, length: int = 16, positions: int = 4, embed_dim: int = 4, depth: int = 2,
                 codebook_size: int = 8) -> None:
        super().__init__()
        self.length, self.positions, self.dim = length, positions, embed_dim
        self.encoder = nn.Linear(length, positions * embed_dim)
        self.decoder = nn.Linear(positions * embed_dim, length)
        self.quantizer = ResidualQuantizer(depth=depth, codebook_size=codebook_size, dim=embed_dim,
                                           kmeans_iters=2)

    @property
    def codebooks(self) -> Tensor:
        return self.quantizer.codebooks

    @property
    def num_positions(self) -> int:
        return self.positions

    def _latent(self, data: Tensor) -> Tensor:
        return self.encoder(data).view(data.shape[0], self.positions, self.dim)

    def forward(self, data: Tensor) -> CodecOutput:
        q = self.quantizer(self._latent(data))
        return CodecOutput(recon=self.decode_latent(q.quantized), latent=q.quantized, codes=q.codes,
                           commit_loss=q.commit_loss, perplexity=q.perplexity)

    @torch.no_grad()
    def encode(self, data: Tensor) -> Tensor:
        return self.quantizer.encode(self._latent(data))

    def decode_latent(self, latent: Tensor) -> Tensor:
        return self.decoder(latent.flatten(1))


def _signals(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.arange(n) % 2
    t = torch.linspace(0, 1, 16)
    base = torch.stack([torch.sin(2 * math.pi * t), torch.sign(torch.sin(6 * math.pi * t))])
    x = base[cond] + 0.1 * torch.randn(n, 16, generator=g)
    return [{"input": x[i], "cond": cond[i]} for i in range(n)]


class ToyData(L.LightningDataModule):
    """Two classes of noisy signals, seeded: {"input": FloatTensor [B, 16], "cond": LongTensor [B]}."""

    num_classes = 2

    def __init__(self, num_samples: int = 64, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_signals(self.num_samples, self.seed), batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_signals(self.batch_size, self.seed + 1), batch_size=self.batch_size)


class ToyLabels(L.LightningDataModule):
    """Default prediction data: per_class labels of each class, {"cond": LongTensor [B]}."""

    def __init__(self, per_class: int = 3) -> None:
        super().__init__()
        self.per_class = per_class
        self.bound = False

    def bind_model(self, model) -> None:
        self.bound = True

    def predict_dataloader(self) -> DataLoader:
        labels = torch.arange(2).repeat_interleave(self.per_class)
        return DataLoader([{"cond": c} for c in labels], batch_size=4)


class ToyWriter(BasePredictionWriter):
    """Saves all samples of a predict run to <output_dir>/toy_samples.pt."""

    def __init__(self, output_dir: str = "outputs/toy") -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.samples, self.labels = [], []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        self.samples.append(prediction["samples"].cpu())
        self.labels.append(prediction["cond"].cpu())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"samples": torch.cat(self.samples), "labels": torch.cat(self.labels)},
                   self.output_dir / "toy_samples.pt")


plugin = Modality(
    name="toy",
    description="toy 1-D signals (test plugin)",
    prediction_writer=ToyWriter,
    predict_data=ToyLabels,
)
'''


def _write_distribution(root: Path, name: str, entry_points: str) -> None:
    """A minimal installed distribution: ``<name>-0.1.dist-info`` with METADATA and entry points."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def _forget_toy_modules() -> None:
    for name in [m for m in sys.modules if m == "toy_modality" or m.startswith("toy_modality.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the toy plugin package and its dist-info, on ``sys.path``."""
    site = tmp_path_factory.mktemp("toy_site")
    package = site / "toy_modality"
    package.mkdir()
    (package / "__init__.py").write_text(TOY_PACKAGE)
    _write_distribution(site, "toy_modality", f"[{GROUP}]\ntoy = toy_modality:plugin\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(site))
    try:
        plugins = load_plugins(reload=True)
        assert "toy" in plugins
        yield site
    finally:
        mp.undo()
        _forget_toy_modules()
        load_plugins(reload=True)  # leave the registry as installed, without the toy plugin


def _config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def _trainer(root: Path, name: str, **extra) -> dict:
    return {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1,
        "default_root_dir": str(root / name),
        "callbacks": [{
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(root / name / "checkpoints"), "filename": name, "save_last": True},
        }],
        **extra,
    }


@pytest.fixture(scope="module")
def toy_run(toy_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """fit of the toy codec (CodecModule), then fit of ResGen on its checkpoint."""
    root = tmp_path_factory.mktemp("toy_run")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        codec_cfg = _config(root / "toy_codec.yaml", {
            "seed_everything": 0,
            "trainer": _trainer(root, "codec", max_steps=4),
            "model": {
                "class_path": "resgen.CodecModule",
                "init_args": {
                    "codec": {"class_path": "toy_modality.ToyCodec", "init_args": {"depth": 2, "codebook_size": 8}},
                    "warmup_steps": 1,
                },
            },
            "data": {"class_path": "toy_modality.ToyData", "init_args": {"batch_size": 16}},
        })
        codec_cli = main(["fit", "-c", codec_cfg])
        codec_ckpt = root / "codec" / "checkpoints" / "last.ckpt"
        resgen_cfg = _config(root / "toy_resgen.yaml", {
            "seed_everything": 0,
            "trainer": _trainer(root, "resgen", max_steps=3, gradient_clip_val=1.0),
            "model": {
                "class_path": "resgen.ResGen",
                "init_args": {
                    "codec": str(codec_ckpt),
                    "conditioner": {"class_path": "resgen.ClassConditioner", "init_args": {"num_classes": 2}},
                    "width": 16, "num_layers": 1, "num_heads": 2, "num_components": 2,
                    "warmup_steps": 1, "ema_decay": 0.9,
                    "sampling": {"steps": 2, "cfg_scale": 1.0},
                },
            },
            "data": {"class_path": "toy_modality.ToyData", "init_args": {"batch_size": 16}},
        })
        resgen_cli = main(["fit", "-c", resgen_cfg])
        yield {
            "root": root, "codec_cli": codec_cli, "resgen_cli": resgen_cli,
            "codec_ckpt": codec_ckpt, "resgen_ckpt": root / "resgen" / "checkpoints" / "last.ckpt",
        }
    finally:
        mp.undo()


def test_toy_plugin_is_listed_with_image(toy_site: Path, capsys: pytest.CaptureFixture) -> None:
    plugins = load_plugins(reload=True)
    assert {"toy", "image"} <= set(plugins)
    assert isinstance(plugins["toy"], Modality)
    assert get_modality("toy") is plugins["toy"]
    main(["modalities"])
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "toy" in names and "image" in names


def test_toy_codec_fit(toy_run: dict) -> None:
    from toy_modality import ToyCodec

    assert toy_run["codec_ckpt"].is_file()
    codec = toy_run["codec_cli"].model.codec
    assert isinstance(codec, ToyCodec)
    assert bool(codec.scale_tracked)
    ckpt = torch.load(toy_run["codec_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["resgen"]["modality"] == "toy"
    assert ckpt["resgen"]["model"]["init_args"]["codec"]["class_path"] == "toy_modality.ToyCodec"


def test_toy_generator_fit(toy_run: dict) -> None:
    from resgen.checkpoint import load_model

    assert toy_run["resgen_ckpt"].is_file()
    cli = toy_run["resgen_cli"]
    assert cli.trainer.global_step == 3
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    ckpt = torch.load(toy_run["resgen_ckpt"], map_location="cpu", weights_only=False)
    assert ckpt["resgen"]["modality"] == "toy"
    assert ckpt["resgen"]["model"]["init_args"]["codec"]["class_path"] == "toy_modality.ToyCodec"
    model = load_model(toy_run["resgen_ckpt"])
    tokens = model.generate(torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 4, 2)
    assert model.codec.decode(tokens).shape == (2, 16)


def test_toy_checkpoint_only_predict_uses_plugin_writer(toy_run: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pred"
    cli = main([
        "predict", "--ckpt_path", str(toy_run["resgen_ckpt"]), "--output_dir", str(out),
        "--trainer.logger", "false",
    ])
    from toy_modality import ToyLabels, ToyWriter

    assert isinstance(cli.datamodule, ToyLabels) and cli.datamodule.bound
    assert any(isinstance(cb, ToyWriter) for cb in cli.trainer.callbacks)
    saved = torch.load(out / "toy_samples.pt", weights_only=True)
    assert saved["samples"].shape == (6, 16)
    assert saved["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.isfinite(saved["samples"]).all()


def test_entry_point_not_a_modality(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_distribution(tmp_path, "bad_plugin", f"[{GROUP}]\nbroken = json:dumps\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(PluginError) as exc:
            load_plugins(reload=True)
        assert "'broken'" in str(exc.value) and "json:dumps" in str(exc.value)
    finally:
        monkeypatch.undo()
        load_plugins(reload=True)
    assert "broken" not in load_plugins()


def test_entry_point_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_distribution(tmp_path, "missing_plugin", f"[{GROUP}]\nghost = no_such_module_xyz:plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(PluginError, match="ghost"):
            load_plugins(reload=True)
    finally:
        monkeypatch.undo()
        load_plugins(reload=True)


def test_unknown_modality_lists_installed() -> None:
    with pytest.raises(PluginError) as exc:
        get_modality("nope")
    message = str(exc.value)
    assert "'nope'" in message and "image" in message
