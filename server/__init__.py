"""The Neural Studio inference server: one ROUTER socket, a job queue, a worker, a result store.

Run it with ``nstudio serve`` (see :mod:`server.cli`); the wire protocol is shared/PROTOCOL.md,
implemented by :mod:`addon.wire.protocol`.
"""
