"""Tests for study/data.py and study/datafiles.py: splits, idx parsing and its errors, the
mnist10k / mnist / fashion-mnist idx loaders, torchvision and folder loaders, check_available.
The full real MNIST is tested in test_mnist_real.py."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from study import data, datafiles
from study.data import (
    DataBundle,
    DataFileError,
    DataNotFoundError,
    TensorSplit,
    DatasetSplit,
    load_dataset,
    read_idx,
)

# CI clones have ../shared beside the repository; STUDY_MNIST10K points elsewhere.
DEFAULT_MNIST10K = Path(__file__).parents[1].parent / "shared/data/mnist-t10k"
MNIST10K = Path(os.environ.get("STUDY_MNIST10K", DEFAULT_MNIST10K))
needs_mnist10k = pytest.mark.skipif(
    not (MNIST10K / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"MNIST t10k idx files not found in {MNIST10K} (set STUDY_MNIST10K to their folder)",
)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as an idx file, optionally gzipped or with a forced magic."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def all_x(split: TensorSplit) -> torch.Tensor:
    return split.x.flatten(1)


# -- registry and arguments ----------------------------------------------------------------


def test_registry_names():
    assert data.dataset_names() == [
        "digits", "mnist10k", "mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic"
    ]


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*digits.*mnist10k.*synthetic"):
        load_dataset("nope")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"unknown option\(s\) n_tset; valid options: n_test"):
        load_dataset("digits", n_tset=10)
    with pytest.raises(ValueError, match="normalize; valid options: n_test, n_train"):
        load_dataset("mnist", normalize=True)
    # a loader without options (none is registered today) would say so
    with pytest.raises(ValueError, match="valid options: none"):
        data.check_options("dataset 'x'", {}, {"normalize": True})


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        load_dataset("digits", val_fraction=fraction)


def test_string_options_are_coerced():
    bundle = load_dataset("synthetic", shape="1x4x4", n_train="50", n_test="10", num_classes="3")
    assert len(bundle.test) == 10 and bundle.num_classes == 3
    with pytest.raises(ValueError, match="n_test='many' is not a valid int"):
        load_dataset("digits", n_test="many")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDY_DATA_ROOT", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    monkeypatch.delenv("STUDY_DATA_ROOT")
    assert data.data_root() == Path("~/.cache/sensitivity-study/data").expanduser()


# -- digits ---------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_range():
    bundle = load_dataset("digits")
    assert isinstance(bundle, DataBundle)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1293, 144, 360)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    assert bundle.train.x.dtype == torch.float32 and bundle.train.y.dtype == torch.int64
    assert bundle.train.x.min() == 0.0 and bundle.train.x.max() == 1.0
    assert set(bundle.test.y.tolist()) == set(range(10))


def test_digits_splits_are_disjoint_and_cover_everything():
    bundle = load_dataset("digits", val_fraction=0.2)
    rows = [tuple(r) for s in (bundle.train, bundle.val, bundle.test) for r in all_x(s).tolist()]
    from sklearn.datasets import load_digits

    everything = sorted(tuple(r) for r in (load_digits().images.reshape(-1, 64) / 16.0).tolist())
    assert sorted(rows) == everything  # a partition: nothing lost, nothing duplicated


def test_digits_deterministic_and_seed_dependence():
    a, b, c = (load_dataset("digits", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.val.x, c.val.x)  # the train/val carve follows the seed
    assert torch.equal(a.test.x, c.test.x)  # the test samples do not


def test_zero_val_fraction_gives_empty_val():
    bundle = load_dataset("digits", val_fraction=0.0)
    assert len(bundle.val) == 0 and len(bundle.train) == 1797 - 360
    assert list(bundle.val.batches(32, shuffle=False)) == []


# -- TensorSplit ----------------------------------------------------------------------------


def test_tensor_split_batches():
    split = TensorSplit(torch.arange(10.0).unsqueeze(1), torch.arange(10))
    plain = list(split.batches(4, shuffle=False))
    assert [len(y) for _, y in plain] == [4, 4, 2]
    assert torch.equal(torch.cat([y for _, y in plain]), torch.arange(10))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s1 = torch.cat([y for _, y in split.batches(3, shuffle=True, generator=g1)])
    s2 = torch.cat([y for _, y in split.batches(3, shuffle=True, generator=g2)])
    assert torch.equal(s1, s2) and not torch.equal(s1, torch.arange(10))
    assert sorted(s1.tolist()) == list(range(10))
    for x, y in split.batches(3, shuffle=True, generator=g1):
        assert torch.equal(x.squeeze(1).long(), y)  # x and y stay paired
    with pytest.raises(ValueError, match="batch_size"):
        next(split.batches(0, shuffle=False))


def test_bundle_to_device():
    bundle = load_dataset("synthetic", shape=(2,), n_train=20, n_test=5).to("cpu")
    assert bundle.train.x.device.type == "cpu" and bundle.name == "synthetic"


# -- synthetic ------------------------------------------------------------------------------


def test_synthetic_shapes():
    bundle = load_dataset(
        "synthetic", shape="3x8x8", num_classes=4, n_train=100, n_test=30, val_fraction=0.2
    )
    assert bundle.input_shape == (3, 8, 8) and bundle.num_classes == 4
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (80, 20, 30)
    assert bundle.train.y.max() < 4 and bundle.train.y.dtype == torch.int64
    assert load_dataset("synthetic", shape=(1, 28, 28)).input_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="shape must be positive ints"):
        load_dataset("synthetic", shape="1x0x3")


# -- idx files ------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gz(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "imgs", images, gz=gz)
    out = read_idx(path, data.IDX_IMAGES_MAGIC)
    assert out.shape == (2, 3, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)
    labels = write_idx(tmp_path / "labels", np.array([7, 1, 9], dtype=np.uint8), gz=gz)
    np.testing.assert_array_equal(read_idx(labels, data.IDX_LABELS_MAGIC), [7, 1, 9])


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message
    return message


def test_read_idx_errors(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"magic number is 2049 .* expected 2051"):
        read_idx(labels, data.IDX_IMAGES_MAGIC)
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bogus)
    truncated = tmp_path / "short"
    truncated.write_bytes(labels.read_bytes()[:-2])
    with pytest.raises(ValueError, match="idx data has 3 bytes"):
        read_idx(truncated)


def test_truncated_idx_names_the_file_and_the_expected_size(tmp_path):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((60, 28, 28), np.uint8))
    images.write_bytes(images.read_bytes()[:1000])  # 60 images need 16 + 47040 bytes
    with pytest.raises(DataFileError) as info:
        read_idx(images, data.IDX_IMAGES_MAGIC)
    assert isinstance(info.value, ValueError)
    expected = f"{images}: expected 47056 bytes for 60 images of 28x28, got 1000"
    assert one_line(info.value).startswith(expected)
    labels = write_idx(tmp_path / "labels", np.zeros(60, np.uint8), gz=True)
    short = gzip.decompress(labels.read_bytes())[:-10]
    labels.write_bytes(gzip.compress(short))  # a whole gzip stream around a short idx
    with pytest.raises(DataFileError, match=r"labels: expected 68 bytes for 60 labels, got 58 unpacked"):
        read_idx(labels, data.IDX_LABELS_MAGIC)
    header_only = tmp_path / "header"
    header_only.write_bytes(images.read_bytes()[:10])  # cut inside the header
    with pytest.raises(DataFileError, match=r"header: expected a 16-byte idx header \(3 dims\), got 10"):
        read_idx(header_only)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(DataFileError, match=r"tiny: 2 bytes, too short for an idx file"):
        read_idx(tiny)


def test_gzip_cut_short_names_the_file(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.ones((50, 28, 28), np.uint8), gz=True)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFileError) as info:
        read_idx(path, data.IDX_IMAGES_MAGIC)
    assert one_line(info.value).startswith(f"{path}: corrupt or truncated gzip file")
    assert "expected a complete gzip-compressed idx file" in str(info.value)
    corrupt = bytearray(whole)
    corrupt[-6] ^= 0xFF  # the stored CRC no longer matches
    path.write_bytes(bytes(corrupt))
    with pytest.raises(DataFileError, match="corrupt or truncated gzip file"):
        read_idx(path, data.IDX_IMAGES_MAGIC)


def test_wrong_magic_names_the_file_and_the_expected_magic(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 4, 4), np.uint8), magic=1234)
    with pytest.raises(DataFileError) as info:
        read_idx(path, data.IDX_IMAGES_MAGIC)
    assert one_line(info.value) == (
        f"{path}: idx magic number is 1234 (0x000004d2), expected 2051 (0x00000803, images); "
        f"wrong or corrupt file"
    )


def fake_t10k(folder: Path, n: int = 50, *, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A tiny stand-in for MNIST's t10k files: image i is filled with the value i."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
    labels = (np.arange(n) % 10).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("layout", ["root", "MNIST/raw", "mnist-t10k"])
def test_mnist10k_layouts_with_fake_files(tmp_path, layout):
    folder = tmp_path if layout == "root" else tmp_path / layout
    fake_t10k(folder, gz=layout != "MNIST/raw")
    bundle = load_dataset("mnist10k", root=tmp_path, n_test=10, val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 10)
    assert bundle.input_shape == (1, 28, 28)
    for split in (bundle.train, bundle.val, bundle.test):  # labels still match their images
        index = (split.x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(split.y, index % 10)


def test_mnist10k_missing_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist10k", root=tmp_path / "nowhere")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for folder in data.mnist10k_folders(tmp_path / "nowhere"):
        assert str(folder) in message
    assert "t10k-images-idx3-ubyte" in message and "download=True" in message


def test_mnist10k_does_not_pair_files_from_different_folders(tmp_path):
    fake_t10k(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").rename(tmp_path / "labels.gz")
    fake_t10k(tmp_path / "MNIST" / "raw", n=30)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "labels.gz").rename(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataNotFoundError, match="not found in any of"):
        load_dataset("mnist10k", root=tmp_path)


def test_mnist10k_mismatched_counts(tmp_path):
    fake_t10k(tmp_path, n=20)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8), gz=True)
    with pytest.raises(ValueError, match="20 images but .* 19 labels"):
        load_dataset("mnist10k", root=tmp_path, n_test=5)


@needs_mnist10k
def test_mnist10k_real_files():
    bundle = load_dataset("mnist10k", root=MNIST10K)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (7200, 800, 2000)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    x = torch.cat([bundle.train.x, bundle.val.x, bundle.test.x])
    y = torch.cat([bundle.train.y, bundle.val.y, bundle.test.y])
    assert x.min() == 0.0 and x.max() == 1.0 and x.dtype == torch.float32
    # the official t10k label counts
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert len(torch.unique(x.flatten(1), dim=0)) == 10_000  # no sample in two splits


@needs_mnist10k
def test_mnist10k_via_symlinked_mnist_raw(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (raw / name).symlink_to(MNIST10K / name)
    a = load_dataset("mnist10k", root=tmp_path, seed=4)
    b = load_dataset("mnist10k", root=MNIST10K, seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)


# -- mnist / fashion-mnist from idx files (fake files; the real ones in test_mnist_real.py) ----


def fake_mnist(folder: Path, n_train: int = 40, n_test: int = 12, *, gz: bool = True) -> None:
    """Four MNIST-named idx files with random pixels; labels count 0..9 in order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz=gz)


@pytest.mark.parametrize(
    "name, layout, gz",
    [("mnist", "MNIST/raw", True), ("mnist", "MNIST/raw", False), ("mnist", "root", True),
     ("fashion-mnist", "FashionMNIST/raw", True), ("fashion-mnist", "root", False)],
)
def test_mnist_idx_layouts(tmp_path, name, layout, gz):
    fake_mnist(tmp_path if layout == "root" else tmp_path / layout, gz=gz)
    bundle = load_dataset(name, root=tmp_path, val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 12)
    assert bundle.name == name and bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert torch.equal(bundle.test.y, torch.arange(12) % 10)  # the official test split, in order
    data.check_available(name, root=tmp_path)  # the check finds what the loader finds


def test_mnist_matches_torchvision_on_the_same_files(tmp_path):
    """The idx reader gives exactly the tensors the torchvision path gave (pixels / 255, in file
    order), from plain files and from gzipped copies."""
    import torchvision

    fake_mnist(tmp_path / "plain" / "MNIST" / "raw", gz=False)
    fake_mnist(tmp_path / "gz" / "MNIST" / "raw", gz=True)
    for root in (tmp_path / "plain", tmp_path / "gz"):
        bundle = load_dataset("mnist", root=root, val_fraction=0.0)
        for split, train in ((bundle.train, True), (bundle.test, False)):
            ref = torchvision.datasets.MNIST(str(tmp_path / "plain"), train=train)
            assert torch.equal(split.x, ref.data.float().unsqueeze(1) / 255.0)
            assert torch.equal(split.y, ref.targets) and split.x.dtype == torch.float32


def test_mnist_files_must_come_from_one_folder(tmp_path):
    fake_mnist(tmp_path / "MNIST" / "raw")
    labels = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "MNIST" / "raw" / labels).rename(tmp_path / labels)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    message = one_line(info.value)
    assert "not found in any of" in message and "all four in one folder" in message
    assert f"{tmp_path / 'MNIST' / 'raw'} holds only train-images-idx3-ubyte" in message


def test_mnist_subsets(tmp_path):
    fake_mnist(tmp_path, n_train=100, n_test=30)
    full = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    small = load_dataset("mnist", root=tmp_path, n_train="20", n_test=10, val_fraction=0.25, seed=1)
    assert (len(small.train), len(small.val), len(small.test)) == (15, 5, 10)
    rows = lambda split: {tuple(r) for r in split.x.flatten(1).tolist()}  # noqa: E731
    assert rows(small.train) | rows(small.val) <= rows(full.train)
    assert rows(small.test) <= rows(full.test)
    other_seed = load_dataset("mnist", root=tmp_path, n_train=20, n_test=10, val_fraction=0.25, seed=2)
    assert rows(other_seed.train) | rows(other_seed.val) == rows(small.train) | rows(small.val)
    assert not torch.equal(other_seed.val.x, small.val.x)  # the carve still follows the seed
    larger = load_dataset("mnist", root=tmp_path, n_train=40, val_fraction=0.0)
    assert rows(small.train) | rows(small.val) <= rows(larger.train)  # subsets nest
    everything = load_dataset("mnist", root=tmp_path, n_train=100, val_fraction=0.0)
    assert torch.equal(everything.train.x, full.train.x)
    with pytest.raises(ValueError, match=r"mnist: n_train=101 is out of range; valid: 0 \(all\) or 1\.\.100"):
        load_dataset("mnist", root=tmp_path, n_train=101)
    with pytest.raises(ValueError, match=r"n_test=-1 is out of range"):  # before looking for files
        load_dataset("fashion-mnist", root=tmp_path / "nowhere", n_test=-1)


@pytest.mark.parametrize(
    "damage, expected",
    [("truncate", r"expected 9424 bytes for 12 images of 28x28, got 5000"),
     ("cut_gzip", r"corrupt or truncated gzip file"),
     ("magic", r"magic number is 2049 .*expected 2051")],
)
def test_damaged_mnist_file_is_named(tmp_path, damage, expected):
    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw, gz=damage == "cut_gzip")
    target = raw / ("t10k-images-idx3-ubyte" + (".gz" if damage == "cut_gzip" else ""))
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:5000])
    elif damage == "cut_gzip":
        target.write_bytes(target.read_bytes()[:-100])
    else:
        target.write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(DataFileError, match=expected) as info:
        load_dataset("mnist", root=tmp_path)
    assert one_line(info.value).startswith(f"{target}: ")


def test_mnist_labels_out_of_range(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8), gz=True)
    expected = r"t10k-labels-idx1-ubyte.gz: label 10 found, expected labels in \[0, 9\]"
    with pytest.raises(DataFileError, match=expected):
        load_dataset("mnist", root=tmp_path)


class FakeTorchvisionMNIST:
    """Stands in for torchvision.datasets.MNIST(download=True): writes unpacked files into
    root/MNIST/raw, as the real download does, and counts its calls."""

    calls = 0

    def __init__(self, root, train=True, download=False):
        type(self).calls += 1
        if download:
            fake_mnist(Path(root) / "MNIST" / "raw", n_train=20, n_test=10, gz=False)


def test_mnist_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeTorchvisionMNIST)
    with pytest.raises(DataNotFoundError):
        data.check_available("mnist", root=tmp_path)
    data.check_available("mnist", root=tmp_path, download=True)  # would download: fine
    assert FakeTorchvisionMNIST.calls == 0  # the check downloads nothing
    bundle = load_dataset("mnist", root=tmp_path, download=True, val_fraction=0.0)
    assert (len(bundle.train), len(bundle.test)) == (20, 10) and FakeTorchvisionMNIST.calls == 1
    load_dataset("mnist", root=tmp_path, download=True)  # present now: no second download
    assert FakeTorchvisionMNIST.calls == 1


def test_mnist_failed_download_says_why(tmp_path, monkeypatch):
    import torchvision

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://x, got: down")

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    for name in ("mnist", "mnist10k"):
        with pytest.raises(DataNotFoundError) as info:
            load_dataset(name, root=tmp_path, download=True)
        message = one_line(info.value)
        assert "The download failed (RuntimeError: Error downloading train-images" in message
        assert "Tried https://x, got: down)" in message  # torchvision's lines joined into one


# -- check_available: cheap, one line, where the loader looks --------------------------------


def test_check_available_without_files(tmp_path):
    for name in ("digits", "synthetic"):
        data.check_available(name, root=tmp_path)  # nothing on disk needed
    for name, where in (("mnist10k", "mnist-t10k"), ("mnist", "MNIST/raw"),
                        ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
                        ("imagenet", "imagenet")):
        with pytest.raises(DataNotFoundError) as info:
            data.check_available(name, root=tmp_path)
        message = one_line(info.value)
        assert message.startswith(f"{name}: ") and str(tmp_path / where) in message
        with pytest.raises(DataNotFoundError) as loading:
            load_dataset(name, root=tmp_path)
        assert str(loading.value) == message  # the loader says the same thing
        if name != "imagenet":
            assert "download=True" in message
            data.check_available(name, root=tmp_path, download=True)
    with pytest.raises(DataNotFoundError, match="cannot be downloaded"):
        data.check_available("imagenet", root=tmp_path, download=True)


def test_check_available_uses_the_data_root_and_checks_names(tmp_path, monkeypatch):
    fake_t10k(tmp_path / "mnist-t10k")
    monkeypatch.setenv("STUDY_DATA_ROOT", str(tmp_path))
    data.check_available("mnist10k")
    data.check_available("mnist10k", n_test="100")
    with pytest.raises(ValueError, match="unknown dataset 'mnist100'; valid choices: digits"):
        data.check_available("mnist100")
    with pytest.raises(ValueError, match=r"unknown option\(s\) n_tset; valid options: n_test"):
        data.check_available("mnist10k", n_tset=1)


def test_check_available_reads_nothing(tmp_path):
    """Garbage under the right names passes the check (it only looks), then fails on load."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (raw / name).write_bytes(b"junk")
    data.check_available("mnist", root=tmp_path)
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte: idx magic number is"):
        load_dataset("mnist", root=tmp_path)


def test_check_available_cifar10_and_imagenet_layouts(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in datafiles.CIFAR10_FILES[:-1]:
        (folder / name).write_bytes(b"")
    with pytest.raises(DataNotFoundError):  # batches.meta missing
        data.check_available("cifar10", root=tmp_path)
    (folder / "batches.meta").write_bytes(b"")
    data.check_available("cifar10", root=tmp_path)
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    (tmp_path / "imagenet" / "val").mkdir()
    with pytest.raises(DataNotFoundError):  # no class folders yet
        data.check_available("imagenet", root=tmp_path)
    (tmp_path / "imagenet" / "train" / "ant").mkdir()
    (tmp_path / "imagenet" / "val" / "ant").mkdir()
    data.check_available("imagenet", root=tmp_path)


# -- torchvision data sets (no network here: fake files on disk, and the error path) ---------


@pytest.mark.parametrize(
    "name, folder",
    [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")],
)
def test_torchvision_missing_says_where_and_how(tmp_path, name, folder):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder) in message and "download=True" in message


def test_mnist_from_fake_raw_folder(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    bundle = load_dataset("mnist", root=tmp_path, val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 12)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert 0.0 <= bundle.train.x.min() and bundle.train.x.max() <= 1.0
    assert torch.equal(bundle.test.y, torch.arange(12) % 10)  # the official test split, in order


def test_cifar10_from_fake_batches(tmp_path, monkeypatch):
    """Fake pickled batches (torchvision's md5 checks switched off): every image has
    red = 255, green = 0, blue = 51, so the channel order after NHWC -> NCHW is visible."""
    import pickle

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixel = np.concatenate([np.full(1024, v, dtype=np.uint8) for v in (255, 0, 51)])
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": np.tile(pixel, (4, 1)), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))

    bundle = load_dataset("cifar10", root=tmp_path, val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (15, 5, 4)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
    stats = zip((255, 0, 51), data.CIFAR10_MEAN, data.CIFAR10_STD)
    expected = [(v / 255 - m) / s for v, m, s in stats]
    assert torch.allclose(bundle.test.x.mean(dim=(0, 2, 3)), torch.tensor(expected), atol=1e-5)
    raw = load_dataset("cifar10", root=tmp_path, normalize="false")
    assert torch.allclose(raw.test.x[0, :, 5, 7], torch.tensor([1.0, 0.0, 0.2]))
    assert raw.test.y.tolist() == [0, 1, 2, 3]


# -- imagenet folders -----------------------------------------------------------------------


def fake_imagefolder(base: Path, classes=("ant", "bee", "cat"), per_class=(6, 2)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_class):
        for cls in classes:
            (base / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(base / split / cls / f"{i}.png")


def test_imagenet_folder(tmp_path):
    fake_imagefolder(tmp_path / "imagenet")
    bundle = load_dataset(
        "imagenet", root=tmp_path, val_fraction=1 / 6, resize=36, crop=32, num_workers=0
    )
    assert isinstance(bundle.train, DatasetSplit)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (15, 3, 6)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 32, 32)
    batches = list(bundle.test.batches(4, shuffle=False))
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    assert batches[0][1].dtype == torch.int64
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in bundle.train.to("cpu").batches(5, shuffle=True, generator=g)])
    assert sorted(seen.tolist()) == sorted(bundle.train.dataset[i][1] for i in range(15))
    # train and val are disjoint subsets of train/
    assert not set(bundle.train.dataset.indices) & set(bundle.val.dataset.indices)


def test_imagenet_folder_at_root_and_augment(tmp_path):
    fake_imagefolder(tmp_path, per_class=(2, 1))
    bundle = load_dataset(
        "imagenet", root=tmp_path, val_fraction=0.0, crop=24, resize=28, augment=True, num_workers=0
    )
    x, y = next(bundle.train.batches(6, shuffle=False))
    assert x.shape == (6, 3, 24, 24)


def test_imagenet_class_mismatch(tmp_path):
    fake_imagefolder(tmp_path, per_class=(1, 1))
    (tmp_path / "val" / "dog").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dog" / "0.png")
    with pytest.raises(ValueError, match="same class folder names"):
        load_dataset("imagenet", root=tmp_path, num_workers=0)


def test_imagenet_missing_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"ImageFolder layout .*imagenet.*image-net.org"):
        load_dataset("imagenet", root=tmp_path)
