"""A tiny deterministic training run, for the tests that compare two methods bit for bit (a
method against its matched control ``decay``)."""
from __future__ import annotations

import math

import torch
from torch import nn

from study.method import MethodContext
from study.methods import build_method
from study.train import TrainConfig, fit


def tiny_run(method_name: str, params: dict, data) -> tuple[dict, list[dict]]:
    """3 epochs (1 reach) of a 36-16-3 MLP from the same initial weights: the final state and
    the history without its timings."""
    config = TrainConfig(epochs=3, reach_epochs=1, batch_size=32, lr=0.1, seed=3)
    context = MethodContext(len(data.train), data.num_classes, config.epochs, math.ceil(len(data.train) / 32))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))
    result = fit(model, build_method(method_name, params, context), data, config)
    return model.state_dict(), [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in result.history]
