"""The schema language: how a pipeline declares its params, inputs and outputs, and how a request is checked.

A pipeline's params are a ``@dataclass``; its inputs and outputs are maps of :class:`Array`,
:class:`Struct`, :class:`Value` and :class:`Either`. The server publishes them in ``welcome``
(:func:`describe_fields`, :func:`describe_params`), parses a client's params into the dataclass
(:func:`parse_params`) and checks the inputs (:func:`check_inputs`) before a job is queued. A
request that does not match raises :class:`PipelineError`, which carries the protocol's error
code and the offending field.

Schema conventions:
- Array shapes hold ints (exact size), strs (a symbol such as ``"N"`` that must take the same
  size everywhere in one request), ``None`` (any size), a tuple of ints (one of these sizes)
  and, last only, ``...`` (any number of further dimensions, each any size).
- The key ``"*"`` in an inputs map or a :class:`Struct` stands for every key not named
  explicitly (e.g. extra per-Gaussian arrays); without it, unknown keys are rejected.
- ``Value("any")`` accepts any value (``system.echo`` uses it for its open inputs).

This module imports only the standard library and numpy (it is part of `addon.wire`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

WILDCARD = "*"
_VALUE_KINDS = ("int", "float", "str", "bool", "list", "any")


class PipelineError(Exception):
    """A request a pipeline cannot run, reported to the client as an ``error``.

    Args:
        code: ``"invalid_params"``, ``"invalid_input"`` or ``"unavailable"``.
        message: what is wrong and, where possible, what to do about it.
        field: the offending field as a dotted path, e.g. ``"inputs.images"``.
    """

    CODES = ("invalid_params", "invalid_input", "unavailable")

    def __init__(self, code: str, message: str, field: str | None = None):
        if code not in self.CODES:
            raise ValueError(f"PipelineError code must be one of {self.CODES}, not {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.detail = {"field": field} if field is not None else None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Array:
    """An n-dimensional array field.

    Args:
        dtypes: accepted wire dtypes, e.g. ``("<f4",)``.
        shape: one entry per dimension (see the module docstring for int/str/None/tuple/...).
        doc: meaning, frame and unit.
        optional: may be absent.
    """

    dtypes: tuple
    shape: tuple
    doc: str = ""
    optional: bool = False

    def describe(self) -> dict:
        return {
            "kind": "array",
            "dtypes": list(self.dtypes),
            "shape": [_describe_dim(d) for d in self.shape],
            "doc": self.doc,
            "optional": self.optional,
        }

    def check(self, value: Any, path: str, symbols: dict) -> None:
        if not isinstance(value, np.ndarray):
            raise _invalid(path, f"expected an array, got {_kind(value)}")
        if value.dtype.str not in self.dtypes:
            raise _invalid(
                path, f"dtype {value.dtype.str} not accepted; expected one of {list(self.dtypes)}"
            )
        _check_shape(value.shape, self.shape, path, symbols)


@dataclass(frozen=True)
class Struct:
    """A nested map of fields (e.g. the Gaussians or the cameras).

    Args:
        fields: name -> field; the key ``"*"`` types every key not named.
        doc: meaning.
        optional: may be absent.
    """

    fields: dict
    doc: str = ""
    optional: bool = False

    def describe(self) -> dict:
        return {
            "kind": "struct",
            "fields": describe_fields(self.fields),
            "doc": self.doc,
            "optional": self.optional,
        }

    def check(self, value: Any, path: str, symbols: dict) -> None:
        if not isinstance(value, dict):
            raise _invalid(path, f"expected a map, got {_kind(value)}")
        _check_fields(value, self.fields, path, symbols)


@dataclass(frozen=True)
class Value:
    """A plain msgpack value.

    Args:
        kind: ``"int"``, ``"float"`` (ints accepted), ``"str"``, ``"bool"``, ``"list"`` or
            ``"any"``.
        doc: meaning and unit.
        optional: may be absent.
    """

    kind: str
    doc: str = ""
    optional: bool = False

    def __post_init__(self):
        if self.kind not in _VALUE_KINDS:
            raise ValueError(f"Value kind must be one of {_VALUE_KINDS}, not {self.kind!r}")

    def describe(self) -> dict:
        return {"kind": self.kind, "doc": self.doc, "optional": self.optional}

    def check(self, value: Any, path: str, symbols: dict) -> None:
        if not _value_matches(self.kind, value):
            raise _invalid(path, f"expected {self.kind}, got {_kind(value)}")


@dataclass(frozen=True)
class Either:
    """A field that may take any of several forms (e.g. a scalar or a per-frame array).

    Args:
        options: the accepted forms, tried in order.
        doc: meaning.
        optional: may be absent.
    """

    options: tuple
    doc: str = ""
    optional: bool = False

    def describe(self) -> dict:
        return {
            "kind": "either",
            "options": [option.describe() for option in self.options],
            "doc": self.doc,
            "optional": self.optional,
        }

    def check(self, value: Any, path: str, symbols: dict) -> None:
        reasons = []
        for option in self.options:
            trial = dict(symbols)
            try:
                option.check(value, path, trial)
            except PipelineError as error:
                reasons.append(error.message)
                continue
            symbols.update(trial)
            return
        raise _invalid(path, "matches none of the accepted forms: " + "; ".join(reasons))


Field = Union[Array, Struct, Value, Either]


# ---------------------------------------------------------------------------------------------
# Publishing schemas (welcome)
# ---------------------------------------------------------------------------------------------

def describe_fields(fields: dict) -> dict:
    """The wire form of an inputs/outputs schema: name -> field description."""
    return {name: spec.describe() for name, spec in fields.items()}


def describe_params(params_cls: type) -> dict:
    """The wire form of a ``Params`` dataclass: name -> {kind, default, doc, min, max, ...}."""
    hints = typing.get_type_hints(params_cls)
    described = {}
    for f in dataclasses.fields(params_cls):
        spec = _param_type(hints[f.name])
        entry = {"kind": spec.kind, "default": _default_of(f), "optional": spec.nullable}
        if spec.item_kind is not None:
            entry["items"] = spec.item_kind
        for key in ("doc", "min", "max", "choices", "length"):
            if key in f.metadata:
                entry[key] = list(f.metadata[key]) if key == "choices" else f.metadata[key]
        entry.setdefault("doc", "")
        described[f.name] = entry
    return described


# ---------------------------------------------------------------------------------------------
# Checking requests
# ---------------------------------------------------------------------------------------------

def parse_params(params_cls: type, raw: Any) -> Any:
    """Build the ``Params`` dataclass from a client's ``params`` map.

    Args:
        params_cls: the pipeline's ``Params`` dataclass.
        raw: the decoded ``params`` value of a ``submit``.

    Returns:
        A ``params_cls`` instance; absent fields keep their defaults.

    Raises:
        PipelineError: ``invalid_params`` naming ``params.<name>`` for an unknown key, a wrong
            type, a value out of range or not among the choices.
    """
    if not isinstance(raw, dict):
        raise PipelineError("invalid_params", f"params must be a map, got {_kind(raw)}", "params")
    hints = typing.get_type_hints(params_cls)
    known = {f.name: f for f in dataclasses.fields(params_cls)}
    values = {}
    for name, value in raw.items():
        path = f"params.{name}"
        if name not in known:
            raise PipelineError(
                "invalid_params", f"{path}: unknown parameter; known: {sorted(known)}", path
            )
        spec = _param_type(hints[name])
        values[name] = _parse_param(spec, known[name].metadata, value, path)
    try:
        return params_cls(**values)
    except PipelineError:
        raise
    except (TypeError, ValueError) as error:
        # A Params.__post_init__ that checks combinations of fields raises ValueError.
        raise PipelineError("invalid_params", str(error), "params") from None


def check_inputs(fields: dict, inputs: Any) -> None:
    """Check a request's ``inputs`` against a pipeline's inputs schema, without copying.

    Raises:
        PipelineError: ``invalid_input`` naming the field (``inputs.gaussians.means``) and
            saying what was expected and what came.
    """
    if not isinstance(inputs, dict):
        raise _invalid("inputs", f"expected a map, got {_kind(inputs)}")
    _check_fields(inputs, fields, "inputs", {})


def _check_fields(value: dict, fields: dict, path: str, symbols: dict) -> None:
    wildcard = fields.get(WILDCARD)
    for name, spec in fields.items():
        if name == WILDCARD:
            continue
        if name not in value:
            if not spec.optional:
                raise _invalid(f"{path}.{name}", "required but missing")
            continue
        spec.check(value[name], f"{path}.{name}", symbols)
    for name, item in value.items():
        if name in fields and name != WILDCARD:
            continue
        if wildcard is None:
            raise _invalid(f"{path}.{name}", f"unknown field; expected: {sorted(fields)}")
        wildcard.check(item, f"{path}.{name}", symbols)


def _check_shape(shape: tuple, declared: tuple, path: str, symbols: dict) -> None:
    open_ended = bool(declared) and declared[-1] is Ellipsis
    fixed = declared[:-1] if open_ended else declared
    if len(shape) < len(fixed) or (not open_ended and len(shape) != len(fixed)):
        raise _invalid(
            path, f"shape {list(shape)} does not match {[_describe_dim(d) for d in declared]}"
        )
    for axis, (size, want) in enumerate(zip(shape, fixed)):
        if want is None:
            continue
        if isinstance(want, int) and size != want:
            raise _invalid(path, f"axis {axis} has size {size}, expected {want}")
        if isinstance(want, tuple) and size not in want:
            raise _invalid(path, f"axis {axis} has size {size}, expected one of {list(want)}")
        if isinstance(want, str):
            bound = symbols.setdefault(want, size)
            if bound != size:
                raise _invalid(
                    path,
                    f"axis {axis} ({want}) has size {size} but {want} = {bound} elsewhere in "
                    "this request",
                )


def _describe_dim(dim: Any) -> Any:
    if dim is Ellipsis:
        return "..."
    if isinstance(dim, tuple):
        return list(dim)
    return dim


# ---------------------------------------------------------------------------------------------
# Params typing
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ParamType:
    kind: str               # int | float | str | bool | list
    nullable: bool          # Optional[...]: None allowed
    item_kind: str | None   # for lists: kind of each element


# ``dict`` stands for a msgpack map: a ``list[dict]`` param is a list of small records (e.g.
# image.generate's ``loras``: [{model, scale}]) whose keys the pipeline checks itself.
_SCALAR_KINDS = {int: "int", float: "float", str: "str", bool: "bool", dict: "map"}


def _param_type(hint: Any) -> _ParamType:
    nullable = False
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"unsupported parameter type {hint!r}")
        hint = args[0]
        origin = typing.get_origin(hint)
    if hint in _SCALAR_KINDS:
        return _ParamType(_SCALAR_KINDS[hint], nullable, None)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if not args or any(a not in _SCALAR_KINDS for a in args) or len(set(args)) != 1:
            raise TypeError(f"unsupported parameter type {hint!r}")
        return _ParamType("list", nullable, _SCALAR_KINDS[args[0]])
    raise TypeError(f"unsupported parameter type {hint!r}")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        raise TypeError(f"parameter {f.name!r} has no default")
    return list(value) if isinstance(value, tuple) else value


def _parse_param(spec: _ParamType, metadata: Any, value: Any, path: str) -> Any:
    if value is None:
        if spec.nullable:
            return None
        raise PipelineError("invalid_params", f"{path}: must be {spec.kind}, got nil", path)
    if spec.kind == "list":
        if not isinstance(value, list):
            raise PipelineError("invalid_params", f"{path}: must be a list, got {_kind(value)}",
                                path)
        length = metadata.get("length")
        if length is not None and len(value) != length:
            raise PipelineError(
                "invalid_params", f"{path}: must have {length} elements, got {len(value)}", path
            )
        parsed = [_parse_scalar(spec.item_kind, item, f"{path}[{i}]") for i, item in enumerate(value)]
        for i, item in enumerate(parsed):
            _check_range(metadata, item, f"{path}[{i}]")
        return parsed
    parsed = _parse_scalar(spec.kind, value, path)
    _check_range(metadata, parsed, path)
    return parsed


def _parse_scalar(kind: str, value: Any, path: str) -> Any:
    if not _value_matches(kind, value):
        raise PipelineError("invalid_params", f"{path}: must be {kind}, got {_kind(value)} {value!r}",
                            path)
    if kind == "float":
        value = float(value)
        if value != value:
            raise PipelineError("invalid_params", f"{path}: must be a number, got NaN", path)
    return value


def _check_range(metadata: Any, value: Any, path: str) -> None:
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise PipelineError(
            "invalid_params", f"{path}: {value!r} is not one of {list(choices)}", path
        )
    low, high = metadata.get("min"), metadata.get("max")
    if low is not None and value < low:
        raise PipelineError("invalid_params", f"{path}: {value!r} is below the minimum {low}", path)
    if high is not None and value > high:
        raise PipelineError("invalid_params", f"{path}: {value!r} is above the maximum {high}", path)


def _value_matches(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "map":
        return isinstance(value, dict)
    return False


def _invalid(path: str, message: str) -> PipelineError:
    return PipelineError("invalid_input", f"{path}: {message}", path)


def _kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.str} {list(value.shape)}"
    return {dict: "map", list: "list", type(None): "nil"}.get(type(value), type(value).__name__)


__all__ = [
    "Array", "Cancelled", "Either", "Field", "Job", "Pipeline", "PipelineError", "Struct",
    "Value", "WILDCARD", "check_inputs", "describe_fields", "describe_params",
    "describe_pipeline", "parse_params",
]
