"""Tests of the image data modules and the Inception feature extractor (offline, tiny fixtures)."""

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resgen_image.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    LabelsDataModule,
    MNISTDataModule,
)
from resgen_image.inception import InceptionFeatures


def _indices(dataset) -> set[int]:
    return set(dataset.indices)


def _check_batch(batch: dict, shape: tuple[int, ...], num_classes: int) -> None:
    assert set(batch) == {"input", "cond"}
    x, y = batch["input"], batch["cond"]
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape and x.shape[0] == y.shape[0]
    assert y.dtype == torch.long and y.ndim == 1
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert 0 <= int(y.min()) and int(y.max()) < num_classes


# --------------------------------------------------------------------------------------------- digits


def test_digits_split_disjoint_covering_and_deterministic() -> None:
    dm = DigitsDataModule(batch_size=64, seed=3)
    dm.setup("fit")
    train, val, test = (_indices(d) for d in (dm.train_dataset, dm.val_dataset, dm.test_dataset))
    assert len(train) + len(val) + len(test) == 1797
    assert train | val | test == set(range(1797))
    assert not (train & val or train & test or val & test)
    assert (len(val), len(test)) == (180, 359)
    again = DigitsDataModule(seed=3)
    assert _indices(again.train_dataset) == train and _indices(again.test_dataset) == test
    assert _indices(DigitsDataModule(seed=4).test_dataset) != test
    # stratified: every class appears in every split
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert {ds[i]["cond"] for i in range(len(ds))} == set(range(10))


def test_digits_batches_and_shuffle_determinism() -> None:
    dm = DigitsDataModule(batch_size=32, seed=0)
    assert dm.num_classes == 10 and dm.image_shape == (1, 8, 8)
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, (1, 8, 8), 10)
    assert batch["input"].min() == -1.0 and batch["input"].max() == 1.0
    again = next(iter(DigitsDataModule(batch_size=32, seed=0).train_dataloader()))
    assert torch.equal(batch["cond"], again["cond"])
    val = list(dm.val_dataloader())
    assert sum(len(b["cond"]) for b in val) == len(dm.val_dataset)
    assert torch.equal(val[0]["cond"], next(iter(dm.val_dataloader()))["cond"])


def test_digits_invalid_fractions() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
    dm = DigitsDataModule(val_fraction=0.0)
    assert len(dm.val_dataset) == 0 and len(dm.train_dataset) + len(dm.test_dataset) == 1797


# ---------------------------------------------------------------------------------------------- MNIST


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Writes an unsigned-byte IDX file (the MNIST raw format)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, n_train: int = 20, n_test: int = 6) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def test_mnist_reads_raw_files(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    dm = MNISTDataModule(str(tmp_path), batch_size=8, val_size=5, seed=1)
    assert dm.num_classes == 10 and dm.image_shape == (1, 28, 28)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (15, 5, 6)
    assert not _indices(dm.train_dataset) & _indices(dm.val_dataset)
    assert _indices(MNISTDataModule(str(tmp_path), val_size=5, seed=1).val_dataset) == _indices(dm.val_dataset)
    _check_batch(next(iter(dm.train_dataloader())), (1, 28, 28), 10)
    test = next(iter(dm.test_dataloader()))
    assert test["cond"].tolist() == [0, 1, 2, 3, 4, 5]
    resized = MNISTDataModule(str(tmp_path), val_size=5, image_size=32)
    assert resized.image_shape == (1, 32, 32)
    _check_batch(next(iter(resized.val_dataloader())), (1, 32, 32), 10)


def test_mnist_missing_files_and_bad_val_size(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        MNISTDataModule(str(tmp_path / "nowhere")).setup("fit")
    assert "nowhere" in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    _fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="val_size"):
        MNISTDataModule(str(tmp_path), val_size=20).setup("fit")


# ------------------------------------------------------------------------------------------- CIFAR-10


def _fake_cifar(root: Path, per_batch: int = 4) -> None:
    """Writes the ``cifar-10-batches-py`` pickles torchvision reads (md5s differ from the release)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [(i * per_batch + j) % 10 for j in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)], "num_vis": 3072}, f)


def test_cifar10_reads_batches_without_checksums(tmp_path: Path) -> None:
    # Fixture files cannot match torchvision's md5 sums; the module's documented switch
    # verify_checksums=False checks file presence only (a presence-only CIFAR10 subclass).
    _fake_cifar(tmp_path)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=6, val_size=4, seed=0, verify_checksums=False)
    assert dm.num_classes == 10 and dm.image_shape == (3, 32, 32)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (16, 4, 4)
    _check_batch(next(iter(dm.train_dataloader())), (3, 32, 32), 10)
    # validation images are not flipped: identical to the stored pixels, rescaled to [-1, 1]
    item = dm.val_dataset[0]
    base = dm.val_dataset.base
    raw = torch.from_numpy(base.data[dm.val_dataset.indices[0]]).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(item["input"], raw, atol=1e-6)
    assert item["cond"] == base.targets[dm.val_dataset.indices[0]]
    small = CIFAR10DataModule(str(tmp_path), val_size=4, image_size=16, hflip=False, verify_checksums=False)
    _check_batch(next(iter(small.test_dataloader())), (3, 16, 16), 10)


def test_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        CIFAR10DataModule(str(tmp_path)).setup("fit")
    assert str(tmp_path) in str(err.value) and "data_batch_1" in str(err.value)
    _fake_cifar(tmp_path)
    with pytest.raises(RuntimeError, match="verify_checksums=False"):
        CIFAR10DataModule(str(tmp_path), val_size=4).setup("fit")


# ---------------------------------------------------------------------------------------- ImageFolder


def _fake_folder(root: Path, splits: tuple[str, ...] = ("train", "val"), n: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                h, w = (24, 40) if k % 2 else (40, 30)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                mode_img = Image.fromarray(pixels)
                (mode_img.convert("L") if k == 2 else mode_img).save(root / split / cls / f"{k}.png")


def test_image_folder_with_val(tmp_path: Path) -> None:
    _fake_folder(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), image_size=16, batch_size=4)
    assert dm.num_classes == 2 and dm.image_shape == (3, 16, 16)
    assert dm.class_to_idx == {"cat": 0, "dog": 1}
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 6, 6)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in loader:
            _check_batch(batch, (3, 16, 16), 2)
    assert [dm.val_dataset[i]["cond"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    cropped = ImageFolderDataModule(str(tmp_path), image_size=12, random_crop=True, hflip=True)
    _check_batch(next(iter(cropped.train_dataloader())), (3, 12, 12), 2)


def test_image_folder_val_fraction_and_class_alignment(tmp_path: Path) -> None:
    _fake_folder(tmp_path, splits=("train",), n=5)
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, val_fraction=0.2, seed=0)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (8, 2, 0)
    assert not _indices(dm.train_dataset) & _indices(dm.val_dataset)
    assert len(ImageFolderDataModule(str(tmp_path), image_size=8).val_dataset) == 0
    # a val folder lacking a class keeps the training class ids
    (tmp_path / "val" / "dog").mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(tmp_path / "val" / "dog" / "x.png")
    aligned = ImageFolderDataModule(str(tmp_path), image_size=8)
    assert len(aligned.val_dataset) == 1 and aligned.val_dataset[0]["cond"] == 1


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        ImageFolderDataModule(str(tmp_path / "missing")).setup("fit")
    assert "missing" in str(err.value)
    with pytest.raises(FileNotFoundError, match="train"):
        _ = ImageFolderDataModule(str(tmp_path)).num_classes
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataModule(str(tmp_path)).setup("fit")


# --------------------------------------------------------------------------------------------- labels


def test_labels_order_and_batches() -> None:
    dm = LabelsDataModule(per_class=3, num_classes=4, batch_size=5)
    batches = list(dm.predict_dataloader())
    assert all(set(b) == {"cond"} and b["cond"].dtype == torch.long for b in batches)
    assert [len(b["cond"]) for b in batches] == [5, 5, 2]
    assert torch.cat([b["cond"] for b in batches]).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    explicit = LabelsDataModule(per_class=2, classes=[7, 2])
    assert explicit.labels.tolist() == [7, 7, 2, 2]
    late = LabelsDataModule(per_class=1)
    with pytest.raises(ValueError, match="num_classes"):
        late.predict_dataloader()
    late.set_num_classes(3)
    assert late.num_classes == 3 and late.labels.tolist() == [0, 1, 2]


def test_labels_validation() -> None:
    with pytest.raises(ValueError, match="per_class"):
        LabelsDataModule(per_class=0)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        LabelsDataModule(classes=[3, 10], num_classes=10)
    with pytest.raises(ValueError, match="out of range"):
        LabelsDataModule(classes=[-1])
    with pytest.raises(ValueError, match="non-empty"):
        LabelsDataModule(classes=[])
    dm = LabelsDataModule(classes=[5])
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        dm.set_num_classes(5)
    with pytest.raises(ValueError, match="num_classes"):
        dm.set_num_classes(0)


# ------------------------------------------------------------------------------------------ inception


def test_inception_missing_weights_message(tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent.pt")):
        with pytest.raises(FileNotFoundError) as err:
            InceptionFeatures(path)
        message = str(err.value)
        assert "FID" in message and "IMAGENET1K_V1" in message and "evaluator.init_args.weights_path" in message
        assert "torch.save" in message
    assert "absent.pt" in message


def test_inception_features_shape(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = os.fspath(tmp_path / "inception.pt")
    torch.save(net.state_dict(), path)
    features = InceptionFeatures(path)
    assert features.num_features == 2048 and not features.net.training
    features.train()
    assert not features.net.training
    with torch.no_grad():
        rgb = features(torch.rand(2, 3, 32, 32) * 2 - 1)
        gray = features(torch.rand(2, 1, 8, 8) * 2 - 1)
    assert rgb.shape == gray.shape == (2, 2048) and torch.isfinite(rgb).all()
    assert features.logits(torch.zeros(2, 3, 32, 32)) is None
    torch.save({"state_dict": net.state_dict()}, path)
    assert InceptionFeatures(path)(torch.zeros(1, 3, 299, 299)).shape == (1, 2048)
