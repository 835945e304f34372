"""Where each data set's files are: the idx reader (MNIST's format), the file search, downloads
through torchvision, and the one-line errors for missing or unreadable files.

Every data set that needs files has a :class:`Source` here. Its loader (``study.data``) and the
cheap pre-launch check (``study.data.check_available``) both go through it, so the two look in
the same places and say the same thing when something is missing.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where we looked; the message says where and how to get them."""


class DataFileError(ValueError):
    """A data file is there but is not what it should be (a truncated file, a gzip stream cut
    short, a wrong magic number, images and labels that do not match); the one-line message
    names the file and what was expected."""


# -- idx files (MNIST's original format) --------------------------------------------------

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_KINDS = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}
_GZIP_MAGIC = b"\x1f\x8b"


def _idx_contents(dims: tuple[int, ...], dtype: np.dtype, magic: int) -> str:
    """What a header promises, in words: '60000 images of 28x28', '60000 labels'."""
    if magic == IDX_IMAGES_MAGIC and len(dims) == 3:
        return f"{dims[0]} images of {dims[1]}x{dims[2]}"
    if magic == IDX_LABELS_MAGIC:
        return f"{dims[0]} labels"
    return f"a {'x'.join(map(str, dims))} array of {dtype.name}"


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an idx file (plain, or gzip: detected from its first bytes) into a numpy array.

    Header: 2 zero bytes, a type code, the number of dimensions, then one big-endian
    uint32 per dimension. ``expected_magic`` (e.g. 2051 for images) is checked if given.
    A file that cannot be what it claims (a gzip stream cut short, a wrong magic number,
    fewer or more bytes than its header promises) raises :class:`DataFileError`, one line
    naming the file and what was expected.
    """
    path = Path(path)
    raw = path.read_bytes()
    unpacked = ""
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # cut short / bad CRC / bad deflate data
            raise DataFileError(
                f"{path}: corrupt or truncated gzip file ({len(raw)} bytes; {err}); expected a "
                f"complete gzip-compressed idx file: fetch it again"
            ) from None
        unpacked = " unpacked"
    if len(raw) < 4:
        raise DataFileError(
            f"{path}: {len(raw)}{unpacked} bytes, too short for an idx file (expected a 4-byte "
            f"magic number, then a header)"
        )
    (magic,) = struct.unpack(">I", raw[:4])
    zero, code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        kind = _IDX_KINDS.get(expected_magic, "idx data")
        raise DataFileError(
            f"{path}: idx magic number is {magic} (0x{magic:08x}), expected {expected_magic} "
            f"(0x{expected_magic:08x}, {kind}); wrong or corrupt file"
        )
    if zero != 0 or code not in _IDX_DTYPES:
        raise DataFileError(f"{path}: not an idx file (magic number 0x{magic:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(
            f"{path}: expected a {header}-byte idx header ({ndim} dims), got {len(raw)}{unpacked} "
            f"bytes; truncated file"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataFileError(
            f"{path}: expected {header + expected} bytes for {_idx_contents(dims, dtype, magic)}, "
            f"got {len(raw)}{unpacked} (the idx data has {len(raw) - header} bytes of {expected}); "
            f"truncated or corrupt file"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def read_idx_images_labels(
    images: Path, labels: Path, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """An images/labels idx pair, checked against each other: (uint8 (N, H, W), int64 (N,))."""
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC)
    if x.shape[0] != y.shape[0]:
        raise DataFileError(
            f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels"
        )
    if y.size and int(y.max()) >= num_classes:
        raise DataFileError(
            f"{labels}: label {int(y.max())} found, expected labels in [0, {num_classes - 1}]"
        )
    return x, y.astype(np.int64)


def find_files(folders: list[Path], names: tuple[str, ...]) -> tuple[Path, ...] | None:
    """The first folder holding every file (each plain or .gz), so the files belong together."""
    for folder in folders:
        found = []
        for name in names:
            plain, gz = folder / name, folder / f"{name}.gz"
            found.append(plain if plain.is_file() else gz if gz.is_file() else None)
        if all(f is not None for f in found):
            return tuple(found)  # type: ignore[arg-type]
    return None


def _partly_there(folders: list[Path], names: tuple[str, ...]) -> str:
    """' (X holds only a, b)' for folders that hold some of the files but not all."""
    notes = []
    for folder in folders:
        have = [n for n in names if (folder / n).is_file() or (folder / f"{n}.gz").is_file()]
        if have and len(have) < len(names):
            notes.append(f"{folder} holds only {', '.join(have)}")
    return f" ({'; '.join(notes)})" if notes else ""


# -- each data set's files: where, how to fetch them, what to say when they are missing -----


@dataclass(frozen=True)
class Source:
    """How a data set's files are found on disk, fetched, and reported missing. Its loader and
    ``study.data.check_available`` both go through it, so they cannot disagree."""

    find: Callable[[Path], Any]  # root -> the files (or folder); None when absent
    missing: Callable[[Path, str], str]  # (root, why a download failed, or "") -> the message
    fetch: Callable[[Path], None] | None = None  # download into root; None: cannot download


def check_files(name: str, root: Path, download: bool) -> None:
    """Raise DataNotFoundError unless ``name``'s files are under ``root`` or ``download`` can
    fetch them; reads and downloads nothing. Data sets without files always pass."""
    source = SOURCES.get(name)
    if source is not None and source.find(root) is None and not (download and source.fetch):
        raise DataNotFoundError(source.missing(root, ""))


def locate(name: str, root: Path, download: bool) -> Any:
    """``name``'s files under ``root``, fetched first when missing and ``download`` is set."""
    source = SOURCES[name]
    found = source.find(root)
    failure = ""
    if found is None and download and source.fetch is not None:
        try:
            source.fetch(root)
        except DataNotFoundError as err:
            cause = err.__cause__ or err
            failure = f"{type(cause).__name__}: {' '.join(str(cause).split())}"
        found = source.find(root)
    if found is None:
        raise DataNotFoundError(source.missing(root, failure))
    return found


def _how_to_fetch(failure: str, into: Path, tool: str) -> str:
    if failure:
        return f"The download failed ({failure})."
    return f"Pass download=True (--download) to fetch them into {into} with {tool}."


# The four official MNIST-format files; Fashion-MNIST uses the same names.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST10K_FILES = MNIST_FILES[2:]

_MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

# torchvision data sets: class name, the folder torchvision writes/reads, how to fill it by hand.
_TORCHVISION = {
    name: (
        cls_name,
        f"{cls_name}/raw",
        f"download the four .gz files from {_MNIST_URLS[name]} into that folder, gunzipped or "
        f"not ({', '.join(MNIST_FILES)})",
    )
    for name, cls_name in (("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"))
}
_TORCHVISION |= {
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it in "
        "the data root",
    ),
}


def _torchvision_missing(name: str, root: Path, failure: str) -> str:
    cls_name, folder, by_hand = _TORCHVISION[name]
    how = (
        f"the download failed ({failure})"
        if failure
        else "pass download=True (--download) to fetch them"
    )
    return (
        f"{name}: torchvision.datasets.{cls_name} found no usable files in {root / folder}; "
        f"{how}. By hand: {by_hand}."
    )


def torchvision_dataset(name: str, root: Path, *, train: bool, download: bool) -> Any:
    """A torchvision data set; "not found" and failed downloads become DataNotFoundError."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[name][0])
    try:
        return cls(root=str(root), train=train, download=download)
    except (RuntimeError, OSError) as err:  # missing files, or a failed download (no network)
        failure = f"{type(err).__name__}: {' '.join(str(err).split())}" if download else ""
        raise DataNotFoundError(_torchvision_missing(name, root, failure)) from err


def _torchvision_fetch(name: str) -> Callable[[Path], None]:
    """Download ``name`` into root with torchvision (MNIST: all four files in one go)."""

    def fetch(root: Path) -> None:
        torchvision_dataset(name, root, train=False, download=True)

    return fetch


def mnist10k_folders(root: Path) -> list[Path]:
    """Where mnist10k looks for its idx files, in order."""
    return [root, root / "MNIST" / "raw", root / "mnist-t10k"]


def _mnist10k_missing(root: Path, failure: str) -> str:
    folders = mnist10k_folders(root)
    looked = ", ".join(str(f) for f in folders)
    how = _how_to_fetch(failure, root / "MNIST" / "raw", "torchvision.datasets.MNIST")
    return (
        f"mnist10k: {MNIST10K_FILES[0]}[.gz] and {MNIST10K_FILES[1]}[.gz] not found in any of: "
        f"{looked} (both in one folder){_partly_there(folders, MNIST10K_FILES)}. {how} Or copy "
        f"the two .gz files from {_MNIST_URLS['mnist']} into one of those folders, or point the "
        f"data root at a folder that holds them."
    )


def mnist_folders(name: str, root: Path) -> list[Path]:
    """Where ``mnist`` / ``fashion-mnist`` look for their four idx files, in order."""
    return [root / _TORCHVISION[name][1], root]


def _mnist_source(name: str) -> Source:
    cls_name, folder, _ = _TORCHVISION[name]

    def missing(root: Path, failure: str) -> str:
        folders = mnist_folders(name, root)
        looked = ", ".join(str(f) for f in folders)
        how = _how_to_fetch(failure, root / folder, f"torchvision.datasets.{cls_name}")
        return (
            f"{name}: the four idx files ({', '.join(MNIST_FILES)}; each plain or .gz) not found "
            f"in any of: {looked} (all four in one folder){_partly_there(folders, MNIST_FILES)}. "
            f"{how} Or download the four .gz files from {_MNIST_URLS[name]} into {root / folder} "
            f"(gunzipped or not), or point the data root at a folder that holds them."
        )

    return Source(
        find=lambda root: find_files(mnist_folders(name, root), MNIST_FILES),
        missing=missing,
        fetch=_torchvision_fetch(name),
    )


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


def _cifar10_find(root: Path) -> Path | None:
    folder = root / _TORCHVISION["cifar10"][1]
    return folder if all((folder / f).is_file() for f in CIFAR10_FILES) else None


def imagenet_dir(root: Path) -> Path | None:
    """The folder holding train/<class>/ and val/<class>/ (``root/imagenet`` or ``root``)."""
    for candidate in (root / "imagenet", root):
        if all(_has_subfolder(candidate / split) for split in ("train", "val")):
            return candidate
    return None


def _has_subfolder(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def _imagenet_missing(root: Path, failure: str) -> str:
    return (
        f"imagenet: no ImageFolder layout (train/<class>/*.JPEG and val/<class>/*.JPEG) in "
        f"{root / 'imagenet'} or {root}. It cannot be downloaded automatically: get ILSVRC2012 "
        f"from https://image-net.org/, sort the validation images into one folder per class "
        f"(the same class folder names as train/) and place train/ and val/ there."
    )


# digits and synthetic need no files: they have no entry.
SOURCES: dict[str, Source] = {
    "mnist10k": Source(
        find=lambda root: find_files(mnist10k_folders(root), MNIST10K_FILES),
        missing=_mnist10k_missing,
        fetch=_torchvision_fetch("mnist"),  # torchvision fetches all four into root/MNIST/raw
    ),
    "mnist": _mnist_source("mnist"),
    "fashion-mnist": _mnist_source("fashion-mnist"),
    "cifar10": Source(
        find=_cifar10_find,
        missing=lambda root, failure: _torchvision_missing("cifar10", root, failure),
        fetch=_torchvision_fetch("cifar10"),
    ),
    "imagenet": Source(find=imagenet_dir, missing=_imagenet_missing),
}
