"""What the inference server can run: one module (or small package) per capability.

``pipelines.base`` is the API every pipeline implements, ``addon.wire.contracts`` the shared
data schemas, ``pipelines.registry`` the list of pipeline modules.
"""
