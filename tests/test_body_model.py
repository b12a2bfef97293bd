"""Tests of the MAMMAL mouse loader, npz cache and linear blend skinning (NumPy + PyTorch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from workflow_scripts.body_model import (
    N_FACES, N_JOINTS, N_VERTICES, Pose, TorchBodyModel, center_of_mass, forward_kinematics, load_body_model,
    load_npz, pose_mesh, pose_mesh_torch, poses_to_torch, rotvec_to_matrix_torch, save_npz, to_mammal_params)
from workflow_scripts.errors import InputError


@pytest.fixture(scope="module")
def model(mammal_dir):
    return load_body_model(mammal_dir)


def random_pose(model, rng, sigma=0.3, with_global=True) -> Pose:
    p = Pose.rest(model)
    p.joint_rotvecs = rng.normal(0, sigma, (model.n_joints, 3))
    if with_global:
        p.global_rotvec = rng.normal(0, 1.0, 3)
        p.translation = rng.normal(0, 5.0, 3)
        p.scale = float(rng.uniform(0.5, 120))
        p.bone_scales = rng.uniform(0.8, 1.2, model.n_bone_groups)
    return p


def subtree(model, j) -> np.ndarray:
    inside = np.zeros(model.n_joints, bool)
    inside[j] = True
    for i in range(model.n_joints):  # parents precede children in this model (checked below)
        if model.parents[i] >= 0 and inside[model.parents[i]]:
            inside[i] = True
    return inside


# ----------------------------------------------------------------------------- data facts

def test_loaded_counts_and_facts(model, mammal_dir):
    assert model.vertices.shape == (N_VERTICES, 3) and model.faces.shape == (N_FACES, 3)
    assert model.faces.min() == 0 and model.faces.max() == N_VERTICES - 1      # 0-based
    assert model.joints_rest.shape == (N_JOINTS, 3) and len(model.joint_names) == N_JOINTS
    assert model.uv.shape == (15399, 2) and model.faces_uv.max() == 15398
    assert (model.parents[1:] < np.arange(1, N_JOINTS)).all() and model.parents[0] == -1
    raw = np.loadtxt(mammal_dir / "skinning_weights.txt")
    assert raw[:, 0].min() == 1 and raw[:, 0].max() == 138                     # joints named 1..138
    raw_sums = np.bincount(raw[:, 1].astype(int), raw[:, 2], minlength=N_VERTICES)
    assert 0.99 < raw_sums.min() < 1 < raw_sums.max() < 1.01                   # rounded upstream
    np.testing.assert_allclose(np.asarray(model.weights.sum(1)).ravel(), 1.0, atol=1e-12)
    assert model.n_bone_groups == 20 and model.bone_group_names[11] == "tail"
    assert model.texture is not None and model.texture.dtype == np.uint8 and model.texture.shape[2] == 3
    # Model frame: head towards -y, left side at +x, floor at z = 0.
    J = model.joints_rest
    assert J[model.joint_index("snout_end"), 1] < -0.4 < 0.8 < J[model.joint_index("tail_9_end"), 1]
    assert J[model.joint_index("femur_l"), 0] > 0 > J[model.joint_index("femur_r"), 0]
    assert 0 <= model.vertices[:, 2].min() < 0.01
    assert 0.6 < model.body_length() < 0.65


def test_rest_rotations_reproduce_t_pose_joints(model, mammal_dir):
    """MAMMAL's kinematic chain G_i = G_parent @ [R_init_i | t_init_i] gives t_pose_joints."""
    Rm = np.loadtxt(mammal_dir / "init_joint_rot_mat.txt").reshape(-1, 3, 3)
    np.testing.assert_allclose(Rotation.from_rotvec(model.rest_rotvecs).as_matrix(), Rm, atol=1e-12)
    G = np.zeros((N_JOINTS, 4, 4))
    for i in range(N_JOINTS):
        L = np.eye(4)
        L[:3, :3], L[:3, 3] = Rm[i], model.rest_translations[i]
        G[i] = L if model.parents[i] < 0 else G[model.parents[i]] @ L
    np.testing.assert_allclose(G[:, :3, 3], model.joints_rest, atol=1e-12)


def test_mesh_is_not_watertight_so_surface_centroid(model):
    assert not trimesh.Trimesh(model.vertices, model.faces, process=False).is_watertight
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    box.apply_translation([0.3, -1.0, 2.0])
    np.testing.assert_allclose(center_of_mass(box.vertices, box.faces), [0.3, -1.0, 2.0], atol=1e-12)
    # A triangle soup: weights follow area, not vertex count.
    v = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0], [10, 0, 0], [10.1, 0, 0], [10, 0.1, 0]], float)
    c = center_of_mass(v, np.array([[0, 1, 2], [3, 4, 5]]))
    expected = (2.0 * np.array([2 / 3, 2 / 3, 0]) + 0.005 * np.array([10 + 0.1 / 3, 0.1 / 3, 0])) / 2.005
    np.testing.assert_allclose(c, expected, atol=1e-12)


# ----------------------------------------------------------------------------- posing

def test_rest_pose_is_rest_mesh(model):
    v, j = pose_mesh(model, Pose.rest(model))
    np.testing.assert_allclose(v, model.vertices, atol=1e-9, rtol=0)
    np.testing.assert_allclose(j, model.joints_rest, atol=1e-12, rtol=0)


def test_global_similarity(model):
    rng = np.random.default_rng(1)
    p = random_pose(model, rng)
    v0, j0 = pose_mesh(model, Pose(p.joint_rotvecs, np.zeros(3), np.zeros(3), 1.0, p.bone_scales))
    v, j = pose_mesh(model, p)
    R = Rotation.from_rotvec(p.global_rotvec).as_matrix()
    np.testing.assert_allclose(v, p.scale * v0 @ R.T + p.translation, atol=1e-9)
    np.testing.assert_allclose(j, p.scale * j0 @ R.T + p.translation, atol=1e-9)
    np.testing.assert_allclose(center_of_mass(v, model.faces),
                               p.scale * R @ center_of_mass(v0, model.faces) + p.translation, atol=1e-9)


def test_root_rotation_rotates_everything_about_root(model):
    R = Rotation.from_rotvec([0.3, -1.1, 0.7])
    p = Pose.rest(model)
    p.joint_rotvecs[0] = R.as_rotvec()
    v, j = pose_mesh(model, p)
    c = model.joints_rest[0]
    np.testing.assert_allclose(v, R.apply(model.vertices - c) + c, atol=1e-12)
    np.testing.assert_allclose(j, R.apply(model.joints_rest - c) + c, atol=1e-12)


@pytest.mark.parametrize("name", ["femur_l", "skull", "tail_3", "lumbar_vertebrae_3"])
def test_single_joint_moves_only_its_subtree(model, name):
    j = model.joint_index(name)
    p = Pose.rest(model)
    p.joint_rotvecs[j] = [0.4, 0.2, -0.3]
    v, joints = pose_mesh(model, p)
    inside = subtree(model, j)
    w_sub = np.asarray(model.weights[:, inside].sum(1)).ravel()
    moved = np.linalg.norm(v - model.vertices, axis=1)
    assert moved[w_sub == 0].max() < 1e-12
    assert (moved[w_sub > 0.5] > 1e-4).all() and (w_sub > 0.5).sum() > 10
    # Joints: the subtree rotates rigidly about joint j, nothing else moves.
    R = Rotation.from_rotvec(p.joint_rotvecs[j])
    c = model.joints_rest[j]
    np.testing.assert_allclose(joints[~inside], model.joints_rest[~inside], atol=1e-12)
    np.testing.assert_allclose(joints[inside], R.apply(model.joints_rest[inside] - c) + c, atol=1e-12)
    # Vertices bound only to the subtree rotate rigidly with it.
    full = w_sub > 1 - 1e-12
    np.testing.assert_allclose(v[full], R.apply(model.vertices[full] - c) + c, atol=1e-12)


def test_bone_scales_scale_group_sticks(model):
    p = Pose.rest(model)
    g = model.bone_group_names.index("tail") + 1
    p.bone_scales[g - 1] = 1.3
    _, j = pose_mesh(model, p)
    Jr, par = model.joints_rest, model.parents
    for i in range(1, N_JOINTS):
        expected = (1.3 if model.bone_groups[i] == g else 1.0) * (Jr[i] - Jr[par[i]])
        np.testing.assert_allclose(j[i] - j[par[i]], expected, atol=1e-12)


def _chain(local_R, local_t, parents):
    G = np.zeros((len(parents), 4, 4))
    for i in range(len(parents)):
        L = np.eye(4)
        L[:3, :3], L[:3, 3] = local_R[i], local_t[i]
        G[i] = L if parents[i] < 0 else G[parents[i]] @ L
    return G


def mammal_articulation_reference(model, thetas, R_row_rotvec, T, s):
    """MAMMAL's ArticulationTorch posing (absolute local thetas, zeroed root->lumbar stick,
    skinning from the t-pose), written independently in NumPy as a cross-check."""
    par = model.parents
    Rinit = Rotation.from_rotvec(model.rest_rotvecs).as_matrix()
    pose_trans = model.rest_translations.copy()
    pose_trans[1] = 0.0
    G_init = _chain(Rinit, model.rest_translations, par)
    G_scaled = _chain(Rinit, pose_trans, par)
    rel = lambda J: np.array([J[i] - (J[par[i]] if par[i] >= 0 else 0) for i in range(len(par))])  # noqa: E731
    tpose = G_init[:, :3, 3]
    diff_trans = rel(G_scaled[:, :3, 3]) - rel(tpose)
    G_cur = _chain(Rotation.from_rotvec(thetas).as_matrix(), np.zeros_like(thetas), par)[:, :3, :3]
    G_rel = G_cur @ np.linalg.inv(G_init[:, :3, :3])
    R_diff = np.array([G_rel[i] if par[i] < 0 else np.linalg.inv(G_rel[par[i]]) @ G_rel[i] for i in range(len(par))])
    G_out = _chain(R_diff, diff_trans + rel(tpose), par)
    J = G_out[:, :3, 3]
    t = J - np.einsum("jab,jb->ja", G_out[:, :3, :3], tpose)
    W = model.weights.toarray()
    v = np.einsum("vj,jab,vb->va", W, G_out[:, :3, :3], model.vertices) + W @ t
    Rrow = Rotation.from_rotvec(R_row_rotvec).as_matrix()
    return v @ Rrow * s + T, J @ Rrow * s + T


def test_matches_mammal_articulation(model):
    rng = np.random.default_rng(2)
    p = random_pose(model, rng, sigma=0.4)
    p.bone_scales[:] = 1.0  # MAMMAL's bone-length parametrization (sigmoid) is not reproduced here
    mp = to_mammal_params(model, p)
    v_ref, j_ref = mammal_articulation_reference(model, mp["thetas"], mp["R"], mp["T"], float(mp["s"]))
    v, j = pose_mesh(model, p)
    np.testing.assert_allclose(v, v_ref, atol=1e-9 * p.scale)
    np.testing.assert_allclose(j[1:], j_ref[1:], atol=1e-9 * p.scale)
    # MAMMAL's rest pose is thetas = init_joint_rotvec (not zero).
    np.testing.assert_allclose(to_mammal_params(model, Pose.rest(model))["thetas"],
                               Rotation.from_rotvec(model.rest_rotvecs).as_rotvec(), atol=1e-9)


def test_numpy_equals_torch(model):
    rng = np.random.default_rng(3)
    poses = [random_pose(model, rng) for _ in range(3)]
    ref = [pose_mesh(model, p) for p in poses]
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        tm = TorchBodyModel.from_model(model, dtype)
        v, j = pose_mesh_torch(tm, **poses_to_torch(poses, dtype))
        assert v.shape == (3, N_VERTICES, 3) and j.shape == (3, N_JOINTS, 3) and v.dtype == dtype
        for b, (vr, jr) in enumerate(ref):
            s = poses[b].scale  # compare relative to the mesh size
            np.testing.assert_allclose(v[b].numpy() / s, vr / s, atol=tol)
            np.testing.assert_allclose(j[b].numpy() / s, jr / s, atol=tol)
    # Without bone scales (None) = all ones; BodyModel accepted directly.
    p = random_pose(model, rng, with_global=False)
    v, _ = pose_mesh_torch(model, **{k: x for k, x in poses_to_torch([p], torch.float64).items() if k != "bone_scales"})
    np.testing.assert_allclose(v[0].numpy(), pose_mesh(model, p)[0], atol=1e-9)


def test_rodrigues_torch_matches_scipy():
    r = np.concatenate([np.random.default_rng(4).normal(0, 1.5, (50, 3)), np.zeros((1, 3)), [[1e-7, 0, 0]]])
    np.testing.assert_allclose(rotvec_to_matrix_torch(torch.from_numpy(r)).numpy(),
                               Rotation.from_rotvec(r).as_matrix(), atol=1e-12)


def test_gradcheck_joint_rotations(model):
    tm = TorchBodyModel.from_model(model, torch.float64)
    joints = [model.joint_index(n) for n in ("lumbar_vertebrae_3", "skull", "femur_l")]
    vert_ids = torch.arange(0, N_VERTICES, 997)
    base = torch.zeros(1, N_JOINTS, 3, dtype=torch.float64)
    base[0, 2] = 0.2  # a non-zero joint elsewhere

    def f(sub):
        r = base.index_copy(1, torch.tensor(joints), sub)
        v, j = pose_mesh_torch(tm, r, torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64),
                               torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
        return v[:, vert_ids], j[:, joints]

    x = torch.tensor([[[0.3, -0.2, 0.1], [0.0, 0.0, 0.0], [0.5, 0.1, -0.4]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_forward_kinematics_rejects_bad_shapes(model):
    p = Pose.rest(model)
    p.joint_rotvecs = np.zeros((10, 3))
    with pytest.raises(ValueError):
        forward_kinematics(model, p)


def test_pose_dict_round_trip(model):
    p = random_pose(model, np.random.default_rng(5))
    q = Pose.from_dict(p.to_dict())
    np.testing.assert_array_equal(pose_mesh(model, p)[0], pose_mesh(model, q)[0])


# ----------------------------------------------------------------------------- files

def test_npz_round_trip(model, tmp_path):
    path = tmp_path / "mouse.npz"
    save_npz(model, path)
    m2 = load_npz(path)
    for name in ("vertices", "faces", "joints_rest", "parents", "uv", "faces_uv", "texture", "rest_rotvecs",
                 "rest_translations", "bone_groups"):
        np.testing.assert_array_equal(getattr(m2, name), getattr(model, name))
    assert m2.joint_names == model.joint_names and m2.bone_group_names == model.bone_group_names
    assert (m2.weights != model.weights).nnz == 0
    assert [p.name for p in tmp_path.iterdir()] == ["mouse.npz"]  # no temporary left behind


def test_npz_without_texture_and_bad_npz(model, tmp_path):
    from dataclasses import replace
    save_npz(replace(model, texture=None), tmp_path / "a.npz")
    assert load_npz(tmp_path / "a.npz").texture is None
    np.savez(tmp_path / "bad.npz", vertices=model.vertices)
    with pytest.raises(InputError, match="bad.npz"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")


def _copy_model(mammal_dir: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in mammal_dir.iterdir():
        if f.is_file():
            (dst / f.name).symlink_to(f)
    return dst


def _replace(d: Path, name: str, text: str) -> None:
    (d / name).unlink()
    (d / name).write_text(text)


def _lines(d: Path, name: str) -> list[str]:
    return (d / name).read_text().splitlines()


@pytest.mark.parametrize("case, fname", [
    ("truncated_vertices", "vertices.txt"),
    ("nan_vertex", "vertices.txt"),
    ("weights_not_one", "skinning_weights.txt"),
    ("cyclic_parents", "parents.txt"),
    ("two_roots", "parents.txt"),
    ("face_out_of_range", "faces_vert.txt"),
    ("missing_file", "t_pose_joints.txt"),
    ("inconsistent_rest", "t_pose_joints.txt"),
])
def test_bad_files_raise_input_error(mammal_dir, tmp_path, case, fname):
    d = _copy_model(mammal_dir, tmp_path / "m")
    lines = _lines(d, fname)
    if case == "truncated_vertices":
        lines = lines[:14000]
    elif case == "nan_vertex":
        lines[5] = "nan 0 0"
    elif case == "weights_not_one":
        lines = [ln for ln in lines if ln.split()[1] != "1881"] + ["1 1881 0.5"]
    elif case == "cyclic_parents":
        lines[1] = "2"  # 1 -> 2 -> 1
    elif case == "two_roots":
        lines[5] = "-1"
    elif case == "face_out_of_range":
        lines[3] = "0 1 14522"
    elif case == "inconsistent_rest":
        lines[3] = "0.5 0.5 0.5"
    if case == "missing_file":
        (d / fname).unlink()
    else:
        _replace(d, fname, "\n".join(lines) + "\n")
    with pytest.raises(InputError, match=fname.replace(".", r"\.")) as e:
        load_body_model(d)
    assert "Fix:" in str(e.value)


def test_missing_texture_is_optional(mammal_dir, tmp_path):
    d = _copy_model(mammal_dir, tmp_path / "m")
    (d / "texture_final.png").unlink()
    assert load_body_model(d).texture is None
