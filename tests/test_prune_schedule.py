"""The plateau-bisection threshold (study.prune_schedule and the Trainer's ``prune_schedule:
plateau-bisect``): the bisection against brute force, the plateau watch on hand-made loss
sequences, the rollback, exact resume mid-plateau for every threshold method, and the refusals."""
from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch
from torch import nn

from study import data as data_registry
from study import models
from study import runformat as rf
from study import sparsity
from study.method import MethodContext
from study.methods import METHODS, build_method
from study.prune_schedule import (PlateauWatch, bisect_threshold, candidate_threshold, largest_admissible,
                                  magnitude_candidates)
from study.settings import TrainConfig
from study.train import Trainer, check_prune_schedule, evaluate, fit, method_context, seed_everything

THRESHOLD_METHODS = [name for name, cls in METHODS.items() if cls.prunes_by_threshold]
OWN_WAY_METHODS = [name for name, cls in METHODS.items() if not cls.prunes_by_threshold]


def _strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != rf.EPOCH_SECONDS} for r in history]


# -- the bisection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 100, 1023, 1024])
def test_largest_admissible_finds_the_boundary_in_log_steps(n: int) -> None:
    for boundary in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
        if boundary > n:
            continue
        asked: list[int] = []

        def admissible(k: int) -> bool:
            asked.append(k)
            return k <= boundary

        assert largest_admissible(n, admissible) == boundary
        assert 0 not in asked  # "prune nothing" is admissible by definition
        assert len(asked) <= 1 + math.ceil(math.log2(max(n, 1)))


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=g)
    b = torch.randn(4, 6, generator=g)
    a[0, :3] = 0                      # already pruned
    b[1, 2] = b[2, 3] = a[3, 1]       # ties: one magnitude shared by three weights
    b[3, 0] = -a[3, 1]
    return {"a.weight": a, "b.weight": b}


def test_bisection_picks_the_largest_admissible_threshold_on_a_monotone_loss() -> None:
    """The loss is the summed magnitude of what is pruned (it grows with T, as the authors'
    schedule assumes): for every bound, the bisection's T is the largest of all candidate T
    (found by trying each) whose pruning keeps the loss within the bound."""
    weights = _weights()
    originals = {k: v.clone() for k, v in weights.items()}
    base = sum(v.abs().sum() for v in originals.values()).item()

    def loss_of() -> float:  # the mass pruned so far
        return base - sum(v.abs().sum() for v in weights.values()).item()

    candidates = magnitude_candidates(weights)
    assert len(candidates) == 6 * 5 - 3 + 4 * 6 - 3  # distinct nonzero magnitudes (ties counted once)
    options = [0.0] + [candidate_threshold(candidates, k) for k in range(1, len(candidates) + 1)]

    def loss_at(t: float) -> float:
        return sum(v.abs()[v.abs() < t].sum() for v in originals.values()).item()

    for bound in [0.0, 1e-3, 0.5, 1.7, 5.0, 20.0, base - 1e-3, base + 1.0]:
        expected = max(t for t in options if loss_at(t) <= bound)
        threshold, evaluations = bisect_threshold(weights, loss_of, bound)
        assert threshold == expected, bound
        assert evaluations <= 1 + math.ceil(math.log2(len(candidates)))
        for name in weights:  # the weights are left as they were
            assert torch.equal(weights[name], originals[name])
    # prune-everything is a candidate: T just above the largest magnitude
    top = max(v.abs().max().item() for v in originals.values())
    assert bisect_threshold(weights, loss_of, base + 1.0)[0] > top
    assert bisect_threshold(weights, loss_of, 0.0)[0] == 0.0


def test_a_threshold_prunes_exactly_the_candidates_below_it() -> None:
    weights = _weights()
    candidates = magnitude_candidates(weights)
    for k in (1, 5, len(candidates) - 1):
        t = candidate_threshold(candidates, k)
        keep = sparsity.threshold_masks(weights, t)
        pruned = torch.cat([w[~keep[n] & (w != 0)].abs() for n, w in weights.items()])
        assert torch.unique(pruned).tolist() == candidates[:k].tolist()


# -- the plateau watch -------------------------------------------------------------------------------
def _watch(losses: list[float], epochs: int = 3, tolerance: float = 0.01) -> tuple[list[bool], PlateauWatch]:
    watch = PlateauWatch(epochs, tolerance)
    flags = [watch.update(loss, i + 1, lambda i=i: {"epoch": i + 1}) for i, loss in enumerate(losses)]
    return flags, watch


def test_steady_improvements_are_no_plateau() -> None:
    flags, watch = _watch([1.0 * 0.97 ** i for i in range(30)])
    assert not any(flags) and watch.best_epoch == 30 and watch.bad_epochs == 0


def test_a_flat_loss_is_a_plateau_after_plateau_epochs() -> None:
    flags, watch = _watch([1.0, 0.8, 0.8, 0.8, 0.8, 0.8])
    assert flags == [False, False, False, False, True, True]
    assert (watch.best_epoch, watch.best) == (2, {"epoch": 2}) and watch.best_loss == 0.8


def test_gains_below_the_tolerance_move_the_best_but_not_the_count() -> None:
    flags, watch = _watch([1.0, 0.995, 0.991, 0.99])
    assert flags == [False, False, False, True]
    assert watch.best_epoch == 4 and watch.best_loss == 0.99  # the rollback target is the lowest loss


def test_an_improvement_resets_the_count() -> None:
    flags, _ = _watch([1.0, 1.2, 1.1, 0.9, 1.0, 1.0, 0.85, 0.9, 0.9, 0.9])
    assert flags == [False] * 9 + [True]


def test_negative_tolerance_is_the_authors_rule() -> None:
    """Their code counts an epoch against the plateau only when its loss is more than 1 % above
    the best: a flat loss never plateaus, a rising one does."""
    flat, _ = _watch([1.0, 0.9] + [0.9] * 10, tolerance=-0.01)
    assert not any(flat)
    rising, watch = _watch([1.0, 0.9, 0.905, 0.92, 0.93, 0.95], tolerance=-0.01)
    assert rising == [False, False, False, False, False, True] and watch.best_epoch == 2


def test_a_non_finite_loss_rolls_back_at_once() -> None:
    flags, _ = _watch([1.0, float("nan")], epochs=20)
    assert flags == [False, True]
    assert _watch([float("nan")], epochs=20)[0] == [False]  # nothing to roll back to yet


def test_the_watch_state_round_trips_and_reset_forgets() -> None:
    _, watch = _watch([1.0, 0.9, 0.95])
    again = PlateauWatch(3, 0.01)
    again.load_state_dict(copy.deepcopy(watch.state_dict()))
    assert again.state_dict() == watch.state_dict()
    assert again.update(0.95, 4, dict) == watch.update(0.95, 4, dict)
    watch.reset()
    assert watch.best is None and math.isinf(watch.best_loss) and watch.bad_epochs == 0


def test_plateau_epochs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="plateau_epochs"):
        TrainConfig(plateau_epochs=0)
    with pytest.raises(ValueError, match="prune_schedule"):
        TrainConfig(prune_schedule="every-epoch")
    with pytest.raises(ValueError, match="plateau_tolerance"):
        TrainConfig(plateau_tolerance=1.0)


# -- in the trainer ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle():
    return data_registry.load_dataset("synthetic", seed=0, shape="1x8x8", n_train=400, n_test=100)


def _trainer(bundle, method: str, config: TrainConfig, params: dict | None = None) -> Trainer:
    seed_everything(config.seed)
    model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
    return Trainer(model, build_method(method, params or {}, method_context(bundle, config)), bundle, config)


def _plateau_config(**kw: Any) -> TrainConfig:
    # a tolerance of 0.9: only a loss below a tenth of the best improves, so every plateau is
    # exactly plateau_epochs epochs after its best
    settings = dict(epochs=6, reach_epochs=1, batch_size=64, lr=0.1, momentum=0.9, seed=5,
                    prune_schedule="plateau-bisect", plateau_epochs=2, plateau_tolerance=0.9,
                    prune_tolerance=0.05)
    return TrainConfig(**{**settings, **kw})


def test_rollback_restores_the_best_state_then_prunes_within_the_tolerance(bundle) -> None:
    """At the pruning epoch the model is the best epoch's model with |w| < T zeroed, the
    optimizer (momentum) is the best epoch's, the validation loss is within (1 + twt) × the
    best, and T is a boundary: the next larger candidate would break the bound."""
    config = _plateau_config(epochs=7, lr=0.3)  # a noisy validation loss: the best is not the last epoch
    trainer = _trainer(bundle, "decay", config)
    states: dict[int, dict[str, Any]] = {}  # after each epoch
    plateau_states: dict[int, dict[str, Any]] = {}  # at a plateau, before the rollback
    prune = trainer._prune_at_plateau

    def spy() -> dict[str, float]:
        plateau_states[trainer.epoch] = copy.deepcopy(trainer.state_dict())
        return prune()

    trainer._prune_at_plateau = spy  # type: ignore[method-assign]
    while not trainer.done:
        record = trainer.run_epoch()
        states[record[rf.EPOCH]] = copy.deepcopy(trainer.state_dict())
    events = [r for r in trainer.history if rf.PRUNE_THRESHOLD in r]
    assert [r[rf.EPOCH] for r in events] == [4, 7]  # sparsify epochs 2-4, then 5-7 (a fresh watch)
    assert [r[rf.PRUNE_FROM_EPOCH] for r in events] == [3, 5]  # rollbacks
    for event in events:
        epoch, best = event[rf.EPOCH], int(event[rf.PRUNE_FROM_EPOCH])
        before = plateau_states[epoch] if best == epoch else states[best]
        # the best is the lowest validation loss of the plateau's epochs
        losses = {e: trainer.history[e - 1][rf.VAL_LOSS] for e in (epoch - 2, epoch - 1)}
        losses[epoch] = plateau_states[epoch]["plateau"]["best_loss"] if best == epoch else math.inf
        assert best == min(losses, key=losses.get)
        t = event[rf.PRUNE_THRESHOLD]
        assert t > 0
        for name, w in states[epoch]["model"].items():
            expected = before["model"][name]
            if name.endswith("weight"):
                expected = expected * (expected.abs() >= t)
            assert torch.equal(w, expected), name
        for key, value in before["optimizer"]["state"].items():
            assert torch.equal(states[epoch]["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
        best_loss = losses[best]
        assert event[rf.VAL_LOSS] <= (1 + config.prune_tolerance) * best_loss
        # the next candidate up is inadmissible (the bisection's result is a boundary)
        probe = _trainer(bundle, "decay", config)
        probe.load_state_dict(copy.deepcopy(before))
        weights = sparsity.prunable_weights(probe.model)
        candidates = magnitude_candidates(weights)
        k = int((candidates < t).sum())
        assert candidate_threshold(candidates, k) == t
        probe.method.threshold_prune(probe.model, candidate_threshold(candidates, k + 1))
        assert evaluate(probe.model, bundle.val)[0] > (1 + config.prune_tolerance) * best_loss
    # between events the masks hold: pruning is monotone
    nonzero = [r[rf.NONZERO] for r in trainer.history]
    assert nonzero[4:] == sorted(nonzero[4:], reverse=True) and nonzero[-1] < nonzero[0]


def test_the_methods_own_threshold_is_not_used(bundle) -> None:
    """Under plateau-bisect a huge T (fixed: everything pruned at the first sparsify epoch)
    prunes nothing until the first plateau."""
    config = _plateau_config(epochs=3)
    fixed = fit(*_parts(bundle, "l1", TrainConfig(epochs=3, reach_epochs=1, batch_size=64, seed=5),
                        {"threshold": 10.0}))
    assert fixed.history[1][rf.NONZERO] == 0
    plateau = fit(*_parts(bundle, "l1", config, {"threshold": 10.0}))
    assert [r[rf.COMPRESSION] for r in plateau.history] == [1.0, 1.0, 1.0]


def _parts(bundle, method: str, config: TrainConfig, params: dict | None = None):
    seed_everything(config.seed)
    model = models.build_model("lenet300", bundle.input_shape, bundle.num_classes)
    return model, build_method(method, params or {}, method_context(bundle, config)), bundle, config


@pytest.mark.parametrize("method", THRESHOLD_METHODS)
def test_resume_mid_plateau_equals_one_continuous_run(bundle, method: str) -> None:
    """As tests/test_study_trial.py's resume test, with plateau-bisect on: the trainer rebuilt
    after every epoch from a weights_only checkpoint (mid-plateau at epoch 3: one bad epoch
    counted, the best state held) is bit-for-bit the continuous run, pruning events included."""
    config = _plateau_config(epochs=5)
    continuous = fit(*_parts(bundle, method, config)).history
    assert [r[rf.EPOCH] for r in continuous if rf.PRUNE_THRESHOLD in r] == [4]
    saved, stepped = None, []
    for _ in range(config.epochs):
        trainer = _trainer(bundle, method, config)
        if saved is not None:
            trainer.load_state_dict(torch.load(io.BytesIO(saved), weights_only=True))
        stepped.append(trainer.run_epoch())
        buffer = io.BytesIO()
        state = trainer.state_dict()
        if trainer.epoch == 3:
            assert state["plateau"]["bad_epochs"] == 1 and state["plateau"]["best"] is not None
        torch.save(state, buffer)
        saved = buffer.getvalue()
    assert trainer.done
    for a, b in zip(_strip(continuous), _strip(stepped), strict=True):
        assert a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a), (method, a[rf.EPOCH])


@pytest.mark.parametrize("method", OWN_WAY_METHODS)
def test_methods_that_prune_their_own_way_are_refused_in_one_line(bundle, method: str) -> None:
    with pytest.raises(ValueError, match=f"prune_schedule 'plateau-bisect'.*{method}") as err:
        _trainer(bundle, method, _plateau_config())
    assert "\n" not in str(err.value)
    check_prune_schedule(METHODS[method], "fixed")  # the fixed schedule is every method's


def test_plateau_bisect_needs_a_validation_split() -> None:
    empty = data_registry.load_dataset("synthetic", seed=0, shape="1x4x4", n_train=40, n_test=10, val_fraction=0.0)
    with pytest.raises(ValueError, match="validation split"):
        Trainer(nn.Linear(16, 2), build_method("l1", {}, MethodContext(40, 2, 2, 1)), empty, _plateau_config())


def test_study_files_and_study_train_refuse_it_before_any_training(capsys) -> None:
    from study.cli import main
    from study.schema import study_from_dict

    with pytest.raises(ValueError, match="'gmp' prunes its own way"):
        study_from_dict({"methods": {"l1": {}, "gmp": {}}, "train": {"prune_schedule": "plateau-bisect"}})
    # a method's own train block may keep the fixed schedule
    study = study_from_dict({"methods": {"l1": {}, "gmp": {"train": {"prune_schedule": "fixed"}}},
                             "train": {"prune_schedule": "plateau-bisect"}})
    assert study.effective_train("gmp").prune_schedule == "fixed"
    assert study.effective_train("l1").prune_schedule == "plateau-bisect"
    assert main(["train", "--method", "l0", "--prune-schedule", "plateau-bisect", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'l0' prunes its own way" in err and len(err.splitlines()) == 1


def test_a_trial_logs_the_pruning_events_and_the_architecture(tmp_path, trial_config, mlflow_uri) -> None:
    """MLflow gets ``prune_threshold`` at the pruning epochs only, ``neurons.<layer>`` and
    ``inputs`` every epoch, and the ``architecture`` string as a tag (the last epoch's) and in
    ``history.csv``."""
    import csv

    from study.tracking import Tracker
    from study.trial import Trial
    from test_study_trial import FakeSession, _children, _tracking

    tracking = _tracking(mlflow_uri, "trial-plateau")
    train = {"epochs": 5, "reach_epochs": 1, "prune_schedule": "plateau-bisect", "plateau_epochs": 2,
             "plateau_tolerance": 0.9}
    Trial(trial_config("lobster", {}, [0], tracking=tracking, train=train), FakeSession(tmp_path)).run()
    (run,) = _children(mlflow_uri, tracking)
    client = Tracker(mlflow_uri).client
    assert [m.step for m in client.get_metric_history(run.info.run_id, rf.PRUNE_THRESHOLD)] == [4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, rf.neurons_key("fc1"))] == [1, 2, 3, 4, 5]
    assert run.data.params["train.prune_schedule"] == "plateau-bisect"
    with open(client.download_artifacts(run.info.run_id, rf.HISTORY_CSV)) as f:
        history = list(csv.DictReader(f))
    last = history[-1]
    assert run.data.tags[rf.ARCHITECTURE] == last[rf.ARCHITECTURE]
    assert last[rf.ARCHITECTURE] == rf.architecture(
        float(last[rf.INPUTS]), [float(last[rf.neurons_key(layer)]) for layer in ("fc1", "fc2", "fc3")])
    assert [bool(row[rf.PRUNE_THRESHOLD]) for row in history] == [False, False, False, True, False]
