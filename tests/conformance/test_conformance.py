"""Conformance: a real ``nstudio serve`` talked to by a client written from PROTOCOL.md alone.

shared/PROTOCOL.md: "An independent client written from this page alone must be able to talk
to the server." ``independent_client`` is that client (pyzmq + msgpack + numpy, nothing from
this project). This module starts the server as a subprocess and checks every reply against
the page: the fields each message type must carry, and no others beyond the header envelope
(``v``, ``type``, ``id``, ``re``, ``job``) and the few extensions docs/protocol-notes.md
documents (``summary`` in a pipeline entry, ``error`` in the status entry of a failed job,
``index`` in a CUDA device).

Nothing here imports ``addon``, ``server`` or ``pipelines``: the expected values are derived
from the page by hand (see ``test_render_*`` for the rendering maths).

Every test runs twice: against the local executor (one worker thread) and against the Ray
executor (``--executor ray``, one actor, joined to a Ray started once for this module); the
protocol must not tell them apart.
"""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from independent_client import DTYPES, Client, pack  # noqa: E402
from reference_render import look_at, render  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ray_support import local_ray  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

ERROR_CODES = {"bad_message", "unsupported_version", "unknown_type", "unknown_pipeline",
               "invalid_params", "invalid_input", "too_large", "unavailable", "busy",
               "not_found", "cancelled", "internal"}
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
STATUS_KEYS = {"job", "pipeline", "state", "step", "total", "created", "finished"}
ENVELOPE = {"v", "type", "id"}            # `re` and `job` are listed per type below
# type -> (required fields, optional fields), from PROTOCOL.md's tables and its "Replies and
# events" paragraph.
FIELDS = {
    "welcome": ({"re", "server", "protocol", "device", "pipelines"}, set()),
    "pong": ({"re"}, set()),
    "accepted": ({"re", "job", "position"}, set()),
    "status": ({"re", "jobs"}, set()),
    "progress": ({"job", "stage", "step", "total", "message"}, {"preview"}),
    "partial": ({"job", "outputs"}, set()),
    "result": ({"job", "outputs"}, {"re"}),       # `re` when replayed by fetch
    "cancelled": ({"job"}, {"re"}),               # `re` when it answers a cancel
    "error": ({"code", "message"}, {"re", "job", "detail"}),
}


def conforms(message: dict, type_: str | None = None, re: str | None = None,
             job: str | None = None) -> dict:
    """Assert ``message`` has exactly the PROTOCOL.md fields of its type; returns it."""
    kind = message.get("type")
    assert kind in FIELDS, f"unknown message type from the server: {message}"
    if type_ is not None:
        assert kind == type_, f"expected {type_}, got {message}"
    required, optional = FIELDS[kind]
    keys = set(message)
    assert message["v"] == 1 and not isinstance(message["v"], bool), f"v: {message}"
    assert required <= keys, f"{kind} lacks {required - keys}: {message}"
    assert keys <= ENVELOPE | required | optional, \
        f"{kind} has fields PROTOCOL.md does not define: {keys - ENVELOPE - required - optional}"
    for key in ("id", "re", "job"):
        if key in message:
            assert isinstance(message[key], str) and message[key], f"{key}: {message[key]!r}"
    if re is not None:
        assert message.get("re") == re, f"re should be {re}: {message}"
    if job is not None:
        assert message.get("job") == job, f"job should be {job}: {message}"
    if kind == "error":
        assert message["code"] in ERROR_CODES, message
        assert isinstance(message["message"], str) and message["message"]
        if "detail" in message:
            assert isinstance(message["detail"], dict), message
    elif kind == "accepted":
        assert isinstance(message["position"], int) and message["position"] >= 0
    elif kind == "progress":
        assert isinstance(message["stage"], str) and isinstance(message["message"], str)
        assert isinstance(message["step"], int) and isinstance(message["total"], int)
    elif kind in ("partial", "result"):
        assert isinstance(message["outputs"], dict)
    elif kind == "status":
        assert isinstance(message["jobs"], list)
        for entry in message["jobs"]:
            status_entry(entry)
    return message


def error_reply(message: dict, code: str, re: str | None) -> dict:
    conforms(message, "error", re=re)
    assert message["code"] == code, f"expected {code}: {message}"
    if re is None:
        assert "re" not in message, message
    return message


def status_entry(entry: dict) -> dict:
    keys = set(entry)
    assert STATUS_KEYS <= keys, f"status entry lacks {STATUS_KEYS - keys}: {entry}"
    extra = keys - STATUS_KEYS
    # docs/protocol-notes.md: failed jobs also carry error {code, message}.
    assert extra <= {"error"}, f"status entry has undocumented keys {extra}"
    if "error" in entry:
        assert entry["state"] == "failed" and set(entry["error"]) == {"code", "message"}
    assert entry["state"] in JOB_STATES
    assert isinstance(entry["job"], str) and isinstance(entry["pipeline"], str)
    assert isinstance(entry["step"], int) and isinstance(entry["total"], int)
    assert isinstance(entry["created"], float), entry
    assert abs(entry["created"] - time.time()) < 3600, "created is not Unix seconds"
    if entry["state"] in FINAL_STATES:
        assert isinstance(entry["finished"], float), entry
        assert entry["created"] <= entry["finished"] <= time.time() + 1
    else:
        assert entry["finished"] is None or isinstance(entry["finished"], float)
    return entry


def same(a, b) -> None:
    """Equal values, arrays byte for byte (dtype, shape and bytes)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{b!r} is not an array"
        assert (a.dtype.str, a.shape) == (b.dtype.str, b.shape), \
            f"{a.dtype.str} {a.shape} != {b.dtype.str} {b.shape}"
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{sorted(a)} != {sorted(b)}"
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    else:
        assert type(a) is type(b) and a == b, f"{a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m server serve --device cpu`` on a free loopback port, its own store and log."""

    def __init__(self, folder: Path, *extra: str, store: Path | None = None,
                 endpoint: str | None = None):
        self.folder = folder
        self.store = store or folder / "store"
        self.endpoint = endpoint or f"tcp://127.0.0.1:{_free_port()}"
        self.log_path = folder / f"server-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "serve", "--device", "cpu", "--bind",
                 self.endpoint, "--store", str(self.store), "--log-level", "info", *extra],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        probe = Client(self.endpoint)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert self.proc.poll() is None, f"server exited:\n{self.log()}"
                try:
                    probe.call("ping", timeout=0.5)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "server did not answer ping in 60 s"
        except BaseException:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            raise
        finally:
            probe.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM; the server must exit cleanly (status 0, no traceback logged)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"server ignored SIGTERM:\n{self.log()}") from None
        assert self.proc.returncode == 0, f"exit status {self.proc.returncode}:\n{self.log()}"
        assert "Traceback" not in self.log(), f"the server logged a traceback:\n{self.log()}"


@pytest.fixture(scope="module")
def ray_address():
    with local_ray() as address:
        yield address


# Ray takes ~20 s to start here and its half of this module ~40 s: marked slow, as PROTOCOL
# conformance of the local executor alone is the quick check.
@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def executor(request) -> tuple:
    """The extra ``serve`` flags of the executor under test."""
    if request.param == "local":
        return ()
    return ("--executor", "ray", "--ray-address", request.getfixturevalue("ray_address"),
            "--ray-actors", "1")


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory, executor):
    """One server shared by the message-by-message tests."""
    server = Server(tmp_path_factory.mktemp("conformance"), *executor)
    try:
        yield server.endpoint
    finally:
        server.stop()


@pytest.fixture
def client(endpoint):
    c = Client(endpoint)
    yield c
    c.close()


def submit(client: Client, pipeline: str, inputs: dict, params: dict | None = None,
           **extra) -> tuple[str, dict]:
    """Submit; returns (request id, the conforming `accepted`)."""
    rid = client.request("submit", pipeline=pipeline, params=params or {}, inputs=inputs,
                         **extra)
    accepted = client.reply(rid)
    conforms(accepted, "accepted", re=rid)
    return rid, accepted


def job_events(client: Client, job: str, timeout: float = 30.0) -> list[dict]:
    events = client.job_events(job, timeout)
    for event in events:
        conforms(event, job=job)
        assert "re" not in event, f"a job event carries re: {event}"
    assert [e["type"] for e in events].count("result") + \
        [e["type"] for e in events].count("cancelled") + \
        [e["type"] for e in events].count("error") == 1
    return events


# ---------------------------------------------------------------------------------------------
# hello / ping
# ---------------------------------------------------------------------------------------------

def test_hello_welcome(client):
    rid = client.request("hello", client="conformance", protocols=[1])
    welcome = conforms(client.reply(rid), "welcome", re=rid)
    assert welcome["protocol"] == 1
    server = welcome["server"]
    assert isinstance(server, dict) and {"name", "version"} <= set(server)
    assert isinstance(server["name"], str) and isinstance(server["version"], str)
    device = welcome["device"]
    assert isinstance(device, dict) and device["kind"] in ("cpu", "cuda")
    assert device == {"kind": "cpu"}, "served with --device cpu"
    pipelines = welcome["pipelines"]
    assert isinstance(pipelines, dict) and {"system.echo", "splat.render"} <= set(pipelines)
    for name, entry in pipelines.items():
        required = {"params", "inputs", "outputs", "available", "reason"}
        assert required <= set(entry), f"{name} lacks {required - set(entry)}"
        # docs/protocol-notes.md: each entry also carries `summary`.
        assert set(entry) <= required | {"summary"}, f"{name}: {sorted(entry)}"
        for schema in ("params", "inputs", "outputs"):
            assert isinstance(entry[schema], dict), f"{name}.{schema} is not a map"
        assert isinstance(entry["available"], bool) and isinstance(entry["reason"], str)
        if not entry["available"]:
            assert entry["reason"], f"{name} is unavailable without a reason"
    assert pipelines["system.echo"]["available"] and pipelines["splat.render"]["available"]
    # "Core pipeline contracts": these inputs and outputs are fixed.
    render = pipelines["splat.render"]
    # The fixed inputs, plus only the documented optional extension (docs/protocol-notes.md).
    assert set(render["inputs"]) - {"gaussians_ref"} == {"gaussians", "cameras"}
    # The fixed outputs, plus only the documented opt-in extension (docs/protocol-notes.md).
    assert set(render["outputs"]) - {"depth_front"} == {"rgb", "alpha", "depth"}
    assert {"sh_degree", "background"} <= set(render["params"])
    if "splat.reconstruct" in pipelines:
        rec = pipelines["splat.reconstruct"]
        assert {"images", "cameras", "points", "colors"} <= set(rec["inputs"])
        assert {"gaussians", "metrics"} <= set(rec["outputs"])
        assert {"steps", "sh_degree", "test_every", "max_gaussians", "background"} \
            <= set(rec["params"])
    if "image.generate" in pipelines:
        gen = pipelines["image.generate"]
        assert set(gen["inputs"]) == {"image", "mask", "control"}
        assert set(gen["outputs"]) == {"images", "seeds"}
        assert {"model", "prompt", "negative_prompt", "steps", "guidance_scale", "seed", "width",
                "height", "num_images", "scheduler", "strength", "controlnets", "loras"} \
            <= set(gen["params"])
        assert gen["params"]["loras"]["items"] == "map"


def test_hello_without_protocol_1_is_refused(client):
    rid = client.request("hello", client="conformance", protocols=[2])
    error_reply(client.reply(rid), "unsupported_version", rid)


def test_ping_pong(client):
    rid = client.request("ping")
    conforms(client.reply(rid), "pong", re=rid)


def test_unknown_header_keys_are_ignored(client):
    rid = client.request("ping", x_future={"nested": [1, 2]}, trace="abc")
    conforms(client.reply(rid), "pong", re=rid)
    _, accepted = submit(client, "system.echo", {"a": 1}, x_priority="high",
                         x_blob=np.arange(3, dtype="<i4"))
    events = job_events(client, accepted["job"])
    same(events[-1]["outputs"], {"a": 1})


# ---------------------------------------------------------------------------------------------
# system.echo: arrays byte for byte, progress, fetch
# ---------------------------------------------------------------------------------------------

def echo_inputs() -> dict:
    rng = np.random.default_rng(7)
    inputs = {
        "b1": np.array([True, False, True, True]),
        "u1": np.arange(250, dtype="|u1").reshape(5, 50),
        "i1": np.array([-128, 0, 127], dtype="|i1"),
        "u2": np.array([[0, 65535]], dtype="<u2"),
        "i2": np.array([-32768, 32767], dtype="<i2"),
        "f2": np.array([1.5, -0.0, np.inf, 65504.0], dtype="<f2"),
        "u4": np.array([2**32 - 1], dtype="<u4"),
        "i4": np.arange(-6, 6, dtype="<i4").reshape(2, 3, 2),
        "f4": rng.standard_normal((64, 64, 4)).astype("<f4"),     # 64 KiB: its own frame
        "u8": np.array([2**64 - 1], dtype="<u8"),
        "i8": np.array([-(2**63)], dtype="<i8"),
        "f8": np.array([math.pi, np.nan, -np.inf], dtype="<f8"),
        "zero_d_f4": np.array(2.5, dtype="<f4"),
        "zero_d_b1": np.array(True),
        "empty_f4": np.zeros((0, 3), dtype="<f4"),
        "empty_u1": np.zeros((0,), dtype="|u1"),
        "blob": b"\x89PNG\r\n\x1a\n\x00\xff binary",       # msgpack bin
        "nested": {"list": [np.array([1, 2], dtype="<u2"), "text", None, True, 3, 0.25],
                   "deeper": {"x": np.ones((2, 2), dtype="<f8")}},
    }
    assert {a.dtype.str for a in inputs.values() if isinstance(a, np.ndarray)} >= set(DTYPES)
    return inputs


def test_echo_round_trip_and_fetch(client):
    inputs = echo_inputs()
    frames = pack({"v": 1, "type": "submit", "id": "probe", "pipeline": "system.echo",
                   "params": {}, "inputs": inputs})
    raw = msgpack.unpackb(frames[0], raw=False)
    assert isinstance(raw["inputs"]["blob"], bytes), "blob must travel as msgpack bin"
    assert raw["inputs"]["u1"] == {"__nd__": 2, "dtype": "|u1", "shape": [5, 50]}

    _, accepted = submit(client, "system.echo", inputs, {"steps": 3})
    job = accepted["job"]
    events = job_events(client, job)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "result", kinds
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and (progress[-1]["step"], progress[-1]["total"]) == (3, 3)
    same(inputs, events[-1]["outputs"])
    assert isinstance(events[-1]["outputs"]["blob"], bytes)

    # fetch replays the stored result, with re = the fetch's id.
    rid = client.request("fetch", job=job)
    replay = conforms(client.reply(rid), "result", re=rid, job=job)
    same(inputs, replay["outputs"])


def test_keep_false_result_is_not_kept(client):
    _, accepted = submit(client, "system.echo", {"x": np.arange(4, dtype="<i8")}, keep=False)
    events = job_events(client, accepted["job"])
    same({"x": np.arange(4, dtype="<i8")}, events[-1]["outputs"])
    rid = client.request("fetch", job=accepted["job"])
    conforms(client.reply(rid), "error", re=rid)


def test_fetch_unknown_job(client):
    rid = client.request("fetch", job="0" * 32)
    error_reply(client.reply(rid), "not_found", rid)


# ---------------------------------------------------------------------------------------------
# splat.render against a hand-derived expectation
# ---------------------------------------------------------------------------------------------

C0 = 0.28209479177387814
C1 = 0.4886025119029199          # degree-1 constant of the 3DGS code
W = H = 32
FX = FY = 40.0
SIGMA = 0.5                      # metres, isotropic
DIST = 5.0                       # metres from each camera to the Gaussian
OPACITY = 0.9


def render_request():
    """Three Gaussians (SH degree 1), two Blender cameras facing the first one.

    Gaussian 0 at (0, 0, -5): 5 m straight ahead of camera 0 (at the origin, identity
    matrix_world: looking down -Z) and of camera 1 (at (0, 0, -10), turned 180 deg about Y:
    looking down +Z). Gaussians 1 and 2 lie on the same axis but behind one camera and beyond
    `far` for the other, so both cameras must cull them.
    """
    means = np.array([[0, 0, -DIST], [0, 0, -105], [0, 0, 100]], dtype="<f4")
    quats = np.array([[2, 0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]], dtype="<f4")
    scales = np.log(np.array([[SIGMA] * 3, [3.0] * 3, [3.0] * 3], dtype="<f4"))
    opacities = np.array([math.log(OPACITY / (1 - OPACITY)), 5, 5], dtype="<f4")
    sh0 = np.array([[1.0, 0.0, -0.5], [3, 3, 3], [3, 3, 3]], dtype="<f4")
    shN = np.zeros((3, 3, 3), dtype="<f4")          # K = 3: degree 1, order (y, z, x)
    shN[0, 0] = [5, -5, 5]       # y coefficient: the view direction has y = 0
    shN[0, 1] = [0.3, -0.4, 1.2]  # z coefficient: the only one that matters here
    shN[0, 2] = [-5, 5, 5]       # x coefficient: x = 0
    gaussians = {"means": means, "quats": quats, "scales": scales.astype("<f4"),
                 "opacities": opacities, "sh0": sh0, "shN": shN}
    cam0 = np.eye(4, dtype="<f4")
    cam1 = np.diag([-1.0, 1.0, -1.0, 1.0]).astype("<f4")
    cam1[2, 3] = -2 * DIST
    cameras = {"world_from_camera": np.stack([cam0, cam1]), "fx": FX, "fy": FY,
               "cx": np.array([W / 2, W / 2], dtype="<f4"),   # (T,) form
               "cy": np.array([H / 2, H / 2], dtype="<f8"),
               "width": W, "height": H, "near": 0.1, "far": 20.0}
    # World direction from each camera centre to the mean: (0,0,-1) and (0,0,+1).
    colours = []
    for z in (-1.0, 1.0):
        colour = C0 * sh0[0].astype(np.float64) + C1 * z * shN[0, 1] + 0.5
        colours.append(np.maximum(colour, 0.0))
    return gaussians, cameras, np.array(colours)


def expected_alpha() -> np.ndarray:
    """alpha(r, c) of Gaussian 0: on the optical axis the EWA covariance is isotropic,
    (fx * sigma / z)^2 + 0.3 px^2, centred on the principal point (W/2, H/2)."""
    var = (FX * SIGMA / DIST) ** 2 + 0.3
    c = np.arange(W) + 0.5 - W / 2
    r = np.arange(H) + 0.5 - H / 2
    d2 = r[:, None] ** 2 + c[None, :] ** 2
    alpha = np.minimum(0.99, OPACITY * np.exp(-0.5 * d2 / var))
    return np.where(alpha < 1 / 255, 0.0, alpha)


def test_render_partials_result_and_image(client):
    gaussians, cameras, colours = render_request()
    _, accepted = submit(client, "splat.render", {"gaussians": gaussians, "cameras": cameras})
    events = job_events(client, accepted["job"], timeout=60)
    assert events[-1]["type"] == "result", events[-1]
    partials = [e for e in events if e["type"] == "partial"]
    assert sorted(p["outputs"]["frame"] for p in partials) == [0, 1]
    result = events[-1]["outputs"]
    assert set(result) == {"rgb", "alpha", "depth"}
    assert (result["rgb"].dtype.str, result["rgb"].shape) == ("<f4", (2, H, W, 3))
    assert (result["alpha"].dtype.str, result["alpha"].shape) == ("<f4", (2, H, W))
    assert (result["depth"].dtype.str, result["depth"].shape) == ("<f4", (2, H, W))
    for p in partials:
        out = p["outputs"]
        assert set(out) == {"frame", "rgb", "alpha", "depth"}
        t = out["frame"]
        assert isinstance(t, int) and not isinstance(t, bool)
        assert (out["rgb"].dtype.str, out["rgb"].shape) == ("<f4", (H, W, 3))
        assert (out["alpha"].dtype.str, out["alpha"].shape) == ("<f4", (H, W))
        assert (out["depth"].dtype.str, out["depth"].shape) == ("<f4", (H, W))
        for key in ("rgb", "alpha", "depth"):
            same(result[key][t], out[key])

    want_alpha = expected_alpha()
    centre = (slice(H // 2 - 1, H // 2 + 1), slice(W // 2 - 1, W // 2 + 1))
    for t in range(2):
        alpha, rgb, depth = result["alpha"][t], result["rgb"][t], result["depth"][t]
        # Centre: alpha > 0.5, exactly as derived; colour premultiplied; depth = 5 m along -Z.
        assert (alpha[centre] > 0.5).all()
        np.testing.assert_allclose(alpha[centre], want_alpha[centre], rtol=1e-4)
        np.testing.assert_allclose(rgb[centre], colours[t] * want_alpha[centre][..., None],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(depth[centre], DIST, rtol=1e-5)
        # Whole frame: within what the 3-sigma cull the page allows can change (alpha at
        # 3 sigma is 0.9 * exp(-4.5) = 0.0100).
        np.testing.assert_allclose(alpha, want_alpha, atol=0.011)
        np.testing.assert_allclose(rgb, colours[t] * want_alpha[..., None], atol=0.011)
        covered = want_alpha > 0.011
        np.testing.assert_allclose(depth[covered], DIST, rtol=1e-5)
        assert np.isinf(depth[want_alpha == 0]).all() and (depth[want_alpha == 0] > 0).all()
        # Corners: nothing there (the culled Gaussians did not leak in).
        for corner in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)):
            assert alpha[corner] == 0 and (rgb[corner] == 0).all() and np.isinf(depth[corner])
    # The SH degree-1 term really used the world-space view direction (different colours).
    assert colours[0][2] == 0.0 and colours[1][2] > 0.9    # clamped below at 0 / not


def test_render_matches_the_reference_renderer(client):
    """Off-axis, anisotropic, rotated Gaussians (SH degree 1, an extra labels array) seen by
    the identity camera and an oblique look-at camera, against reference_render (written from
    PROTOCOL.md): image orientation, quaternion order, EWA Jacobian, SH basis, compositing
    order and depth all show up here. Tolerances allow what the page allows (3-sigma culling,
    early termination)."""
    rng = np.random.default_rng(3)
    half = math.sqrt(0.5)
    gaussians = {
        "means": np.array([[1.0, 0.5, -5.0], [-0.6, -0.3, -4.0], [0.2, 0.1, -6.0]], "<f4"),
        "quats": np.array([[half, 0, 0, half], [0.9, 0.3, -0.2, 0.1], [1, 0, 0, 0]], "<f4"),
        "scales": np.log(np.array([[0.6, 0.1, 0.1], [0.3, 0.15, 0.05], [0.8, 0.8, 0.8]],
                                  "<f4")),
        "opacities": np.array([2.0, 1.0, 0.5], "<f4"),
        "sh0": np.array([[1.0, -0.5, 0.2], [-0.3, 0.8, 0.4], [0.1, 0.1, 0.9]], "<f4"),
        "shN": (rng.normal(size=(3, 3, 3)) * 0.4).astype("<f4"),
        "labels": np.array([7, 8, 9], "<i4"),
    }
    width, height, near, far = 48, 32, 0.1, 100.0
    matrices = np.array([np.eye(4), look_at((3.0, -2.0, 1.0), (0.0, 0.0, -5.0))], "<f4")
    fx, fy = np.array([40.0, 35.0], "<f4"), 42.0
    cx, cy = np.array([24.0, 20.0], "<f8"), 15.0
    cameras = {"world_from_camera": matrices, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
               "width": width, "height": height, "near": near, "far": far}
    _, accepted = submit(client, "splat.render", {"gaussians": gaussians, "cameras": cameras})
    events = job_events(client, accepted["job"], timeout=60)
    assert events[-1]["type"] == "result", events[-1]
    out = events[-1]["outputs"]
    for t in range(2):
        rgb, alpha, depth = render(gaussians, matrices[t], float(fx[t]), fy, float(cx[t]), cy,
                                   width, height, near, far)
        assert alpha.max() > 0.8 and (alpha > 0.01).mean() > 0.2, "the scene is in view"
        np.testing.assert_allclose(out["alpha"][t], alpha, atol=0.015)
        np.testing.assert_allclose(out["rgb"][t], rgb, atol=0.015)
        solid = alpha > 0.2
        np.testing.assert_allclose(out["depth"][t][solid], depth[solid], atol=0.1)
        assert np.isinf(out["depth"][t][alpha == 0]).all()
        assert (np.isinf(out["depth"][t]) == (out["alpha"][t] < 1 / 255)).all()
        # The same image upside down or mirrored would not pass.
        assert np.abs(out["alpha"][t] - alpha[::-1]).max() > 0.1
        assert np.abs(out["alpha"][t] - alpha[:, ::-1]).max() > 0.1


def test_render_sh_degree_0_and_background(client):
    """sh_degree 0 drops the SH1 term (colour = C0 * sh0 + 0.5); a background is composited
    behind the premultiplied frame: rgb + (1 - alpha) * background."""
    gaussians, cameras, _ = render_request()
    cameras = {**cameras, "world_from_camera": cameras["world_from_camera"][:1],
               "cx": W / 2, "cy": H / 2}                   # scalar form, T = 1
    background = [0.0, 0.25, 1.0]
    _, accepted = submit(client, "splat.render", {"gaussians": gaussians, "cameras": cameras},
                         {"sh_degree": 0, "background": background})
    events = job_events(client, accepted["job"], timeout=60)
    assert events[-1]["type"] == "result", events[-1]
    out = events[-1]["outputs"]
    assert out["rgb"].shape == (1, H, W, 3)
    colour = np.maximum(C0 * gaussians["sh0"][0].astype(np.float64) + 0.5, 0)
    want_alpha = expected_alpha()
    want_rgb = colour * want_alpha[..., None] + (1 - want_alpha[..., None]) * background
    np.testing.assert_allclose(out["alpha"][0], want_alpha, atol=0.011)
    np.testing.assert_allclose(out["rgb"][0], want_rgb, atol=0.011)
    centre = (slice(H // 2 - 1, H // 2 + 1), slice(W // 2 - 1, W // 2 + 1))
    np.testing.assert_allclose(out["rgb"][0][centre], want_rgb[centre], rtol=1e-4)
    np.testing.assert_allclose(out["rgb"][0][0, 0], background, atol=1e-6)
    assert np.isinf(out["depth"][0][0, 0])


def test_render_sh_degree_above_the_gaussians(client):
    """PROTOCOL.md submit: invalid_params comes "at once ... and no job"."""
    gaussians, cameras, _ = render_request()
    rid = client.request("submit", pipeline="splat.render", params={"sh_degree": 2},
                         inputs={"gaussians": gaussians, "cameras": cameras})
    reply = conforms(client.reply(rid), re=rid)
    error_reply(reply, "invalid_params", rid)
    assert reply["detail"]["field"] == "params.sh_degree"


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

def test_status_lists_every_clients_jobs_newest_first(client, endpoint):
    other = Client(endpoint)
    try:
        _, first = submit(client, "system.echo", {"n": 1})
        job_events(client, first["job"])
        _, second = submit(other, "system.echo", {"n": 2})
        job_events(other, second["job"])
    finally:
        other.close()
    rid = client.request("status")
    status = conforms(client.reply(rid), "status", re=rid)
    jobs = status["jobs"]
    ids = [entry["job"] for entry in jobs]
    assert ids.index(second["job"]) < ids.index(first["job"]), "newest first"
    created = [entry["created"] for entry in jobs]
    assert created == sorted(created, reverse=True)
    entry = jobs[ids.index(second["job"])]
    assert entry["pipeline"] == "system.echo" and entry["state"] == "done"

    rid = client.request("status", job=first["job"])
    one = conforms(client.reply(rid), "status", re=rid)["jobs"]
    assert len(one) == 1 and one[0]["job"] == first["job"] and one[0]["state"] == "done"

    rid = client.request("status", job="f" * 32)
    error_reply(client.reply(rid), "not_found", rid)


# ---------------------------------------------------------------------------------------------
# cancel
# ---------------------------------------------------------------------------------------------

def test_cancel_running_then_again_then_unknown(client):
    _, accepted = submit(client, "system.echo", {"x": np.zeros(3, dtype="<f4")},
                         {"steps": 200, "step_seconds": 0.05})
    job = accepted["job"]
    # Running once its first progress arrives.
    conforms(client.wait(lambda m: m.get("job") == job and m["type"] == "progress",
                         10, "progress"), "progress", job=job)
    rid = client.request("cancel", job=job)
    cancelled = conforms(client.reply(rid, timeout=5), "cancelled", re=rid, job=job)
    assert cancelled["job"] == job
    # Exactly one terminal message for the job: nothing else ends it.
    with pytest.raises(TimeoutError):
        client.wait(lambda m: m.get("job") == job and m["type"] in ("result", "error",
                                                                   "cancelled"), 0.3)
    rid = client.request("status", job=job)
    assert conforms(client.reply(rid), "status", re=rid)["jobs"][0]["state"] == "cancelled"

    rid = client.request("cancel", job=job)
    again = error_reply(client.reply(rid), "invalid_input", rid)
    assert "cancelled" in again["message"], "the error names the final state"

    rid = client.request("cancel", job="0123456789abcdef" * 2)
    error_reply(client.reply(rid), "not_found", rid)


def test_cancel_queued_job(client):
    slow = {"steps": 100, "step_seconds": 0.05}
    _, running = submit(client, "system.echo", {}, slow)
    _, queued = submit(client, "system.echo", {}, slow)
    assert queued["position"] == running["position"] + 1
    rid = client.request("cancel", job=queued["job"])
    conforms(client.reply(rid), "cancelled", re=rid, job=queued["job"])
    rid = client.request("cancel", job=running["job"])
    conforms(client.reply(rid, timeout=5), "cancelled", re=rid, job=running["job"])
    rid = client.request("status")
    states = {e["job"]: e["state"]
              for e in conforms(client.reply(rid), "status", re=rid)["jobs"]}
    assert states[queued["job"]] == states[running["job"]] == "cancelled"


def test_cancel_from_another_client(client, endpoint):
    """The canceller gets `cancelled` with its `re`; the submitter the job's `cancelled`."""
    _, accepted = submit(client, "system.echo", {}, {"steps": 200, "step_seconds": 0.05})
    job = accepted["job"]
    client.wait(lambda m: m.get("job") == job and m["type"] == "progress", 10, "progress")
    other = Client(endpoint)
    try:
        rid = other.request("cancel", job=job)
        conforms(other.reply(rid, timeout=5), "cancelled", re=rid, job=job)
    finally:
        other.close()
    events = job_events(client, job, timeout=5)
    assert events[-1]["type"] == "cancelled"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def _job_count(client: Client) -> int:
    rid = client.request("status")
    return len(conforms(client.reply(rid), "status", re=rid)["jobs"])


def _alive(client: Client) -> None:
    rid = client.request("ping")
    conforms(client.reply(rid), "pong", re=rid)


def test_unknown_type(client):
    rid = client.request("teleport", where="moon")
    error_reply(client.reply(rid), "unknown_type", rid)


def _submit_header(rid: str, inputs: dict) -> dict:
    return {"v": 1, "type": "submit", "id": rid, "pipeline": "system.echo", "params": {},
            "inputs": inputs}


MALFORMED = {
    # name: (frames, expected code, whether the reply carries re = "m-<name>")
    "version_2": ([msgpack.packb({"v": 2, "type": "ping", "id": "m-version_2"})],
                  "unsupported_version", True),
    "missing_v": ([msgpack.packb({"type": "ping", "id": "m-missing_v"})], "bad_message", True),
    "unreferenced_frame": ([msgpack.packb({"v": 1, "type": "ping", "id": "m-unreferenced_frame"}),
                            b"\x00\x01\x02\x03"], "bad_message", True),
    "byte_count_lie": ([msgpack.packb(_submit_header("m-byte_count_lie", {
        "a": {"__nd__": 1, "dtype": "<f4", "shape": [3]}})), b"\x00" * 8], "bad_message", True),
    "dtype_c8": ([msgpack.packb(_submit_header("m-dtype_c8", {
        "a": {"__nd__": 1, "dtype": "<c8", "shape": [1]}})), b"\x00" * 8], "bad_message", True),
    "dtype_object": ([msgpack.packb(_submit_header("m-dtype_object", {
        "a": {"__nd__": 1, "dtype": "|O", "shape": [1]}})), b"\x00" * 8], "bad_message", True),
    "missing_frame": ([msgpack.packb(_submit_header("m-missing_frame", {
        "a": {"__nd__": 2, "dtype": "<f4", "shape": [1]}})), b"\x00" * 4], "bad_message", True),
    "header_not_msgpack": ([b"\xc1\xc1\xc1"], "bad_message", False),
    "header_not_a_map": ([msgpack.packb([1, "ping"])], "bad_message", False),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message(client, name):
    frames, code, has_re = MALFORMED[name]
    before = _job_count(client)
    client.send_frames(frames)
    if has_re:
        reply = client.reply(f"m-{name}")
    else:
        reply = client.wait(lambda m: m["type"] == "error" and "re" not in m, 10, "error")
    error_reply(reply, code, f"m-{name}" if has_re else None)
    # Nothing else about the server changed: it answers and queued no job.
    _alive(client)
    assert _job_count(client) == before


def test_unknown_pipeline(client):
    rid = client.request("submit", pipeline="no.such.pipeline", params={}, inputs={})
    error_reply(client.reply(rid), "unknown_pipeline", rid)


def test_invalid_params(client):
    before = _job_count(client)
    rid = client.request("submit", pipeline="system.echo", params={"steps": "x"}, inputs={})
    reply = error_reply(client.reply(rid), "invalid_params", rid)
    assert reply["detail"]["field"] == "params.steps", reply
    assert _job_count(client) == before


def test_invalid_render_input(client):
    gaussians, cameras, _ = render_request()
    gaussians["means"] = gaussians["means"][:, :2].copy()          # (N, 2): not (N, 3)
    rid = client.request("submit", pipeline="splat.render", params={},
                         inputs={"gaussians": gaussians, "cameras": cameras})
    reply = error_reply(client.reply(rid), "invalid_input", rid)
    assert "detail" not in reply or isinstance(reply["detail"], dict)


@pytest.mark.parametrize("type_, fields", [
    ("submit", {"pipeline": 5, "params": {}, "inputs": {}}),
    ("submit", {"params": {}, "inputs": {}}),
    ("submit", {"pipeline": "system.echo", "params": None, "inputs": {}}),
    ("submit", {"pipeline": "system.echo", "params": {}, "inputs": None}),
    ("submit", {"pipeline": "system.echo", "params": {}, "inputs": {}, "keep": 1}),
    ("submit", {"pipeline": "system.echo", "params": {"no_such_param": 1}, "inputs": {}}),
    ("cancel", {}),
    ("fetch", {}),
    ("status", {"job": 5}),
    ("cancel", {"job": None}),
])
def test_every_malformed_request_gets_an_error(client, type_, fields):
    """PROTOCOL.md: "Every malformed message from an identifiable peer gets an error reply";
    nothing else changes."""
    before = _job_count(client)
    rid = client.request(type_, **fields)
    reply = conforms(client.reply(rid), "error", re=rid)
    assert "job" not in reply
    if type_ == "submit" and "params" in str(reply.get("detail")):
        assert reply["code"] == "invalid_params"
    _alive(client)
    assert _job_count(client) == before


# ---------------------------------------------------------------------------------------------
# Durability, queue and retention promises (servers of their own)
# ---------------------------------------------------------------------------------------------

def test_results_survive_a_restart(tmp_path, executor):
    """Finished results stay fetchable across a restart; a job the server stopped ends with
    exactly one `error` carrying `job`."""
    inputs = {"a": np.arange(12, dtype="<f2").reshape(3, 4), "b": b"bytes"}
    server = Server(tmp_path, *executor)
    try:
        first = Client(server.endpoint)
        _, done = submit(first, "system.echo", inputs)
        assert job_events(first, done["job"])[-1]["type"] == "result"
        _, slow = submit(first, "system.echo", {}, {"steps": 400, "step_seconds": 0.05})
        first.wait(lambda m: m.get("job") == slow["job"] and m["type"] == "progress", 10)
    finally:
        server.stop()
    stopped = job_events(first, slow["job"], timeout=5)
    assert stopped[-1]["type"] == "error"
    first.close()

    server = Server(tmp_path, *executor, store=tmp_path / "store")
    try:
        second = Client(server.endpoint)       # a new connection: nothing is pushed to it
        rid = second.request("fetch", job=done["job"])
        same(inputs, conforms(second.reply(rid), "result", re=rid, job=done["job"])["outputs"])
        rid = second.request("status")
        states = {e["job"]: e["state"]
                  for e in conforms(second.reply(rid), "status", re=rid)["jobs"]}
        assert states == {done["job"]: "done", slow["job"]: "failed"}
        second.close()
    finally:
        server.stop()


def test_retention_and_queue_promises(tmp_path, executor):
    """At least the 100 most recent kept results stay fetchable (sweeping often), and the
    queue accepts at least 1000 waiting jobs before it answers `busy`."""
    server = Server(tmp_path, "--sweep-seconds", "0.1", *executor)
    try:
        client = Client(server.endpoint)
        jobs = []
        for i in range(101):
            _, accepted = submit(client, "system.echo", {"i": i})
            jobs.append(accepted["job"])
        for job in jobs:
            job_events(client, job)
        time.sleep(0.4)                                   # several sweeps
        for i, job in list(enumerate(jobs))[-100:]:
            rid = client.request("fetch", job=job)
            assert conforms(client.reply(rid), "result", re=rid, job=job)["outputs"] == {"i": i}

        _, running = submit(client, "system.echo", {}, {"steps": 1000, "step_seconds": 0.05})
        positions = []
        for batch in range(10):                           # pipelined, 100 at a time
            ids = [client.request("submit", pipeline="system.echo", params={}, inputs={})
                   for _ in range(100)]
            for rid in ids:
                positions.append(conforms(client.reply(rid), "accepted", re=rid)["position"])
        assert positions == list(range(1, 1001)), "1000 waiting jobs must be accepted"
        rid = client.request("submit", pipeline="system.echo", params={}, inputs={})
        reply = conforms(client.reply(rid), re=rid)
        if reply["type"] == "error":
            assert reply["code"] == "busy" and "job" not in reply
        client.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------------

def test_ipc_endpoint(tmp_path, executor):
    """`ipc://` endpoints are allowed."""
    server = Server(tmp_path, *executor, endpoint=f"ipc://{tmp_path}/nstudio.sock")
    try:
        client = Client(server.endpoint)
        rid = client.request("hello", client="conformance", protocols=[1])
        conforms(client.reply(rid), "welcome", re=rid)
        client.close()
    finally:
        server.stop()


def test_non_loopback_bind_needs_curve_or_insecure(tmp_path):
    """Binding other than loopback/ipc needs CURVE or an explicit --insecure."""
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--device", "cpu", "--bind",
         f"tcp://0.0.0.0:{_free_port()}", "--store", str(tmp_path / "store")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0, "a non-loopback bind without security must be refused"
    assert "insecure" in (done.stdout + done.stderr).lower()
