"""The built-in `system.echo` result handler: echoed points become a point mesh (bpy layer)."""

from __future__ import annotations

from typing import Iterator

import bpy
import numpy as np

from ..core.handlers import AttributePlan, echo_attribute_plan, gather_in_blocks


def echo_to_mesh(job, outputs: dict) -> Iterator[str]:
    """Handler for `system.echo`: the echoed arrays become a point mesh, in bounded steps.

    Creates (or updates in place, for later partials) the object named by `job.target`, or a new
    object "Echo <job id>" whose name is then stored in `job.target`. Each step fills one
    attribute or gathers one block of a strided array, so no step holds Blender for long.

    Args:
        job: The `addon.core.jobs.JobRecord` the outputs belong to.
        outputs: The echoed map: `points` [N, 3] and per-point arrays [N, ...].

    Yields:
        The name of the attribute being worked on, after each step.
    """
    points, plan = echo_attribute_plan(outputs)
    n = points.shape[0]
    obj = bpy.data.objects.get(job.target) if job.target else None
    if obj is None or obj.type != "MESH":
        mesh = bpy.data.meshes.new(f"Echo {job.id[:8]}")
        obj = bpy.data.objects.new(mesh.name, mesh)
        bpy.context.scene.collection.objects.link(obj)
        job.target = obj.name
    mesh = obj.data
    # A changed point count means a fresh vertex array.
    if len(mesh.vertices) != n:
        mesh.clear_geometry()
        mesh.vertices.add(n)
    yield "geometry"

    steps = [AttributePlan("position", "FLOAT_VECTOR", "vector", points, np.dtype(np.float32))] + plan
    for item in steps:
        for buffer in gather_in_blocks(item.source, item.dtype):
            if buffer is None:
                yield item.name
        # Look the attribute up by name each time: a reference held across `attributes.new`
        # can dangle.
        attribute = mesh.attributes.get(item.name)
        if attribute is not None and (attribute.data_type != item.btype or attribute.domain != "POINT"):
            mesh.attributes.remove(attribute)
            attribute = None
        if attribute is None:
            attribute = mesh.attributes.new(item.name, item.btype, "POINT")
        # The generic attribute API is the fast path (vertices.foreach_set("co") is ~100x slower).
        attribute.data.foreach_set(item.key, buffer)
        yield item.name
    mesh.update()
    yield "update"
