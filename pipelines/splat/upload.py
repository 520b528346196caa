"""`splat.upload`: keep Gaussians on the server and answer a reference for later jobs.

Inputs: `gaussians`. Output: `gaussians_ref` (str), `count` (N), `bytes` (held). Pass the
reference as `inputs.gaussians_ref` of `splat.render` instead of `inputs.gaussians` (see
`gaussian_cache` and docs/protocol-notes.md). Submit it with `keep: false`: the reference is
only good while the server runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from addon.wire.contracts import GAUSSIANS
from addon.wire.schema import Value

from ..base import NO_MODELS, Job, Pipeline
from . import wire
from .gaussian_cache import CACHE


@dataclass
class Params:
    """`splat.upload` has no settings."""


INPUTS = {"gaussians": GAUSSIANS}
OUTPUTS = {
    "gaussians_ref": Value("str", "reference for inputs.gaussians_ref of later jobs (content hash)"),
    "count": Value("int", "number of Gaussians kept"),
    "bytes": Value("int", "bytes the server holds for them"),
}


def _check(inputs: dict, params: Params) -> None:
    wire.check_gaussians(inputs.get("gaussians"))


def run(inputs: dict, params: Params, job: Job, models: Mapping = NO_MODELS) -> dict:
    _check(inputs, params)
    ref, size = CACHE.put(inputs["gaussians"])
    job.progress("upload", 1, 1, ref)
    return {"gaussians_ref": ref, "count": int(inputs["gaussians"]["means"].shape[0]), "bytes": int(size)}


PIPELINE = Pipeline(
    name="splat.upload",
    summary="Keep Gaussians on the server; later jobs name them by the returned reference",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=lambda: (True, ""),
    check=_check,
)
