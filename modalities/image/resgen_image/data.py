"""Lightning data modules for class-conditional image generation.

Every training/evaluation module yields batches ``{"input": FloatTensor [B, C, H, W] in [-1, 1],
"cond": LongTensor [B]}`` and exposes ``num_classes`` and ``image_shape`` ``(C, H, W)``.
:class:`LabelsDataModule` is a prediction-only module yielding ``{"cond": LongTensor [B]}``.
Nothing here touches the network unless a module is built with ``download=True``.
"""

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from einops import rearrange
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import datasets as tvd
from torchvision.datasets.folder import find_classes
from torchvision.transforms import v2

__all__ = ["DictDataset", "DigitsDataModule", "MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule",
           "LabelsDataModule"]


class DictDataset(Dataset):
    """Maps an ``(image, label)`` dataset to ``{"input": image, "cond": label}`` items.

    Args:
        base: Dataset returning ``(image, label)`` pairs (PIL image or tensor ``[C, H, W]``).
        transform: Optional transform applied to the image (e.g. PIL -> tensor in [-1, 1]).
        indices: Optional subset of ``base`` indices to expose (in that order).
    """

    def __init__(
        self, base: Dataset, transform: Callable[[Any], torch.Tensor] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.base = base
        self.transform = transform
        self.indices = None if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.base[self.indices[index] if self.indices is not None else index]
        if self.transform is not None:
            image = self.transform(image)
        return {"input": image, "cond": int(label)}


def _to_unit_range(channels: int, size: int | None = None, train_aug: Sequence[Any] = ()) -> v2.Compose:
    """PIL image -> float tensor ``[C, H, W]`` in [-1, 1], optionally resized and augmented."""
    ops: list[Any] = [v2.ToImage()]
    if size is not None:
        ops.append(v2.Resize(size, antialias=True))
    ops += [*train_aug, v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * channels, [0.5] * channels)]
    return v2.Compose(ops)


class _ImageDataModule(L.LightningDataModule):
    """Shared loader logic; subclasses implement :meth:`_build` to fill the three splits."""

    def __init__(self, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self._splits: dict[str, Dataset] | None = None

    def _build(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Builds the train/val/test datasets once (idempotent; ``stage`` is ignored)."""
        if self._splits is None:
            self._splits = self._build()

    def _split(self, name: str) -> Dataset:
        self.setup()
        assert self._splits is not None
        return self._splits[name]

    @property
    def train_dataset(self) -> Dataset:
        """Training split of ``{"input", "cond"}`` items (built on first access)."""
        return self._split("train")

    @property
    def val_dataset(self) -> Dataset:
        """Validation split (may be empty)."""
        return self._split("val")

    @property
    def test_dataset(self) -> Dataset:
        """Test split (may be empty)."""
        return self._split("test")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order fixed by ``seed``)."""
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order."""
        return self._loader(self.val_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split: ``predict`` samples with its conditions (class labels)."""
        return self._loader(self.test_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order."""
        return self._loader(self.test_dataset, shuffle=False)


class DigitsDataModule(_ImageDataModule):
    """scikit-learn's 8x8 handwritten digits (1,797 images, bundled, no download).

    Pixel values 0..16 are mapped to [-1, 1]; items are ``{"input": [1, 8, 8], "cond": int}``.
    The stratified train/val/test split is a deterministic function of ``seed``.

    Args:
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes.
        seed: Seed of the split and of the training shuffle order.
        val_fraction: Fraction of all images used for validation (may be 0).
        test_fraction: Fraction of all images used for testing (may be 0).
    """

    num_classes: int = 10
    image_shape: tuple[int, int, int] = (1, 8, 8)

    def __init__(
        self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
        val_fraction: float = 0.1, test_fraction: float = 0.2,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(
                f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1, "
                f"got val_fraction={val_fraction}, test_fraction={test_fraction}"
            )
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.save_hyperparameters()

    def _build(self) -> dict[str, Dataset]:
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # [N, 8, 8] in [-1, 1]
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        base = TensorDataset(rearrange(images, "n h w -> n 1 h w"), labels)
        n = len(labels)
        n_test, n_val = round(self.test_fraction * n), round(self.val_fraction * n)
        rest, test = _stratified_split(np.arange(n), digits.target, n_test, self.seed)
        train, val = _stratified_split(rest, digits.target[rest], n_val, self.seed)
        return {name: DictDataset(base, indices=idx) for name, idx in
                {"train": train, "val": val, "test": test}.items()}


def _stratified_split(idx: np.ndarray, y: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits ``idx`` into ``(kept, n_out held-out)`` stratified by ``y``; sorted outputs."""
    if n_out == 0:
        return np.sort(idx), idx[:0]
    kept, out = train_test_split(idx, test_size=n_out, stratify=y, random_state=seed)
    return np.sort(kept), np.sort(out)


def _holdout(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic random ``(train, val)`` index lists of ``range(n)`` with ``len(val) == val_size``."""
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n - 1}] for a training set of {n} images, got {val_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[val_size:].tolist()), sorted(perm[:val_size].tolist())


class _OfficialSplitDataModule(_ImageDataModule):
    """torchvision dataset with an official train/test split; ``val_size`` images held out of train."""

    _name, _subdir, _channels, _native_size = "", "", 1, 28
    _files: Sequence[str] = ()

    def __init__(
        self, root: str, download: bool, batch_size: int, num_workers: int, val_size: int, seed: int, image_size: int,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root, self.download, self.val_size, self.image_size = root, download, val_size, image_size

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, image_size, image_size)``."""
        return (self._channels, self.image_size, self.image_size)

    def _dataset(self, train: bool, download: bool = False) -> Dataset:
        raise NotImplementedError

    def _train_aug(self) -> list[Any]:
        return []

    def prepare_data(self) -> None:
        """Downloads the files when ``download=True`` (Lightning calls this once per node)."""
        if self.download:
            self._dataset(True, download=True), self._dataset(False, download=True)

    def _build(self) -> dict[str, Dataset]:
        self.prepare_data()
        missing = [os.path.join(self._subdir, f) for f in self._files
                   if not os.path.isfile(os.path.join(self.root, self._subdir, f))]
        if missing:
            raise FileNotFoundError(
                f"{self._name} files not found under root={os.path.abspath(self.root)!r} (missing: "
                f"{', '.join(missing)}). Pass download=True on a machine with internet access, or place the "
                f"official files there."
            )
        train_base, test_base = self._dataset(True), self._dataset(False)
        size = None if self.image_size == self._native_size else self.image_size
        train_tf = _to_unit_range(self._channels, size, self._train_aug())
        eval_tf = _to_unit_range(self._channels, size)
        train_idx, val_idx = _holdout(len(train_base), self.val_size, self.seed)  # type: ignore[arg-type]
        return {"train": DictDataset(train_base, train_tf, train_idx), "val": DictDataset(train_base, eval_tf, val_idx),
                "test": DictDataset(test_base, eval_tf)}


class MNISTDataModule(_OfficialSplitDataModule):
    """MNIST from ``root/MNIST/raw/*-ubyte`` (torchvision layout); items ``[1, S, S]`` in [-1, 1].

    The official training set is split deterministically (``seed``) into train and ``val_size``
    validation images; the official test set is the test split.

    Args:
        root: Directory holding ``MNIST/raw`` (created when ``download=True``).
        download: Download the files if missing (needs internet).
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes.
        val_size: Number of training images held out for validation.
        seed: Seed of the train/val split and of the training shuffle order.
        image_size: Side length S; images are resized when it differs from 28.
    """

    num_classes: int = 10
    _name, _subdir, _channels, _native_size = "MNIST", os.path.join("MNIST", "raw"), 1, 28
    _files = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(
        self, root: str, download: bool = False, batch_size: int = 128, num_workers: int = 0,
        val_size: int = 5000, seed: int = 0, image_size: int = 28,
    ) -> None:
        super().__init__(root, download, batch_size, num_workers, val_size, seed, image_size)
        self.save_hyperparameters()

    def _dataset(self, train: bool, download: bool = False) -> Dataset:
        return tvd.MNIST(self.root, train=train, download=download)


class _CIFAR10NoChecksum(tvd.CIFAR10):
    """CIFAR-10 that checks file presence only (for copies whose md5 differs, e.g. test fixtures)."""

    train_list = [[name, None] for name, _ in tvd.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in tvd.CIFAR10.test_list]
    meta = {**tvd.CIFAR10.meta, "md5": None}


class CIFAR10DataModule(_OfficialSplitDataModule):
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision layout); items ``[3, S, S]`` in [-1, 1].

    The official training set is split deterministically (``seed``) into train and ``val_size``
    validation images; the official test set is the test split. Only training items are flipped.

    Args:
        root: Directory holding ``cifar-10-batches-py`` (created when ``download=True``).
        download: Download the archive if missing (needs internet).
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes.
        val_size: Number of training images held out for validation.
        seed: Seed of the train/val split and of the training shuffle order.
        image_size: Side length S; images are resized when it differs from 32.
        hflip: Random horizontal flips (p=0.5) on the training split.
        verify_checksums: Check torchvision's md5 sums of the batch files. Set False to accept
            files that differ from the official release (the tests use this with tiny fixtures).
    """

    num_classes: int = 10
    _name, _subdir, _channels, _native_size = "CIFAR-10", tvd.CIFAR10.base_folder, 3, 32
    _files = [n for n, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list] + [tvd.CIFAR10.meta["filename"]]

    def __init__(
        self, root: str, download: bool = False, batch_size: int = 128, num_workers: int = 0,
        val_size: int = 5000, seed: int = 0, image_size: int = 32, hflip: bool = True,
        verify_checksums: bool = True,
    ) -> None:
        super().__init__(root, download, batch_size, num_workers, val_size, seed, image_size)
        self.hflip, self.verify_checksums = hflip, verify_checksums
        self.save_hyperparameters()

    def _train_aug(self) -> list[Any]:
        return [v2.RandomHorizontalFlip()] if self.hflip else []

    def _dataset(self, train: bool, download: bool = False) -> Dataset:
        cls = tvd.CIFAR10 if self.verify_checksums else _CIFAR10NoChecksum
        try:
            return cls(self.root, train=train, download=download)
        except RuntimeError as err:
            raise RuntimeError(
                f"CIFAR-10 files under {os.path.abspath(os.path.join(self.root, self._subdir))!r} failed "
                f"torchvision's md5 check ({err}). Re-download them (download=True), or pass "
                f"verify_checksums=False to use them as they are."
            ) from err


class _FixedClassesImageFolder(tvd.ImageFolder):
    """ImageFolder using a given ``class_to_idx`` (so val/test labels match the training folders)."""

    def __init__(self, root: str, class_to_idx: dict[str, int]) -> None:
        self._fixed = class_to_idx
        super().__init__(root, allow_empty=True)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:  # type: ignore[override]
        return sorted(self._fixed, key=self._fixed.__getitem__), dict(self._fixed)


class ImageFolderDataModule(_ImageDataModule):
    """ImageNet-style folders ``root/train/<class>/*.jpg`` (+ optional ``root/val``, ``root/test``).

    Images are converted to RGB, resized so the shorter side is ``image_size`` and cropped to
    ``[3, image_size, image_size]`` in [-1, 1]. Class ids follow the sorted training folder names.
    Validation uses ``root/val`` when present, otherwise ``val_fraction`` of the training images
    (deterministic from ``seed``; may be 0 for no validation). Test uses ``root/test`` when present,
    else ``root/val`` when present, else it is empty.

    Args:
        root: Dataset root containing ``train/``.
        image_size: Output side length.
        batch_size: Batch size of all loaders.
        num_workers: DataLoader worker processes.
        val_fraction: Fraction of training images held out when ``root/val`` is absent.
        seed: Seed of the holdout split and of the training shuffle order.
        random_crop: Random (instead of center) crops for training images.
        hflip: Random horizontal flips for training images.
    """

    def __init__(
        self, root: str, image_size: int = 256, batch_size: int = 64, num_workers: int = 0,
        val_fraction: float = 0.0, seed: int = 0, random_crop: bool = False, hflip: bool = False,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.image_size, self.val_fraction = root, image_size, val_fraction
        self.random_crop, self.hflip = random_crop, hflip
        self._class_to_idx: dict[str, int] | None = None
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(3, image_size, image_size)``."""
        return (3, self.image_size, self.image_size)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class folder name -> id, from the sorted sub-folders of ``root/train``."""
        if self._class_to_idx is None:
            train_dir = os.path.abspath(os.path.join(self.root, "train"))
            hint = f"expected images in {os.path.join(train_dir, '<class>', '*.jpg')!r}"
            if not os.path.isdir(train_dir):
                root_ok = os.path.isdir(self.root)
                what, path = ("folder", train_dir) if root_ok else ("root", os.path.abspath(self.root))
                raise FileNotFoundError(f"ImageFolderDataModule: {what} {path!r} does not exist; {hint}")
            try:
                self._class_to_idx = find_classes(train_dir)[1]
            except FileNotFoundError as err:
                raise FileNotFoundError(f"ImageFolderDataModule: no class folders in {train_dir!r}; {hint}") from err
        return self._class_to_idx

    @property
    def num_classes(self) -> int:
        """Number of class folders in ``root/train``."""
        return len(self.class_to_idx)

    def _folder(self, split: str) -> Dataset:
        path = os.path.abspath(os.path.join(self.root, split))
        folder = _FixedClassesImageFolder(path, self.class_to_idx)
        if len(folder) == 0:
            raise FileNotFoundError(f"ImageFolderDataModule: no images in {os.path.join(path, '<class>')!r}")
        return folder

    def _build(self) -> dict[str, Dataset]:
        s = self.image_size
        aug: list[Any] = [v2.RandomCrop(s) if self.random_crop else v2.CenterCrop(s)]
        aug += [v2.RandomHorizontalFlip()] if self.hflip else []
        train_tf, eval_tf = _to_unit_range(3, s, aug), _to_unit_range(3, s, [v2.CenterCrop(s)])
        train_base = self._folder("train")
        has = {d: os.path.isdir(os.path.join(self.root, d)) for d in ("val", "test")}
        n_val = 0 if has["val"] else round(self.val_fraction * len(train_base))  # type: ignore[arg-type]
        if has["val"] and self.val_fraction > 0:
            warnings.warn(f"{os.path.join(self.root, 'val')!r} exists; ignoring val_fraction={self.val_fraction}")
        train_idx, val_idx = _holdout(len(train_base), n_val, self.seed)  # type: ignore[arg-type]
        val = DictDataset(self._folder("val"), eval_tf) if has["val"] else DictDataset(train_base, eval_tf, val_idx)
        test = DictDataset(self._folder("test"), eval_tf) if has["test"] else (val if has["val"] else DictDataset([]))
        return {"train": DictDataset(train_base, train_tf, train_idx), "val": val, "test": test}


class LabelsDataModule(L.LightningDataModule):
    """Prediction-only module: the class labels to generate, ``{"cond": LongTensor [B]}``.

    Labels are listed class-major: ``per_class`` copies of the first class, then of the next, ...

    Args:
        per_class: Samples per class (>= 1).
        classes: Explicit class ids to generate (default: all ``range(num_classes)``).
        num_classes: Number of classes of the model; may be set later via :meth:`set_num_classes`.
        batch_size: Labels per batch.
        num_workers: DataLoader worker processes.
    """

    image_shape: tuple[int, int, int] | None = None  # unknown: generation shape comes from the model

    def __init__(
        self, per_class: int = 10, classes: list[int] | None = None, num_classes: int | None = None,
        batch_size: int = 100, num_workers: int = 0,
    ) -> None:
        super().__init__()
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if classes is not None and len(classes) == 0:
            raise ValueError("classes must be a non-empty list of class ids, or None for all classes")
        self.per_class, self.classes, self.batch_size, self.num_workers = per_class, classes, batch_size, num_workers
        self.num_classes: int | None = None
        if num_classes is not None:
            self.set_num_classes(num_classes)
        elif classes is not None:
            self._check_classes(None)
        self.save_hyperparameters()

    def _check_classes(self, n: int | None) -> None:
        for c in self.classes or []:
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 0 or (n is not None and c >= n):
                bound = f"[0, {n - 1}]" if n is not None else "[0, num_classes - 1]"
                raise ValueError(f"class id {c!r} is out of range: ids must be integers in {bound}")

    def set_num_classes(self, n: int) -> None:
        """Sets the model's class count and validates ``classes`` against it.

        Args:
            n: Number of classes (>= 1).
        """
        if n < 1:
            raise ValueError(f"num_classes must be >= 1, got {n}")
        self._check_classes(n)
        self.num_classes = n

    def bind_model(self, model: Any) -> None:
        """Read the class count from a class-conditional model (called by ``resgen predict``)."""
        n = getattr(getattr(model, "conditioner", None), "num_classes", None)
        if n is not None and self.num_classes is None:
            self.set_num_classes(int(n))

    @property
    def labels(self) -> torch.Tensor:
        """All labels to generate, LongTensor ``[len(classes) * per_class]`` in class-major order."""
        if self.classes is None and self.num_classes is None:
            raise ValueError("LabelsDataModule needs num_classes (argument or set_num_classes) or explicit classes")
        ids = torch.as_tensor(self.classes if self.classes is not None else range(self.num_classes), dtype=torch.long)
        return torch.repeat_interleave(ids, self.per_class)

    def predict_dataloader(self) -> DataLoader:
        """Batches ``{"cond": LongTensor [B]}`` covering :attr:`labels` in order."""
        items: list[dict[str, torch.Tensor]] = [{"cond": c} for c in self.labels]
        return DataLoader(items, batch_size=self.batch_size, num_workers=self.num_workers)  # type: ignore[arg-type]
