"""``test.shapes``: a pipeline with a strict schema, for the server's input-validation tests.

Loaded into test servers with ``--pipelines tests.server.shapes_pipeline``. It uses the shared
contracts (Gaussians, cameras) so the server checks real schemas end to end.
"""

from dataclasses import dataclass, field, replace

from addon.wire.contracts import CAMERAS, GAUSSIANS
from addon.wire.schema import Array, PipelineError, Value
from pipelines.base import Pipeline


@dataclass
class Params:
    scale: float = field(default=1.0, metadata={"doc": "multiplier", "min": 0.0})
    mode: str = field(default="sum", metadata={"doc": "reduction", "choices": ("sum", "max")})
    background: list[float] | None = field(default=None, metadata={"doc": "rgb", "length": 3})
    fail: str = field(default="", metadata={"doc": "make run() fail: a PipelineError or a bug",
                                            "choices": ("", "pipeline", "bug")})
    at_most: int = field(default=1000, metadata={"doc": "refuse more points than this (checked "
                                                 "on submit by check())", "min": 0})


INPUTS = {
    "points": Array(("<f4",), ("N", 3), "points. [N, 3]"),
    "colors": Array(("<f4", "|u1"), ("N", 3), "colours. [N, 3]", optional=True),
    "gaussians": replace(GAUSSIANS, optional=True),
    "cameras": replace(CAMERAS, optional=True),
}
OUTPUTS = {"count": Value("int", "number of points")}


def run(inputs, params, job, models):
    job.progress("count", 1, 1)
    if params.fail == "pipeline":
        raise PipelineError("invalid_input", "inputs.points: too few points", "inputs.points")
    if params.fail == "bug":
        raise RuntimeError("deliberate bug")
    return {"count": int(inputs["points"].shape[0])}


def check(inputs, params):
    """What the schema cannot say: a param bounded by the inputs (runs before queueing)."""
    if inputs["points"].shape[0] > params.at_most:
        raise PipelineError("invalid_params", f"params.at_most: {params.at_most} is below the "
                            f"{inputs['points'].shape[0]} points given", "params.at_most")


PIPELINE = Pipeline(name="test.shapes", summary="count points (schema tests)", params=Params,
                    inputs=INPUTS, outputs=OUTPUTS, run=run, probe=lambda: (True, ""),
                    check=check)
