"""Typed values from the command line and from study files: the one place that turns
``KEY=VALUE`` strings into the declared types.

- :func:`parse_assignments`: ``["lam=1e-3"]`` → ``{"lam": "1e-3"}`` (``--param``,
  ``--data-option``, ``--model-option``; the benchmarks use it too);
- :func:`coerce`: a value turned into a declared type: numbers, bools, ``Literal`` choices,
  optionals, tuples of ints (``3x32x32`` or ``500,300``); an int becomes a float where a float
  is declared. Used for method parameters (their ``Params`` annotations) and for data set and
  architecture options (the type of each option's default);
- :func:`option_defaults` and :func:`check_options`: the keyword-only options of a data set
  loader or an architecture builder; unknown names are errors that list the valid ones.

Standard library only (no torch): the CLI and the study schema import it cheaply.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Sequence

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_assignments(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """``["lam=1e-3", "threshold=0.01"]`` → ``{"lam": "1e-3", "threshold": "0.01"}``; dashes in
    keys become underscores. ``flag`` names the option in the error."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as the type ``annotation`` declares; ``where`` names it in errors
    (``invalid value output='probs'; valid: logits, softmax``, ``rounds='x' is not a valid int``).

    Strings are parsed; an int becomes a float where a float is declared; other values pass
    unchanged (the dataclass or loader that receives them checks them). A union other than
    ``X | None`` is left alone.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, str) and value.strip().lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], where) if len(inner) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"invalid value {where}={value!r}; valid: {', '.join(map(str, args))}")
        return value
    if annotation is bool:
        lowered = value.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
        raise ValueError(f"{where}={value!r} is not a valid bool; valid: true, false")
    if annotation in (int, float):
        try:
            if annotation is float:
                return float(value)
            try:
                return int(value)
            except ValueError:
                number = float(value)  # "1e3" is a valid int, "2.5" is not
                if not number.is_integer():
                    raise
                return int(number)
        except ValueError:
            raise ValueError(f"{where}={value!r} is not a valid {annotation.__name__}") from None
    if origin is tuple and args and args[0] is int:
        try:
            return tuple(int(s) for s in value.replace("x", ",").split(",") if s.strip())
        except ValueError:
            raise ValueError(f"{where}={value!r} is not a valid tuple of ints (e.g. 3x32x32)") from None
    return value


# -- the options of data set loaders and architecture builders ------------------------------------


def option_defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``func`` and their defaults: its options."""
    return {
        p.name: p.default
        for p in inspect.signature(func).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _type_of(default: Any) -> Any:
    """The type a string option is coerced to: that of its default (None or a string: as given)."""
    if isinstance(default, tuple):
        return tuple[int, ...]
    if isinstance(default, (bool, int, float)):
        return type(default)
    return Any


def check_options(what: str, defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown option names (listing the valid ones) and coerce string values to the
    type of each option's default. ``what`` names the owner in errors (``dataset 'digits'``)."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"{what}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    return {k: coerce(v, _type_of(defaults[k]), f"{what}: option {k}") for k, v in options.items()}
