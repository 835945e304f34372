"""The search side of a study: the Optuna space and searcher (TPE or NSGA-II, one objective or
several; the Optuna study is kept in ``<output_dir>/optuna.db``) and the ASHA scheduler.

With ``search.budget_per_method: N`` an Optuna search gives every method the same budget:
one Optuna study per method (``<tune name>.<method>``), each with the same sampler and seed,
and :class:`PerMethodSearch` hands Tune N configurations of each, taking turns; a method with
nothing to search (no parameters, ``none``) trains its one configuration once. Without it,
one Optuna study samples the method as one more categorical parameter.

ASHA: with one objective, Ray's ASHA on it (``StudyConfig.scheduler_objective``); with several,
:class:`study.pareto_asha.ParetoASHA`, which judges all of them by Pareto rank, so that it
cannot stop the trials at the ends of the front. With equal budgets each method's trials are
judged against their own method's only (ParetoASHA's rungs per method).

:mod:`study.runner` hands them to the Tuner; a grid search needs neither searcher nor space
(its trials are :func:`study.plan.grid_trials`).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.plan import ParamSpace, TrialSpec, method_budgets, method_spaces

if TYPE_CHECKING:
    from study.schema import StudyConfig

OPTUNA_FILE = "optuna.db"


class OptunaSpace:
    """The define-by-run search space: which method, then that method's parameters.

    A method's parameter ``p`` is the Optuna parameter ``<method>.p``, so two methods with a
    parameter of the same name do not share a distribution. Seeds are not sampled: the trial
    trains every seed. Picklable (Tune pickles the searcher into its experiment state).
    """

    def __init__(self, config: StudyConfig, methods: list[str] | None = None) -> None:
        spaces = method_spaces(config)
        self.spaces: dict[str, dict[str, ParamSpace]] = {
            m: spaces[m] for m in (methods if methods is not None else spaces)}
        self.train = {method: config.method_train(method) for method in self.spaces}  # fixed, not sampled
        self.dataset, self.arch = config.datasets[0], config.archs[0]
        self.seeds = list(config.seeds)

    def __call__(self, trial: Any) -> dict[str, Any]:
        methods = list(self.spaces)
        method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
        params: dict[str, Any] = {}
        for name, space in self.spaces[method].items():
            key = f"{method}.{name}"
            if space.kind == "fixed":
                params[name] = space.values[0]
            elif space.kind == "choice":
                params[name] = trial.suggest_categorical(key, list(space.values))
            elif space.integer:
                params[name] = trial.suggest_int(key, int(space.low), int(space.high),
                                                 step=int(space.step or 1), log=space.log)
            else:
                params[name] = trial.suggest_float(key, float(space.low), float(space.high),
                                                   step=space.step, log=space.log)
        spec = TrialSpec(method, self.arch, self.dataset, self.seeds, params, self.train[method])
        return {"trial": spec.as_dict()}


class StudyOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial stopped early (by ASHA) was pruned.

    A trial's last report says ``final: True`` when it ran to its own end (all epochs,
    patience, or divergence); a trial that ends without it was stopped by the scheduler.
    Each Optuna trial also records its Tune trial id (user attribute ``tune_trial_id``),
    which is the MLflow tag ``study.tune_trial_id`` of its runs.
    """

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped_early = (not error and result is not None and not result.get("final", False)
                         and trial_id in self._ot_trials and trial_id not in self._completed_trials)
        if not stopped_early:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        ot_trial = self._ot_trials[trial_id]
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        for metric in metrics:
            if isinstance(result.get(metric), (int, float)):
                ot_trial.set_user_attr(f"last_{metric}", float(result[metric]))
        ot_trial.set_user_attr("epochs", result.get("epoch"))
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class PerMethodSearch(Searcher):
    """Equal budgets in an Optuna search: one searcher (one Optuna study) per method.

    ``searchers[m]`` suggests method m's configurations; a method without one (nothing to
    search) gets ``fixed[m]``, its one configuration. Each method is suggested exactly
    ``budgets[m]`` times, the methods taking turns (the one with the fewest suggestions so far
    goes next, in study order), then the search is finished. Results go back to the searcher
    of the method that suggested the trial. Picklable: Tune saves it with the experiment
    state and restores it on ``--resume``.
    """

    def __init__(self, searchers: dict[str, Searcher | None], budgets: dict[str, int],
                 fixed: dict[str, dict[str, Any]], metric: Any, mode: Any) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers, self.budgets, self.fixed = searchers, dict(budgets), fixed
        self.suggested = {method: 0 for method in budgets}
        self.owner: dict[str, str] = {}  # Tune trial id -> method

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return False  # every sub-searcher has its own space, metric and mode

    def suggest(self, trial_id: str) -> dict | str | None:
        open_methods = [m for m in self.budgets if self.suggested[m] < self.budgets[m]]
        if not open_methods:
            return Searcher.FINISHED
        method = min(open_methods, key=lambda m: self.suggested[m])
        searcher = self.searchers.get(method)
        config = dict(self.fixed[method]) if searcher is None else searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return None
        self.suggested[method] += 1
        self.owner[trial_id] = method
        return config

    def _searcher_of(self, trial_id: str) -> Searcher | None:
        return self.searchers.get(self.owner.get(trial_id, ""))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        searcher = self._searcher_of(trial_id)
        if searcher is not None:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        searcher = self._searcher_of(trial_id)
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self.__dict__, stream)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stream:
            self.__dict__.update(pickle.load(stream))


def optuna_storage_url(output_dir: Path) -> str:
    return f"sqlite:///{output_dir / OPTUNA_FILE}"


def optuna_study_names(config: StudyConfig, tune_name: str) -> dict[str, str]:
    """The Optuna studies of one run of a study: ``{"": tune_name}`` for one shared study, or
    ``{method: "<tune_name>.<method>"}`` with equal budgets (exempt methods have none)."""
    if config.search.kind != "optuna":
        return {}
    if config.search.budget_per_method is None:
        return {"": tune_name}
    return {m: f"{tune_name}.{m}" for m, b in method_budgets(config).items() if not b.exempt}


def _sampler(config: StudyConfig) -> Any:
    import optuna

    s = config.search
    if s.sampler == "nsga2":
        kwargs = {"population_size": s.population_size} if s.population_size else {}
        return optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    return optuna.samplers.TPESampler(seed=s.seed)


def make_searcher(config: StudyConfig, output_dir: Path, study_name: str) -> Any:
    """The study's Optuna searcher: one shared Optuna study ``study_name``, or, with
    ``search.budget_per_method``, a :class:`PerMethodSearch` over one study per method."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = config.search
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url=optuna_storage_url(output_dir))
    metrics = [o.metric for o in s.objectives]
    modes = [o.mode for o in s.objectives]
    metric, mode = (metrics, modes) if len(metrics) > 1 else (metrics[0], modes[0])

    def searcher(methods: list[str] | None, name: str) -> StudyOptunaSearch:
        return StudyOptunaSearch(space=OptunaSpace(config, methods), metric=metric, mode=mode,
                                 sampler=_sampler(config), storage=storage, study_name=name)

    if s.budget_per_method is None:
        return searcher(None, study_name)
    names = optuna_study_names(config, study_name)
    budgets = method_budgets(config)
    fixed = {m: OptunaSpace(config, [m])(None) for m, b in budgets.items() if b.exempt}
    return PerMethodSearch(
        searchers={m: searcher([m], name) for m, name in names.items()},
        budgets={m: int(b.configurations or 0) for m, b in budgets.items()},
        fixed=fixed, metric=metric, mode=mode,
    )


def make_scheduler(config: StudyConfig) -> Any | None:
    """ASHA early stopping (``scheduler.kind: asha``), else None: :class:`ParetoASHA` on every
    objective of a multi-objective search, or on the scheduler's objective with
    ``search.budget_per_method`` (then with rungs per method, so that a method's trials are
    judged against their own method's only); Ray's ASHA on the one objective otherwise. Its
    horizon is the longest any method trains (a method may override ``train.epochs``)."""
    if config.scheduler.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    from study.pareto_asha import ParetoASHA

    max_epochs = max(config.effective_train(m).epochs for m in config.methods)
    common = dict(time_attr="training_iteration", max_t=max_epochs, grace_period=config.scheduler.grace_period,
                  reduction_factor=config.scheduler.reduction_factor)
    per_method = config.search.budget_per_method is not None
    objective = config.scheduler_objective
    if config.search.multi_objective or per_method:
        objectives = ([(o.metric, o.mode) for o in config.search.objectives] if config.search.multi_objective
                      else [(objective.metric, objective.mode)])
        return ParetoASHA(objectives, per_method=per_method, **common)
    return ASHAScheduler(metric=objective.metric, mode=objective.mode, **common)


def max_concurrent(config: StudyConfig) -> int | None:
    """The configured limit; for Optuna, default to what the cluster can run at once, so the
    sampler sees results before it suggests far ahead."""
    r = config.resources
    if r.max_concurrent_trials or config.search.kind == "grid":
        return r.max_concurrent_trials
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // r.cpus_per_trial)
    if r.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0) // r.gpus_per_trial))
    return max(1, slots)
