"""The Blender layer: everything that imports bpy, and its registration.

`register()` (called by `addon.register`) imports the feature modules below and registers them.

Feature modules plug in through `FEATURE_MODULES`: each exposes a `CLASSES` tuple (registered
in order, unregistered in reverse) and may define `register()`/`unregister()` for properties,
handlers, timers and menu entries, called after its classes are registered and before they are
unregistered.
"""

from __future__ import annotations

import importlib

#: Feature modules, in registration order (relative to this package). A module listed here
#: that cannot be imported is an error: the add-on refuses to register half a feature set.
FEATURE_MODULES = (
    "preferences",
    "session",
    "render_settings",
    "scene_gaussians",
    "render_engine",
    "splat_shadow",
    "final_shot",
    "frame_guard",
    "operators",
    "ui",
    "ops_gaussians",
    "splat_train",
    "splat_render",
    "splat_panel",
    "generate_sources",
    "generate_animation",
    "generate",
    "motion_ui",
    "texture",
    "splat_mesh",
    "splat_edit",
)

_registered: list = []


class FeatureModuleError(ImportError):
    """A module in FEATURE_MODULES is missing or lacks its CLASSES tuple."""


def _load(name: str):
    try:
        module = importlib.import_module(f".{name}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.{name}":
            raise  # the module exists but something it imports does not
        raise FeatureModuleError(
            f"Neural Studio feature module {name!r} ({__package__}/{name}.py) is missing; it is listed in "
            f"{__package__}.FEATURE_MODULES") from exc
    classes = getattr(module, "CLASSES", None)
    if not isinstance(classes, tuple):
        raise FeatureModuleError(f"{__package__}.{name} must define a CLASSES tuple (got {type(classes).__name__})")
    return module


def register() -> None:
    """Register every feature module's classes, then call its register().

    All or nothing: if a module fails, what was registered before it is unregistered again (newest
    first) and the error propagates, so Blender is never left with half a feature set.
    """
    modules = [_load(name) for name in FEATURE_MODULES]  # every module found before touching bpy
    try:
        for module in modules:
            _register_module(module)
    except BaseException:
        unregister()
        raise


def _register_module(module) -> None:
    import bpy

    classes = []
    try:
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
            classes.append(cls)
        hook = getattr(module, "register", None)
        if hook is not None:
            hook()
    except BaseException:
        for cls in reversed(classes):
            bpy.utils.unregister_class(cls)
        raise
    _registered.append(module)


def unregister() -> None:
    """Undo register() in reverse order."""
    import bpy

    while _registered:
        module = _registered.pop()
        hook = getattr(module, "unregister", None)
        if hook is not None:
            hook()
        for cls in reversed(module.CLASSES):
            bpy.utils.unregister_class(cls)
