"""pipelines.base: schema description, params parsing and input checks, without a server."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from addon.wire.contracts import CAMERAS, GAUSSIANS
from addon.wire.schema import (Array, Either, PipelineError, Struct, Value, check_inputs, describe_params,
                               parse_params)
from pipelines.registry import MODULES, discover


@dataclass
class Params:
    steps: int = field(default=10, metadata={"doc": "iterations", "min": 1, "max": 100})
    lr: float = field(default=0.1, metadata={"min": 0.0})
    name: str = field(default="a", metadata={"choices": ("a", "b")})
    flag: bool = False
    sh_degree: int | None = None
    background: tuple[float, ...] = field(default=(0.0, 0.0, 0.0), metadata={"length": 3})

    def __post_init__(self):
        if self.name == "b" and self.steps > 50:
            raise ValueError("name b allows at most 50 steps")


def test_describe_params():
    described = describe_params(Params)
    assert described["steps"] == {"kind": "int", "default": 10, "optional": False,
                                  "doc": "iterations", "min": 1, "max": 100}
    assert described["sh_degree"]["optional"] is True and described["sh_degree"]["default"] is None
    assert described["background"] == {"kind": "list", "items": "float", "default": [0.0, 0.0, 0.0],
                                       "optional": False, "length": 3, "doc": ""}
    assert described["name"]["choices"] == ["a", "b"]


def test_parse_params_accepts_and_converts():
    params = parse_params(Params, {"steps": 5, "lr": 1, "sh_degree": None, "background": [1, 0, 0]})
    assert params.steps == 5 and params.lr == 1.0 and isinstance(params.lr, float)
    assert params.background == [1.0, 0.0, 0.0] and params.flag is False


@pytest.mark.parametrize("raw, field_name", [
    ({"steps": 0}, "params.steps"), ({"steps": 101}, "params.steps"),
    ({"steps": True}, "params.steps"), ({"lr": "fast"}, "params.lr"),
    ({"lr": float("nan")}, "params.lr"), ({"name": "c"}, "params.name"),
    ({"flag": 1}, "params.flag"), ({"steps": None}, "params.steps"),
    ({"background": [1, 2]}, "params.background"), ({"extra": 1}, "params.extra"),
    ({"name": "b", "steps": 60}, "params"), ("x", "params"),
])
def test_parse_params_rejects(raw, field_name):
    with pytest.raises(PipelineError) as info:
        parse_params(Params, raw)
    assert info.value.code == "invalid_params" and info.value.field == field_name
    assert info.value.detail == {"field": field_name}


def gaussians(n, k=3, **extra):
    f4 = lambda *shape: np.zeros(shape, "<f4")  # noqa: E731
    return {"means": f4(n, 3), "quats": f4(n, 4), "scales": f4(n, 3), "opacities": f4(n),
            "sh0": f4(n, 3), "shN": f4(n, k, 3), **extra}


def test_contracts_accept_valid_data():
    cams = {"world_from_camera": np.zeros((2, 4, 4), "<f4"), "fx": 1, "fy": np.ones(2, "<f8"),
            "cx": 0.5, "cy": 0.5, "width": 4, "height": 3, "fps": 24}
    check_inputs({"g": GAUSSIANS, "c": CAMERAS},
                 {"g": gaussians(5, labels=np.zeros(5, "<i4"), feats=np.zeros((5, 2, 2), "<f2")),
                  "c": cams})


@pytest.mark.parametrize("inputs, field_name", [
    ({"g": gaussians(5, k=4)}, "inputs.g.shN"),
    ({"g": {**gaussians(5), "scales": np.zeros((4, 3), "<f4")}}, "inputs.g.scales"),
    ({"g": {k: v for k, v in gaussians(5).items() if k != "quats"}}, "inputs.g.quats"),
    ({"g": gaussians(5, labels=np.zeros(6, "<i4"))}, "inputs.g.labels"),
    ({"g": gaussians(5, labels=np.zeros((), "<i4"))}, "inputs.g.labels"),
    ({"g": [1]}, "inputs.g"),
    ({"g": gaussians(5), "other": 1}, "inputs.other"),
])
def test_contracts_reject(inputs, field_name):
    with pytest.raises(PipelineError) as info:
        check_inputs({"g": GAUSSIANS}, inputs)
    assert info.value.code == "invalid_input" and info.value.field == field_name


def test_symbols_bind_across_fields_and_either_does_not_leak_bindings():
    fields = {"a": Array(("<f4",), ("T", 2)),
              "b": Either((Array(("<f4",), ("T",)), Value("float"))),
              "s": Struct({"x": Value("int"), "y": Value("str", optional=True)})}
    check_inputs(fields, {"a": np.zeros((3, 2), "<f4"), "b": 1.5, "s": {"x": 1}})
    with pytest.raises(PipelineError, match="T = 3"):
        check_inputs(fields, {"a": np.zeros((3, 2), "<f4"), "b": np.zeros(4, "<f4"),
                              "s": {"x": 1}})
    with pytest.raises(PipelineError) as info:
        check_inputs(fields, {"a": np.zeros((3, 2), "<f4"), "b": 1.0, "s": {"x": True}})
    assert info.value.field == "inputs.s.x"


def test_registry_lists_echo_and_never_raises():
    pipelines, failures = discover(MODULES + ("no.such.module",))
    assert "system.echo" in pipelines
    assert "no.such.module" in failures and "ModuleNotFoundError" in failures["no.such.module"]
    with pytest.raises(ValueError):
        PipelineError("bogus", "x")
