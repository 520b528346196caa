"""Gaussians kept by the server between jobs, by reference (`gaussians_ref`).

`splat.upload` puts a Gaussians map here once and answers its reference; `splat.render` (and any
pipeline that accepts `gaussians_ref`) then takes the reference instead of the arrays, so a
render job per animation frame or per viewport redraw no longer carries the Gaussians (236 MB
for 1M at SH degree 3). The reference is a content hash (BLAKE2b of the arrays), so uploading
the same Gaussians twice gives the same reference and stores them once.

The cache lives in the server process (jobs run on its worker thread), holds at most
`MAX_BYTES` (least recently used dropped first) and is empty after a restart: a client that
gets `invalid_input` for its reference uploads again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from addon.wire.schema import PipelineError

from .wire import GAUSSIAN_KEYS

#: Upper bound of the cached bytes (about 17 sets of 1M Gaussians at SH degree 3).
MAX_BYTES = 4 << 30
PREFIX = "g-"


class GaussianCache:
    """A thread-safe LRU of Gaussians maps by content hash."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def reference(g: dict) -> str:
        h = hashlib.blake2b(digest_size=16)
        for key in GAUSSIAN_KEYS:
            arr = np.ascontiguousarray(g[key], dtype=np.float32)
            h.update(key.encode())
            h.update(np.asarray(arr.shape, np.int64).tobytes())
            h.update(arr.reshape(-1).view(np.uint8))  # no copy; empty arrays (shN with K = 0) too
        return PREFIX + h.hexdigest()

    def put(self, g: dict) -> tuple[str, int]:
        """Keep a (checked) Gaussians map; returns (reference, bytes held)."""
        ref = self.reference(g)
        kept = {k: np.array(g[k], dtype=np.float32, copy=True) for k in GAUSSIAN_KEYS}
        for arr in kept.values():
            arr.setflags(write=False)
        size = sum(a.nbytes for a in kept.values())
        with self._lock:
            if ref in self._items:
                self._items.move_to_end(ref)
                return ref, self._sizes[ref]
            self._items[ref] = kept
            self._sizes[ref] = size
            while sum(self._sizes.values()) > self.max_bytes and len(self._items) > 1:
                old, _ = self._items.popitem(last=False)
                del self._sizes[old]
        return ref, size

    def get(self, ref: str, field: str = "inputs.gaussians_ref") -> dict:
        """The Gaussians of a reference, or invalid_input naming `field`."""
        with self._lock:
            g = self._items.get(ref) if isinstance(ref, str) else None
            if g is not None:
                self._items.move_to_end(ref)
        if g is None:
            raise PipelineError("invalid_input", f"{field}: unknown or expired reference {ref!r}; "
                                "upload the Gaussians again with splat.upload", field)
        return g

    def __contains__(self, ref: str) -> bool:
        with self._lock:
            return ref in self._items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._sizes.clear()


#: The server's one cache.
CACHE = GaussianCache()


def resolve(inputs: dict, field: str = "inputs") -> dict:
    """The Gaussians of a request: `inputs.gaussians`, or the cached `inputs.gaussians_ref`;
    exactly one of them must be given."""
    has_g, has_ref = inputs.get("gaussians") is not None, inputs.get("gaussians_ref") is not None
    if has_g == has_ref:
        raise PipelineError("invalid_input", f"{field}: give exactly one of 'gaussians' and 'gaussians_ref'",
                            f"{field}.gaussians")
    return inputs["gaussians"] if has_g else CACHE.get(inputs["gaussians_ref"], f"{field}.gaussians_ref")
