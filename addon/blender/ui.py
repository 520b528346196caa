"""N-panel "Neural Studio" in the 3D viewport: connection status and jobs."""

from __future__ import annotations

import bpy

from ..core import client as client_mod
from . import session

_STATE_ICONS = {
    client_mod.CONNECTED: "CHECKMARK",
    client_mod.CONNECTING: "SORTTIME",
    client_mod.RECONNECTING: "FILE_REFRESH",
    client_mod.DISCONNECTED: "UNLINKED",
}
_JOB_ICONS = {
    "submitting": "EXPORT", "queued": "SORTTIME", "running": "PLAY", "done": "CHECKMARK",
    "failed": "ERROR", "cancelled": "CANCEL",
}


def _device_text(device) -> str:
    if not isinstance(device, dict):
        return str(device)
    parts = [str(device.get("kind", "?"))]
    if device.get("name"):
        parts.append(str(device["name"]))
    memory = device.get("memory")
    if isinstance(memory, (int, float)) and memory > 0:
        parts.append(f"{memory / 2**30:.0f} GiB")
    return " / ".join(parts)


class NSTUDIO_PT_status(bpy.types.Panel):
    bl_label = "Server"
    bl_idname = "NSTUDIO_PT_status"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        layout = self.layout
        live = session.current()
        state = live.client.state if live else client_mod.DISCONNECTED
        row = layout.row()
        row.label(text=state.capitalize(), icon=_STATE_ICONS.get(state, "QUESTION"))
        if live is None:
            row.operator("nstudio.connect", text="Connect", icon="LINKED")
        else:
            row.operator("nstudio.disconnect", text="", icon="X")
            layout.label(text=live.config.endpoint)
            if live.client.last_error:
                layout.label(text=live.client.last_error, icon="ERROR")
            if live.server is not None and live.server.returncode is not None:
                layout.label(text=f"Local server exited with code {live.server.returncode}", icon="ERROR")
        if session.last_log_path():
            layout.operator("nstudio.show_server_log", icon="TEXT")
        welcome = live.client.welcome if live else None
        if not welcome:
            return
        layout.label(text=f"Device: {_device_text(welcome.get('device'))}")
        box = layout.box()
        for name, info in sorted((welcome.get("pipelines") or {}).items()):
            available = bool(info.get("available")) if isinstance(info, dict) else False
            box.label(text=name, icon="CHECKMARK" if available else "CANCEL")
            reason = info.get("reason", "") if isinstance(info, dict) else ""
            if not available and reason:
                box.label(text=f"    {reason}")


class NSTUDIO_PT_jobs(bpy.types.Panel):
    bl_label = "Jobs"
    bl_idname = "NSTUDIO_PT_jobs"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        layout = self.layout
        live = session.current()
        layout.operator("nstudio.echo_test", icon="FILE_REFRESH")
        jobs = context.scene.nstudio_jobs
        if not len(jobs):
            layout.label(text="No jobs")
            return
        for item in reversed(jobs):
            key = item.job_id or item.request_id
            box = layout.box()
            row = box.row()
            row.label(text=f"{item.pipeline}  {key[:8]}", icon=_JOB_ICONS.get(item.state, "QUESTION"))
            if item.state in ("queued", "running") and live is not None:
                row.operator("nstudio.cancel_job", text="", icon="CANCEL").job_id = key
            elif item.state in ("done", "failed", "cancelled"):
                row.operator("nstudio.remove_job", text="", icon="X").job_id = key
            factor = 1.0 if item.state == "done" else (item.step / item.total if item.total else 0.0)
            text = f"{item.stage} {item.step}/{item.total}" if item.total else item.state
            box.progress(factor=factor, type="BAR", text=text)
            if item.message:
                box.label(text=item.message)
            if item.target:
                box.label(text=item.target, icon="OBJECT_DATA")
            image = bpy.data.images.get(item.preview_image) if item.preview_image else None
            if image is not None:
                box.template_icon(icon_value=image.preview_ensure().icon_id, scale=6.0)


CLASSES = (NSTUDIO_PT_status, NSTUDIO_PT_jobs)
