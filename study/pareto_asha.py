"""ASHA for a multi-objective search: asynchronous successive halving by Pareto rank.

Ray's ASHA judges one metric: when a trial reaches a rung (``grace_period`` · η^k epochs) it
continues if its metric is among the best 1/η of the values recorded at that rung so far.
In a search for the trade-off between validation error and compression, judging the error
alone stops exactly the trials that trade error for sparsity: the end of the front that the
search is there to find. This scheduler keeps ASHA's rungs and its asynchronous decision, and
judges every objective instead:

- at a rung, the trial's result and the results recorded there before it are sorted into
  non-dominated fronts (:func:`pareto_ranks`: rank 0 is dominated by no other result, rank k
  only by results of rank < k; "dominated" means no better in every objective and worse in one);
- the trial continues when its rank is no worse than the rank at position ⌈n/η⌉ of the n
  results in rank order (:func:`keeps`: the best 1/η, ties kept);
- so a trial on the rung's front (rank 0) is never stopped, whatever its rank in any single
  objective; with one objective the rule is ASHA's (ties kept);
- a result with a missing or NaN objective ranks below every complete one.

With ``per_method``, each method has rungs of its own: a trial is judged only against the
trials of its own method, so that in a search with equal budgets no method's configurations
are cut short because another method's trials are better (the budget stays equal in epochs,
not only in configurations).

Rungs, ``grace_period``, ``reduction_factor`` and ``max_t`` mean what they mean in Ray's
``ASHAScheduler`` (one bracket). :func:`study.search.make_scheduler` uses this scheduler for
every search with more than one objective or with ``search.budget_per_method`` (then per
method), and Ray's ASHA on the one objective otherwise.
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler


def pareto_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting of the rows of ``points`` (n × objectives, every column to be
    maximized): rank 0 for rows no other row dominates, then rank 1 once those are removed, ….
    Rows with a NaN rank after every complete row."""
    points = np.asarray(points, dtype=float)
    n = len(points)
    ranks = np.zeros(n, dtype=int)
    complete = ~np.isnan(points).any(axis=1)
    finite = points[complete]
    # dominated_by[i, j]: row j dominates row i
    no_worse = (finite[None, :, :] >= finite[:, None, :]).all(axis=2)
    better = (finite[None, :, :] > finite[:, None, :]).any(axis=2)
    dominated_by = no_worse & better
    sub = np.full(len(finite), -1)
    remaining = np.ones(len(finite), dtype=bool)
    rank = 0
    while remaining.any():
        front = remaining & ~(dominated_by[:, remaining].any(axis=1))
        sub[front] = rank
        remaining &= ~front
        rank += 1
    ranks[complete] = sub
    ranks[~complete] = rank
    return ranks


def keeps(recorded: Sequence[Sequence[float]], result: Sequence[float], reduction_factor: float) -> bool:
    """Whether a trial whose ``result`` (objectives, each to be maximized) reaches a rung where
    ``recorded`` results are already continues: its Pareto rank among all of them is no worse
    than the rank at position ⌈n/η⌉ in rank order. The first result at a rung always continues."""
    if not len(recorded):
        return True
    ranks = pareto_ranks(np.vstack([np.asarray(recorded, dtype=float), np.asarray(result, dtype=float)]))
    kept = max(1, math.ceil(len(ranks) / reduction_factor))
    return bool(ranks[-1] <= np.sort(ranks)[kept - 1])


class ParetoASHA(FIFOScheduler):
    """ASHA (one bracket) that stops a trial at a rung only when its Pareto rank over every
    objective is outside the best 1/η there (see the module docstring).

    ``objectives``: ``[(metric, "min" | "max"), ...]``, read from each result Tune reports.
    ``per_method``: separate rungs per method (the trial config's ``trial.method``).
    """

    def __init__(self, objectives: Sequence[tuple[str, str]], *, max_t: int, grace_period: int,
                 reduction_factor: float, time_attr: str = "training_iteration", per_method: bool = False) -> None:
        if not objectives:
            raise ValueError("ParetoASHA needs at least one objective")
        if not 0 < grace_period <= max_t:
            raise ValueError(f"grace_period ({grace_period}) must be in 1..max_t ({max_t})")
        if reduction_factor <= 1:
            raise ValueError(f"reduction_factor must be > 1, got {reduction_factor}")
        super().__init__()
        self.objectives = [(metric, mode) for metric, mode in objectives]
        self.signs = [1.0 if mode == "max" else -1.0 for _, mode in self.objectives]
        self.time_attr, self.max_t, self.reduction_factor = time_attr, max_t, reduction_factor
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        # milestones in descending order, as Ray's ASHA: a result counts at the highest it reached
        self.milestones = [grace_period * reduction_factor ** k for k in reversed(range(count))]
        self.per_method = per_method
        self.rungs: dict[str, list[tuple[float, dict[str, list[float]]]]] = {}  # group -> rungs
        self.num_stopped = 0

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # it judges its own objectives; Tune's single metric does not apply

    def _vector(self, result: dict[str, Any]) -> list[float] | None:
        values = []
        for (metric, _), sign in zip(self.objectives, self.signs):
            value = result.get(metric)
            if value is None:
                return None
            values.append(sign * float(value))
        return values

    def _group(self, trial: Any) -> str:
        if not self.per_method:
            return ""
        return str(((getattr(trial, "config", None) or {}).get("trial") or {}).get("method", ""))

    def decide(self, trial_id: str, iteration: float, vector: list[float], group: str = "") -> str:
        """Record ``vector`` at the highest rung of ``group`` that ``iteration`` reached and that
        has no result of this trial yet, and say CONTINUE or STOP (its one decision there)."""
        rungs = self.rungs.setdefault(group, [(m, {}) for m in self.milestones])
        for milestone, recorded in rungs:
            if iteration < milestone or trial_id in recorded:
                continue
            keep = keeps(list(recorded.values()), vector, self.reduction_factor)
            recorded[trial_id] = vector
            return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        vector = self._vector(result)
        if self.time_attr not in result or vector is None:
            return TrialScheduler.CONTINUE
        action = self.decide(trial.trial_id, result[self.time_attr], vector, self._group(trial))
        if action == TrialScheduler.STOP:
            self.num_stopped += 1
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        vector = self._vector(result or {})
        if result and self.time_attr in result and vector is not None:
            self.decide(trial.trial_id, result[self.time_attr], vector, self._group(trial))

    def debug_string(self) -> str:
        return f"Using ParetoASHA: num_stopped={self.num_stopped}, rungs " + "; ".join(
            f"{group or 'all'}: " + ", ".join(f"{m:g}: {len(r)}" for m, r in rungs)
            for group, rungs in self.rungs.items())

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self.__dict__, stream)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stream:
            self.__dict__.update(pickle.load(stream))
