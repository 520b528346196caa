"""Choosing the device jobs run on, and describing it in ``welcome``.

torch is imported only when the device is not plainly ``cpu``, and only when asked (at server
start), never at import time.
"""

from __future__ import annotations

import re


class DeviceError(Exception):
    """The requested device cannot be used (message says why)."""


def resolve(spec: str) -> tuple[str, dict]:
    """Turn ``--device`` into a torch device string and its ``welcome`` description.

    Args:
        spec: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        ``(device, description)``, e.g. ``("cuda:0", {"kind": "cuda", "name": ...,
        "memory": bytes, "index": 0})`` or ``("cpu", {"kind": "cpu"})``.

    Raises:
        DeviceError: an unknown spec, or CUDA asked for but not usable.
    """
    spec = spec.strip().lower()
    if spec == "cpu":
        return "cpu", {"kind": "cpu"}
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if spec != "auto" and match is None:
        raise DeviceError(f"--device must be auto, cpu, cuda or cuda:N, not {spec!r}")
    usable, reason = cuda_status()
    if spec == "auto":
        return describe_cuda(0) if usable else ("cpu", {"kind": "cpu"})
    if not usable:
        raise DeviceError(f"--device {spec}: CUDA is not usable here ({reason})")
    index = int(match.group(1) or 0)
    import torch

    if index >= torch.cuda.device_count():
        raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return describe_cuda(index)


def cuda_status() -> tuple[bool, str]:
    """``(usable, reason)`` for CUDA through torch; imports torch."""
    try:
        import torch
    except ImportError as error:
        return False, f"torch is not installed ({error})"
    if not torch.cuda.is_available():
        build = torch.version.cuda
        return False, ("no CUDA device visible" if build else
                       f"torch {torch.__version__} is a CPU-only build")
    return True, f"{torch.cuda.device_count()} device(s), CUDA {torch.version.cuda}"


def describe_cuda(index: int) -> tuple[str, dict]:
    import torch

    props = torch.cuda.get_device_properties(index)
    return f"cuda:{index}", {"kind": "cuda", "name": props.name,
                             "memory": int(props.total_memory), "index": index}
