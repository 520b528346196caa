"""The model registry: resolves what a pipeline needs, loads it once and keeps it warm.

A pipeline declares its models as :class:`pipelines.base.ModelSpec` (a key, a default
reference, a ``load(source, device)`` function, optionally a ``Params`` field that names the
artist's choice). For each job the worker asks :meth:`ModelRegistry.acquire` for the loaded
models, and ``run(inputs, params, job, models)`` finds them under their keys.

A reference is resolved by trying the spec's ``kinds`` in order:

- ``"folder"``: a local folder (a diffusers pipeline folder with ``model_index.json``, a single
  component folder with ``config.json``, or a folder of weight files such as a LoRA);
- ``"file"``: a single local file (``.safetensors``, ``.ckpt``, ``.pkl``, ``.npz``, ...);
- ``"hub-cache"``: a Hugging Face hub id (``org/name``, optionally ``org/name@revision``) that
  is already in the local hub cache; looked up offline, never downloaded;
- ``"models-dir"``: a name added with ``nstudio models add NAME PATH`` (the index
  ``<models dir>/models.json``) or a file/folder placed in the models folder itself;
- ``"wheel"``: a default shipped inside an installed PyPI wheel (:data:`WHEEL_MODELS`).

Nothing here downloads, except :func:`pull`, which only ``nstudio models pull`` calls.

Loaded models are cached by (loader, resolved path, device). The cache keeps them under a
memory budget: after a load, the least recently used models that the running job does not hold
are dropped until the total fits (sizes from torch parameters and buffers). Everything is
guarded by one lock, plus one lock per cache key so that two threads asking for the same model
load it once.
"""

from __future__ import annotations

import collections
import gc
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from addon.wire.schema import PipelineError
from pipelines.base import ModelSource, ModelSpec, Pipeline

log = logging.getLogger(__name__)

#: Files a "file" reference may be (what the loaders of our pipelines read).
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".pkl", ".npz",
                       ".tflite", ".task", ".onnx", ".gguf")
#: The index of names added with ``nstudio models add``, inside the models folder.
INDEX_NAME = "models.json"
ALL_KINDS = ("folder", "file", "hub-cache", "models-dir", "wheel")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


@dataclass(frozen=True)
class WheelModel:
    """A default that ships inside an installed PyPI package.

    Attributes:
        package: the top-level import name (found with ``importlib.util.find_spec``, which
            does not import it).
        resource: a file or folder inside the package; None when the package is the model.
        doc: one line for people.
    """

    package: str
    resource: str | None
    doc: str


#: Defaults found inside installed wheels (DESIGN.md "Models and weights").
WHEEL_MODELS: dict[str, WheelModel] = {
    "mediapipe-pose": WheelModel("mediapipe", "modules/pose_landmark/pose_landmark_full.tflite",
                                 "MediaPipe Pose landmark model (full), inside the mediapipe wheel"),
    "anny": WheelModel("anny", None, "the Anny parametric body, data inside the anny wheel"),
}


class ModelMissing(PipelineError):
    """A reference that resolves to nothing here; the message names what was looked for."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__("invalid_params" if field else "unavailable", message, field)


def default_models_dir() -> Path:
    """``$NSTUDIO_MODELS_DIR``, else ``$XDG_DATA_HOME/neural-studio/models``."""
    if os.environ.get("NSTUDIO_MODELS_DIR"):
        return Path(os.environ["NSTUDIO_MODELS_DIR"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "neural-studio" / "models"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "neural-studio" / "models"


def default_budget_bytes(device: str = "cpu") -> int:
    """Memory the warm models may take: 80 % of a CUDA device's memory, else half the RAM."""
    if device.startswith("cuda"):
        try:
            import torch

            index = torch.device(device).index or 0
            return int(torch.cuda.get_device_properties(index).total_memory * 0.8)
        except Exception:  # no torch/CUDA here: fall through to the RAM rule
            pass
    try:
        import psutil

        return int(psutil.virtual_memory().total * 0.5)
    except Exception:  # psutil missing: a conservative fixed budget
        return 8 << 30


def model_bytes(model: Any) -> int:
    """Bytes a loaded model holds: torch parameters and buffers (shared storage counted once),
    numpy arrays, and those of a diffusers pipeline's ``components`` or a dict/list of models.
    Unknown objects count 0."""
    seen: set = set()

    def tensor_bytes(tensor) -> int:
        try:
            key = (tensor.device.type, tensor.untyped_storage().data_ptr())
        except Exception:  # meta tensors, exotic storage
            key = id(tensor)
        if key in seen:
            return 0
        seen.add(key)
        return tensor.numel() * tensor.element_size()

    def walk(obj, depth: int) -> int:
        if depth > 4 or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if hasattr(obj, "parameters") and hasattr(obj, "buffers") and callable(obj.parameters):
            return sum(tensor_bytes(t) for t in obj.parameters()) + sum(
                tensor_bytes(t) for t in obj.buffers())
        components = getattr(obj, "components", None)
        if isinstance(components, dict):
            return sum(walk(value, depth + 1) for value in components.values())
        if isinstance(obj, dict):
            return sum(walk(value, depth + 1) for value in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(value, depth + 1) for value in obj)
        if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):
            return int(obj.nbytes)
        return 0

    return walk(model, 0)


def _loader_name(load) -> str:
    return f"{getattr(load, '__module__', '?')}.{getattr(load, '__qualname__', repr(load))}"


@dataclass
class _Entry:
    key: tuple
    source: ModelSource
    model: Any
    nbytes: int
    load_seconds: float
    holds: int = 0          # jobs holding it (never evicted while > 0)


class ModelRegistry:
    """Resolves model references, loads them once and keeps them warm under a budget.

    Args:
        models_dir: the models folder (names added with ``nstudio models add`` and files put
            there); default :func:`default_models_dir`.
        budget_bytes: memory the warm models may take together; default
            :func:`default_budget_bytes` of ``device``.
        device: the default device handed to loaders ("cpu", "cuda:0").
    """

    def __init__(self, models_dir: str | os.PathLike | None = None,
                 budget_bytes: int | None = None, device: str = "cpu"):
        self.models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
        self.device = device
        self.budget_bytes = int(budget_bytes) if budget_bytes else default_budget_bytes(device)
        self._lock = threading.RLock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._cache: collections.OrderedDict[tuple, _Entry] = collections.OrderedDict()
        self.loads = 0            # how many times a loader ran (tests, benchmarks)

    # The index of added names ---------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.models_dir / INDEX_NAME

    def names(self) -> dict[str, dict]:
        """Names added with :meth:`add`: name -> {"path": str, "doc": str}. A damaged index
        reads as empty (logged), never as an exception."""
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("model index %s is unreadable (%s); ignoring it", self.index_path, error)
            return {}
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict):
            return {}
        return {name: entry for name, entry in models.items()
                if isinstance(entry, dict) and isinstance(entry.get("path"), str)}

    def add(self, name: str, path: str | os.PathLike, doc: str = "") -> Path:
        """Register ``name`` for the file or folder at ``path`` (stored absolute).

        Raises:
            ValueError: a bad name, or nothing at ``path``.
        """
        if not _NAME.match(name) or "/" in name:
            raise ValueError(f"model name {name!r} must be letters, digits and . _ + - (no "
                             "slash: names with a slash are hub ids)")
        target = Path(path).expanduser().resolve()
        if not target.exists():
            raise ValueError(f"no file or folder at {target}")
        with self._lock:
            models = self.names()
            models[name] = {"path": str(target), "doc": doc}
            self.models_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.index_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"version": 1, "models": models}, indent=2,
                                      sort_keys=True))
            os.replace(tmp, self.index_path)
        return target

    def known(self) -> list[str]:
        """Every name this registry can resolve without a path: added names, files in the
        models folder, wheel defaults present, hub ids in the local cache."""
        found = set(self.names())
        if self.models_dir.is_dir():
            for child in self.models_dir.iterdir():
                if child.name == INDEX_NAME or child.name.endswith(".tmp"):
                    continue
                if child.suffix == ".config" and any(
                        child.with_suffix(s).is_file() for s in MODEL_FILE_SUFFIXES):
                    continue   # a single-file checkpoint's config folder, not a model
                if child.is_dir() or child.suffix in MODEL_FILE_SUFFIXES:
                    found.add(child.stem if child.is_file() else child.name)
        found.update(name for name in WHEEL_MODELS if self._wheel_path(name)[0])
        found.update(hub_cache_repos())
        return sorted(found)

    # Resolution ---------------------------------------------------------------------------

    def resolve(self, ref: str, kinds: Iterable[str] = ALL_KINDS,
                field: str | None = None, list_known: bool = True) -> ModelSource:
        """Find ``ref`` trying ``kinds`` in order.

        Args:
            list_known: name the known models in the error (scans the hub cache; availability
                checks, run on every ``hello``, skip it).

        Raises:
            ModelMissing: nothing found; the message says exactly what was looked for where
                (``invalid_params`` naming ``field`` when given, else ``unavailable``).
        """
        if not isinstance(ref, str) or not ref.strip():
            raise ModelMissing("no model given", field)
        ref = ref.strip()
        reasons = []
        for kind in kinds:
            source, reason = getattr(self, f"_resolve_{kind.replace('-', '_')}")(ref)
            if source is not None:
                return source
            if reason:
                reasons.append(reason)
        if not list_known:
            raise ModelMissing(f"model {ref!r} not found: " + "; ".join(reasons), field)
        known = self.known()
        raise ModelMissing(
            f"model {ref!r} not found: " + "; ".join(reasons or ["no resolver tried"])
            + (f". Known models: {', '.join(known)}" if known else
               ". No models are registered (add one with `nstudio models add NAME PATH`)"),
            field)

    def _resolve_folder(self, ref: str):
        path = Path(ref).expanduser()
        if not _looks_like_path(ref):
            return None, ""
        if not path.exists():
            return None, f"no file or folder at {path}"
        if not path.is_dir():
            return None, ""
        if not _is_model_folder(path):
            return None, (f"folder {path} holds no model_index.json (a diffusers pipeline), "
                          "config.json or weight file")
        return ModelSource(ref, path.resolve(), "folder"), ""

    def _resolve_file(self, ref: str):
        path = Path(ref).expanduser()
        if not _looks_like_path(ref) or not path.is_file():
            return None, ""
        if path.suffix.lower() not in MODEL_FILE_SUFFIXES:
            return None, (f"{path} is not a model file (expected one of "
                          f"{', '.join(MODEL_FILE_SUFFIXES)})")
        return ModelSource(ref, path.resolve(), "file"), ""

    def _resolve_hub_cache(self, ref: str):
        if not _HUB_ID.match(ref) or Path(ref).expanduser().exists():
            return None, ""
        repo_id, _, revision = ref.partition("@")
        path = hub_cache_path(repo_id, revision or None)
        if path is None:
            return None, (f"hub id {repo_id} is not in the local Hugging Face cache "
                          f"({hub_cache_dir()}); `nstudio models pull {repo_id}` downloads it")
        return ModelSource(ref, path, "hub-cache"), ""

    def _resolve_models_dir(self, ref: str):
        if "/" in ref or "\\" in ref:
            return None, ""
        entry = self.names().get(ref)
        if entry is not None:
            path = Path(entry["path"])
            if not path.exists():
                return None, (f"{ref!r} was added for {path}, which is gone (re-add it with "
                              f"`nstudio models add {ref} PATH`)")
            return ModelSource(ref, path, "models-dir"), ""
        for candidate in [self.models_dir / ref,
                          *(self.models_dir / f"{ref}{s}" for s in MODEL_FILE_SUFFIXES)]:
            if candidate.is_file() or (candidate.is_dir() and _is_model_folder(candidate)):
                return ModelSource(ref, candidate.resolve(), "models-dir"), ""
        return None, f"no name {ref!r} in the models folder {self.models_dir}"

    def _resolve_wheel(self, ref: str):
        if ref not in WHEEL_MODELS:
            return None, ""
        found, path_or_reason = self._wheel_path(ref)
        if not found:
            return None, path_or_reason
        return ModelSource(ref, path_or_reason, "wheel"), ""

    @staticmethod
    def _wheel_path(name: str):
        wheel = WHEEL_MODELS[name]
        spec = importlib.util.find_spec(wheel.package)
        if spec is None or not spec.submodule_search_locations:
            return False, (f"{name!r} ships inside the {wheel.package} package, which is not "
                           "installed")
        root = Path(list(spec.submodule_search_locations)[0])
        if wheel.resource is None:
            return True, root
        path = root / wheel.resource
        if not path.exists():
            return False, f"{name!r}: the {wheel.package} package has no {wheel.resource}"
        return True, path

    def source_for(self, spec: ModelSpec, params: Any = None) -> ModelSource:
        """Resolve ``spec`` for a job: its ``param``'s value when set, else its default."""
        ref, field = self._ref(spec, params)
        return self.resolve(ref, spec.kinds, field)

    @staticmethod
    def _ref(spec: ModelSpec, params: Any) -> tuple[str, str | None]:
        if spec.param and params is not None:
            value = getattr(params, spec.param, None)
            if isinstance(value, str) and value.strip():
                return value.strip(), f"params.{spec.param}"
        return spec.default, None

    # Availability -----------------------------------------------------------------------------

    def check(self, pipeline: Pipeline) -> tuple[bool, str]:
        """Whether ``pipeline``'s models are here (cheap: file system and cache look-ups).

        A spec without ``param`` must resolve; a spec whose ``param`` lets the request name
        another model only adds a note when its default is missing.
        """
        problems, notes = [], []
        for spec in pipeline.models:
            try:
                self.resolve(spec.default, spec.kinds, list_known=False)
            except ModelMissing as missing:
                if spec.param:
                    notes.append(f"default {spec.key} model missing ({missing.message}); "
                                 f"name one with params.{spec.param}")
                else:
                    problems.append(f"{spec.key}: {missing.message}")
        if problems:
            return False, "; ".join(problems)
        return True, "; ".join(notes)

    def probe(self, pipeline: Pipeline) -> tuple[bool, str]:
        """``pipeline.probe()`` combined with :meth:`check` (what ``welcome`` reports)."""
        try:
            available, reason = pipeline.probe()
        except Exception as error:  # a broken probe makes the pipeline unavailable
            log.exception("probe of %s failed", pipeline.name)
            return False, f"availability check failed: {type(error).__name__}: {error}"
        if not available:
            return False, str(reason)
        ok, why = self.check(pipeline)
        return ok, "; ".join(text for text in (str(reason), why) if text)

    def states(self, pipeline: Pipeline) -> list[tuple[ModelSpec, ModelSource | None, str]]:
        """Each spec's default: (spec, source or None, the reason it is missing)."""
        out = []
        for spec in pipeline.models:
            try:
                out.append((spec, self.resolve(spec.default, spec.kinds), ""))
            except ModelMissing as missing:
                out.append((spec, None, missing.message))
        return out

    # Loading and the warm cache ------------------------------------------------------------------

    def load(self, spec: ModelSpec, ref: str | None = None, device: str | None = None,
             field: str | None = None, hold: bool = False) -> Any:
        """The loaded model for ``ref`` (default: the spec's default), from the cache when warm.

        Args:
            hold: keep it from eviction until :meth:`release` (a running job's models).
        """
        source = self.resolve(ref or spec.default, spec.kinds, field)
        return self.load_source(spec, source, device, hold)

    def load_source(self, spec: ModelSpec, source: ModelSource, device: str | None = None,
                    hold: bool = False) -> Any:
        device = device or self.device
        key = (_loader_name(spec.load), str(source.path) if source.path else source.ref, device)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._cache.get(key)
                if entry is not None:
                    self._cache.move_to_end(key)
                    entry.holds += hold
                    return entry.model
            started = time.monotonic()
            log.info("loading %s from %s (%s) on %s", spec.key, source.path or source.ref,
                     source.origin, device)
            model = spec.load(source, device)
            seconds = time.monotonic() - started
            entry = _Entry(key, source, model, model_bytes(model), seconds, holds=int(hold))
            with self._lock:
                self.loads += 1
                self._cache[key] = entry
                log.info("loaded %s in %.2f s (%.1f MiB)", spec.key, seconds,
                         entry.nbytes / 2**20)
                self._evict(keep=key)
            return model

    def release(self, models: Iterable[Any]) -> None:
        """Let models held by :meth:`load` be evicted again."""
        ids = {id(model) for model in models}
        with self._lock:
            for entry in self._cache.values():
                if id(entry.model) in ids and entry.holds > 0:
                    entry.holds -= 1
            self._evict()

    def acquire(self, pipeline: Pipeline, params: Any = None,
                device: str | None = None) -> "LoadedModels":
        """Load (or find warm) every model ``pipeline`` declares, held for one job.

        Raises:
            ModelMissing: a model is not here (``invalid_params`` naming the param when the
                request chose it).
        """
        loaded = LoadedModels(self, device or self.device)
        try:
            for spec in pipeline.models:
                ref, field = self._ref(spec, params)
                loaded._put(spec.key, self.load(spec, ref, device, field, hold=True))
        except BaseException:
            loaded.close()
            raise
        return loaded

    def _evict(self, keep: tuple | None = None) -> None:
        freed = False
        while self.total_bytes() > self.budget_bytes:
            victim = next((k for k, e in self._cache.items() if e.holds == 0 and k != keep),
                          None)
            if victim is None:
                break
            entry = self._cache.pop(victim)
            log.info("evicting %s (%.1f MiB) to stay under the %.1f MiB model budget",
                     entry.source.path or entry.source.ref, entry.nbytes / 2**20,
                     self.budget_bytes / 2**20)
            freed = True
        if freed:
            free_memory()

    def evict_all(self) -> None:
        """Drop every model not held by a job (after an out-of-memory error)."""
        with self._lock:
            for key in [k for k, e in self._cache.items() if e.holds == 0]:
                del self._cache[key]
        free_memory()

    def total_bytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._cache.values())

    def warm(self) -> list[dict]:
        """What is loaded: [{ref, path, origin, device, bytes, load_seconds}], oldest first."""
        with self._lock:
            return [{"ref": e.source.ref, "path": str(e.source.path) if e.source.path else None,
                     "origin": e.source.origin, "device": e.key[2], "bytes": e.nbytes,
                     "load_seconds": e.load_seconds} for e in self._cache.values()]


class LoadedModels(Mapping):
    """``run()``'s ``models``: each declared ``ModelSpec.key`` -> its loaded model.

    Pipelines whose models are chosen per request in lists (ControlNets, LoRAs) load more
    through :meth:`load` / :meth:`resolve`; those stay warm in the same cache and are held
    until the job ends like the declared ones.
    """

    def __init__(self, registry: ModelRegistry, device: str):
        self.registry = registry
        self.device = device
        self._models: dict[str, Any] = {}
        self._held: list[Any] = []

    def _put(self, key: str, model: Any) -> None:
        self._models[key] = model
        self._held.append(model)

    def __getitem__(self, key: str) -> Any:
        return self._models[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    def __len__(self) -> int:
        return len(self._models)

    def resolve(self, ref: str, kinds: Iterable[str] = ALL_KINDS,
                field: str | None = None) -> ModelSource:
        """Where ``ref`` is (see :meth:`ModelRegistry.resolve`)."""
        return self.registry.resolve(ref, kinds, field)

    def load(self, spec: ModelSpec, ref: str | None = None, field: str | None = None) -> Any:
        """Load an extra model for this job (warm when cached; held until :meth:`close`)."""
        model = self.registry.load(spec, ref, self.device, field, hold=True)
        self._held.append(model)
        return model

    def close(self) -> None:
        """The job ended: its models may be evicted again."""
        held, self._held = self._held, []
        self.registry.release(held)


def free_memory() -> None:
    """Return freed memory: Python's garbage and, where torch is in use, CUDA's cache."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# The hub cache, offline ---------------------------------------------------------------------

def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "(huggingface_hub not installed)"


def hub_cache_path(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local cache, or None; never downloads."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    except Exception as error:  # a damaged cache: say so, do not crash the registry
        log.warning("hub cache look-up of %s failed: %s", repo_id, error)
        return None


def hub_cache_repos() -> list[str]:
    """Model repos in the local hub cache (no network)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or huggingface_hub missing
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")


def pull(repo_id: str, revision: str | None = None, allow_patterns: list | None = None,
         progress: bool = True) -> Path:
    """Download ``repo_id`` into the hub cache (``nstudio models pull``; the only download).

    Raises:
        RuntimeError: offline mode, or the hub could not be reached / has no such repo.
    """
    from huggingface_hub import constants, snapshot_download

    if constants.HF_HUB_OFFLINE:
        raise RuntimeError("HF_HUB_OFFLINE is set: unset it to download")
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if progress else disable_progress_bars)()
    except ImportError:
        pass
    try:
        return Path(snapshot_download(repo_id, revision=revision,
                                      allow_patterns=allow_patterns))
    except Exception as error:
        raise RuntimeError(f"could not download {repo_id}: {type(error).__name__}: "
                           f"{error}") from error


def _looks_like_path(ref: str) -> bool:
    """Whether ``ref`` is meant as a path rather than a name or hub id."""
    return (os.sep in ref or "/" in ref or ref.startswith(("~", ".")) or Path(ref).suffix != ""
            or Path(ref).expanduser().exists())


def _is_model_folder(path: Path) -> bool:
    if (path / "model_index.json").is_file() or (path / "config.json").is_file():
        return True
    try:
        return any(child.suffix in MODEL_FILE_SUFFIXES for child in path.iterdir())
    except OSError:
        return False
