"""The search side of a study: the Optuna space and searcher (TPE or NSGA-II, one objective or
several; the Optuna study is kept in ``<output_dir>/optuna.db``) and the ASHA scheduler.

:mod:`study.runner` hands them to the Tuner; a grid search needs neither searcher nor space
(its trials are :func:`study.plan.grid_trials`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from study.plan import ParamSpace, TrialSpec, method_spaces

if TYPE_CHECKING:
    from study.schema import StudyConfig

OPTUNA_FILE = "optuna.db"


class OptunaSpace:
    """The define-by-run search space: which method, then that method's parameters.

    A method's parameter ``p`` is the Optuna parameter ``<method>.p``, so two methods with a
    parameter of the same name do not share a distribution. Seeds are not sampled: the trial
    trains every seed. Picklable (Tune pickles the searcher into its experiment state).
    """

    def __init__(self, config: StudyConfig) -> None:
        self.spaces: dict[str, dict[str, ParamSpace]] = method_spaces(config)
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


def optuna_storage_url(output_dir: Path) -> str:
    return f"sqlite:///{output_dir / OPTUNA_FILE}"


def make_searcher(config: StudyConfig, output_dir: Path, study_name: str) -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = config.search
    if s.sampler == "nsga2":
        kwargs = {"population_size": s.population_size} if s.population_size else {}
        sampler: Any = optuna.samplers.NSGAIISampler(seed=s.seed, **kwargs)
    else:
        sampler = optuna.samplers.TPESampler(seed=s.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(url=optuna_storage_url(output_dir))
    metrics = [o.metric for o in s.objectives]
    modes = [o.mode for o in s.objectives]
    return StudyOptunaSearch(
        space=OptunaSpace(config),
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=sampler,
        storage=storage,
        study_name=study_name,
    )


def make_scheduler(config: StudyConfig) -> Any | None:
    """ASHA early stopping on the scheduler's objective (``scheduler.kind: asha``), else None.
    Its horizon is the longest any method trains (a method may override ``train.epochs``)."""
    if config.scheduler.kind != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    objective = config.scheduler_objective
    max_epochs = max(config.effective_train(m).epochs for m in config.methods)
    return ASHAScheduler(
        time_attr="training_iteration", metric=objective.metric, mode=objective.mode,
        max_t=max_epochs, grace_period=config.scheduler.grace_period,
        reduction_factor=config.scheduler.reduction_factor,
    )


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
