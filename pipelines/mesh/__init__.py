"""Mesh pipelines: `mesh.texture` (project or generate views and bake them onto a UV layout)."""
