"""Never leave a final-shot frame on disk whose splats could not be rendered (bpy layer).

A final shot (:mod:`final_shot`) is the main scene's render composited with its companion
scene, which the splat engine renders on the server. Blender renders the companion inside the
main render, and an error there does not stop the main render: without this guard, a server
that is down (or a .blend pointing at another machine's server) gives frames with the Gaussian
objects silently missing, which a render farm would deliver as good.

The splat engine notes every frame whose splats failed (:func:`note_failure`). After Blender
writes a frame of a scene whose companion failed on that frame (``render_write``), the file is
removed again and the error is logged and printed naming the frame and the reason; in an
animation the next frames still render (each is checked on its own). A splat scene rendered on
its own needs no guard: its engine's error stops Blender before it writes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import bpy

log = logging.getLogger(__name__)

_lock = threading.Lock()
# (splat scene name, frame) -> why its splats could not be rendered.
_failures: dict[tuple[str, int], str] = {}
# Source scene name -> wall-clock time its current frame started rendering.
_started: dict[str, float] = {}
#: Frames removed by the guard, newest last: (file path, reason). For the UI, logs and tests.
removed: list[tuple[str, str]] = []


def note_failure(scene_name: str, frame: int, message: str) -> None:
    """The splat engine could not render ``scene_name`` at ``frame`` (render thread)."""
    with _lock:
        _failures[(scene_name, int(frame))] = message


def note_success(scene_name: str, frame: int) -> None:
    """The splat engine rendered ``scene_name`` at ``frame``."""
    with _lock:
        _failures.pop((scene_name, int(frame)), None)


def _companions(scene) -> list[str]:
    return [s.name for s in bpy.data.scenes
            if getattr(getattr(s, "nstudio_final_shot", None), "source_scene", "") == scene.name]


def _written_paths(scene) -> list[str]:
    """Files Blender may just have written for this frame: the still's path and the animation's."""
    render = scene.render
    still = bpy.path.abspath(render.filepath)
    paths = {still, render.frame_path(frame=scene.frame_current)}
    ext = render.file_extension
    if render.use_file_extension and ext and not still.lower().endswith(ext.lower()):
        paths.add(still + ext)
    return sorted(paths)


@bpy.app.handlers.persistent
def _on_render_pre(scene, *_args) -> None:
    _started[scene.name] = time.time()
    with _lock:
        for name in _companions(scene):
            _failures.pop((name, scene.frame_current), None)


@bpy.app.handlers.persistent
def _on_render_write(scene, *_args) -> None:
    frame = scene.frame_current
    with _lock:
        reasons = [_failures.pop((name, frame), None) for name in _companions(scene)]
    reasons = [r for r in reasons if r]
    if not reasons:
        return
    started = _started.get(scene.name, 0.0) - 1.0  # file times may be coarser than time.time()
    for path in _written_paths(scene):
        try:
            if os.path.getmtime(path) >= started:
                os.remove(path)
                removed.append((path, reasons[0]))
                message = (f"Neural Studio: frame {frame} of scene '{scene.name}' was not kept ({path} removed): "
                           f"its Gaussian splats could not be rendered: {reasons[0]}")
                log.error(message)
                print(message, file=sys.stderr)
        except FileNotFoundError:
            continue


CLASSES = ()


def register() -> None:
    bpy.app.handlers.render_pre.append(_on_render_pre)
    bpy.app.handlers.render_write.append(_on_render_write)


def unregister() -> None:
    bpy.app.handlers.render_write.remove(_on_render_write)
    bpy.app.handlers.render_pre.remove(_on_render_pre)
    with _lock:
        _failures.clear()
    _started.clear()
