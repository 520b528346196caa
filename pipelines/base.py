"""What every pipeline module provides: the :class:`Pipeline` declaration and the :class:`Job` it runs in.

A pipeline module defines ``PIPELINE = Pipeline(...)``: its name, a ``Params`` dataclass, the
schema of its inputs and outputs (the schema language of `addon.wire.schema`), the models it
needs (:class:`ModelSpec`; the server's registry, ``server/models.py``, resolves and loads them),
``run(inputs, params, job, models)`` and ``probe()``. The server publishes the schemas in ``welcome``
(:func:`describe_pipeline`), parses the client's params and checks the inputs before the job is
queued, so ``run()`` only ever sees requests that match its declaration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

from addon.wire.schema import PipelineError, describe_fields, describe_params

__all__ = ["NO_MODELS", "Cancelled", "Frames", "Job", "ModelSource", "ModelSpec", "Pipeline", "PipelineError", "describe_pipeline"]


NO_MODELS: Mapping[str, Any] = MappingProxyType({})  # run()'s ``models`` for a pipeline needing none


class Cancelled(Exception):
    """Raised by :meth:`Job.check_cancel` once the client has cancelled the job."""


class Job(Protocol):
    """The running job as a pipeline sees it (implemented by the server)."""

    id: str
    device: str  # torch device string chosen by the server: "cpu" / "cuda:0"

    def progress(self, stage: str, step: int, total: int, message: str = "",
                 preview=None) -> None:
        """Report progress. ``preview``: np.uint8 sRGB image [H, W, 3|4] or PNG bytes.

        The server rate-limits what it sends (about 10 per second) but always delivers the
        last report of a job.
        """

    def partial(self, outputs: dict) -> None:
        """Send an intermediate result (numpy arrays and plain values); writable arrays are
        copied, so the pipeline may keep changing its buffers afterwards."""

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` if the client cancelled the job; call at least once a second."""



@dataclass(frozen=True)
class ModelSource:
    """Where the registry found a model.

    Attributes:
        ref: what was asked for: a registry id ("anny", "mediapipe-pose"), a hub id
            ("org/name"), or a path.
        path: the local file or folder (for a default shipped inside a PyPI wheel: the file
            inside the installed package, or the package's folder when the package is the model).
        origin: "folder" (a diffusers folder), "file" (a single file such as .safetensors or an
            SMPL .pkl/.npz), "hub-cache" (the Hugging Face cache, offline), "models-dir" (a file
            in the server's models folder) or "wheel".
    """

    ref: str
    path: Path | None
    origin: str


@dataclass(frozen=True)
class ModelSpec:
    """A model a pipeline needs; the registry resolves, loads, keeps warm and hands it to run().

    Attributes:
        key: the name under which ``run()`` finds the loaded model in ``models``.
        default: the reference used when ``param`` is unset (see `ModelSource.ref`).
        load: ``load(source, device) -> model``; runs on the worker, may import torch etc.
        param: a ``Params`` field whose non-empty value names the model instead of ``default``
            (the artist's choice: a checkpoint path, a hub id, "smplx").
        kinds: what ``ref`` may resolve to, in order tried: any of "folder", "file",
            "hub-cache", "models-dir", "wheel".
        doc: one line for people (``nstudio models list``, ``welcome``).
    """

    key: str
    default: str
    load: Callable[[ModelSource, str], Any]
    param: str | None = None
    kinds: tuple = ("folder", "file", "hub-cache", "models-dir")
    doc: str = ""


@dataclass(frozen=True)
class Frames:
    """A pipeline whose frames are independent of each other, so that an executor may split one
    job by frame across workers (the Ray executor shards a camera path this way) and put the
    pieces back together in frame order.

    Attributes:
        input: the input map whose arrays carry a leading frame axis T (e.g. ``"cameras"``);
            its arrays with that leading axis are split, its other values go to every piece.
        outputs: the outputs with a leading frame axis T, reassembled in frame order (those a
            request did not ask for are skipped); every other output is taken from the first
            piece.
        partial_key: the key of the frame index (0-based, within the job) in each ``partial``.
    """

    input: str
    outputs: tuple
    partial_key: str = "frame"


@dataclass(frozen=True)
class Pipeline:
    """A capability the server can run.

    Attributes:
        name: dotted name, e.g. ``"splat.reconstruct"``.
        summary: one line for people.
        params: a ``@dataclass`` type; every field has a default and may carry
            ``metadata={"doc": ..., "min": ..., "max": ..., "choices": ...}``.
        inputs: name -> field.
        outputs: name -> field.
        run: ``run(inputs, params, job, models) -> outputs``; inputs are read-only numpy
            arrays and plain values, already checked against ``inputs``; ``models`` maps each
            `ModelSpec.key` to the loaded model; on the server it also offers
            ``models.load(spec, ref, field)`` for models chosen per request (ControlNets, an
            inpainting model only some requests need), held until the job ends.
        probe: ``() -> (available, reason)``; imports nothing heavy.
        check: optional ``check(inputs, params)`` for what the schema cannot express (values
            that must be finite, a param bounded by the inputs, e.g. ``sh_degree`` by the
            Gaussians' degree). The server calls it on submit, after the schema checks and
            before the job is queued, so such a request gets its ``invalid_params`` /
            ``invalid_input`` at once and no job (PROTOCOL.md ``submit``); it raises
            :class:`PipelineError` and returns nothing useful. It runs on the server's socket
            thread: keep it cheap (no device work), and ``run()`` may still check again.
    """

    name: str
    summary: str
    params: type
    inputs: dict
    outputs: dict
    run: Callable[[dict, Any, Job, Mapping[str, Any]], dict]
    probe: Callable[[], tuple]
    check: Callable[[dict, Any], Any] | None = None
    models: tuple = ()  # of ModelSpec
    frames: Frames | None = None  # independent frames: an executor may split a job by frame



def describe_pipeline(pipeline: Pipeline) -> dict:
    """Everything ``welcome`` says about a pipeline except availability."""
    return {
        "summary": pipeline.summary,
        "params": describe_params(pipeline.params),
        "inputs": describe_fields(pipeline.inputs),
        "outputs": describe_fields(pipeline.outputs),
    }
