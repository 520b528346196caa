"""server.store: results written atomically as msgpack + .npy, read back memory-mapped."""

from __future__ import annotations

import numpy as np
import pytest

from server.store import Store


def test_result_round_trip_and_layout(tmp_path):
    store = Store(tmp_path)
    assert store.open() == []
    outputs = {"rgb": np.random.default_rng(0).random((2, 4, 5, 3), dtype=np.float32),
               "nested": {"ids": np.arange(5, dtype="<i8"), "empty": np.zeros((0, 3), "<f4")},
               "metrics": {"psnr": 31.5, "count": 7}, "tags": ["a", np.float32(2.0)]}
    store.save_result("abc123", outputs)
    files = sorted(p.name for p in (tmp_path / "results" / "abc123").iterdir())
    assert files == ["1.npy", "2.npy", "3.npy", "outputs.msgpack"]
    # The .npy files are plain numpy files, readable without our code.
    assert np.load(tmp_path / "results" / "abc123" / "1.npy").tobytes() == outputs["rgb"].tobytes()
    back = store.load_result("abc123")
    assert back["rgb"].tobytes() == outputs["rgb"].tobytes() and not back["rgb"].flags.writeable
    assert back["nested"]["ids"].tolist() == list(range(5))
    assert back["nested"]["empty"].shape == (0, 3)
    assert back["metrics"] == {"psnr": 31.5, "count": 7} and back["tags"] == ["a", 2.0]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_records_survive_and_leftovers_are_cleaned(tmp_path):
    store = Store(tmp_path)
    store.open()
    store.save_record({"job": "j1", "pipeline": "p", "state": "done", "created": 2.0})
    store.save_record({"job": "j0", "pipeline": "p", "state": "running", "created": 1.0})
    store.save_result("j1", {"x": 1})
    (tmp_path / "tmp" / "half-written").mkdir()
    (tmp_path / "records" / "broken.msgpack").write_bytes(b"\xc1\xc1")
    records = Store(tmp_path).open()
    assert [r["job"] for r in records] == ["j0", "j1"]
    assert [r["has_result"] for r in records] == [False, True]
    assert list((tmp_path / "tmp").iterdir()) == []
    store.delete("j1")
    assert not store.has_result("j1") and [r["job"] for r in store.open()] == ["j0"]


def test_unsafe_ids_and_dtypes_are_refused(tmp_path):
    store = Store(tmp_path)
    store.open()
    for bad in ("../x", "", "a/b", "é"):
        with pytest.raises(ValueError):
            store.save_record({"job": bad})
    with pytest.raises(TypeError):
        store.save_result("j2", {"c": np.zeros(2, np.complex64)})
    assert not store.has_result("j2") and list((tmp_path / "tmp").iterdir()) == []
