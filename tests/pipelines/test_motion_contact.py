"""Foot contacts (pipelines/motion/contact.py) and the synthetic truth the motion figures rest on.

A truth with kinks makes every estimate look jerky in the acceleration error, and a truth whose
planted feet slide bounds the foot-sliding figure from below: both are checked here on the four
scripted motions (the earlier generator picked the carrying foot per frame, had a knee curve
clipped at zero and let planted feet pivot with the turn: its turn slid 6.5 mm/frame on its own
contacts and its acceleration jumped by 130-160 mm/frame^2 between frames).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.motion import contact, recover
from pipelines.motion.fit import rest_keypoints
from pipelines.motion.keypoints import CONTACT_POINTS
from pipelines.motion.synthetic import MOTIONS, make_clip, metrics


def test_contact_runs_start_low_and_slow_and_survive_one_noisy_frame():
    t = 40
    points = np.zeros((t, 1, 3))
    points[:, 0, 0] = np.concatenate([np.linspace(0, 0.5, 10), np.full(20, 0.5), np.linspace(0.5, 1.0, 10)])
    points[:10, 0, 2] = np.linspace(0.2, 0.0, 10)         # coming down while moving
    points[18, 0, 0] += 0.006                             # one frame of jitter inside the planting
    points[30:, 0, 2] = np.linspace(0.0, 0.2, 10)
    c = contact.world_contacts(points, 30.0)[:, 0] > 0.5
    assert c[10:30].all(), np.flatnonzero(~c[10:30])
    assert not c[:8].any() and not c[33:].any()
    ids = contact.segments(c[:, None])
    assert set(np.unique(ids)) == {-1, 0}
    # A run shorter than MIN_FRAMES is not a contact; runs of two points get distinct ids.
    short = np.zeros((10, 2), bool)
    short[2:4, 0] = True
    short[3:9, 1] = True
    ids = contact.segments(short)
    assert (ids[:, 0] == -1).all() and (ids[3:9, 1] == 0).all()
    enter = np.zeros((10, 1), bool)
    enter[5] = True
    stay = np.ones((10, 1), bool)
    assert contact.hysteresis(enter, stay).all()           # a run reaches over its stay frames
    assert not contact.hysteresis(np.zeros((10, 1), bool), stay).any()


@pytest.fixture(scope="module")
def anny():
    return recover.load_body(recover.ModelSource("anny", None, "wheel"), "cpu")


@pytest.mark.parametrize("kind", MOTIONS)
def test_synthetic_truth_is_smooth_and_its_planted_feet_stay(anny, kind):
    clip = make_clip(anny, kind, frames=60)
    kp = clip.keypoints
    accel = kp[2:] - 2 * kp[1:-1] + kp[:-2]
    jerk = np.linalg.norm(np.diff(accel, axis=0), axis=-1).max() * 1000
    assert jerk < 70, (kind, jerk)                        # 0.6-40 now; 130-160 with kinks
    lift = rest_keypoints(anny.rest(torch.tensor(clip.shape)))[list(CONTACT_POINTS), 2].numpy()
    truth_contacts = contact.world_contacts(kp[:, list(CONTACT_POINTS)], clip.fps, lift)
    assert truth_contacts.mean() > 0.4, kind              # each foot is down about half the time
    sliding = metrics(kp, kp, clip.fps, truth_contacts, list(CONTACT_POINTS))["foot_sliding"]
    # 0.03-1.7 now (the hand-over of a walk: both soles carry for a few frames); the turn's was 6.5.
    assert sliding < 2.0, (kind, sliding)
    # Soles never go through the floor by more than a few millimetres.
    soles = kp[:, list(CONTACT_POINTS), 2] - lift
    assert soles.min() > -0.006, (kind, soles.min())
