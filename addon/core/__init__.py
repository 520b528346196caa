"""Bpy-free add-on logic: connection, jobs, camera and colour maths, formats, per-capability maths."""
