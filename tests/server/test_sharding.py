"""server.sharding: a job split by frame and put back together is the job itself."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from server import sharding

# pipelines.base.Frames' fields. (Under pytest, tests/pipelines/ shadows the top-level
# `pipelines` package for in-process imports, so this module does not import it.)
FRAMES = SimpleNamespace(input="cameras", outputs=("rgb", "depth"), partial_key="frame")


def cameras(t: int) -> dict:
    return {"world_from_camera": np.arange(t * 16, dtype="<f4").reshape(t, 4, 4),
            "fx": 50.0, "cx": np.arange(t, dtype="<f8"), "width": 8, "height": 6}


def test_split_is_strided_and_merge_restores_frame_order():
    inputs = {"gaussians": {"means": np.zeros((3, 3), "<f4")}, "cameras": cameras(7)}
    pieces = sharding.split(inputs, FRAMES, 3)
    assert [p["cameras"]["cx"].tolist() for p in pieces] == [[0, 3, 6], [1, 4], [2, 5]]
    for piece in pieces:
        assert piece["gaussians"] is inputs["gaussians"]            # shared, not copied
        assert piece["cameras"]["fx"] == 50.0 and piece["cameras"]["width"] == 8
    # Each piece "renders" its cameras' cx into every pixel of its frames.
    results = [{"rgb": np.broadcast_to(p["cameras"]["cx"][:, None, None, None],
                                       (len(p["cameras"]["cx"]), 6, 8, 3)).astype("<f4"),
                "depth": p["cameras"]["world_from_camera"][:, :3, 0].copy(),
                "count": len(p["cameras"]["cx"])} for p in pieces]
    merged = sharding.merge(results, FRAMES)
    assert merged["rgb"][:, 0, 0, 0].tolist() == list(range(7))
    np.testing.assert_array_equal(merged["depth"], inputs["cameras"]["world_from_camera"][:, :3, 0])
    assert merged["count"] == 3, "outputs without a frame axis come from the first piece"
    assert [sharding.job_frame(k, j, 3) for k, p in enumerate(pieces)
            for j in range(len(p["cameras"]["cx"]))] == [0, 3, 6, 1, 4, 2, 5]


def test_no_split_when_there_is_nothing_to_split():
    one = {"cameras": cameras(1)}
    assert sharding.split(one, FRAMES, 4) == [one]
    assert len(sharding.split({"cameras": cameras(3)}, FRAMES, 8)) == 3   # at most T pieces
    ragged = {"cameras": dict(cameras(4), world_from_camera=np.zeros((4, 4, 4), "<f4"),
                              other=np.zeros((5, 2), "<f4"))}
    assert sharding.frame_count(ragged, FRAMES) == 0 and sharding.split(ragged, FRAMES, 2) == [ragged]
    assert sharding.frame_count({"cameras": "nonsense"}, FRAMES) == 0


def test_in_order_holds_early_frames_and_drops_repeats():
    order = sharding.InOrder()
    assert order.add(1, "b") == []
    assert order.add(0, "a") == ["a", "b"]
    assert order.add(3, "d") == [] and order.add(3, "d again") == []
    assert order.add(2, "c") == ["c", "d"]
    assert order.add(0, "a again") == []          # a retried piece sends frame 0 again
