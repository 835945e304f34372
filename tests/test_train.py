"""The training loop: phases, metrics, hooks, determinism, divergence, resume, and the epoch
stepper (Trainer) that fit loops over."""
from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from study.method import Method, MethodContext, MethodParams
from study.settings import TrainConfig
from study.train import Trainer, fit, method_context, next_phase, _State


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, batch_size, *, shuffle, generator=None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], self.y[idx]


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    num_classes: int = 3


def make_data(n: int = 96, d: int = 6, c: int = 3) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return Data(Split(x[:64], y[:64]), Split(x[64:80], y[64:80]), Split(x[80:], y[80:]))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


CTX = MethodContext(train_size=64, num_classes=3, epochs=4, steps_per_epoch=4)


class Recorder(Method):
    name = "recorder"

    def __init__(self) -> None:
        super().__init__(MethodParams(), CTX)
        self.calls: list[str] = []

    def attach(self, model):
        self.calls.append("attach")

    def penalty(self, model):
        self.calls.append("penalty")
        return None

    def after_backward(self, model, x, y):
        assert all(p.grad is not None for p in model.parameters())
        self.calls.append("after_backward")

    def after_step(self, model):
        self.calls.append("after_step")
        super().after_step(model)

    def end_epoch(self, model, epoch, phase):
        self.calls.append(f"end_epoch:{epoch}:{phase}")


class Threshold(Method):
    name = "threshold"

    def end_epoch(self, model, epoch, phase):
        if phase == "sparsify":
            self.threshold_prune(model, 0.2)


def test_hooks_are_called_in_order_and_phases_switch() -> None:
    method = Recorder()
    config = TrainConfig(epochs=3, batch_size=32, reach_epochs=2, lr=0.05)
    result = fit(make_model(), method, make_data(), config)
    assert method.calls[0] == "attach"
    assert method.calls[1:4] == ["penalty", "after_backward", "after_step"]
    ends = [c for c in method.calls if c.startswith("end_epoch")]
    assert ends == ["end_epoch:1:reach", "end_epoch:2:reach", "end_epoch:3:sparsify"]
    assert [r["phase"] for r in result.history] == ["reach", "reach", "sparsify"]


def test_every_epoch_reports_the_design_metrics() -> None:
    result = fit(make_model(), Recorder(), make_data(), TrainConfig(epochs=2, reach_epochs=1))
    keys = {"epoch", "phase", "train_loss", "val_loss", "val_error", "test_loss", "test_error",
            "compression", "sparsity", "nonzero", "memory_kb", "remaining_pct.0", "remaining_pct.2", "epoch_seconds"}
    for record in result.history:
        assert keys <= set(record)
    assert [row["layer"] for row in result.layers] == ["0", "2"]
    assert result.status == "finished"


def test_seeded_runs_are_repeatable() -> None:
    config = TrainConfig(epochs=3, reach_epochs=1, seed=3)
    a = fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config)
    b = fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config)
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)


def test_pruned_weights_stay_zero_under_momentum() -> None:
    model = make_model()
    config = TrainConfig(epochs=4, reach_epochs=1, momentum=0.9, lr=0.1)
    method = Threshold(MethodParams(), CTX)
    result = fit(model, method, make_data(), config)
    for name, keep in method.masks.items():
        weight = dict(model.named_parameters())[name]
        assert torch.all(weight[~keep] == 0)
    nonzero = [r["nonzero"] for r in result.history[1:]]
    assert nonzero == sorted(nonzero, reverse=True)  # pruning is monotone
    assert result.history[-1]["compression"] > 1


def test_target_error_ends_reach_phase_and_patience_stops() -> None:
    state = _State(epoch=1, phase="reach")
    config = TrainConfig(reach_epochs=50, target_error=30.0)
    assert next_phase(state, config, val_error=31.0) == "reach"
    assert next_phase(state, config, val_error=29.0) == "sparsify"
    # an impossible target with patience 1 stops right after the first sparsify epoch
    config = TrainConfig(epochs=10, reach_epochs=1, target_error=0.0, patience=1)
    result = fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config)
    assert len(result.history) == 2 and result.history[-1]["phase"] == "sparsify"


def test_divergence_is_reported_not_raised() -> None:
    class Explode(Method):
        name = "explode"

        def penalty(self, model):
            return torch.tensor(float("nan"))

    result = fit(make_model(), Explode(MethodParams(), CTX), make_data(), TrainConfig(epochs=5))
    assert result.status == "diverged" and len(result.history) == 1


def test_resume_from_checkpoint_continues_identically() -> None:
    config = TrainConfig(epochs=4, reach_epochs=1, momentum=0.5, seed=1)
    saved = {}

    class Keep:
        def on_epoch_end(self, record, checkpoint):
            if record["epoch"] == 2:
                saved.update(checkpoint())

    full = fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config, callbacks=[Keep()])
    resumed = fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config, resume=saved)
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_method_context_describes_the_run() -> None:
    context = method_context(make_data(), TrainConfig(epochs=7, batch_size=30))
    assert context == MethodContext(train_size=64, num_classes=3, epochs=7, steps_per_epoch=3)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(optimizer="rmsprop"), dict(target_error=120.0)])
def test_bad_train_settings_name_the_value(bad) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_trainer_steps_one_epoch_at_a_time_and_says_why_it_stopped() -> None:
    config = TrainConfig(epochs=3, reach_epochs=1, seed=2)
    trainer = Trainer(make_model(), Threshold(MethodParams(), CTX), make_data(), config)
    assert (trainer.epoch, trainer.phase, trainer.done, trainer.stop_reason) == (0, "reach", False, None)
    records = []
    while not trainer.done:
        records.append(trainer.run_epoch())
    assert [r["epoch"] for r in records] == [1, 2, 3] and trainer.history == records
    assert trainer.stop_reason == "epochs" and trainer.status == "finished" and trainer.phase == "sparsify"
    with pytest.raises(RuntimeError, match="over"):
        trainer.run_epoch()
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]  # noqa: E731
    assert strip(records) == strip(fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config).history)

    patience = Trainer(make_model(), Threshold(MethodParams(), CTX), make_data(),
                       TrainConfig(epochs=10, reach_epochs=1, target_error=0.0, patience=1))
    while not patience.done:
        patience.run_epoch()
    assert patience.stop_reason == "patience" and patience.epoch == 2

    class Explode(Method):
        name = "explode"

        def penalty(self, model):
            return torch.tensor(float("nan"))

    diverged = Trainer(make_model(), Explode(MethodParams(), CTX), make_data(), TrainConfig(epochs=5))
    diverged.run_epoch()
    assert diverged.stop_reason == "diverged" and diverged.status == "diverged" and diverged.done


def test_trainer_state_is_safe_to_load_and_continues_with_more_epochs() -> None:
    """state_dict() holds tensors and plain values only (it loads with weights_only=True), and a
    run resumed with more epochs than it was started with goes on: the stop is not stored."""
    short = Trainer(make_model(), Threshold(MethodParams(), CTX), make_data(), TrainConfig(epochs=2, reach_epochs=1))
    while not short.done:
        short.run_epoch()
    buffer = io.BytesIO()
    torch.save(short.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    config = TrainConfig(epochs=4, reach_epochs=1)
    longer = Trainer(make_model(), Threshold(MethodParams(), CTX), make_data(), config)
    longer.load_state_dict(saved)
    assert longer.epoch == 2 and not longer.done
    while not longer.done:
        longer.run_epoch()
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]  # noqa: E731
    assert strip(longer.history) == strip(fit(make_model(), Threshold(MethodParams(), CTX), make_data(), config).history)
