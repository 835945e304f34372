"""The plateau-bisection threshold: the sparsify schedule of LOBSTER and SeReNe (Tartaglione et
al., Neural Networks 2022; IEEE TNNLS 2022), for every method that prunes by magnitude threshold.

Instead of pruning |w| < T with a fixed T at the end of every sparsify epoch
(``train.prune_schedule: fixed``), ``plateau-bisect`` waits, prunes once, and waits again:

1. **Plateau.** :class:`PlateauWatch` follows the validation loss of the sparsify epochs. An
   epoch *improves* when its loss is below (1 − ``plateau_tolerance``) × the best so far; after
   ``plateau_epochs`` epochs in a row without an improvement (or at a non-finite loss), the
   run is on a plateau. The best state is that of the epoch with the lowest loss (a smaller
   gain than the tolerance still moves it, but does not reset the count). A negative tolerance
   gives the authors' code's rule: an epoch counts against the plateau only when its loss is
   more than |tolerance| *above* the best.
2. **Roll back** to the best state: model, optimizer and the method's masks. The batch order
   and the random stream go on (the same epochs are not replayed).
3. **Bisection.** :func:`bisect_threshold` finds the largest T whose pruning, |w| < T over the
   prunable weights on top of the existing masks, keeps the validation loss ≤
   (1 + ``prune_tolerance``) × the best. The candidates are the distinct magnitudes of the
   remaining weights (T = the k-th smallest prunes the k − 1 below it) plus one T above the
   largest (prune everything); the search is over their index, so it ends with the exact
   boundary after at most 1 + ⌈log2 m⌉ evaluations of the validation loss for m distinct
   magnitudes (20 for the 266,200 weights of LeNet-300-100), and its result is always
   admissible. It assumes the loss grows with T (it
   does not need to: it then returns *an* admissible T next to an inadmissible one).
4. **Continue** training; the watch starts afresh (the next sparsify epoch is its first best).

The authors' bisection runs over the values of T between the smallest, mean and largest
magnitudes and stops when the losses at its two ends are within 5 % of the bound; it prunes
every parameter of the layers, biases included. Here the search is exact over the magnitudes
and prunes the prunable weights only, as every threshold method here does.

Pure functions and a small state holder; the training loop (:mod:`study.train`) runs them.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

import torch
from torch import Tensor


class PlateauWatch:
    """The plateau detector and the best state it rolls back to (step 1 of the module doc).

    ``update(loss, epoch, snapshot)`` takes one sparsify epoch's validation loss; it calls
    ``snapshot()`` (the state to keep) when the loss is the lowest yet, and returns whether the
    run is on a plateau. ``state_dict()`` holds plain values and the snapshot's tensors.
    """

    def __init__(self, epochs: int, tolerance: float) -> None:
        if epochs < 1:
            raise ValueError(f"plateau_epochs must be >= 1, got {epochs!r}")
        self.epochs, self.tolerance = epochs, tolerance
        self.reset()

    def reset(self) -> None:
        """Forget the best: the next epoch starts a new watch."""
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best: dict[str, Any] | None = None

    def improves(self, loss: float) -> bool:
        """Whether ``loss`` is a relative improvement on the best by more than the tolerance."""
        return loss < self.best_loss * (1.0 - self.tolerance)

    def update(self, loss: float, epoch: int, snapshot: Callable[[], dict[str, Any]]) -> bool:
        if not math.isfinite(loss):
            # nothing to learn from this epoch: back to the best state, if there is one
            self.bad_epochs += 1
            return self.best is not None
        self.bad_epochs = 0 if self.improves(loss) else self.bad_epochs + 1
        if loss < self.best_loss:
            self.best_loss, self.best_epoch, self.best = loss, epoch, snapshot()
        return self.bad_epochs >= self.epochs

    def state_dict(self) -> dict[str, Any]:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.best = copy.deepcopy(state["best"])


def magnitude_candidates(weights: dict[str, Tensor]) -> Tensor:
    """The distinct magnitudes of the nonzero entries of ``weights``, ascending (float32 on the
    CPU would do; they stay on the weights' device and dtype)."""
    values = [w.detach().abs().flatten() for w in weights.values()]
    if not values:
        return torch.empty(0)
    flat = torch.cat([v[v != 0] for v in values])
    return torch.unique(flat)  # sorted


def candidate_threshold(candidates: Tensor, k: int) -> float:
    """The T of candidate k: pruning |w| < T removes the k smallest distinct magnitudes
    (k = 0: none, T = 0; k = len(candidates): every weight, T just above the largest)."""
    if k <= 0:
        return 0.0
    if k < len(candidates):
        return float(candidates[k])
    top = candidates[-1]
    return float(torch.nextafter(top, torch.tensor(math.inf, dtype=top.dtype, device=top.device)))


def largest_admissible(n: int, admissible: Callable[[int], bool]) -> int:
    """The largest k in [0, n] with ``admissible(k)``, by bisection, when admissible(0) holds
    (it is not asked) and admissibility only ever turns from True to False as k grows. It asks
    for n first, then halves [admissible, inadmissible] until they are neighbours."""
    if n <= 0 or admissible(n):
        return max(n, 0)
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if admissible(mid):
            lo = mid
        else:
            hi = mid
    return lo


@torch.no_grad()
def bisect_threshold(weights: dict[str, Tensor], loss_of: Callable[[], float], bound: float) -> tuple[float, int]:
    """The largest T whose pruning (|w| < T, zeroed in place in ``weights`` while
    ``loss_of()`` measures the network) keeps ``loss_of() <= bound``; ``weights`` are left as
    they were. Returns T (0 when no candidate but "prune nothing" is admissible) and the number
    of evaluations."""
    candidates = magnitude_candidates(weights)
    originals = {name: w.detach().clone() for name, w in weights.items()}
    evaluations = 0

    def admissible(k: int) -> bool:
        nonlocal evaluations
        threshold = candidate_threshold(candidates, k)
        for name, w in weights.items():
            w.copy_(originals[name] * (originals[name].abs() >= threshold))
        evaluations += 1
        loss = loss_of()
        return math.isfinite(loss) and loss <= bound

    try:
        k = largest_admissible(len(candidates), admissible)
    finally:
        for name, w in weights.items():
            w.copy_(originals[name])
    return candidate_threshold(candidates, k), evaluations
