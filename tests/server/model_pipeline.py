"""A test pipeline that declares a model: ``test.weights`` sums a tiny safetensors file.

Loaded into a real server with ``--pipelines tests.server.model_pipeline``; its default model
is the name ``tiny-weights``, which a test adds with ``nstudio models add``. ``LOADS`` counts
how often the loader ran in the server process, so a test can see that a second request found
the model warm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from addon.wire.schema import Value
from pipelines.base import ModelSource, ModelSpec, Pipeline

LOADS = {"count": 0}


def load(source: ModelSource, device: str):
    from safetensors.torch import load_file

    LOADS["count"] += 1
    return load_file(str(source.path), device=device)


@dataclass
class Params:
    model: str = field(default="", metadata={"doc": "weights to sum instead of the default"})


def run(inputs, params, job, models):
    tensors = models["weights"]
    return {"sum": float(sum(t.double().sum() for t in tensors.values())),
            "loads": LOADS["count"]}


PIPELINE = Pipeline(
    name="test.weights", summary="sum a model's weights (registry tests)", params=Params,
    inputs={}, outputs={"sum": Value("float"), "loads": Value("int")}, run=run,
    probe=lambda: (True, ""),
    models=(ModelSpec("weights", "tiny-weights", load, param=None,
                      kinds=("file", "models-dir"), doc="a tiny safetensors file"),
            ModelSpec("extra", "tiny-weights", load, param="model",
                      kinds=("folder", "file", "models-dir"), doc="the same, or a chosen one")),
)
