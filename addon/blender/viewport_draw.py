"""The splat engine's viewport side (bpy layer): sessions, the redraw timer and GPU drawing.

Each viewport in Rendered shading owns a `addon.core.viewport.ViewportSession` (a worker thread
that talks to the server); a ``bpy.app.timers`` callback asks engines with a new frame or status
to redraw, and the engine's ``view_draw`` draws the frame as a premultiplied texture (or a
message when something is wrong). Nothing here waits for the server.
"""

from __future__ import annotations

import logging
import textwrap
import time
import weakref
from typing import Optional

import bpy

from ..core import render_client, viewport

log = logging.getLogger(__name__)

#: Seconds between checks for finished viewport frames (the redraw timer's interval).
VIEWPORT_TICK_S = 0.05
# Engines drawing a viewport (id -> engine) and their sessions, weakly: Blender owns the engines,
# and a strong reference would outlive the RNA data behind it.
_viewport_engines: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()
_viewport_sessions: "weakref.WeakSet[viewport.ViewportSession]" = weakref.WeakSet()


def new_viewport_session(settings: render_client.RenderSettings, coarse_scale: float = 0.5) -> viewport.ViewportSession:
    """A viewport session whose worker is stopped by :func:`stop_viewports` if still running."""
    session = viewport.ViewportSession(settings, coarse_scale=coarse_scale)
    _viewport_sessions.add(session)
    return session


def add_engine(engine) -> None:
    """Track an engine that draws a viewport, and make sure the redraw timer runs."""
    _viewport_engines[id(engine)] = engine
    _ensure_viewport_timer()


def _ensure_viewport_timer() -> None:
    if not bpy.app.timers.is_registered(_viewport_tick):
        bpy.app.timers.register(_viewport_tick, first_interval=VIEWPORT_TICK_S, persistent=True)


def _viewport_tick() -> Optional[float]:
    """bpy.app.timers callback: ask viewports with something new to show to redraw.

    Returns None (the timer ends) once no viewport uses the engine; view_update starts it again.
    """
    now = time.monotonic()
    for engine in list(_viewport_engines.values()):
        view = engine._view
        try:
            if view is not None and view.wants_redraw(now):
                engine.tag_redraw()
        except Exception:  # a bug must not unregister the timer (Blender drops timers that raise)
            log.exception("viewport redraw check failed")
    return VIEWPORT_TICK_S if len(_viewport_engines) else None


def draw_texture(texture) -> None:
    """Draw ``texture`` over the whole region (identity matrices: the quad spans clip space)."""
    import gpu
    from gpu_extras.batch import batch_for_shader
    from mathutils import Matrix

    shader = gpu.shader.from_builtin("IMAGE")
    corners = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
    uvs = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
    batch = batch_for_shader(shader, "TRIS", {"pos": corners, "texCoord": uvs}, indices=((0, 1, 2), (2, 3, 0)))
    with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
        gpu.matrix.load_identity()
        gpu.matrix.load_projection_matrix(Matrix.Identity(4))
        shader.uniform_sampler("image", texture)
        batch.draw(shader)


def draw_message(text: str, width: int, height: int) -> None:
    """Draw ``text`` centred in the region (a problem the person should see, e.g. no server)."""
    import blf
    import gpu
    from mathutils import Matrix

    font = 0
    size = 14.0 * bpy.context.preferences.system.ui_scale
    pixels = Matrix(((2.0 / width, 0.0, 0.0, -1.0), (0.0, 2.0 / height, 0.0, -1.0),
                     (0.0, 0.0, -1.0, 0.0), (0.0, 0.0, 0.0, 1.0)))
    lines = textwrap.wrap(text, width=max(20, int(width / (0.55 * size)) - 4))
    with gpu.matrix.push_pop(), gpu.matrix.push_pop_projection():
        gpu.matrix.load_identity()
        gpu.matrix.load_projection_matrix(pixels)
        blf.size(font, size)
        blf.color(font, 1.0, 0.45, 0.35, 1.0)
        y = height / 2.0 + 0.7 * size * (len(lines) - 1)
        for line in lines:
            w, _ = blf.dimensions(font, line)
            blf.position(font, max(4.0, (width - w) / 2.0), y, 0.0)
            blf.draw(font, line)
            y -= 1.4 * size


def stop_viewports(timeout_s: float = 3.0) -> None:
    """Stop every viewport worker and the redraw timer (unregister, tests)."""
    for session in list(_viewport_sessions):
        if not session.close(timeout_s):
            log.warning("a viewport render thread did not stop within %g s", timeout_s)
    _viewport_sessions.clear()
    _viewport_engines.clear()
    if bpy.app.timers.is_registered(_viewport_tick):
        bpy.app.timers.unregister(_viewport_tick)
