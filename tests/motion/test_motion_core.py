"""Motion maths without bpy: the Motion contract, rotations, bone maps, retargeting, foot pinning."""

from __future__ import annotations

import numpy as np
import pytest

from addon.core.motion import bone_maps, footpin, motion as motion_mod, retarget as rt, rotations as rot, synthetic
from tests.motion import rigs


def test_quaternion_matrix_round_trip_and_minimal_rotation():
    rng = np.random.default_rng(0)
    q = rot.quat_normalize(rng.normal(size=(500, 4)))
    q *= np.sign(q[:, :1])
    np.testing.assert_allclose(rot.matrix_to_quat(rot.quat_to_matrix(q)), q, atol=1e-12)
    m = rot.quat_to_matrix(q)
    np.testing.assert_allclose(rot.quat_to_matrix(rot.quat_multiply(q[:-1], q[1:])), m[:-1] @ m[1:], atol=1e-12)
    a, b = rng.normal(size=(500, 3)), rng.normal(size=(500, 3))
    b[0] = -a[0]  # opposite directions take the half-turn branch
    r = rot.rotation_between(a, b)
    assert rot.angle_between(np.einsum("nij,nj->ni", r, a), b).max() < 1e-6
    np.testing.assert_allclose(rot.axis_angle_to_matrix(rot.matrix_to_axis_angle(m)), m, atol=1e-9)


def test_motion_map_round_trip_and_clear_errors():
    walk = synthetic.walk(40)
    decoded = motion_mod.decode_motion(walk.to_map(), check_fk=True)
    np.testing.assert_array_equal(decoded.rotations, walk.rotations)
    bad = walk.to_map()
    bad["skeleton"]["parents"] = bad["skeleton"]["parents"].copy()
    bad["skeleton"]["parents"][3] = 7
    with pytest.raises(motion_mod.MotionError, match="parents: joint 3"):
        motion_mod.decode_motion(bad)
    bad = walk.to_map()
    bad["rotations"] = bad["rotations"][:, :5]
    with pytest.raises(motion_mod.MotionError, match=r"motion\.rotations"):
        motion_mod.decode_motion(bad)
    bad = walk.to_map()
    bad["joints"] = bad["joints"] + 0.05
    with pytest.raises(motion_mod.MotionError, match="forward kinematics"):
        motion_mod.decode_motion(bad, check_fk=True)


@pytest.mark.parametrize("preset", sorted(bone_maps.PRESETS))
def test_presets_are_detected_from_their_names(preset):
    names = list(bone_maps.PRESETS[preset].values()) + ["some_extra_bone"]
    assert bone_maps.detect_preset(names) == preset
    assert bone_maps.canonical_names(names, [-1] * len(names), np.zeros((len(names), 3))) == bone_maps.PRESETS[preset]


def test_automatic_map_of_an_unknown_rig_from_names_and_topology():
    rig = rigs.target_rig()
    canon = bone_maps.canonical_names(rig.names, rig.parents, rig.heads)
    assert canon == {k: v for v, k in rigs.CANONICAL_OF.items()} | {}
    # Names no convention knows: topology alone finds the same limbs.
    anonymous = [f"b{i}" for i in range(len(rig.names))]
    topo = bone_maps.canonical_names(anonymous, rig.parents, rig.heads)
    for k in ("pelvis", "left_hip", "right_knee", "left_ankle", "left_shoulder", "right_elbow", "spine3", "neck"):
        assert rig.names[anonymous.index(topo[k])] == {v: n for n, v in rigs.CANONICAL_OF.items()}[k], k


def _pairs(motion, rig):
    return bone_maps.bone_map(bone_maps.canonical_names(motion.names, motion.parents, motion.rest),
                              bone_maps.canonical_names(rig.names, rig.parents, rig.heads))


def test_retarget_onto_an_a_pose_rig_matches_world_directions_and_pins_feet():
    walk = synthetic.walk(90)
    rig = rigs.target_rig()
    pairs = _pairs(walk, rig)
    assert len(pairs) == 22
    mains, directions = rt.source_directions(walk)
    free = rt.retarget(walk, rig, pairs, rt.RetargetSettings(pin_feet=False))
    pinned = rt.retarget(walk, rig, pairs, rt.RetargetSettings(pin_feet=True, blend_frames=3))
    assert free.scale == pytest.approx(1.12, rel=1e-6)
    # Pinning bends the legs only on contact frames and the 3 blend frames either side.
    near = {s: np.convolve(pinned.pinned[side], np.ones(7), mode="same") > 0
            for side, s in (("left", "L"), ("right", "R"))}
    for src, dst in pairs:
        j = walk.index(src)
        if j not in mains:
            continue
        assert rot.angle_between(free.matrices[dst][:, :3, 1], directions[:, j]).max() < 1e-6, dst
        leg = dst.split("_")[1] if dst.split("_")[-1] in ("Thigh", "Calf", "Foot", "Toe") else None
        frames = ~near[leg] if leg else slice(None)
        assert rot.angle_between(pinned.matrices[dst][frames, :3, 1], directions[frames, j]).max() < 2.0, dst
    for side, s in (("left", "L"), ("right", "R")):
        assert pinned.pinned[side].any()
        ankle = pinned.matrices[f"Bip_{s}_Foot"][:, :3, 3]
        for a, b in footpin.contact_segments(pinned.pinned[side]):
            assert np.linalg.norm(ankle[a:b] - ankle[a:b].mean(axis=0), axis=1).max() < 0.01


def test_retarget_aligns_a_control_bone_by_the_limb_it_moves_not_its_own_axis():
    """A chest control pointing backwards (Rigify's) turns the spine as the source does.

    Aligning its Y axis with the source's spine rotated it by 90 degrees and tipped the whole
    upper body forward (the demo's mannequin); its rest direction is head -> neck head.
    """
    walk = synthetic.walk(40)
    names, parents, heads, tails, rolls = rigs.other_rig()
    chest = names.index("Bip_Chest")
    tails = tails.copy()
    tails[chest] = heads[chest] + np.array([0.0, 0.2, 0.0])   # horizontal, backwards
    from addon.core.motion import armature_math
    rig = rt.TargetRig(names=names, parents=np.array(parents), rest=armature_math.bone_matrix(heads, tails, rolls),
                       lengths=np.linalg.norm(tails - heads, axis=1))
    pairs = _pairs(walk, rig)
    result = rt.retarget(walk, rig, pairs, rt.RetargetSettings(pin_feet=False))
    mains, directions = rt.source_directions(walk)
    src = next(s for s, d in pairs if d == "Bip_Chest")
    m_chest, m_neck = result.matrices["Bip_Chest"], result.matrices["Bip_Neck"]
    span = m_neck[:, :3, 3] - m_chest[:, :3, 3]
    assert rot.angle_between(span, directions[:, walk.index(src)]).max() < 1e-4
    # The control itself keeps lying down (within the walk's small lean), as at rest.
    assert rot.angle_between(m_chest[:, :3, 1], np.array([0.0, 1.0, 0.0])).max() < 15.0
    # ... and the neck above it points up as the source's neck does.
    neck_src = next(s for s, d in pairs if d == "Bip_Neck")
    assert rot.angle_between(m_neck[:, :3, 1], directions[:, walk.index(neck_src)]).max() < 1e-4


def test_two_bone_ik_reaches_reachable_goals():
    rng = np.random.default_rng(1)
    hip = rng.normal(size=(200, 3))
    knee = hip + np.array([0.0, 0.0, -0.45])
    ankle = knee + np.array([0.0, -0.03, -0.42])
    goal = ankle + rng.uniform(-0.1, 0.1, size=(200, 3)) + np.array([0.0, 0.0, 0.15])
    r_up, r_low = footpin.two_bone_ik(hip, knee, ankle, goal, np.tile([0.0, -1.0, 0.0], (200, 1)))
    new_knee = hip + np.einsum("nij,nj->ni", r_up, knee - hip)
    new_ankle = new_knee + np.einsum("nij,nj->ni", r_low @ r_up, ankle - knee)
    np.testing.assert_allclose(new_ankle, goal, atol=1e-9)
    assert np.all((new_knee - hip) @ np.array([0.0, -1.0, 0.0]) > 0)  # knees bend forward


def test_retarget_names_what_is_wrong_in_the_map():
    walk = synthetic.walk(10)
    rig = rigs.target_rig()
    with pytest.raises(ValueError, match="'nope' is not in the armature"):
        rt.retarget(walk, rig, [("pelvis", "nope")])
    with pytest.raises(ValueError, match="source root joint 'pelvis' must be mapped"):
        rt.retarget(walk, rig, [("left_hip", "Bip_L_Thigh")])


def test_amass_npz_round_trip_and_upright_default(tmp_path):
    from addon.core.motion import amass

    walk = synthetic.walk(50)
    path = tmp_path / "walk.npz"
    np.savez(path, **amass.to_amass(walk))
    with np.load(path) as data:
        back = amass.from_amass(data)
    np.testing.assert_allclose(back.joints, walk.joints, atol=1e-5)
    # AMASS's usual root orientation (SMPL's Y up turned to Z up) with a zero pose stands upright.
    poses = np.zeros((2, 156))
    poses[:, 0] = np.pi / 2
    still = amass.from_amass({"poses": poses, "trans": np.zeros((2, 3))})
    head, pelvis = still.joints[0, still.index("head")], still.joints[0, still.index("pelvis")]
    assert head[2] - pelvis[2] > 0.5 and abs(head[0] - pelvis[0]) < 1e-6
    with pytest.raises(ValueError, match="'poses' must be"):
        amass.from_amass({"poses": np.zeros((2, 10)), "trans": np.zeros((2, 3))})
