"""Operators: connect/disconnect, server log, cancel/remove jobs, and an echo round-trip test.

Thin by design: each gathers what it needs, calls the session, and turns errors into
`self.report({'ERROR'}, ...)` here, at the UI boundary. `register()` routes the echo test's
`system.echo` results to the built-in point-mesh handler (`addon.blender.echo.echo_to_mesh`).
"""

from __future__ import annotations

import os

import bpy
import numpy as np
from bpy.props import IntProperty, StringProperty

from ..core import client as client_mod
from ..core import handlers
from . import echo, preferences, session


class NSTUDIO_OT_connect(bpy.types.Operator):
    """Connect to the Neural Studio server (starting a local one if the preferences say so)"""

    bl_idname = "nstudio.connect"
    bl_label = "Connect"

    def execute(self, context):
        try:
            config = session.SessionConfig.from_preferences(preferences.get(context))
            live = session.connect(config)
        except (client_mod.ClientError, RuntimeError, ValueError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"connecting to {live.config.endpoint}")
        return {"FINISHED"}


class NSTUDIO_OT_disconnect(bpy.types.Operator):
    """Disconnect from the server (and stop the local server if the add-on started it)"""

    bl_idname = "nstudio.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        session.disconnect()
        return {"FINISHED"}


class NSTUDIO_OT_show_server_log(bpy.types.Operator):
    """Load the local server's log into the text block "Neural Studio Server Log" """

    bl_idname = "nstudio.show_server_log"
    bl_label = "Show Server Log"

    def execute(self, context):
        path = session.last_log_path()
        if not path or not os.path.isfile(path):
            self.report({"ERROR"}, "no local server log yet: enable 'Start a Local Server' and connect")
            return {"CANCELLED"}
        with open(path, encoding="utf-8", errors="replace") as f:
            content = f.read()
        text = bpy.data.texts.get(session.LOG_TEXT_NAME) or bpy.data.texts.new(session.LOG_TEXT_NAME)
        text.from_string(content)
        # Show it in a text editor if the current screen has one.
        screen = context.screen
        for area in screen.areas if screen else ():
            if area.type == "TEXT_EDITOR":
                area.spaces.active.text = text
                break
        self.report({"INFO"}, f"server log ({len(content)} characters) in text block '{text.name}'")
        return {"FINISHED"}


class NSTUDIO_OT_cancel_job(bpy.types.Operator):
    """Ask the server to cancel this job"""

    bl_idname = "nstudio.cancel_job"
    bl_label = "Cancel Job"

    job_id: StringProperty(name="Job", description="Server job id")

    def execute(self, context):
        live = session.current()
        if live is None:
            self.report({"ERROR"}, "not connected to a server")
            return {"CANCELLED"}
        try:
            live.manager.cancel(self.job_id)
        except KeyError:
            self.report({"ERROR"}, f"unknown job {self.job_id!r}")
            return {"CANCELLED"}
        except (ValueError, client_mod.ClientError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


class NSTUDIO_OT_remove_job(bpy.types.Operator):
    """Remove a finished job from the list (its Blender data stays)"""

    bl_idname = "nstudio.remove_job"
    bl_label = "Remove Job"

    job_id: StringProperty(name="Job")

    def execute(self, context):
        jobs = context.scene.nstudio_jobs
        for index, item in enumerate(jobs):
            if item.job_id == self.job_id or item.request_id == self.job_id:
                live = session.current()
                if live is not None:
                    live.manager.forget(item.job_id or item.request_id)
                jobs.remove(index)
                return {"FINISHED"}
        self.report({"ERROR"}, f"unknown job {self.job_id!r}")
        return {"CANCELLED"}


class NSTUDIO_OT_echo_test(bpy.types.Operator):
    """Round-trip the active mesh's vertices (or random points) through the server's system.echo"""

    bl_idname = "nstudio.echo_test"
    bl_label = "Echo Test"

    count: IntProperty(name="Random Points", default=1000, min=1, description="Used without an active mesh")
    steps: IntProperty(name="Steps", default=10, min=1)

    def execute(self, context):
        live = session.current()
        if live is None or not live.client.connected:
            self.report({"ERROR"}, "not connected to a server")
            return {"CANCELLED"}
        obj = context.active_object
        if obj is not None and obj.type == "MESH" and len(obj.data.vertices):
            points = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
            obj.data.attributes["position"].data.foreach_get("vector", points)  # ~20x faster than "co"
            points = points.reshape(-1, 3)
        else:
            points = np.random.default_rng().normal(size=(self.count, 3)).astype(np.float32)
        inputs = {"points": points, "height": np.ascontiguousarray(points[:, 2])}
        try:
            live.submit(context.scene, handlers.ECHO_PIPELINE, params={"steps": self.steps}, inputs=inputs)
        except client_mod.ClientError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        return {"FINISHED"}


CLASSES = (
    NSTUDIO_OT_connect,
    NSTUDIO_OT_disconnect,
    NSTUDIO_OT_show_server_log,
    NSTUDIO_OT_cancel_job,
    NSTUDIO_OT_remove_job,
    NSTUDIO_OT_echo_test,
)


def register() -> None:
    handlers.register_result_handler(handlers.ECHO_PIPELINE, echo.echo_to_mesh, on_partial=echo.echo_to_mesh)


def unregister() -> None:
    handlers.unregister_result_handler(handlers.ECHO_PIPELINE)
