"""The study file: schema, defaults, errors that name the field, --set overrides, the plan,
and every shipped config. No Ray here."""
from __future__ import annotations

from pathlib import Path

import pytest

from study import cli
from study.plan import describe_plan, grid_trials, plan
from study.schema import TRAIN_KEY, apply_overrides, load_study, parse_yaml, study_from_dict
from study.methods import default_params, method_names
from study.runformat import resolve_tracking_uri, sqlite_uri

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "literature.yaml")


def test_empty_study_has_working_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = study_from_dict({})
    assert config.datasets == ["digits"] and config.archs == ["lenet300"] and config.seeds == [0]
    assert config.search.kind == "grid" and config.resources.cpus_per_trial == 1
    assert config.output_path == tmp_path / "runs" / "study"
    assert config.resolved_tracking_uri == f"sqlite:///{tmp_path}/runs/study/mlflow.db"
    assert config.experiment_name == "study"
    assert len(grid_trials(config)) == len(config.methods)


@pytest.mark.parametrize("raw, message", [
    ({"trian": {}}, "unknown field 'trian'; valid: name, description, datasets"),
    ({"train": {"lrr": 0.1}}, "unknown field 'train.lrr'; valid: epochs, batch_size, lr"),
    ({"search": {"kind": "random"}}, "search.kind"),
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"methods": {"l2": {}}}, "unknown method 'l2'; valid: none, sensitivity-unspec"),
    ({"methods": {"l1": {"lamda": 1e-4}}}, "unknown parameter 'lamda' for method 'l1' (methods.l1.lamda); valid: lam"),
    ({"methods": {"l1": {"lam": -1.0}}}, "lam must be >= 0"),
    ({"methods": {"sensitivity-spec": {"output": "probs"}}}, "methods.sensitivity-spec.output"),
    ({"methods": {"l1": {"lam": {"low": 1e-4, "high": 1e-2}}}}, "a range in a grid search needs num"),
    ({"methods": {"l1": {"lam": {"low": 1e-2, "high": 1e-4, "num": 2}}}}, "must be below high"),
    ({"methods": {"l1": {"lam": [1e-4, 1e-4]}}}, "values repeat"),
    ({"datasets": ["mnist9"]}, "unknown dataset 'mnist9'; valid: digits"),
    ({"archs": ["resnet"]}, "unknown arch 'resnet'; valid: lenet300"),
    ({"data": {"options": {"digits": {"n_tst": 3}}}}, "unknown option(s) n_tst; valid options: n_test"),
    ({"data": {"options": {"mnist": {}}}}, "not one of the study's datasets"),
    ({"model": {"options": {"lenet300": {"relu": True}}}}, "unknown option(s) relu"),
    ({"seeds": [1, 1]}, "seeds repeat"),
    ({"search": {"objectives": [{"metric": "accuracy"}]}}, "unknown metric 'accuracy'"),
    ({"search": {"kind": "optuna", "sampler": "nsga2"}}, "nsga2 is a multi-objective sampler"),
    ({"search": {"kind": "optuna"}, "datasets": ["digits", "synthetic"]}, "one dataset and one arch"),
    ({"name": "a b"}, "name"),
    ({"methods": {"l0": {"train": {"lrr": 1e-3}}}},
     "unknown field 'methods.l0.train.lrr'; valid: epochs, batch_size, lr, momentum, optimizer"),
    ({"methods": {"l0": {"train": {"lr": [1e-3, 1e-2]}}}},
     "methods.l0.train.lr: train overrides are fixed values, not searched"),
    ({"methods": {"l0": {"train": {"lr": {"low": 1e-4, "high": 1e-2}}}}}, "methods.l0.train.lr: train overrides"),
    ({"methods": {"l0": {"train": {"optimizer": "rmsprop"}}}},
     "methods.l0.train.optimizer: Input should be 'sgd' or 'adam'"),
    ({"methods": {"l0": {"train": {"lr": 0}}}}, "methods.l0.train.lr: Input should be greater than 0"),
    ({"methods": {"l0": {"train": "adam"}}}, "methods.l0.train: expected a mapping"),
    ({"methods": {"l0": {"train": {"target_error": 3.0}}}},
     "methods.l0.train.target_error: every method is compared at the study's one target"),
    ({"seeds": [0, 1], "confirm": {"seeds": [1, 2]}},
     "confirm.seeds [1, 2] reuse the search seeds [0, 1] (1): confirm on fresh seeds"),
    ({"confirm": {"seeds": [3, 3]}}, "confirm.seeds: seeds repeat: [3, 3]"),
    ({"confirm": {"seeds": []}}, "confirm.seeds"),
    ({"confirm": {"seeds": [3], "rounds": 2}}, "unknown field 'confirm.rounds'; valid: seeds"),
    ({"search": {"budget_per_method": 0}}, "search.budget_per_method"),
    ({"search": {"allow_unequal": True}}, "search.allow_unequal only applies with search.budget_per_method"),
    ({"search": {"kind": "optuna", "budget_per_method": 4}, "methods": {"l1": {"lam": 1e-4}}},
     "methods.l1: every parameter is fixed, so search.budget_per_method (4) would train its one configuration"),
    ({"search": {"kind": "optuna", "objectives": [{"metric": "val_error"}, {"metric": "compression", "mode": "max"}]},
      "scheduler": {"kind": "asha", "metric": "val_error"}},
     "scheduler.metric/mode: in a multi-objective search (val_error, compression) ASHA judges every objective"),
])
def test_mistakes_are_one_error_naming_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        study_from_dict(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_train_block_and_study_train_take_the_trainers_settings() -> None:
    """One definition (study.settings.TrainConfig): the study's train block and `study train`'s
    flags are derived from it, so their defaults cannot differ (only the seed, a study axis, is
    missing from the block, and both default the device to auto)."""
    import dataclasses

    from study.schema import TrainSettings
    from study.settings import AUTO, TrainConfig

    trainer = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert TrainSettings().model_dump() == {**{k: v for k, v in trainer.items() if k != "seed"}, "device": AUTO}
    flags = vars(cli.build_parser().parse_args(["train"]))
    assert {k: flags[k] for k in trainer} == {**trainer, "device": AUTO}
    assert trainer["epochs"] == 20


def test_yaml_reads_1e_minus_5_as_a_number() -> None:
    assert parse_yaml("a: 1e-5\nb: [1e-3, 2.5E+2]\nc: 1_000\nd: .5") == {"a": 1e-5, "b": [1e-3, 250.0], "c": 1000, "d": 0.5}


def test_set_overrides_any_field() -> None:
    raw = {"train": {"lr": 0.1}, "methods": {"none": {}}}
    out = apply_overrides(raw, ["train.lr=1e-3", "methods.l1.lam=[1e-4, 1e-3]", "seeds=3",
                                "train.target_error=null", "name=other"])
    assert out == {"train": {"lr": 1e-3, "target_error": None}, "name": "other", "seeds": 3,
                   "methods": {"none": {}, "l1": {"lam": [1e-4, 1e-3]}}}
    assert raw == {"train": {"lr": 0.1}, "methods": {"none": {}}}  # not modified
    config = study_from_dict(out)
    assert config.seeds == [0, 1, 2] and config.train.lr == 1e-3
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(raw, ["train.lr"])
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides(raw, ["train.lr.x=1"])


def test_grid_expands_methods_parameters_and_seeds() -> None:
    config = study_from_dict({
        "methods": {"none": {}, "l1": {"lam": [1e-4, 1e-3], "threshold": {"low": 1e-3, "high": 1e-1, "num": 3, "log": True}}},
        "seeds": [0, 1],
    })
    trials = grid_trials(config)
    assert len(trials) == 2 + 2 * 3 * 2
    l1 = [t for t in trials if t.method == "l1"]
    assert sorted({t.params["threshold"] for t in l1}) == [1e-3, 1e-2, 1e-1]
    assert all(len(t.seeds) == 1 for t in trials)
    assert {(t.params["lam"], t.params["threshold"], t.seeds[0]) for t in l1} == {
        (lam, thr, s) for lam in (1e-4, 1e-3) for thr in (1e-3, 1e-2, 1e-1) for s in (0, 1)}
    rows = {r.method: r for r in plan(config)}
    assert (rows["l1"].configurations, rows["l1"].seeds, rows["l1"].trials) == (6, 2, 12)
    assert "grid search: 14 trials" in describe_plan(config)


def test_equal_grid_budgets_are_enforced_naming_each_methods_grid_size() -> None:
    methods = {"none": {}, "decay": {"lam": [1e-3, 2e-3], "threshold": [1e-2, 3e-2]},
               "sensitivity-spec": {"lam": [1e-3, 2e-3], "threshold": [1e-2, 3e-2]},
               "weight-decay": {"lam": 1e-2, "threshold": [1e-2, 3e-2]}}
    with pytest.raises(ValueError) as info:
        study_from_dict({"methods": methods, "search": {"budget_per_method": 4}})
    message = str(info.value)
    assert ("search.budget_per_method is 4 but the methods' grid sizes are decay 4, sensitivity-spec 4, "
            "weight-decay 2 (none: exempt, no parameters to search); give every method 4 configurations or "
            "set search.allow_unequal: true") in message
    assert "\n" not in message
    # equal grids pass, and so do unequal ones when allowed; `none` is exempt either way
    equal = {**methods, "weight-decay": {"lam": [1e-2, 2e-2], "threshold": [1e-2, 3e-2]}}
    config = study_from_dict({"methods": equal, "seeds": [0, 1], "search": {"budget_per_method": 4}})
    rows = {r.method: r for r in plan(config)}
    assert [(rows[m].configurations, rows[m].trials) for m in equal] == [("1*", 2), (4, 8), (4, 8), (4, 8)]
    text = describe_plan(config)
    assert "equal budgets: 4 configurations per method;" in text
    assert "* exempt (no parameters to search): none trains its one configuration" in text
    allowed = study_from_dict({"methods": methods, "search": {"budget_per_method": 4, "allow_unequal": True}})
    assert {r.method: r.configurations for r in plan(allowed)}["weight-decay"] == 2
    assert "search.allow_unequal: the grids differ" in describe_plan(allowed)
    # a study that does not ask for equal budgets keeps its unequal grids, as before
    assert len(grid_trials(study_from_dict({"methods": methods}))) == 1 + 4 + 4 + 2
    # fixing a method's parameters is a budget of one, not an exemption
    with pytest.raises(ValueError, match=r"grid sizes are decay 1 \(none: exempt"):
        study_from_dict({"methods": {"none": {}, "decay": {"lam": 1e-3}}, "search": {"budget_per_method": 2}})


def test_optuna_budgets_are_per_method_and_the_plan_shows_both_stages() -> None:
    config = study_from_dict({
        "methods": {"none": {}, "decay": {"lam": {"low": 1e-4, "high": 1e-2, "log": True}},
                    "l1": {"lam": [1e-5, 1e-4, 1e-3]}},
        "seeds": [0, 1], "confirm": {"seeds": [2, 3, 4]}, "train": {"target_error": 5.0},
        "search": {"kind": "optuna", "budget_per_method": 6},
    })
    rows = {r.method: r for r in plan(config)}
    assert [(rows[m].configurations, rows[m].trials, rows[m].confirm) for m in ("none", "decay", "l1")] == [
        ("1*", 1, 3), (6, 6, 3), (6, 6, 3)]
    text = describe_plan(config)
    assert ("search stage (study.stage=search): optuna search (tpe, seed 0): one Optuna study per method, "
            "6 sampled configurations each (13 in all)") in text
    assert ("confirm stage (study.stage=confirm): per method, the configuration the report's selection rule "
            "picks from the search runs (highest mean compression at validation error <= 5.0%") in text
    assert "is retrained on seeds [2, 3, 4]: 9 trials, not stopped early" in text
    assert config.config_hash() != study_from_dict({**config.model_dump(), "confirm": None}).config_hash()
    # the validated study (the parent run's study.yaml) validates again, as `study report` does
    assert study_from_dict(parse_yaml(config.to_yaml())) == config


def test_a_method_train_block_overrides_the_global_one_for_that_method_only() -> None:
    config = study_from_dict({
        "train": {"epochs": 4, "reach_epochs": 2, "lr": 0.1, "momentum": 0.5},
        "methods": {
            "sparse-vd": {"warmup_epochs": 5, "train": {"optimizer": "adam", "lr": "1e-3", "epochs": 6}},
            "l1": {"lam": [1e-4, 1e-3]},
        },
        "seeds": [0, 1],
    })
    assert config.train.optimizer == "sgd" and config.train.lr == 0.1  # the global block is untouched
    trials = grid_trials(config)
    vd = [t for t in trials if t.method == "sparse-vd"]
    l1 = [t for t in trials if t.method == "l1"]
    assert len(vd) == 2 and len(l1) == 4  # not a grid axis: one configuration per seed
    assert all(t.params == {"warmup_epochs": 5.0} for t in vd)  # train is no method parameter
    assert all(t.train == {"optimizer": "adam", "lr": 1e-3, "epochs": 6} for t in vd)
    assert all(t.train == {} and t.as_dict()["train"] == {} for t in l1)
    merged = config.effective_train("sparse-vd")
    assert (merged.optimizer, merged.lr, merged.epochs, merged.momentum) == ("adam", 1e-3, 6, 0.5)
    assert config.effective_train("l1") == config.train
    rows = {r.method: r for r in plan(config)}
    assert rows["sparse-vd"].space == "warmup_epochs=5.0; train: optimizer=adam, lr=0.001, epochs=6"
    assert "train" not in rows["l1"].space
    assert "methods with their own train settings: sparse-vd" in describe_plan(config)
    # it changes the design, so the hash; --set reaches it like any field
    assert config.config_hash() != study_from_dict({**config.model_dump(), "methods": {
        "sparse-vd": {"warmup_epochs": 5}, "l1": {"lam": [1e-4, 1e-3]}}}).config_hash()
    raw = apply_overrides({"methods": {"l0": {}}}, ["methods.l0.train.optimizer=adam"])
    assert grid_trials(study_from_dict(raw))[0].train == {"optimizer": "adam"}


def test_no_method_parameter_is_called_train() -> None:
    for method in method_names():
        assert TRAIN_KEY not in default_params(method), method


def test_parameter_values_take_the_declared_type() -> None:
    config = study_from_dict({"methods": {"magnitude": {"rounds": "3", "quality": 1},
                                          "weight-decay": {"lam": [0, "1e-3"]}}})
    trials = grid_trials(config)
    magnitude = next(t for t in trials if t.method == "magnitude")
    assert magnitude.params == {"rounds": 3, "quality": 1.0} and isinstance(magnitude.params["quality"], float)
    assert sorted(t.params["lam"] for t in trials if t.method == "weight-decay") == [0.0, 1e-3]


def test_methods_list_and_seed_count_shorthands() -> None:
    config = study_from_dict({"methods": ["none", "l1"], "seeds": 2, "datasets": "digits"})
    assert config.methods == {"none": {}, "l1": {}} and config.seeds == [0, 1] and config.datasets == ["digits"]


def test_optuna_search_accepts_ranges_and_checks_their_ends() -> None:
    config = study_from_dict({"search": {"kind": "optuna", "num_samples": 5},
                              "methods": {"l1": {"lam": {"low": 1e-6, "high": 1e-2, "log": True}}}})
    assert "5 sampled configurations" in describe_plan(config)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        study_from_dict({"search": {"kind": "optuna"}, "methods": {"l1": {"lam": {"low": -1.0, "high": 1.0}}}})


def test_config_hash_follows_the_design_not_the_output() -> None:
    base = study_from_dict({})
    assert study_from_dict({"output_dir": "/elsewhere", "experiment": "x"}).config_hash() == base.config_hash()
    assert study_from_dict({"train": {"lr": 0.05}}).config_hash() != base.config_hash()


def test_tracking_uris_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None, tmp_path / "out") == f"sqlite:///{tmp_path}/out/mlflow.db"
    assert resolve_tracking_uri("sqlite:///rel.db", "x") == sqlite_uri(tmp_path / "rel.db")
    assert resolve_tracking_uri("sqlite:////abs/m.db", "x") == "sqlite:////abs/m.db"
    assert resolve_tracking_uri("store.db", "x") == sqlite_uri(tmp_path / "store.db")
    assert resolve_tracking_uri("http://head:5000", "x") == "http://head:5000"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every shipped study is valid; checked against this machine, the only errors allowed are
    the machine's (no GPU, data not here), and as a cluster study (the nodes have them) it passes."""
    if cli.main(["validate", str(path)]) != 0:
        err = capsys.readouterr().err
        assert "no GPU" in err or "not found" in err or "no ImageFolder layout" in err, err
        assert cli.main(["validate", str(path), "--address", "10.0.0.1:6379"]) == 0
    out = capsys.readouterr().out
    assert "valid study" in out and ("grid search:" in out or "optuna search" in out)
    assert load_study(path).name == path.stem


def test_the_shipped_studies_are_all_there() -> None:
    assert {p.stem for p in SHIPPED} >= {
        "quickstart", "lenet300_mnist", "lenet5_mnist", "vgg16_imagenet", "vgg16_cifar10",
        "generalization", "ablation_lambda_T", "pareto_search", "mnist10k"}


# The methods the quickstart must compare: the method under study and its references. A new
# method need not join it: adding a method is one file and one registry line.
QUICKSTART_CORE = {"none", "sensitivity-unspec", "sensitivity-spec", "weight-decay", "decay"}


def test_quickstart_compares_the_method_with_its_references_on_two_seeds() -> None:
    config = load_study(CONFIGS / "quickstart.yaml")
    trials = grid_trials(config)
    assert QUICKSTART_CORE <= set(config.methods) <= set(method_names())
    assert len(config.seeds) >= 2 and len(trials) >= 12
    assert config.datasets == ["digits"] and config.archs == ["lenet300"] and config.train.epochs <= 20


def test_quickstart_gives_equal_budgets_and_confirms_on_fresh_seeds() -> None:
    """The matched comparison: the sensitivity methods and their control decay search the same
    grid of (λ, T), every method the same number of configurations, then confirm."""
    config = load_study(CONFIGS / "quickstart.yaml")
    budget = config.search.budget_per_method
    assert budget is not None and not config.search.allow_unequal
    rows = {r.method: r for r in plan(config)}
    assert all(rows[m].configurations == budget for m in config.methods if m != "none")
    spaces = {m: config.method_params(m) for m in ("decay", "sensitivity-unspec", "sensitivity-spec")}
    assert spaces["decay"] == spaces["sensitivity-unspec"] == spaces["sensitivity-spec"]
    assert config.confirm is not None and len(config.confirm.seeds) >= 2
    assert config.train.target_error is not None  # the selection's and the matched comparison's target


@pytest.mark.parametrize("method", method_names())
def test_every_registered_method_runs_in_a_study_with_its_defaults(method: str) -> None:
    """What naming every method in the quickstart used to guarantee, with no edit beyond the
    registry: a study accepts each registered method, bare and with its defaults written out."""
    for params in ({}, default_params(method)):
        trials = grid_trials(study_from_dict({"methods": {method: params}, "seeds": [0, 1]}))
        assert [(t.method, t.seeds) for t in trials] == [(method, [0]), (method, [1])]


def test_validate_with_set_and_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    quick = str(CONFIGS / "quickstart.yaml")
    assert cli.main(["validate", quick, "--set", "seeds=[0, 1, 2]", "--set", "confirm.seeds=[3, 4]", "--set",
                     "search.allow_unequal=true", "--set", "methods.l1.lam=[1e-5, 1e-4]"]) == 0
    out = capsys.readouterr().out
    assert "l1                  2        3      6" in out
    assert cli.main(["validate", quick, "--set", "train.epoch=3"]) == 2
    assert "unknown field 'train.epoch'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: {l1: {lam: [1e-4}\n")
    assert cli.main(["validate", str(bad)]) == 2
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2
