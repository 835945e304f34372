"""Checks before launch: what dooms a run, found before any data is read or Ray starts.

- :func:`check_device_name` / :func:`check_device`: a device setting is one of the valid forms /
  names a device this machine has;
- :func:`phase_error`: a method that acts in the sparsify phase, with train settings under which
  that phase never starts (``reach_epochs >= epochs`` and no ``target_error``);
- :func:`threshold_warning`: a threshold above every initial |w| of the model, so that every
  weight is pruned at the end of the first sparsify epoch (a warning: weights may grow first);
- :func:`check_study`: all of them for a study, plus its data files
  (:func:`study.data.check_available`, which reads nothing) and, when Ray runs in-process, the
  GPUs a trial asks for. It returns the warnings and raises the first error.

The schema runs the checks that depend only on the study file (device forms, phases, through
:func:`check_phases`); the others depend on the machine and run at `study validate` and at the
start of `study run` (`study train` runs the ones that apply to one run).
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from study.plan import ParamSpace
    from study.schema import StudyConfig

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
DEVICE_FORMS = "auto, cpu, cuda, cuda:N"


def ray_address(address: str | None = None) -> str | None:
    """The Ray cluster a study joins (``address``, else ``$RAY_ADDRESS``), or None when Ray runs
    in-process on this machine."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


# -- devices ----------------------------------------------------------------------------------


def check_device_name(setting: str, where: str = "device") -> None:
    """``setting`` is one of the valid device forms (``where`` names it in the error)."""
    if not isinstance(setting, str) or not _DEVICE.fullmatch(setting):
        raise ValueError(f"{where}={setting!r} is not a device; valid: {DEVICE_FORMS}")


def check_device(setting: str, where: str = "device") -> None:
    """``setting`` names a device this machine has: ``cuda`` needs a CUDA GPU, ``cuda:N`` more
    than N of them (``auto`` and ``cpu`` always pass)."""
    check_device_name(setting, where)
    if not setting.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count()  # 0 without a GPU or a driver; never raises
    index = int(setting.partition(":")[2] or 0)
    if count == 0:
        raise ValueError(f"{where}={setting} but torch finds no CUDA GPU on this machine; "
                         f"use auto or cpu")
    if index >= count:
        raise ValueError(f"{where}={setting} but this machine has {count} CUDA GPU(s): "
                         f"{', '.join(f'cuda:{i}' for i in range(count))}")


# -- the sparsify phase -----------------------------------------------------------------------


def phase_error(method: str, params: dict[str, Any], epochs: int, reach_epochs: int,
                target_error: float | None, names: tuple[str, str, str]) -> str | None:
    """Why ``method`` with ``params`` would never reach the sparsify phase it needs, or None.

    The phase starts after ``reach_epochs`` epochs, or earlier once the validation error reaches
    ``target_error``; with no target and ``reach_epochs >= epochs`` it never starts. That matters
    only for a method that acts in it (:meth:`study.method.Method.expects_sparsify_phase`: not
    none, l0 or sparse-vd, which act alike in both phases, nor a threshold method with
    threshold 0). ``names`` are how the caller spells epochs, reach_epochs and target_error.
    """
    from study.methods import make_params, method_class

    if target_error is not None or reach_epochs < epochs:
        return None
    if not method_class(method).expects_sparsify_phase(make_params(method, params)):
        return None
    epochs_name, reach_name, target_name = names
    return (f"{reach_name}={reach_epochs} >= {epochs_name}={epochs} and no {target_name}: the sparsify "
            f"phase, in which {method} prunes, never starts; lower {reach_name} or raise {epochs_name}")


def check_phases(config: StudyConfig, spaces: dict[str, dict[str, ParamSpace]]) -> None:
    """:func:`phase_error` for every method of a study and every parameter combination it checks."""
    from study.plan import candidate_combinations

    for method, method_spaces in spaces.items():
        train = config.effective_train(method)
        own = config.method_train(method)
        names = tuple(f"methods.{method}.train.{key}" if key in own else f"train.{key}"
                      for key in ("epochs", "reach_epochs", "target_error"))
        for combo in candidate_combinations(config.search.kind, method_spaces):
            problem = phase_error(method, combo, train.epochs, train.reach_epochs, train.target_error, names)
            if problem:
                raise ValueError(f"methods.{method}: {problem}")


# -- thresholds ---------------------------------------------------------------------------------


def largest_initial_weight(model: nn.Module) -> float:
    """The largest |w| over the model's prunable weights."""
    from study import sparsity

    return max(float(w.detach().abs().max()) for w in sparsity.prunable_weights(model).values())


def threshold_warning(threshold: Any, largest: float, where: str, model: str = "the model") -> str | None:
    """A warning when ``threshold`` is above ``largest``, the largest initial |w| of ``model``:
    every weight would be pruned at the end of the first sparsify epoch."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > largest:
        return None
    return (f"warning: {where}={threshold:g} is above the largest initial |w| of {model} ({largest:.3g}): "
            f"unless weights grow past it first, every weight is pruned at the end of the first sparsify epoch")


def _built_model(arch: str, dataset: str, data_options: dict[str, Any], model_options: dict[str, Any]) -> nn.Module:
    """The architecture as a trial starts it (seed 0), built from the data set's shape alone."""
    import torch

    from study import data, models

    shape, classes = data.input_spec(dataset, **data_options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return models.build_model(arch, shape, classes, model_options)


def _largest_threshold(method: str, spaces: dict[str, ParamSpace]) -> float | None:
    """The largest ``threshold`` a study gives ``method`` (its default when the study sets none)."""
    from study.methods import default_params

    space = spaces.get("threshold")
    if space is None:
        return default_params(method).get("threshold")
    return space.high if space.kind == "range" else max(space.values)


# -- a study ------------------------------------------------------------------------------------


def check_study(config: StudyConfig, address: str | None = None) -> list[str]:
    """The machine-dependent checks of a study before launch; returns the warnings.

    In-process (no ``address``, no ``$RAY_ADDRESS``) every data set must be under the data root
    (or ``data.download: true``), every device setting must name a device of this machine, and
    ``resources.gpus_per_trial`` must fit its GPUs. Joining a cluster, the trials run elsewhere:
    missing data becomes a warning (the nodes may have it), devices and GPUs are checked once
    Ray is up (:func:`study.runner.check_resources`) and by each trial.
    """
    from study import data
    from study.plan import method_spaces

    warnings: list[str] = []
    in_process = ray_address(address) is None
    for name in config.datasets:
        try:
            data.check_available(name, config.data.root, config.data.download,
                                 **(config.data.options.get(name) or {}))
        except data.DataNotFoundError as err:
            if in_process:
                raise
            warnings.append(f"warning: not on this machine (the cluster's nodes may have it): {err}")
    if in_process:
        for method in config.methods:
            own = config.method_train(method)
            where = f"methods.{method}.train.device" if "device" in own else "train.device"
            check_device(config.effective_train(method).device, where)
        _check_gpus(config)
    spaces = method_spaces(config)
    thresholds = {method: _largest_threshold(method, space) for method, space in spaces.items()}
    largest: dict[tuple[str, str], float] = {}
    for dataset in config.datasets if any(thresholds.values()) else ():  # no threshold: nothing to build
        for arch in config.archs:
            model_options = dict(config.model.options.get(arch) or {})
            if not in_process:
                model_options.pop("pretrained", None)  # its path is the nodes'
            model = _built_model(arch, dataset, dict(config.data.options.get(dataset) or {}), model_options)
            largest[dataset, arch] = largest_initial_weight(model)
    for method, threshold in thresholds.items():
        for (dataset, arch), value in largest.items():
            warning = threshold_warning(threshold, value, f"methods.{method}.threshold", f"{arch} on {dataset}")
            if warning:
                warnings.append(warning)
                break  # one warning per method
    return warnings


def _check_gpus(config: StudyConfig) -> None:
    """In-process Ray: a trial's GPUs must exist here (Tune would wait for them forever)."""
    r = config.resources
    if r.gpus_per_trial <= 0:
        return
    import torch

    count = torch.cuda.device_count()
    have = count if r.num_gpus is None else min(count, r.num_gpus)
    if have == 0:
        raise ValueError(f"resources.gpus_per_trial={r.gpus_per_trial:g} but this machine has no GPU for the "
                         f"in-process Ray; use --set resources.gpus_per_trial=0, or join a cluster "
                         f"with --address")
    if r.gpus_per_trial > have:
        raise ValueError(f"resources.gpus_per_trial={r.gpus_per_trial:g} but the in-process Ray has {have} GPU(s)")
