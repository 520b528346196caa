"""Stepwise create/update of Gaussian objects: the same data as one call, and nothing breaks when
the object, its mesh or the whole file changes between two steps (as it may between timer ticks)."""

import numpy as np
import pytest

from addon.core import jobs as jobs_mod
from addon.core.formats import FormatError
from addon.blender.importers import gaussians as gi
from tests.formats.conftest import make_gaussians

from .test_gaussian_objects import assert_bit_equal

bpy = pytest.importorskip("bpy")

# More Gaussians than one SH gathering step takes, so the block-wise path runs (3 blocks).
BIG = 2 * gi._GATHER_ROWS + 17


def _step_all(steps) -> list:
    labels = []
    while True:
        try:
            labels.append(next(steps))
        except StopIteration as stop:
            return labels, stop.value


def _meshes() -> set:
    return {m.session_uid for m in bpy.data.meshes}


@pytest.mark.parametrize("n, k", [(BIG, 3), (50, 15), (0, 0)])
def test_stepwise_create_is_bit_exact_and_appears_at_the_end(n, k):
    g = make_gaussians(n, k, seed=n + k)
    steps = gi.create_gaussian_object_steps("Steps", g, collection=bpy.context.scene.collection, color_space="srgb")
    assert "Steps" not in bpy.data.objects  # nothing happens before the first step
    labels = [next(steps)]
    assert "Steps" not in bpy.data.objects  # the object appears complete, in the last step
    more, obj = _step_all(steps)
    labels += more
    assert obj.name == "Steps" and obj.name in bpy.context.scene.collection.objects
    assert_bit_equal(gi.read_gaussians(obj), g)
    assert obj[gi.PROP_COLOR_SPACE] == "srgb" and gi.is_gaussian_object(obj)
    # One step per attribute (and per SH gathering block for the big set).
    assert labels.count("gather SH") == (3 if n == BIG else 0)
    assert len(labels) >= 1 + 4 + k // 3


def test_bad_input_is_refused_before_any_step():
    g = make_gaussians(5, 3)
    g["scales"] = g["scales"][:, :2].copy()
    with pytest.raises(FormatError, match="'scales' has shape"):
        gi.create_gaussian_object_steps("Bad", g)
    with pytest.raises(ValueError, match="color_space"):
        gi.update_gaussian_object_steps(gi.create_gaussian_object("G", make_gaussians(5, 0)), make_gaussians(5, 0),
                                        color_space="aces")


def test_closing_a_create_midway_leaves_nothing_behind():
    before = _meshes()
    steps = gi.create_gaussian_object_steps("Gone", make_gaussians(BIG, 3))
    for _ in range(5):
        next(steps)
    steps.close()
    assert "Gone" not in bpy.data.objects and _meshes() == before


def test_update_with_a_new_layout_shows_the_old_gaussians_until_the_swap():
    old, new = make_gaussians(40, 3, seed=1), make_gaussians(BIG, 15, seed=2)
    obj = gi.create_gaussian_object("Live", old)
    mesh_name = obj.data.name
    steps = gi.update_gaussian_object_steps(obj, new)
    for _ in range(10):
        next(steps)
        assert_bit_equal(gi.read_gaussians(bpy.data.objects["Live"]), old)
    _, result = _step_all(steps)
    assert result == bpy.data.objects["Live"]
    assert_bit_equal(gi.read_gaussians(result), new)
    assert result.data.name == mesh_name and len(bpy.data.meshes) == 2  # old mesh gone, name kept (+ Cube)


def test_stepwise_in_place_update_matches_one_call():
    obj = gi.create_gaussian_object("Live", make_gaussians(BIG, 8, seed=1))
    mesh = obj.data
    new = make_gaussians(BIG, 8, seed=3)
    labels, result = _step_all(gi.update_gaussian_object_steps(obj, new, color_space="srgb"))
    assert result.data == mesh  # written in place
    assert "gs_sh_rest_7" in labels and "position" in labels
    assert_bit_equal(gi.read_gaussians(result), new)
    assert result[gi.PROP_COLOR_SPACE] == "srgb"


def test_mesh_reshaped_between_steps_gets_a_new_mesh():
    obj = gi.create_gaussian_object("Live", make_gaussians(30, 3, seed=1))
    new = make_gaussians(30, 3, seed=5)
    steps = gi.update_gaussian_object_steps(obj, new)
    next(steps)  # positions written in place
    bpy.data.objects["Live"].data.vertices.add(2)  # the user edits the mesh meanwhile
    _, result = _step_all(steps)
    assert_bit_equal(gi.read_gaussians(result), new)


@pytest.mark.parametrize("new_layout", [False, True])
def test_object_deleted_between_steps_ends_the_update_cleanly(new_layout):
    obj = gi.create_gaussian_object("Live", make_gaussians(30, 3, seed=1))
    steps = gi.update_gaussian_object_steps(obj, make_gaussians(31 if new_layout else 30, 3, seed=2))
    next(steps)
    next(steps)
    bpy.data.objects.remove(bpy.data.objects["Live"])
    del obj
    before = _meshes()
    _, result = _step_all(steps)
    assert result is None
    assert _meshes() <= before  # the half-built mesh, if any, was removed


def test_another_file_opened_between_steps_is_left_alone():
    cube = bpy.data.objects["Cube"]
    bpy.data.objects.remove(cube)
    obj = gi.create_gaussian_object("Cube", make_gaussians(30, 3, seed=1))  # same name as the homefile's cube
    steps = gi.update_gaussian_object_steps(obj, make_gaussians(30, 3, seed=2))
    next(steps)
    bpy.ops.wm.read_homefile(app_template="")
    del obj
    _, result = _step_all(steps)
    assert result is None
    cube = bpy.data.objects["Cube"]
    assert len(cube.data.vertices) == 8 and not any(a.name.startswith("gs_") for a in cube.data.attributes)


class _Sink:
    """A real request sink for the job manager: it records what would be sent."""

    def __init__(self):
        self.sent = []

    def submit(self, pipeline, params=None, inputs=None, keep=True):
        self.sent.append(("submit", pipeline))
        return f"r{len(self.sent)}"

    def cancel(self, job):
        self.sent.append(("cancel", job))
        return f"r{len(self.sent)}"

    def unwatch(self, job):
        pass


def test_reconstruct_handlers_apply_in_steps_and_a_cancel_keeps_a_whole_partial(blender_addon):
    """splat.reconstruct events through the real job manager and splat_train's registered handlers."""
    from addon.blender import splat_train
    from addon.core import splat_requests

    obj = gi.create_gaussian_object("Target", splat_requests.empty_gaussians(1))
    manager = jobs_mod.JobManager(_Sink(), release=lambda outputs: None)
    record = manager.submit(splat_train.RECONSTRUCT, target=obj.name)
    manager.handle({"type": "accepted", "re": record.request_id, "job": "J1", "position": 0})
    first, second = make_gaussians(BIG, 3, seed=1), make_gaussians(BIG, 3, seed=2)

    manager.handle({"type": "partial", "job": "J1", "outputs": {"gaussians": first, "step": 10}})
    ticks = 0
    while manager.apply(budget_s=0.0):  # one step per "tick"
        ticks += 1
    assert ticks > 5  # applied over many ticks, not in one
    target = bpy.data.objects["Target"]
    assert_bit_equal(gi.read_gaussians(target), first)
    assert (target[splat_train.PROP_PARTIALS], target[splat_train.PROP_STEP]) == (1, 10)

    # A second partial is half applied (in place) when the job is cancelled: it still ends whole.
    manager.handle({"type": "partial", "job": "J1", "outputs": {"gaussians": second, "step": 20}})
    for _ in range(7):  # the handler call, 3 SH gathering blocks, positions, rotations, scales
        manager.apply(budget_s=0.0)
    half = gi.read_gaussians(bpy.data.objects["Target"])
    assert np.array_equal(half["means"], second["means"]) and np.array_equal(half["sh0"], first["sh0"])
    manager.handle({"type": "cancelled", "job": "J1"})
    while manager.apply(budget_s=0.0):
        pass
    assert record.state == "cancelled" and record.partials_applied == 2
    target = bpy.data.objects["Target"]
    assert_bit_equal(gi.read_gaussians(target), second)
    assert (target[splat_train.PROP_PARTIALS], target[splat_train.PROP_STATE]) == (2, "training")


def test_reconstruct_result_for_a_target_deleted_midway_is_dropped(blender_addon):
    from addon.blender import splat_train

    gi.create_gaussian_object("Target", make_gaussians(10, 0))
    manager = jobs_mod.JobManager(_Sink(), release=lambda outputs: None)
    record = manager.submit(splat_train.RECONSTRUCT, target="Target")
    manager.handle({"type": "accepted", "re": record.request_id, "job": "J2", "position": 0})
    manager.handle({"type": "result", "job": "J2",
                    "outputs": {"gaussians": make_gaussians(BIG, 3), "metrics": {"psnr": 30.0, "count": BIG}}})
    for _ in range(3):
        manager.apply(budget_s=0.0)
    bpy.data.objects.remove(bpy.data.objects["Target"])
    while manager.apply(budget_s=0.0):
        pass
    assert record.applied and not record.error_code  # nothing to apply into; not a failure
    assert "Target" not in bpy.data.objects
