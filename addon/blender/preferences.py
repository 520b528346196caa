"""Add-on preferences: where the server is, whether to start one locally, and CURVE keys."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, StringProperty

from ..wire import protocol

DEFAULT_SERVER_COMMAND = "nstudio serve"

#: The add-on's id in Blender: the extension's package (this module lives in its blender/ layer).
ADDON_ID = __package__.rpartition(".")[0]


class NSTUDIO_AddonPreferences(bpy.types.AddonPreferences):
    # The add-on's package name: "addon" from the source tree, "bl_ext.<repo>.neural_studio"
    # when installed as an extension.
    bl_idname = ADDON_ID

    endpoint: StringProperty(
        name="Server Endpoint",
        description="ZeroMQ endpoint of the Neural Studio server (tcp://host:port or ipc://path)",
        default=protocol.DEFAULT_ENDPOINT,
    )
    start_local_server: BoolProperty(
        name="Start a Local Server",
        description="Start the server command below when connecting; it stops when Blender quits "
                    "or the add-on is disabled",
        default=False,
    )
    server_command: StringProperty(
        name="Server Command",
        description="Command line that starts the server; NSTUDIO_BIND is set to the endpoint above",
        default=DEFAULT_SERVER_COMMAND,
    )
    server_public_key: StringProperty(
        name="Server Public Key",
        description="CURVE: the server's public certificate (server.key) for a remote server; "
                    "leave empty for a local one",
        subtype="FILE_PATH",
        default="",
    )
    client_secret_key: StringProperty(
        name="Client Key Pair",
        description="CURVE: this client's secret certificate (client.key_secret, holds the key pair)",
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "endpoint")
        row = layout.row()
        row.prop(self, "start_local_server")
        sub = row.row()
        sub.active = self.start_local_server
        sub.prop(self, "server_command", text="")
        box = layout.box()
        box.label(text="Remote server (CURVE encryption)")
        box.prop(self, "server_public_key")
        box.prop(self, "client_secret_key")


def get(context=None) -> NSTUDIO_AddonPreferences:
    """This add-on's preferences.

    Raises:
        RuntimeError: The add-on is registered but not enabled through Blender's add-on system,
            so Blender holds no preferences for it.
    """
    context = context or bpy.context
    entry = context.preferences.addons.get(ADDON_ID)
    if entry is None or entry.preferences is None:
        raise RuntimeError(f"Neural Studio preferences not found: add-on {ADDON_ID!r} is not enabled "
                           "in Preferences > Add-ons")
    return entry.preferences


CLASSES = (NSTUDIO_AddonPreferences,)
