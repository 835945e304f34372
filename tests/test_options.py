"""study/options.py: the one coercer of command-line strings, KEY=VALUE parsing and option checks."""
from __future__ import annotations

from typing import Any, Literal

import pytest

from study.options import check_options, coerce, option_defaults, parse_assignments


@pytest.mark.parametrize("value, annotation, expected", [
    ("3", int, 3),
    ("1e3", int, 1000),
    ("0.5", float, 0.5),
    ("1e-3", float, 1e-3),
    (2, float, 2.0),  # an int where a float is declared
    (True, float, True),  # a bool is no number
    ("yes", bool, True),
    ("Off", bool, False),
    ("softmax", Literal["logits", "softmax"], "softmax"),
    ("null", float | None, None),
    ("2", float | None, 2.0),
    ("3x32x32", tuple[int, ...], (3, 32, 32)),
    ("500,300", tuple[int, ...], (500, 300)),
    ("1x28x28", str | tuple[int, ...], "1x28x28"),  # an ambiguous union is left to the receiver
    ("anything", str, "anything"),
    ([1, 2], int, [1, 2]),  # non-strings pass (the receiver checks them)
])
def test_coerce_gives_the_declared_type(value: Any, annotation: Any, expected: Any) -> None:
    out = coerce(value, annotation, "x")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, annotation, message", [
    ("2.5", int, "rounds='2.5' is not a valid int"),
    ("many", float, "rounds='many' is not a valid float"),
    ("maybe", bool, "rounds='maybe' is not a valid bool; valid: true, false"),
    ("probs", Literal["logits", "softmax"], "invalid value rounds='probs'; valid: logits, softmax"),
    ("3xa", tuple[int, ...], "rounds='3xa' is not a valid tuple of ints"),
])
def test_coerce_errors_name_the_value_and_what_is_valid(value: str, annotation: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        coerce(value, annotation, "rounds")
    assert str(info.value).startswith(message)


def test_parse_assignments() -> None:
    assert parse_assignments(["lam=1e-3", " class-chunk = 4 "], "--param") == {"lam": "1e-3", "class_chunk": "4"}
    assert parse_assignments(None, "--param") == {}
    for bad in ("lam", "=3"):
        with pytest.raises(ValueError, match=f"--param expects KEY=VALUE, got '{bad}'"):
            parse_assignments([bad], "--param")


def test_options_of_a_builder_are_checked_and_typed_by_their_defaults() -> None:
    def builder(shape: tuple, classes: int, *, relu: bool = False, hidden: tuple[int, ...] = (3,),
                rate: float = 0.5, path: str | None = None) -> None: ...

    defaults = option_defaults(builder)
    assert defaults == {"relu": False, "hidden": (3,), "rate": 0.5, "path": None}
    assert check_options("model 'b'", defaults, {"relu": "true", "hidden": "4,5", "rate": "1", "path": "p"}) == {
        "relu": True, "hidden": (4, 5), "rate": 1.0, "path": "p"}
    with pytest.raises(ValueError, match=r"model 'b': unknown option\(s\) relux; valid options: hidden, path"):
        check_options("model 'b'", defaults, {"relux": 1})
    with pytest.raises(ValueError, match="model 'b': option rate='fast' is not a valid float"):
        check_options("model 'b'", defaults, {"rate": "fast"})
