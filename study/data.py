"""Dataset registry: name -> loader -> :class:`DataBundle` with train/val/test splits.
(One concept over 400 lines: the data set registry; every loader follows the same split and
root conventions, stated once below, and the idx reader they share lives in study.datafiles.)

Small data sets become :class:`TensorSplit` (tensors, batched by index: no DataLoader);
image folders become :class:`DatasetSplit` (a torch Dataset behind a DataLoader).

Conventions, the same for every data set:

- The data root is the ``root`` argument, else ``$STUDY_DATA_ROOT``, else
  ``~/.cache/sensitivity-study/data``.
- The validation split is carved from the training split (``val_fraction`` of it,
  rounded); it is never taken from the test split. ``val_fraction=0`` gives an empty
  validation split.
- Where a data set has an official test split, that is the test split. Where it has none
  (digits, mnist10k), a fixed number of samples is held out by a permutation that does
  not depend on ``seed``, so every seed is scored on the same test samples. The
  train/val carve depends on ``seed``. Everything is deterministic given ``seed``.
- Labels are int64 class indices. Images are float32, (N, C, H, W).

Missing files raise :class:`DataNotFoundError`, files that are there but unreadable
:class:`DataFileError`; :func:`check_available` finds the first kind without loading anything.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from study.datafiles import (  # re-exported: the data API is study.data
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST10K_FILES,
    MNIST_FILES,
    DataFileError,
    DataNotFoundError,
    check_files,
    locate,
    mnist10k_folders,
    mnist_folders,
    read_idx,
    read_idx_images_labels,
    torchvision_dataset,
)
from study.options import check_options, option_defaults

DEFAULT_ROOT = Path("~/.cache/sensitivity-study/data")
ROOT_ENV = "STUDY_DATA_ROOT"
TEST_SPLIT_SEED = 0  # fixed: the held-out test samples do not change with the run's seed

# (x - mean) / std per channel, the usual CIFAR-10 training-set statistics.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- splits ------------------------------------------------------------------------------


@dataclass
class TensorSplit:
    """A split held as tensors (on one device), batched by index."""

    x: Tensor
    y: Tensor  # int64 class labels

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x, y) batches; the last one may be smaller. Shuffled with ``generator``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            perm_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=perm_device).to(self.x.device)
        else:
            order = torch.arange(n, device=self.x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], self.y[idx]


class DatasetSplit:
    """A split backed by a torch Dataset of (image, label); batches come from a DataLoader
    and are moved to this split's device."""

    def __init__(
        self, dataset: Dataset, *, num_workers: int = 2, device: torch.device | str = "cpu"
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.device = torch.device(device)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def to(self, device: torch.device | str) -> DatasetSplit:
        return DatasetSplit(self.dataset, num_workers=self.num_workers, device=device)

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if generator is not None and generator.device.type != "cpu":
            generator = None  # the sampler needs a CPU generator; fall back to the global one
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        non_blocking = self.device.type == "cuda"
        for x, y in loader:
            yield x.to(self.device, non_blocking=non_blocking), y.long().to(
                self.device, non_blocking=non_blocking
            )


Split = Union[TensorSplit, DatasetSplit]


@dataclass
class DataBundle:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]  # per-sample shape, e.g. (1, 8, 8)

    def to(self, device: torch.device | str) -> DataBundle:
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


# -- split helpers -----------------------------------------------------------------------


def _permutation(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def carve_val(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val) of a training set of size ``n``: ``round(val_fraction * n)``
    samples go to val, chosen by a permutation seeded with ``seed``."""
    n_val = int(round(val_fraction * n))
    if n_val >= n:
        raise ValueError(f"val_fraction={val_fraction} leaves no training samples out of {n}")
    perm = _permutation(n, seed)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def hold_out(n: int, n_test: int) -> tuple[Tensor, Tensor]:
    """Indices (rest, test): ``n_test`` samples held out by a seed-independent permutation."""
    if not 0 < n_test < n:
        raise ValueError(f"n_test must be in [1, {n - 1}] for {n} samples, got {n_test}")
    perm = _permutation(n, TEST_SPLIT_SEED)
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _tensor_bundle(
    name: str,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    val_fraction: float,
    seed: int,
) -> DataBundle:
    """Carve val from (x_train, y_train) and wrap everything as TensorSplits."""
    tr, va = carve_val(len(y_train), val_fraction, seed)
    y_train, y_test = y_train.long(), y_test.long()
    return DataBundle(
        name=name,
        train=TensorSplit(x_train[tr], y_train[tr]),
        val=TensorSplit(x_train[va], y_train[va]),
        test=TensorSplit(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )


def _held_out_bundle(
    name: str, x: Tensor, y: Tensor, num_classes: int, n_test: int, val_fraction: float, seed: int
) -> DataBundle:
    rest, test = hold_out(len(y), n_test)
    return _tensor_bundle(name, x[rest], y[rest], x[test], y[test], num_classes, val_fraction, seed)


# -- loaders -----------------------------------------------------------------------------
# Each loader takes (root, val_fraction, seed, download) positionally, then its own
# keyword-only options; load_dataset checks option names against the signature.


def _load_digits(
    root: Path, val_fraction: float, seed: int, download: bool, *, n_test: int = 360
) -> DataBundle:
    """sklearn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    return _held_out_bundle("digits", x, y, 10, n_test, val_fraction, seed)


def _load_mnist10k(
    root: Path, val_fraction: float, seed: int, download: bool, *, n_test: int = 2000
) -> DataBundle:
    """The official MNIST test split (10,000 images) re-split into train/val/test."""
    x, y = _idx_tensors(*locate("mnist10k", root, download))
    return _held_out_bundle("mnist10k", x, y, 10, n_test, val_fraction, seed)


def _idx_tensors(
    images: Path, labels: Path, size: int = 0, what: str = ""
) -> tuple[Tensor, Tensor]:
    """An idx images/labels pair as float32 (N, 1, H, W) in [0, 1] and int64 labels, cut to
    its fixed subset of ``size`` (0 = all) before the pixels are converted to float."""
    x, y = read_idx_images_labels(images, labels)
    if size:
        keep = fixed_subset(len(y), size, what).numpy()
        x, y = x[keep], y[keep]
    return torch.from_numpy(x).float().unsqueeze(1) / 255.0, torch.from_numpy(y)


def fixed_subset(n: int, size: int, what: str) -> Tensor:
    """Indices of ``size`` of ``n`` samples (0 = all), the first ``size`` of a seed-independent
    permutation, in ascending order: the subset does not change with the run's seed, and a
    smaller subset lies inside a larger one."""
    if size == 0 or size == n:
        return torch.arange(n)
    if not 0 < size < n:
        raise ValueError(f"{what}={size} is out of range; valid: 0 (all) or 1..{n}")
    return _permutation(n, TEST_SPLIT_SEED)[:size].sort().values


def _load_idx_mnist(
    name: str, root: Path, val_fraction: float, seed: int, download: bool, n_train: int, n_test: int
) -> DataBundle:
    """Train = the official training split (or its fixed ``n_train`` subset, val carved from
    it), test = the official test split (or its fixed ``n_test`` subset). Pixels to [0, 1]."""
    for key, value in (("n_train", n_train), ("n_test", n_test)):
        if value < 0:  # checked before reading 50 MB
            raise ValueError(f"{name}: {key}={value} is out of range; valid: 0 (all) or >= 1")
    train_images, train_labels, test_images, test_labels = locate(name, root, download)
    x_train, y_train = _idx_tensors(train_images, train_labels, n_train, f"{name}: n_train")
    x_test, y_test = _idx_tensors(test_images, test_labels, n_test, f"{name}: n_test")
    return _tensor_bundle(name, x_train, y_train, x_test, y_test, 10, val_fraction, seed)


def _load_mnist(
    root: Path, val_fraction: float, seed: int, download: bool, *, n_train: int = 0, n_test: int = 0
) -> DataBundle:
    """MNIST (60,000 train / 10,000 test), pixels scaled to [0, 1] (as Caffe's LeNet), read
    from the idx files. ``n_train`` / ``n_test`` > 0 keep a fixed subset of that size."""
    return _load_idx_mnist("mnist", root, val_fraction, seed, download, n_train, n_test)


def _load_fashion_mnist(
    root: Path, val_fraction: float, seed: int, download: bool, *, n_train: int = 0, n_test: int = 0
) -> DataBundle:
    """Fashion-MNIST (60,000 train / 10,000 test), pixels scaled to [0, 1], read from the idx
    files. ``n_train`` / ``n_test`` > 0 keep a fixed subset of that size."""
    return _load_idx_mnist("fashion-mnist", root, val_fraction, seed, download, n_train, n_test)


def _load_torchvision(
    name: str,
    root: Path,
    val_fraction: float,
    seed: int,
    download: bool,
    *,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None,
) -> DataBundle:
    """Train = the official training split (val carved from it), test = the official test
    split. Pixels to [0, 1], then (x - mean) / std per channel if ``mean_std`` is given."""
    train = torchvision_dataset(name, root, train=True, download=download)
    test = torchvision_dataset(name, root, train=False, download=download)

    def convert(ds: Any) -> tuple[Tensor, Tensor]:
        data = torch.as_tensor(np.asarray(ds.data))
        x = data.float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        if mean_std is not None:
            mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in mean_std)
            x = (x - mean) / std
        return x, torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    x_train, y_train = convert(train)
    x_test, y_test = convert(test)
    return _tensor_bundle(
        name, x_train, y_train, x_test, y_test, len(train.classes), val_fraction, seed
    )


def _load_cifar10(
    root: Path, val_fraction: float, seed: int, download: bool, *, normalize: bool = True
) -> DataBundle:
    """CIFAR-10 (50,000 train / 10,000 test); per-channel standardized unless normalize=False
    ([0, 1] then). No augmentation: the splits are plain tensors."""
    mean_std = (CIFAR10_MEAN, CIFAR10_STD) if normalize else None
    return _load_torchvision("cifar10", root, val_fraction, seed, download, mean_std=mean_std)


def _load_imagenet(
    root: Path,
    val_fraction: float,
    seed: int,
    download: bool,
    *,
    resize: int = 256,
    crop: int = 224,
    augment: bool = False,
    num_workers: int = 2,
) -> DataBundle:
    """An ImageFolder tree: val carved from train/, test = the val/ folder.

    Evaluation transform: resize, center crop, ImageNet normalization. With augment=True the
    training split uses RandomResizedCrop(crop) + horizontal flip instead.
    """
    from torchvision import datasets, transforms

    base = locate("imagenet", root, download)
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    plain = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(), normalize]
    )
    train_tf = (
        transforms.Compose(
            [
                transforms.RandomResizedCrop(crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        if augment
        else plain
    )
    train_all = datasets.ImageFolder(str(base / "train"), transform=train_tf)
    val_all = datasets.ImageFolder(str(base / "train"), transform=plain)  # no augmentation
    test = datasets.ImageFolder(str(base / "val"), transform=plain)
    if test.classes != train_all.classes:
        raise ValueError(
            f"imagenet: {base / 'val'} has {len(test.classes)} class folders, {base / 'train'} has "
            f"{len(train_all.classes)}; they must have the same class folder names"
        )
    tr, va = carve_val(len(train_all), val_fraction, seed)

    def split(ds: Dataset) -> DatasetSplit:
        return DatasetSplit(ds, num_workers=num_workers)

    # A grayscale/odd image still comes out as 3 channels: ImageFolder's loader converts to RGB.
    return DataBundle(
        name="imagenet",
        train=split(Subset(train_all, tr.tolist())),
        val=split(Subset(val_all, va.tolist())),
        test=split(test),
        num_classes=len(train_all.classes),
        input_shape=(3, crop, crop),
    )


def parse_shape(shape: str | int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """``"1x28x28"`` / ``(1, 28, 28)`` / ``64`` -> a tuple of positive ints."""
    try:
        if isinstance(shape, str):
            dims = tuple(int(s) for s in shape.lower().replace(",", "x").split("x") if s.strip())
        elif isinstance(shape, int):
            dims = (shape,)
        else:
            dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise ValueError(
            f"shape must be positive ints like '1x28x28' or (1, 28, 28), got {shape!r}"
        )
    return dims


def _load_synthetic(
    root: Path,
    val_fraction: float,
    seed: int,
    download: bool,
    *,
    shape: str | tuple[int, ...] = "1x28x28",
    num_classes: int = 10,
    n_train: int = 1000,
    n_test: int = 200,
) -> DataBundle:
    """Gaussian inputs labelled by a fixed random linear map (argmax), so it can be learnt.
    The data do not depend on ``seed``; the train/val carve does. For speed tests."""
    dims = parse_shape(shape)
    if num_classes < 2 or n_train < 1 or n_test < 1:
        raise ValueError(
            f"synthetic needs num_classes >= 2, n_train >= 1, n_test >= 1; got "
            f"{num_classes}, {n_train}, {n_test}"
        )
    g = torch.Generator().manual_seed(TEST_SPLIT_SEED)
    x = torch.randn((n_train + n_test, *dims), generator=g)
    w = torch.randn(num_classes, x[0].numel(), generator=g)
    y = (x.flatten(1) @ w.T).argmax(1)
    train, test = slice(0, n_train), slice(n_train, None)
    return _tensor_bundle(
        "synthetic", x[train], y[train], x[test], y[test], num_classes, val_fraction, seed
    )


DATASETS: dict[str, Callable[..., DataBundle]] = {
    "digits": _load_digits,
    "mnist10k": _load_mnist10k,
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "cifar10": _load_cifar10,
    "imagenet": _load_imagenet,
    "synthetic": _load_synthetic,
}


def dataset_names() -> list[str]:
    return list(DATASETS)


#: Per-sample shape and class count of the data sets whose loaders fix them (synthetic and
#: imagenet take them from their options; ImageNet's class count is ILSVRC-2012's 1000).
_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10), "mnist10k": ((1, 28, 28), 10), "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10),
}


def input_spec(name: str, **options: Any) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a data set, without reading it: what an architecture is
    built for (the checks before a study starts build each one once, on the driver)."""
    loader, options = _checked(name, options)
    options = {**option_defaults(loader), **options}
    if name == "synthetic":
        return parse_shape(options["shape"]), options["num_classes"]
    if name == "imagenet":
        return (3, options["crop"], options["crop"]), 1000
    return _SHAPES[name]


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$STUDY_DATA_ROOT``, else ``~/.cache/sensitivity-study/data``."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser()


def _checked(name: str, options: dict[str, Any]) -> tuple[Callable[..., DataBundle], dict]:
    """The loader of ``name`` and its checked options; unknown names/options -> ValueError."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(dataset_names())}")
    loader = DATASETS[name]
    return loader, check_options(f"dataset {name!r}", option_defaults(loader), options)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> DataBundle:
    """Load a registered data set with deterministic train/val/test splits."""
    loader, options = _checked(name, options)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return loader(data_root(root), val_fraction, seed, download, **options)


def check_available(
    name: str, root: str | Path | None = None, download: bool = False, **options: Any
) -> None:
    """Raise :class:`DataNotFoundError` (one line: which data set, where it looked, how to get
    it) unless ``name``'s files are under the data root, or ``download`` will fetch them.

    Cheap: it looks for files and folders but reads no data and downloads nothing, so it can
    run on the driver before a study starts. It looks exactly where the loader looks. Unknown
    names or options raise ValueError, as in :func:`load_dataset`. ``digits`` and
    ``synthetic`` need no files; ``imagenet`` cannot be downloaded, so ``download`` does not
    excuse a missing ImageNet folder. Whether present files are intact is found out on load
    (:class:`DataFileError`).
    """
    _checked(name, options)
    check_files(name, data_root(root), download)
