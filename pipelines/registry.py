"""The pipelines this server knows, by module.

Each listed module defines ``PIPELINE`` (a :class:`pipelines.base.Pipeline`). Modules are
imported when :func:`discover` is called, never at import time.
"""

from __future__ import annotations

import importlib
import logging

from .base import Pipeline

log = logging.getLogger(__name__)

MODULES = (
    "pipelines.system.echo",
    "pipelines.splat.render",
    "pipelines.splat.reconstruct",
    "pipelines.image.generate",
    "pipelines.mesh.texture",
    "pipelines.motion.recover",
    "pipelines.motion.from_params",
    "pipelines.splat.to_mesh",
    "pipelines.splat.select",
    "pipelines.splat.upload",
)


def discover(modules: tuple = MODULES) -> tuple[dict[str, Pipeline], dict[str, str]]:
    """Import the pipeline modules.

    Args:
        modules: dotted module names, each defining ``PIPELINE``.

    Returns:
        ``(pipelines, failures)``: pipeline name -> Pipeline for every module that imported,
        and module name -> reason for every module that did not (logged, never fatal: one
        broken pipeline must not take the server down).
    """
    pipelines: dict[str, Pipeline] = {}
    failures: dict[str, str] = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
            pipeline = module.PIPELINE
        except Exception as error:  # any import-time failure is reported, not fatal
            failures[name] = f"{type(error).__name__}: {error}"
            log.error("pipeline module %s could not be loaded: %s", name, failures[name])
            continue
        if not isinstance(pipeline, Pipeline):
            failures[name] = f"PIPELINE is a {type(pipeline).__name__}, not a Pipeline"
            log.error("pipeline module %s: %s", name, failures[name])
            continue
        if pipeline.name in pipelines:
            failures[name] = f"pipeline name {pipeline.name!r} is already taken"
            log.error("pipeline module %s: %s", name, failures[name])
            continue
        pipelines[pipeline.name] = pipeline
    return pipelines, failures


def kernel_backends() -> dict[str, tuple[bool, str]]:
    """Which rasterizer backends can run here and why not (for ``nstudio doctor``); compiles
    nothing. The server asks here so that it never imports the kernels itself."""
    from nskernels.rasterize import backend_status

    return backend_status()
