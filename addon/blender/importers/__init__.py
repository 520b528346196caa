"""Blender layer for Gaussians and camera paths: turns format data into Blender data and back.

Modules import bpy inside functions only, so importing this package does no work.
"""
