"""The model registry (server/models.py) with real files: safetensors checkpoints, a diffusers
component folder, a Hugging Face cache laid out as huggingface_hub writes it, the models folder
index and the wheel defaults; loading once, the LRU memory budget, threads; the worker handing
models to run(); ``welcome`` and ``nstudio models|doctor`` reporting each model's state."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipelines.base import ModelSource, ModelSpec, Pipeline
from server.models import (ModelMissing, ModelRegistry, hub_cache_path, model_bytes,
                           WHEEL_MODELS)

REPO = Path(__file__).resolve().parents[2]


def _linear_file(path: Path, n: int, value: float = 1.0) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.full((n, n), value), "bias": torch.zeros(n)}, str(path))
    return path


def _load_linear(source: ModelSource, device: str):
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(source.path), device=device)
    n = tensors["bias"].shape[0]
    layer = torch.nn.Linear(n, n)
    layer.load_state_dict(tensors)
    return layer


LINEAR = ModelSpec("linear", "linear-default", _load_linear, kinds=("folder", "file", "models-dir"))


def _pipeline(*specs: ModelSpec, probe=lambda: (True, "")) -> Pipeline:
    return Pipeline(name="test.models", summary="", params=object, inputs={}, outputs={},
                    run=lambda *a: {}, probe=probe, models=specs)


@pytest.fixture
def registry(tmp_path):
    return ModelRegistry(tmp_path / "models", budget_bytes=1 << 30)


def test_a_single_file_resolves_and_loads_once(tmp_path, registry):
    path = _linear_file(tmp_path / "lin.safetensors", 8, 0.5)
    source = registry.resolve(str(path))
    assert source == ModelSource(str(path), path.resolve(), "file")
    first = registry.load(LINEAR, str(path))
    second = registry.load(LINEAR, str(path))
    assert first is second and registry.loads == 1
    assert float(first.weight[0, 0]) == 0.5
    # 8x8 + 8 float32 parameters.
    assert registry.warm()[0]["bytes"] == (64 + 8) * 4 == model_bytes(first)


def test_a_diffusers_folder_resolves(tmp_path, registry):
    from diffusers import AutoencoderKL

    folder = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, latent_channels=4,
                  sample_size=16).save_pretrained(folder)
    spec = ModelSpec("vae", str(folder), lambda s, d: AutoencoderKL.from_pretrained(s.path))
    source = registry.resolve(str(folder), spec.kinds)
    assert source.origin == "folder" and source.path == folder.resolve()
    vae = registry.load(spec)
    assert model_bytes(vae) == sum(p.numel() * 4 for p in vae.parameters()) + sum(
        b.numel() * b.element_size() for b in vae.buffers())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelMissing, match="holds no model_index.json"):
        registry.resolve(str(empty))


def _fake_hub_cache(hub: Path, repo_id: str, files: dict) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<sha>/...}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name, writer in files.items():
        writer(snapshot / name)
    return snapshot


def test_a_hub_id_resolves_from_the_local_cache_offline(tmp_path, registry):
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE)
    snapshot = _fake_hub_cache(hub, "tiny-org/tiny-linear",
                               {"lin.safetensors": lambda p: _linear_file(p, 4)})
    assert hub_cache_path("tiny-org/tiny-linear") == snapshot
    source = registry.resolve("tiny-org/tiny-linear")
    assert source.origin == "hub-cache" and source.path == snapshot
    assert "tiny-org/tiny-linear" in registry.known()
    with pytest.raises(ModelMissing) as missing:
        registry.resolve("tiny-org/not-there")
    assert "hub id tiny-org/not-there is not in the local Hugging Face cache" in missing.value.message
    assert "nstudio models pull tiny-org/not-there" in missing.value.message


def test_names_added_to_the_models_folder_and_files_in_it(tmp_path, registry):
    path = _linear_file(tmp_path / "w.safetensors", 4)
    registry.add("my-weights", path, doc="four by four")
    # A fresh registry over the same folder reads the index from disk.
    again = ModelRegistry(registry.models_dir, budget_bytes=1 << 30)
    assert again.names()["my-weights"] == {"path": str(path.resolve()), "doc": "four by four"}
    assert again.resolve("my-weights") == ModelSource("my-weights", path.resolve(), "models-dir")
    dropped = _linear_file(registry.models_dir / "dropped.safetensors", 2)
    assert again.resolve("dropped").path == dropped.resolve()
    assert {"my-weights", "dropped"} <= set(again.known())
    # The config folder beside a single-file checkpoint is not listed as a model of its own.
    (registry.models_dir / "dropped.config").mkdir()
    (registry.models_dir / "dropped.config" / "model_index.json").write_text("{}")
    assert "dropped.config" not in again.known() and "dropped" in again.known()
    with pytest.raises(ValueError, match="no slash"):
        registry.add("org/name", path)
    path.unlink()
    with pytest.raises(ModelMissing, match="which is gone"):
        again.resolve("my-weights")


def test_a_damaged_index_reads_as_empty(registry):
    registry.models_dir.mkdir(parents=True)
    registry.index_path.write_text("{not json")
    assert registry.names() == {}
    with pytest.raises(ModelMissing, match="no name 'x' in the models folder"):
        registry.resolve("x")


def test_wheel_defaults(registry):
    source = registry.resolve("mediapipe-pose", ("wheel",))
    assert source.origin == "wheel" and source.path.name == "pose_landmark_full.tflite"
    assert source.path.is_file()
    anny = registry.resolve("anny", ("wheel",))
    assert anny.path.is_dir() and (anny.path / "__init__.py").is_file()
    assert set(WHEEL_MODELS) <= set(registry.known())


def test_unknown_model_names_what_was_looked_for_and_what_exists(tmp_path, registry):
    registry.add("present", _linear_file(tmp_path / "p.safetensors", 2))
    with pytest.raises(ModelMissing) as missing:
        registry.resolve("absent", field="params.model")
    error = missing.value
    assert error.code == "invalid_params" and error.detail == {"field": "params.model"}
    assert f"no name 'absent' in the models folder {registry.models_dir}" in error.message
    assert "Known models:" in error.message and "present" in error.message
    with pytest.raises(ModelMissing, match=f"no file or folder at {tmp_path / 'nope.safetensors'}"):
        registry.resolve(str(tmp_path / "nope.safetensors"))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelMissing, match="is not a model file"):
        registry.resolve(str(text))


def test_availability_combines_probe_and_models(tmp_path, registry):
    fixed = ModelSpec("fixed", "needed-weights", _load_linear)
    chosen = ModelSpec("chosen", "default-weights", _load_linear, param="model")
    ok, reason = registry.probe(_pipeline(fixed))
    assert not ok and "fixed: model 'needed-weights' not found" in reason
    assert f"no name 'needed-weights' in the models folder {registry.models_dir}" in reason
    # A model the request may choose: available, with a note that the default is missing.
    ok, reason = registry.probe(_pipeline(chosen))
    assert ok and "default chosen model missing" in reason and "params.model" in reason
    registry.add("needed-weights", _linear_file(tmp_path / "n.safetensors", 2))
    assert registry.probe(_pipeline(fixed)) == (True, "")
    # The pipeline's own probe comes first.
    assert registry.probe(_pipeline(fixed, probe=lambda: (False, "no GPU"))) == (False, "no GPU")

    def broken():
        raise RuntimeError("boom")

    ok, reason = registry.probe(_pipeline(fixed, probe=broken))
    assert not ok and "RuntimeError: boom" in reason


def test_lru_budget_evicts_the_least_recently_used_but_not_held_models(tmp_path):
    size = (32 * 32 + 32) * 4
    registry = ModelRegistry(tmp_path / "m", budget_bytes=2 * size + 10)
    paths = [str(_linear_file(tmp_path / f"{i}.safetensors", 32, i)) for i in range(4)]
    held = registry.load(LINEAR, paths[0], hold=True)
    registry.load(LINEAR, paths[1])
    registry.load(LINEAR, paths[2])            # over budget: 1 goes (0 is held)
    assert [Path(w["path"]).name for w in registry.warm()] == ["0.safetensors", "2.safetensors"]
    registry.release([held])
    registry.load(LINEAR, paths[2])            # touch 2: now 0 is least recently used
    registry.load(LINEAR, paths[3])
    assert [Path(w["path"]).name for w in registry.warm()] == ["2.safetensors", "3.safetensors"]
    assert registry.total_bytes() == 2 * size
    assert registry.loads == 4
    registry.load(LINEAR, paths[0])            # evicted models load again
    assert registry.loads == 5


def test_threads_asking_for_the_same_model_load_it_once(tmp_path, registry):
    path = str(_linear_file(tmp_path / "t.safetensors", 16))
    barrier = threading.Barrier(4)
    got = []

    def ask():
        barrier.wait()
        got.append(registry.load(LINEAR, path))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 4 and all(model is got[0] for model in got)
    assert registry.loads == 1


def test_acquire_uses_the_param_and_releases(tmp_path, registry):
    from dataclasses import dataclass

    @dataclass
    class Params:
        model: str = ""

    registry.add("linear-default", _linear_file(tmp_path / "d.safetensors", 2, 1.0))
    other = _linear_file(tmp_path / "o.safetensors", 2, 3.0)
    spec = ModelSpec("linear", "linear-default", _load_linear, param="model")
    pipeline = _pipeline(spec)
    models = registry.acquire(pipeline, Params())
    assert float(models["linear"].weight[0, 0]) == 1.0 and list(models) == ["linear"]
    models.close()
    models = registry.acquire(pipeline, Params(model=str(other)))
    assert float(models["linear"].weight[0, 0]) == 3.0
    assert all(entry_holds == 1 for entry_holds in
               [e.holds for e in registry._cache.values() if e.model is models["linear"]])
    models.close()
    assert all(e.holds == 0 for e in registry._cache.values())
    with pytest.raises(ModelMissing) as missing:
        registry.acquire(pipeline, Params(model="nothing-here"))
    assert missing.value.detail == {"field": "params.model"}


# The server process ----------------------------------------------------------------------------

def _nstudio(*args, env=None):
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def test_server_reports_then_serves_a_model_added_with_the_cli(tmp_path, make_server,
                                                                make_client):
    models_dir = tmp_path / "models"
    server = make_server("--pipelines", "tests.server.model_pipeline", "--models-dir",
                         str(models_dir))
    client = make_client(server.endpoint)
    welcome = client.request("hello", client="test", protocols=[1])
    entry = welcome["pipelines"]["test.weights"]
    assert entry["available"] is False
    assert f"no name 'tiny-weights' in the models folder {models_dir}" in entry["reason"]
    refused = client.submit("test.weights")
    assert refused["type"] == "error" and refused["code"] == "unavailable"

    weights = _linear_file(tmp_path / "w.safetensors", 3, 2.0)
    added = _nstudio("models", "add", "tiny-weights", str(weights), "--models-dir",
                     str(models_dir))
    assert added.returncode == 0, added.stderr
    assert "tiny-weights" in added.stdout and "models-dir" in added.stdout

    welcome = client.request("hello", client="test", protocols=[1])
    assert welcome["pipelines"]["test.weights"]["available"] is True
    results = []
    for _ in range(2):
        accepted = client.submit("test.weights")
        assert accepted["type"] == "accepted", accepted
        events = client.events(accepted["job"], timeout=60)
        assert events[-1]["type"] == "result", events[-1]
        results.append(events[-1]["outputs"])
    # Both specs name the same file with the same loader: one load, warm for the second job.
    assert results[0] == results[1] == {"sum": 18.0, "loads": 1}

    accepted = client.submit("test.weights", params={"model": str(tmp_path / "missing.pt")})
    events = client.events(accepted["job"], timeout=60)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_params"
    assert events[-1]["detail"] == {"field": "params.model"}
    assert f"no file or folder at {tmp_path / 'missing.pt'}" in events[-1]["message"]
    assert client.request("ping")["type"] == "pong"


def test_models_list_and_doctor_print_each_models_state(tmp_path):
    models_dir = tmp_path / "models"
    weights = _linear_file(tmp_path / "w.safetensors", 2)
    assert _nstudio("models", "add", "bad/name", str(weights), "--models-dir",
                    str(models_dir)).returncode == 2
    assert _nstudio("models", "add", "listed", str(weights), "--doc", "two by two",
                    "--models-dir", str(models_dir)).returncode == 0
    listing = _nstudio("models", "list", "--models-dir", str(models_dir))
    assert listing.returncode == 0, listing.stderr
    assert f"models folder: {models_dir}" in listing.stdout
    assert f"listed: {weights.resolve()}  two by two" in listing.stdout
    assert "mediapipe-pose: wheel " in listing.stdout
    doctor = _nstudio("doctor", "--models-dir", str(models_dir))
    assert doctor.returncode == 0, doctor.stderr
    assert f"models folder: {models_dir}" in doctor.stdout
    pull = _nstudio("models", "pull", "org/name", env={"HF_HUB_OFFLINE": "1"})
    assert pull.returncode == 1 and "HF_HUB_OFFLINE is set" in pull.stderr
