"""Diffusion image pipelines (``image.generate``) on diffusers; see generate.py."""
