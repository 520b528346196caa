"""``system.echo``: returns its inputs unchanged, arrays byte for byte.

Used to test and measure the transport (PROTOCOL.md "Core pipeline contracts"), progress
reporting, streaming of partial results and cancellation. Its inputs are open: any key, any
value or array is accepted (the schema is the wildcard ``"*": Value("any")``), and the outputs
are the very same objects, so arrays go back without a copy.
"""

from __future__ import annotations

from collections.abc import Mapping

import time
from dataclasses import dataclass, field

from addon.wire.schema import Value

from ..base import NO_MODELS, Job, Pipeline


@dataclass
class Params:
    """Settings of ``system.echo``.

    Attributes:
        steps: number of progress steps to report (default 1).
        step_seconds: time spent in each step, checking for cancel meanwhile (default 0).
        partial_every: send the inputs as a ``partial`` every this many steps; 0 = never.
    """

    steps: int = field(default=1, metadata={"doc": "progress steps to report", "min": 1,
                                            "max": 1_000_000})
    step_seconds: float = field(default=0.0, metadata={
        "doc": "seconds spent in each step (cancel is honoured meanwhile)", "min": 0.0,
        "max": 3600.0})
    partial_every: int = field(default=0, metadata={
        "doc": "send the inputs as a partial every k steps; 0 = never", "min": 0})


INPUTS = {"*": Value("any", "any value or array; returned unchanged")}
OUTPUTS = {"*": Value("any", "the inputs, unchanged")}

# Sleep in slices so that a cancel lands well within a second even for long steps.
_CANCEL_SLICE_S = 0.05


def run(inputs: dict, params: Params, job: Job, models: Mapping = NO_MODELS) -> dict:
    """Return ``inputs`` after ``params.steps`` progress steps."""
    for step in range(1, params.steps + 1):
        deadline = time.monotonic() + params.step_seconds
        job.check_cancel()
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _CANCEL_SLICE_S))
            job.check_cancel()
        job.progress("echo", step, params.steps)
        if params.partial_every and step % params.partial_every == 0 and step < params.steps:
            job.partial(inputs)
    return inputs


def probe() -> tuple[bool, str]:
    """Always available: echo needs nothing but the server."""
    return True, ""


PIPELINE = Pipeline(
    name="system.echo",
    summary="Return the inputs unchanged (transport, progress and cancel checks)",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
)
