"""Tests of the pose sampler, walking sequences and the coverage check."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from workflow_scripts.body_model import Pose, center_of_mass, load_body_model, pose_mesh
from workflow_scripts.errors import InputError
from workflow_scripts.poses import (
    NECK_HEAD, SPINE, TAIL, PoseSampler, PoseSamplerConfig, WalkPath, load_posed_examples, pose_coverage,
    read_obj_vertices, shape_distance, similarity_align)


@pytest.fixture(scope="module")
def model(mammal_dir):
    return load_body_model(mammal_dir)


def fixed_cfg(**kw) -> PoseSamplerConfig:
    """A config with every random range collapsed to 0 and no base pose, then ``kw``."""
    zero = (0.0, 0.0)
    cfg = PoseSamplerConfig(base_pose_deg={}, spine_bend=zero, spine_pitch=zero, spine_twist=zero, head_yaw=zero,
                            head_pitch=zero, head_roll=zero, rear_probability=0.0, body_pitch=zero, limb_swing=zero,
                            limb_flex=zero, limb_abduction=zero, tail_curl=zero, tail_lift=zero, tail_wiggle=0.0,
                            heading=zero, scale=(1.0, 1.0), bone_jitter=0.0, place_on_floor=False)
    return replace(cfg, **kw)


def joint(model, pose, name):
    return pose_mesh(model, pose)[1][model.joint_index(name)]


def test_joint_groups_are_chains(model):
    for chain in (SPINE, NECK_HEAD, TAIL):
        ids = [model.joint_index(n) for n in chain]
        assert all(model.parents[b] == a for a, b in zip(ids, ids[1:])) or chain == SPINE
    # The spine joints lie between the pelvis and the neck on one parent path.
    path, j = [], model.joint_index("skull")
    while j >= 0:
        path.append(model.joint_names[j])
        j = model.parents[j]
    assert set(SPINE) - {"neck_stretch"} <= set(path) and set(NECK_HEAD) <= set(path)
    s = PoseSampler(model)
    assert len(s.limbs) == 4 and all(len(v) == 3 for v in s.limbs.values())


def test_zero_config_gives_rest_pose(model):
    p = PoseSampler(model, fixed_cfg()).sample(np.random.default_rng(0))
    v, _ = pose_mesh(model, p)
    np.testing.assert_allclose(v, model.vertices, atol=1e-12)


def test_same_seed_same_pose(model):
    s = PoseSampler(model)
    a, b = s.sample(np.random.default_rng(7)), s.sample(np.random.default_rng(7))
    c = s.sample(np.random.default_rng(8))
    for k in ("joint_rotvecs", "global_rotvec", "translation", "bone_scales"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.scale == b.scale and not np.allclose(a.joint_rotvecs, c.joint_rotvecs)


@pytest.mark.parametrize("place_on_floor", [True, False])
def test_sample_posed_is_sample_plus_its_mesh(model, place_on_floor):
    """sample_posed draws the same pose as sample and returns pose_mesh of it bit for bit (it
    poses once instead of twice), with the surface centroid of those vertices."""
    s = PoseSampler(model, replace(PoseSamplerConfig(), place_on_floor=place_on_floor))
    p = s.sample(np.random.default_rng(4))
    q, v, j, c = s.sample_posed(np.random.default_rng(4))
    for k in ("joint_rotvecs", "global_rotvec", "translation", "bone_scales"):
        np.testing.assert_array_equal(getattr(p, k), getattr(q, k))
    v2, j2 = pose_mesh(model, q)
    assert np.array_equal(v, v2) and np.array_equal(j, j2)
    np.testing.assert_allclose(c, center_of_mass(v, model.faces), rtol=0, atol=1e-12)
    assert place_on_floor == (abs(v[:, 2].min()) < 1e-12)


def test_limits_and_floor(model):
    cfg = PoseSamplerConfig()
    s = PoseSampler(model, cfg)
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = s.sample(rng)
        assert cfg.scale[0] <= p.scale <= cfg.scale[1]
        assert np.all(np.abs(p.bone_scales - 1) <= cfg.bone_jitter)
        v, _ = pose_mesh(model, p)
        assert abs(v[:, 2].min()) < 1e-9
        np.testing.assert_allclose(center_of_mass(v, model.faces)[:2], 0, atol=1e-9)
        # Deltas stay within base + the summed ranges (a loose but failing-if-broken bound).
        assert np.degrees(np.linalg.norm(p.joint_rotvecs - s.base, axis=1)).max() < 60


@pytest.mark.parametrize("field_, value, name, axis, sign", [
    ("head_yaw", 30.0, "snout_end", 0, +1),       # nose to the mouse's left (+x)
    ("head_pitch", 30.0, "snout_end", 2, +1),     # nose up
    ("spine_bend", 30.0, "snout_end", 0, +1),     # front half turned left
    ("spine_pitch", 30.0, "snout_end", 2, +1),    # front half up
    ("tail_curl", 60.0, "tail_9_end", 0, +1),     # tail tip to the left
    ("tail_lift", 40.0, "tail_9_end", 2, +1),     # tail tip up
    ("body_pitch", 20.0, "snout_end", 2, +1),     # whole body nose up
    ("heading", 90.0, "snout_end", 0, 0),         # checked exactly below
])
def test_articulation_signs(model, field_, value, name, axis, sign):
    rest = joint(model, Pose.rest(model), name)
    p = PoseSampler(model, fixed_cfg(**{field_: (value, value)})).sample(np.random.default_rng(0))
    moved = joint(model, p, name)
    if field_ == "heading":
        # A yaw of +90 deg about z takes the nose from -y to +x (counter-clockwise from above).
        np.testing.assert_allclose(moved, Rotation.from_euler("z", 90, degrees=True).apply(rest), atol=1e-12)
        return
    assert sign * (moved[axis] - rest[axis]) > 0.02


def test_limb_swing_moves_paw_forward(model):
    cfg = fixed_cfg(limb_swing=(30.0, 30.0))
    p = PoseSampler(model, cfg).sample(np.random.default_rng(0))
    for paw in ("fore_paw_l", "fore_paw_r", "hind_paw_l", "hind_paw_r"):
        assert joint(model, p, paw)[1] < joint(model, Pose.rest(model), paw)[1] - 0.01  # head is at -y


def test_base_pose_is_mirror_symmetric(model):
    s = PoseSampler(model)
    for name in ("femur_l", "humerus_l", "fore_paw_l"):
        l, r = s.base[model.joint_index(name)], s.base[model.joint_index(name[:-2] + "_r")]
        np.testing.assert_allclose(r, [l[0], -l[1], -l[2]])
    p = Pose.rest(model)
    p.joint_rotvecs = s.base.copy()
    _, j = pose_mesh(model, p)
    # The rest skeleton itself is mirror symmetric to ~1e-6.
    for left, right in (("fore_paw_l", "fore_paw_r"), ("hind_paw_l", "hind_paw_r"), ("ear_tip_l_end", "ear_tip_r_end")):
        np.testing.assert_allclose(j[model.joint_index(left)] * [-1, 1, 1], j[model.joint_index(right)], atol=1e-5)


def test_config_errors(model):
    with pytest.raises(InputError, match="head_yaw"):
        PoseSampler(model, replace(PoseSamplerConfig(), head_yaw=(10.0, -10.0)))
    with pytest.raises(InputError, match="no_such_joint"):
        PoseSampler(model, replace(PoseSamplerConfig(), base_pose_deg={"no_such_joint": (0, 0, 0)}))
    with pytest.raises(InputError):
        PoseSampler(model, replace(PoseSamplerConfig(), rear_probability=2.0))


def test_walk_sequence(model):
    s = PoseSampler(model)
    path = WalkPath(radius=200.0, wall_margin=60.0)
    n = 45
    a = s.walk_sequence(np.random.default_rng(3), n, path, progress=False)
    b = s.walk_sequence(np.random.default_rng(3), n, path, progress=False)
    assert len(a) == n
    np.testing.assert_array_equal(a[-1].joint_rotvecs, b[-1].joint_rotvecs)
    np.testing.assert_array_equal(a[-1].translation, b[-1].translation)
    V = np.stack([pose_mesh(model, p)[0] for p in a])
    centers = np.stack([center_of_mass(v, model.faces) for v in V])
    np.testing.assert_allclose(V[:, :, 2].min(1), 0, atol=1e-9)             # on the floor
    assert np.linalg.norm(centers[:, :2] - np.asarray(path.center), axis=1).max() < path.radius
    # Smooth: per-frame changes are small away from the limbs (the gait swings limbs at ~4 Hz,
    # i.e. ~7 frames per stride), no jumps in position.
    d = np.stack([p.joint_rotvecs for p in a])
    calm = [model.joint_index(n) for n in TAIL + NECK_HEAD + SPINE]
    assert np.degrees(np.abs(np.diff(d[:, calm], axis=0))).max() < 5
    assert np.degrees(np.abs(np.diff(d, axis=0))).max() < 45
    step = np.linalg.norm(np.diff(centers[:, :2], axis=0), axis=1)
    assert step.max() < 2.0 * path.speed / path.fps * 1.5 + 1.0
    # The mouse faces where it goes: nose direction vs. velocity.
    snout = np.stack([pose_mesh(model, p)[1][model.joint_index("snout_end")] for p in a])
    face = snout[:, :2] - centers[:, :2]
    vel = np.gradient(centers[:, :2], axis=0)
    cos = (face * vel).sum(1) / np.linalg.norm(face, axis=1) / np.linalg.norm(vel, axis=1)
    assert np.median(cos) > 0.8
    # Gait: hip swing oscillates.
    hip = np.degrees(d[:, model.joint_index("humerus_l"), 0])
    assert hip.max() - hip.min() > 20


def test_similarity_align_recovers_transform():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 3))
    R = Rotation.from_rotvec([0.4, -0.2, 1.0]).as_matrix()
    Y = 2.5 * X @ R.T + [1, 2, 3]
    s, R2, t = similarity_align(X, Y)
    assert abs(s - 2.5) < 1e-12
    np.testing.assert_allclose(R2, R, atol=1e-12)
    np.testing.assert_allclose(t, [1, 2, 3], atol=1e-12)
    assert shape_distance(X, Y, 1.0) < 1e-12
    assert shape_distance(X, Y + rng.normal(0, 0.1, Y.shape), 1.0) > 1e-3


def test_coverage_of_posed_examples(model, mammal_dir):
    """Nearest of 60 sampled poses is far closer to each real posed example than the rest pose
    (measured with 100 samples: 0.07-0.08 vs 0.28 body lengths)."""
    ex = load_posed_examples(mammal_dir / "posed_examples", model.n_vertices)
    assert len(ex) == 5
    cov = pose_coverage(model, PoseSampler(model), ex, 60, np.random.default_rng(0))
    assert (cov["rest"] > 0.25).all()
    assert (cov["nearest"] < 0.5 * cov["rest"]).all() and (cov["nearest"] < 0.12).all()


def test_bad_obj(tmp_path, model):
    (tmp_path / "mouse_frame0.obj").write_text("v 0 0 0\nv 1 1 1\n")
    with pytest.raises(InputError, match="mouse_frame0.obj"):
        load_posed_examples(tmp_path, model.n_vertices)
    (tmp_path / "x.obj").write_text("v 0 a 0\n")
    with pytest.raises(InputError, match="x.obj"):
        read_obj_vertices(tmp_path / "x.obj")
