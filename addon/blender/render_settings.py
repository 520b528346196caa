"""Where and how a scene's splats are rendered (bpy layer): ``scene.nstudio_final_shot`` and its panel.

:func:`render_settings` resolves the server (endpoint and CURVE keys) for F12 and the viewport,
:func:`render_params` the ``splat.render`` params; the panel shows the settings in the Render
properties of a scene that uses the splat engine.
"""

from __future__ import annotations

import dataclasses
import os

import bpy

from ..core import render_client
from ..wire import protocol

ENGINE_ID = "NSTUDIO_SPLATS"
ENDPOINT_ENV = "NSTUDIO_ENDPOINT"
#: Viewport requests give up on a silent server sooner than F12 renders do.
VIEWPORT_CONNECT_TIMEOUT_S = 2.0
VIEWPORT_SILENCE_TIMEOUT_S = 10.0


class NSTUDIO_FinalShotSettings(bpy.types.PropertyGroup):
    """Per-scene settings of the splat render (``scene.nstudio_final_shot``)."""

    endpoint: bpy.props.StringProperty(
        name="Server Endpoint",
        description="Server to render the splats on; empty: the add-on preferences' endpoint",
        default="",
    )
    sh_degree: bpy.props.IntProperty(
        name="SH Degree",
        description="Spherical-harmonics degree used for view-dependent colour; -1: all the Gaussians have",
        default=-1, min=-1, max=3,
    )
    viewport_scale: bpy.props.FloatProperty(
        name="Navigation Resolution",
        description="Viewport server render: resolution factor while the view moves (full size once it is "
                    "still); 1 always renders at full size",
        default=0.5, min=0.1, max=1.0, subtype="FACTOR",
    )
    source_scene: bpy.props.StringProperty(
        name="Source Scene",
        description="For a companion splat scene: the scene whose compositor uses it",
        default="",
    )


def render_settings(scene) -> render_client.RenderSettings:
    """Endpoint and CURVE keys for a scene's splat renders (F12 and the viewport).

    The endpoint is the scene's own setting, else the add-on preferences', else
    ``$NSTUDIO_ENDPOINT``, else the protocol default. The CURVE keys are the preferences' whenever
    they are set, whichever endpoint is used: a scene pointed at a studio's render server needs
    them as much as the preferences' own endpoint does.

    Raises:
        ValueError: the endpoint or the CURVE key files cannot be used (the message says which).
    """
    from ..core import client
    from . import preferences, session

    own = scene.nstudio_final_shot.endpoint.strip() if hasattr(scene, "nstudio_final_shot") else ""
    try:
        prefs = preferences.get()
    except RuntimeError:
        prefs = None
    if prefs is None:
        return render_client.RenderSettings(endpoint=own or os.environ.get(ENDPOINT_ENV) or protocol.DEFAULT_ENDPOINT)
    config = session.SessionConfig.from_preferences(prefs)
    if own:
        config = dataclasses.replace(config, endpoint=own)
    try:
        conn = config.connection()
    except client.ClientError as exc:
        where = f"scene '{scene.name}' splat render settings" if own else "add-on preferences"
        raise ValueError(f"{where}: {exc}") from exc
    return render_client.RenderSettings(endpoint=conn.endpoint, curve=conn.curve)


def render_params(scene) -> dict:
    """``splat.render`` params from the scene's settings (F12 and the viewport use the same)."""
    degree = scene.nstudio_final_shot.sh_degree if hasattr(scene, "nstudio_final_shot") else -1
    return {"sh_degree": int(degree)} if degree >= 0 else {}


def viewport_settings(scene) -> render_client.RenderSettings:
    """:func:`render_settings` with the viewport's shorter timeouts (an absent server shows quickly)."""
    return dataclasses.replace(render_settings(scene), connect_timeout_s=VIEWPORT_CONNECT_TIMEOUT_S,
                               silence_timeout_s=VIEWPORT_SILENCE_TIMEOUT_S)


class NSTUDIO_PT_splat_render(bpy.types.Panel):
    """Render properties of a scene that uses the splat engine."""

    bl_label = "Neural Studio Splats"
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "render"
    COMPAT_ENGINES = {ENGINE_ID}

    @classmethod
    def poll(cls, context):
        return context.engine in cls.COMPAT_ENGINES

    def draw(self, context):
        settings = context.scene.nstudio_final_shot
        layout = self.layout
        layout.use_property_split = True
        layout.prop(settings, "endpoint")
        layout.prop(settings, "sh_degree")
        layout.prop(settings, "viewport_scale")


CLASSES = (NSTUDIO_FinalShotSettings, NSTUDIO_PT_splat_render)


def register() -> None:
    bpy.types.Scene.nstudio_final_shot = bpy.props.PointerProperty(type=NSTUDIO_FinalShotSettings)


def unregister() -> None:
    del bpy.types.Scene.nstudio_final_shot
