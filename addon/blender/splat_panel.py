"""The "Gaussian Splats" panel of the 3D view's Neural Studio tab (bpy layer): the splat features' buttons
and the active object's training metrics."""

from __future__ import annotations

import bpy

from .importers.gaussians import is_gaussian_object
from .splat_render import NSTUDIO_OT_render_splats
from .splat_shadow import draw_shadow_settings
from .splat_train import METRIC_PROPS, NSTUDIO_OT_capture_and_train


class NSTUDIO_PT_splats(bpy.types.Panel):
    bl_label = "Gaussian Splats"
    bl_idname = "NSTUDIO_PT_splats"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Neural Studio"

    def draw(self, context):
        layout = self.layout
        layout.operator(NSTUDIO_OT_capture_and_train.bl_idname, icon="RENDER_RESULT")
        layout.operator(NSTUDIO_OT_render_splats.bl_idname, icon="RENDER_STILL")
        obj = context.active_object
        if obj is not None and METRIC_PROPS["psnr"] in obj:
            col = layout.column(align=True)
            col.label(text=f"PSNR {obj[METRIC_PROPS['psnr']]:.2f} dB, SSIM {obj.get(METRIC_PROPS['ssim'], 0.0):.3f}")
            col.label(text=f"{obj.get(METRIC_PROPS['count'], 0):,} Gaussians in {obj.get(METRIC_PROPS['seconds'], 0.0):.0f} s")
        if is_gaussian_object(obj):
            draw_shadow_settings(layout.box(), obj)


CLASSES = (NSTUDIO_PT_splats,)
