"""Suite-wide setup: keep every test out of $HOME and give each session clean folders."""

import atexit
import os
import shutil
import tempfile

import pytest

# Set before anything imports bpy, torch or huggingface libraries: they read these at import.
_SCRATCH = tempfile.mkdtemp(prefix="nstudio-tests-")
# Removed when the test process exits (servers the tests started are gone by then).
atexit.register(shutil.rmtree, _SCRATCH, True)
for _var, _sub in (
    ("BLENDER_USER_RESOURCES", "blender"),
    ("XDG_CACHE_HOME", "cache"),
    ("XDG_DATA_HOME", "data"),
    ("HF_HOME", "hf"),
    ("TORCH_EXTENSIONS_DIR", "torch_ext"),
    ("NUMBA_CACHE_DIR", "numba"),
):
    os.environ[_var] = os.path.join(_SCRATCH, _sub)
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Anny derives its body data from the wheel on first use (about a minute of CPU) and caches it;
# warp-lang (which Anny uses) caches compiled kernels. Both go in the checkout's own ignored
# .cache/, out of $HOME, so that a second local run does not pay again.
_REPO_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache")
for _var, _sub in (("ANNY_CACHE_DIR", "anny"), ("WARP_CACHE_PATH", "warp")):
    os.environ.setdefault(_var, os.path.join(_REPO_CACHE, _sub))
    os.makedirs(os.environ[_var], exist_ok=True)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def blender_addon():
    """The add-on enabled in this Blender process once for the whole run, disabled at the end.

    The one registration mechanism of the Blender-side suites (tests/blender_support.py); they
    look the preferences up with ``blender_support.preferences()`` when they need them.
    """
    import blender_support

    blender_support.enable_addon()
    yield
    blender_support.disable_addon()
