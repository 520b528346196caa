"""Result handlers: what turns a pipeline's outputs into Blender data.

A feature adds an importer, not another client: it registers a handler for its pipeline and the
job manager calls it for every `partial` and the final `result` of that pipeline's jobs.

A handler is `handler(job, outputs)` where `job` is the `addon.core.jobs.JobRecord` and `outputs`
the decoded `outputs` map (read-only numpy arrays). It may do all its work at once and return
None, or return a generator: the Blender layer then steps the generator inside timer callbacks
with a time budget, so a large result (236 MB of Gaussians) never holds Blender's main thread
for long. Each `next()` should do a bounded piece of work, e.g. fill one attribute.

This module is bpy-free: the registry is plain Python. The built-in `system.echo` handler that
writes the points into Blender is `addon.blender.echo.echo_to_mesh`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)

Handler = Callable[[Any, dict], Optional[Iterator[Any]]]


@dataclass(frozen=True)
class HandlerEntry:
    """The handlers of one pipeline.

    Attributes:
        pipeline: Pipeline name, e.g. "splat.reconstruct".
        on_result: Called with the final `result` outputs.
        on_partial: Called with each `partial` outputs; None ignores partials.
        on_failure: Called as ``on_failure(job, code, message)`` when a job fails (not when it
            is cancelled); may return a note appended to the job's message (what was done
            instead). None: nothing.
    """

    pipeline: str
    on_result: Handler
    on_partial: Optional[Handler] = None
    on_failure: Optional[Callable[[Any, str, str], Optional[str]]] = None


_REGISTRY: dict[str, HandlerEntry] = {}


def register_result_handler(pipeline: str, on_result: Handler, on_partial: Optional[Handler] = None,
                            on_failure: Optional[Callable[[Any, str, str], Optional[str]]] = None) -> None:
    """Route the results of `pipeline`'s jobs to `on_result` (and partials to `on_partial`).

    Args:
        pipeline: Pipeline name as published in `welcome`.
        on_result: `handler(job, outputs)`; may return a generator stepped under a time budget.
        on_partial: Same signature, for `partial` events; optional.
        on_failure: `on_failure(job, code, message)` when a job fails; optional.

    Raises:
        ValueError: The pipeline already has a handler (unregister it first), or a handler is
            not callable.
    """
    if not isinstance(pipeline, str) or not pipeline:
        raise ValueError(f"pipeline must be a non-empty string, got {pipeline!r}")
    if not callable(on_result):
        raise ValueError(f"on_result for {pipeline!r} is not callable: {on_result!r}")
    for name, value in (("on_partial", on_partial), ("on_failure", on_failure)):
        if value is not None and not callable(value):
            raise ValueError(f"{name} for {pipeline!r} is not callable: {value!r}")
    if pipeline in _REGISTRY:
        raise ValueError(f"a result handler for {pipeline!r} is already registered")
    _REGISTRY[pipeline] = HandlerEntry(pipeline, on_result, on_partial, on_failure)


def unregister_result_handler(pipeline: str) -> None:
    """Remove `pipeline`'s handlers.

    Raises:
        KeyError: No handler is registered for `pipeline`.
    """
    if pipeline not in _REGISTRY:
        raise KeyError(f"no result handler registered for {pipeline!r}")
    del _REGISTRY[pipeline]


def get_handler(pipeline: str) -> Optional[HandlerEntry]:
    """The handlers registered for `pipeline`, or None."""
    return _REGISTRY.get(pipeline)


def registered_pipelines() -> tuple[str, ...]:
    """Names of the pipelines that have a handler, sorted."""
    return tuple(sorted(_REGISTRY))


# ------------------------------------------------------------------------------------------------
# Built-in: system.echo -> a point mesh.
# ------------------------------------------------------------------------------------------------

ECHO_PIPELINE = "system.echo"


def flatten_outputs(outputs: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array in a (nested) outputs map, keyed by its dotted path.

    Args:
        outputs: Decoded `outputs` map; nested maps are walked, non-array values skipped.
        prefix: Path prefix for nested maps.

    Returns:
        {"gaussians.means": array, ...} in the map's order.
    """
    arrays: dict[str, np.ndarray] = {}
    for key, value in outputs.items():
        path = f"{prefix}{key}"
        if isinstance(value, np.ndarray):
            arrays[path] = value
        elif isinstance(value, dict):
            arrays.update(flatten_outputs(value, prefix=f"{path}."))
    return arrays


@dataclass(frozen=True)
class AttributePlan:
    """One point attribute to create from an echoed array.

    Attributes:
        name: Attribute name.
        btype: Blender attribute type ("FLOAT", "FLOAT_VECTOR", ...).
        key: `foreach_set` key ("value", "vector", "color").
        source: The data, possibly a strided view into a bigger array. [N] or [N, W]
        dtype: Buffer dtype `foreach_set` needs (float32, int32 or bool).
    """

    name: str
    btype: str
    key: str
    source: np.ndarray
    dtype: np.dtype


#: Source bytes read per step when a strided view is gathered into a contiguous buffer: keeps
#: each step to a few milliseconds (a 1M x 3 column out of a 1M x 45 array reads 180 MB).
BLOCK_BYTES = 16 * 2**20


def echo_attribute_plan(outputs: dict) -> tuple[np.ndarray, list[AttributePlan]]:
    """Plan how an echoed outputs map becomes a point mesh (pure numpy, no bpy, no copies).

    The `points` (or `means`) array becomes the vertex positions; every other array with one row
    per point becomes a point attribute: 1 column -> FLOAT (INT for integers, BOOLEAN for bools),
    2 -> FLOAT2, 3 -> FLOAT_VECTOR, 4 -> FLOAT_COLOR; wider rows are split into 3-column
    FLOAT_VECTOR attributes (`name_0`, `name_1`, ...) when divisible by 3, else single columns.

    Args:
        outputs: The echoed map; must hold `points` or `means`. [N, 3]

    Returns:
        (positions view [N, 3], attribute plans in the map's order).

    Raises:
        ValueError: No `points`/`means` array of shape (N, 3), naming what was found.
    """
    arrays = flatten_outputs(outputs)
    point_key = next((k for k in arrays if k.rsplit(".", 1)[-1] in ("points", "means")), None)
    if point_key is None:
        raise ValueError(f"system.echo outputs hold no 'points' (N, 3) array; keys: {sorted(arrays)}")
    points = arrays.pop(point_key)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"system.echo outputs '{point_key}' must have shape (N, 3), got {points.shape}")
    n = points.shape[0]
    f4, i4, b1 = np.dtype(np.float32), np.dtype(np.int32), np.dtype(np.bool_)
    plan: list[AttributePlan] = []
    for name, array in arrays.items():
        if array.ndim == 0 or array.shape[0] != n:
            continue
        columns = array.reshape(n, -1)
        width = columns.shape[1]
        if width == 0:
            continue
        if width == 1:
            if array.dtype == np.bool_:
                plan.append(AttributePlan(name, "BOOLEAN", "value", columns[:, 0], b1))
            elif np.issubdtype(array.dtype, np.integer):
                plan.append(AttributePlan(name, "INT", "value", columns[:, 0], i4))
            else:
                plan.append(AttributePlan(name, "FLOAT", "value", columns[:, 0], f4))
        elif width in (2, 3, 4):
            btype, key = {2: ("FLOAT2", "vector"), 3: ("FLOAT_VECTOR", "vector"), 4: ("FLOAT_COLOR", "color")}[width]
            plan.append(AttributePlan(name, btype, key, columns, f4))
        elif width % 3 == 0:
            for i in range(width // 3):
                plan.append(AttributePlan(f"{name}_{i}", "FLOAT_VECTOR", "vector", columns[:, 3 * i:3 * i + 3], f4))
        else:
            for i in range(width):
                plan.append(AttributePlan(f"{name}_{i}", "FLOAT", "value", columns[:, i], f4))
    return points, plan


def gather_in_blocks(source: np.ndarray, dtype: np.dtype, block_bytes: int = BLOCK_BYTES) -> Iterator[Optional[np.ndarray]]:
    """Make a flat C-contiguous `dtype` buffer of `source`, a bounded block of rows per step.

    Args:
        source: Any array or strided view. [N, ...]
        dtype: Wanted dtype.
        block_bytes: Source bytes (counting the row stride) read per step.

    Yields:
        None after each block, then the flat buffer. [N * prod(...)]
    """
    if source.flags.c_contiguous and source.dtype == dtype:
        yield source.reshape(-1)  # already usable: no copy
        return
    out = np.empty(source.shape, dtype=dtype)
    row_bytes = max(abs(source.strides[0]) if source.ndim else 1, source.itemsize, 1)
    rows = max(1, block_bytes // row_bytes)
    for begin in range(0, source.shape[0], rows):
        out[begin:begin + rows] = source[begin:begin + rows]
        yield None
    yield out.reshape(-1)
