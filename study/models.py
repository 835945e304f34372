"""Architecture registry: name -> builder -> ``nn.Module`` that returns logits.

Prunable layers keep fixed names, which become ``remaining_pct.<layer>`` metrics:
lenet300 -> fc1, fc2, fc3; lenet5 -> conv1, conv2, fc1, fc2; mlp -> fc1 ... fcN;
vgg16 -> torchvision's names (features.0, ..., features.28, classifier.0, .3, .6).

Every builder takes ``(input_shape, num_classes)`` then keyword-only options. One option
is common to all: ``pretrained``, a path to a state dict (``torch.save(model.state_dict())``)
loaded with ``torch.load(weights_only=True)``. Initialization is PyTorch's default (or
torchvision's for VGG), so it is deterministic given ``torch.manual_seed``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.options import check_options, option_defaults

COMMON_OPTIONS: dict[str, Any] = {"pretrained": None}


def _flat_size(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def _mlp(input_shape: tuple[int, ...], hidden: Sequence[int], num_classes: int) -> nn.Sequential:
    """Flatten -> fc1 -> ReLU -> ... -> fcN (logits)."""
    sizes = [_flat_size(input_shape), *hidden, num_classes]
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        layers.append((f"fc{i}", nn.Linear(n_in, n_out)))
        if i < len(sizes) - 1:
            layers.append((f"relu{i}", nn.ReLU()))
    return nn.Sequential(OrderedDict(layers))


def lenet300(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100: fc1 (in->300), fc2 (300->100), fc3 (100->C), ReLU between.
    On 784 inputs and 10 classes: 266,200 prunable weights."""
    return _mlp(input_shape, (300, 100), num_classes)


def mlp(
    input_shape: tuple[int, ...], num_classes: int, *, hidden: tuple[int, ...] = (300, 100)
) -> nn.Module:
    """A plain ReLU MLP with the given hidden sizes (``hidden="500,300"`` on the command line)."""
    hidden = tuple(hidden)
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"mlp: hidden sizes must be positive ints, got {hidden!r}")
    return _mlp(input_shape, hidden, num_classes)


LENET5_PADDINGS = ("auto", "valid", "same")


def lenet5(
    input_shape: tuple[int, ...], num_classes: int, *, relu: bool = False, padding: str = "auto"
) -> nn.Module:
    """Caffe's LeNet-5: conv1 20@5x5 -> maxpool 2 -> conv2 50@5x5 -> maxpool 2 -> fc1 500 ->
    ReLU -> fc2 C. Caffe has no nonlinearity after the convolutions; ``relu=True`` adds one.

    ``padding``: "valid" (Caffe, no padding), "same" (padding 2), or "auto": valid when the
    input is at least 16x16, else same (digits' 8x8 images are too small for two valid 5x5
    convolutions and two poolings). On 1x28x28 (valid): 430,500 prunable weights.
    """
    if len(input_shape) != 3:
        raise ValueError(f"lenet5 needs an image input shape (C, H, W), got {input_shape}")
    if padding not in LENET5_PADDINGS:
        valid = ", ".join(LENET5_PADDINGS)
        raise ValueError(f"lenet5: padding={padding!r}; valid choices: {valid}")
    c, h, w = input_shape
    if padding == "auto":
        padding = "valid" if min(h, w) >= 16 else "same"
    pad = 0 if padding == "valid" else 2

    def after(size: int) -> int:  # conv 5x5 then maxpool 2
        return (size + 2 * pad - 4) // 2

    h2, w2 = after(after(h)), after(after(w))
    if h2 < 1 or w2 < 1:
        raise ValueError(f"lenet5: input {input_shape} is too small for padding={padding!r}")
    layers: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(c, 20, 5, padding=pad))]
    if relu:
        layers.append(("relu1", nn.ReLU()))
    layers += [("pool1", nn.MaxPool2d(2)), ("conv2", nn.Conv2d(20, 50, 5, padding=pad))]
    if relu:
        layers.append(("relu2", nn.ReLU()))
    layers += [
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(50 * h2 * w2, 500)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(500, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


VGG16_VARIANTS = ("imagenet", "cifar")


class CifarVGG16(nn.Module):
    """The common CIFAR VGG-16: torchvision's 13 conv layers (cfg "D"), then a classifier
    512*(H/32)*(W/32) -> 512 -> 512 -> C with ReLU and dropout. Module names match
    torchvision's (features.*, classifier.0/.3/.6)."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, batch_norm: bool, dropout: float
    ) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        _, h, w = input_shape
        self.features = make_layers(cfgs["D"], batch_norm=batch_norm)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(512 * (h // 32) * (w // 32), 512),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(512, 512),
            nn.ReLU(True),
            nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )
        _init_vgg(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def _init_vgg(model: nn.Module) -> None:
    """torchvision's VGG initialization."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def vgg16(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    variant: str | None = None,
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> nn.Module:
    """VGG-16. ``variant``: "imagenet" (torchvision's vgg16/vgg16_bn: 7x7 adaptive pooling,
    4096-4096 classifier, ~138M parameters) or "cifar" (:class:`CifarVGG16`, ~15M); default
    "imagenet" for inputs of at least 64 px, else "cifar". Inputs need at least 32x32 pixels;
    a channel count other than 3 replaces features.0."""
    if len(input_shape) != 3:
        raise ValueError(f"vgg16 needs an image input shape (C, H, W), got {input_shape}")
    c, h, w = input_shape
    if min(h, w) < 32:
        raise ValueError(f"vgg16 needs inputs of at least 32x32 pixels, got {input_shape}")
    if variant is None:
        variant = "imagenet" if min(h, w) >= 64 else "cifar"
    if variant not in VGG16_VARIANTS:
        raise ValueError(f"vgg16: variant={variant!r}; valid choices: {', '.join(VGG16_VARIANTS)}")
    if variant == "imagenet":
        from torchvision import models

        build = models.vgg16_bn if batch_norm else models.vgg16
        model: nn.Module = build(weights=None, num_classes=num_classes, dropout=dropout)
    else:
        model = CifarVGG16(input_shape, num_classes, batch_norm, dropout)
    if c != 3:
        first = nn.Conv2d(c, 64, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(first.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(first.bias)
        model.features[0] = first  # type: ignore[index]
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg16": vgg16,
    "mlp": mlp,
}


def model_names() -> list[str]:
    return list(MODELS)


def load_state(model: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``model`` (strict), with errors that say what went wrong.
    Accepts a plain state dict, or a checkpoint dict holding one under "state_dict"/"model"."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors come in many types
        raise ValueError(
            f"pretrained: cannot read {path} as a state dict ({type(err).__name__}: {err})"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained: {path} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # one line: torch lists every mismatch on its own line
        raise ValueError(f"pretrained: {path} does not match the model: {detail}") from err


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any] | None = None,
) -> nn.Module:
    """Build a registered architecture; unknown names/options raise ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(model_names())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    builder = MODELS[name]
    defaults = {**option_defaults(builder), **COMMON_OPTIONS}
    options = check_options(f"model {name!r}", defaults, dict(options or {}))
    pretrained = options.pop("pretrained", None)
    model = builder(tuple(input_shape), num_classes, **options)
    if pretrained:
        load_state(model, pretrained)
    return model
