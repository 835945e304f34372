"""The real MNIST (../shared/data/mnist, or $STUDY_MNIST) through the real loader path: known
facts of the files, equality with torchvision's reader, a short fit on a fixed subset, and a
tiny `study run` whose trial loads it. Everything skips, with the reason, where it is absent."""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from study.data import DataNotFoundError, check_available, load_dataset

# CI clones have ../shared beside the repository; STUDY_MNIST points at another data root.
DEFAULT_MNIST = Path(__file__).parents[1].parent / "shared/data/mnist"
MNIST = Path(os.environ.get("STUDY_MNIST", DEFAULT_MNIST))


def _present() -> bool:
    try:
        check_available("mnist", root=MNIST)  # looks exactly where the loader looks
    except DataNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _present(),
    reason=f"full MNIST idx files not found in {MNIST}/MNIST/raw or {MNIST} "
    f"(set STUDY_MNIST to a data root that holds them)",
)

# The official label counts of the 60,000 training and 10,000 test images.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
SUBSET = {"n_train": 600, "n_test": 500}  # a few hundred samples: seconds, not minutes


def test_real_mnist_known_facts():
    bundle = load_dataset("mnist", root=MNIST)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (54000, 6000, 10000)
    y_train = torch.cat([bundle.train.y, bundle.val.y])
    assert torch.bincount(y_train).tolist() == TRAIN_COUNTS
    assert torch.bincount(bundle.test.y).tolist() == TEST_COUNTS
    assert bundle.input_shape == (1, 28, 28) and bundle.train.x.dtype == torch.float32
    assert bundle.train.x.min() == 0.0 and bundle.train.x.max() == 1.0


def test_real_mnist_equals_torchvision_on_unpacked_copies(tmp_path):
    """Unpack the four files where torchvision.datasets.MNIST reads them; its tensors, scaled as
    the old loader scaled them, equal the idx reader's from the .gz files."""
    import torchvision

    from study.data import MNIST_FILES, mnist_folders
    from study.datafiles import find_files

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in find_files(mnist_folders("mnist", MNIST), MNIST_FILES):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(raw / path.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    ours = load_dataset("mnist", root=MNIST, val_fraction=0.0)
    for split, train in ((ours.train, True), (ours.test, False)):
        ref = torchvision.datasets.MNIST(str(tmp_path), train=train)
        assert torch.equal(split.x, ref.data.float().unsqueeze(1) / 255.0)
        assert torch.equal(split.y, ref.targets)


def test_fit_lenet300_on_a_real_mnist_subset():
    from study.method import MethodContext
    from study.methods import build_method
    from study.models import build_model
    from study.train import TrainConfig, fit, seed_everything

    bundle = load_dataset("mnist", root=MNIST, **SUBSET)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (540, 60, 500)
    config = TrainConfig(epochs=2, reach_epochs=1, batch_size=10, lr=0.1, seed=0, device="cpu")
    context = MethodContext(train_size=540, num_classes=10, epochs=2, steps_per_epoch=54)
    seed_everything(0)  # the model's initial weights, as `study train` does
    model = build_model("lenet300", bundle.input_shape, bundle.num_classes, {})
    result = fit(model, build_method("sensitivity-unspec", {}, context), bundle, config)
    first, last = result.history
    assert result.status == "finished" and (first["phase"], last["phase"]) == ("reach", "sparsify")
    assert last["train_loss"] < first["train_loss"] and last["compression"] > 1.0
    # 540 real digits, 108 steps: far better than chance (90 % error); 28.8 % when measured
    assert last["test_error"] < 50.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_study_on_real_mnist(ray_session: Any, tiny_study: Any) -> None:
    from study.runner import run_study

    config = tiny_study(
        "mnist",
        datasets=["mnist"],
        methods={"none": {}, "sensitivity-unspec": {}},
        data={"root": str(MNIST), "options": {"mnist": SUBSET}},
    )
    outcome = run_study(config)
    assert outcome.complete and outcome.statuses == {"finished": 2}
