"""Method variants: one registered method under several settings, each a method of its own in a
study and a row of its own in the report (``<method>@<label>``)."""
from __future__ import annotations

import pytest

from analysis.tables import method_label, sorted_methods
from study.methods import method_class
from study.plan import method_spaces
from study.runformat import split_variant
from study.schema import StudyConfig
from study.sensitivity import SensitivitySpec


def test_split_variant() -> None:
    assert split_variant("sensitivity-spec@sum") == ("sensitivity-spec", "sum")
    assert split_variant("decay") == ("decay", "")


def test_variant_is_its_method() -> None:
    assert method_class("sensitivity-spec@sum") is SensitivitySpec


@pytest.mark.parametrize("name, message", [
    ("nosuch@sum", "unknown method 'nosuch'"),
    ("decay@", "bad variant label ''"),
    ("decay@a b", "bad variant label 'a b'"),
])
def test_bad_variant_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        method_class(name)


def test_study_trains_variants_side_by_side() -> None:
    config = StudyConfig.model_validate({
        "name": "v", "datasets": ["digits"],
        "methods": {"sensitivity-spec": {}, "sensitivity-spec@sum": {"aggregate": "sum"}},
    })
    spaces = method_spaces(config)
    assert set(spaces) == {"sensitivity-spec", "sensitivity-spec@sum"}
    assert spaces["sensitivity-spec@sum"]["aggregate"].values == ("sum",)
    with pytest.raises(ValueError, match="aggregate"):
        StudyConfig.model_validate({"name": "v", "methods": {"sensitivity-spec@sum": {"aggregate": "mean"}}})


def test_report_labels_and_order() -> None:
    assert method_label("sensitivity-spec@sum") == "Sensitivity, specific [sum]"
    assert sorted_methods(["decay", "sensitivity-spec@sum", "sensitivity-spec"]) == [
        "sensitivity-spec", "sensitivity-spec@sum", "decay"]
