"""Neural Studio: generative and capture tools in Blender, backed by a local or remote server.

The package is three layers, each importing only the ones below it:

- `addon.wire`: the protocol codec, the schema language and the data contracts (stdlib, numpy,
  msgpack). The server and the pipelines import this and nothing else of the add-on.
- `addon.core`: bpy-free add-on logic (connection, jobs, camera and colour maths, file formats,
  per-capability maths), tested with bpy blocked.
- `addon.blender`: everything that imports bpy.

Importing this package does nothing; Blender calls `register()`, which loads the Blender layer.
"""

from __future__ import annotations


def register() -> None:
    """Blender's entry point: register the Blender layer (`addon.blender.register`)."""
    from .blender import register as register_blender

    register_blender()


def unregister() -> None:
    """Undo `register()`."""
    from .blender import unregister as unregister_blender

    unregister_blender()
