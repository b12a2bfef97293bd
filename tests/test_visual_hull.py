"""Visual hull centre: projection equals the camera model, carving semantics, and the hull's
surface centroid recovers a known shape's surface centroid better than triangulated 2D centroids."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import trimesh

from workflow_scripts.body_model import center_of_mass
from workflow_scripts.cameras import Camera, look_at_c2w
from workflow_scripts.locate import LocateParams, locate_track
from workflow_scripts.visual_hull import carve, hull_center, project_in_front

# A "mouse": an ellipsoid body plus a spherical head (mm), up = +z. (centre, semi-axes)
BODY = (np.array([0.0, 0.0, 20.0]), np.array([40.0, 15.0, 14.0]))
HEAD = (np.array([52.0, 6.0, 24.0]), np.array([12.0, 12.0, 12.0]))


def rig(n=6, size=(320, 240)) -> list[Camera]:
    """n distorted, skewed cameras on a ring 300 mm out and 180 mm up, looking at the shape."""
    W, H = size
    cams = []
    for i, a in enumerate(np.linspace(0, 2 * np.pi, n, endpoint=False) + 0.3):
        eye = np.array([300 * np.cos(a), 300 * np.sin(a), 180.0])
        K = [[420.0, -1.0, W / 2 + 3], [0.0, 424.0, H / 2 - 2], [0.0, 0.0, 1.0]]
        cams.append(Camera.from_c2w(f"cam{i + 1}", K, look_at_c2w(eye, [10, 0, 20], [0, 0, 1]), W, H, [-0.12, 0.08, 0.001, -0.001, 0.0]))
    return cams


def silhouette(cam: Camera, blobs=(BODY, HEAD)) -> np.ndarray:
    """uint8 [H, W] exact mask: pixel centre's ray hits one of the ellipsoids."""
    v, u = np.mgrid[0:cam.height, 0:cam.width]
    d = cam.pixel_rays(np.stack([u + 0.5, v + 0.5], axis=-1).reshape(-1, 2))
    o = cam.center
    hit = np.zeros(len(d), bool)
    for c, ax in blobs:
        oo, dd = (o - c) / ax, d / ax
        a, b, cc = (dd * dd).sum(1), 2 * (dd @ oo), oo @ oo - 1
        hit |= b * b - 4 * a * cc >= 0
    return hit.reshape(cam.height, cam.width).astype(np.uint8) * 255


def surface_centroid(blobs=(BODY, HEAD)) -> np.ndarray:
    """Area-weighted surface centroid of the (disjoint) ellipsoids, from fine meshes."""
    vs, fs, off = [], [], 0
    for c, ax in blobs:
        m = trimesh.creation.icosphere(subdivisions=5)
        vs.append(m.vertices * ax + c)
        fs.append(m.faces + off)
        off += len(m.vertices)
    return center_of_mass(np.concatenate(vs), np.concatenate(fs))


@pytest.fixture(scope="module")
def scene():
    cams = rig()
    return cams, [silhouette(c) for c in cams], surface_centroid()


def test_projection_equals_camera_model_and_drops_points_behind():
    X = np.random.default_rng(0).normal(size=(500, 3)) * 40 + [10, 0, 20]
    for cam in rig():
        np.testing.assert_allclose(project_in_front(cam, X), cam.project(X), atol=1e-9)
    behind = project_in_front(rig()[0], np.array([[600.0, 200.0, 400.0]]))  # far behind camera 1 (eye ~(287, 89, 180))
    assert np.isnan(behind).all()


def test_carving_semantics(scene):
    cams, masks, _ = scene
    origin, voxel, shape = np.array([-60.0, -40.0, -10.0]), 4.0, (35, 20, 15)
    strict = carve(cams, masks, origin, voxel, shape)
    loose = carve(cams, masks, origin, voxel, shape, max_misses=1)
    without_one = carve(cams, [None] + masks[1:], origin, voxel, shape)
    assert strict.occupied.any()
    assert (strict.occupied <= loose.occupied).all() and loose.occupied.sum() > strict.occupied.sum()
    assert (strict.occupied <= without_one.occupied).all()  # a camera without a mask does not carve
    pts = strict.points()
    inside = np.zeros(len(pts), bool)
    for c, ax in (BODY, HEAD):
        inside |= (((pts - c) / ax) ** 2).sum(1) <= 1
    assert inside.all() or inside.mean() > 0.85  # the hull holds the shape (it may add a little)
    assert np.isnan(carve(cams, [np.zeros_like(m) for m in masks], origin, voxel, shape).surface_centroid()).all()


def test_hull_centre_beats_triangulated_centroids(scene):
    cams, masks, truth = scene
    # Triangulated 2D mask centroids, as locate_mouse does without the hull.
    qc = {}
    for cam, m in zip(cams, masks):
        ys, xs = np.nonzero(m)
        qc[cam.name] = pd.DataFrame({"frame_index": [0], "area": [float(len(xs))], "centroid_x": [xs.mean() + 0.5],
                                     "centroid_y": [ys.mean() + 0.5], "touches_border": [False], "valid": [True]})
    tri = locate_track(cams, qc, LocateParams(smooth_ms=0, center="triangulation"))
    X_tri = tri[["x", "y", "z"]].to_numpy()[0]
    X_hull, hull = hull_center(cams, masks, X_tri)
    err_tri, err_hull = np.linalg.norm(X_tri - truth), np.linalg.norm(X_hull - truth)
    assert err_hull < 0.6 * hull.voxel + 0.3 and err_hull < 0.5 * err_tri, (err_hull, err_tri, hull.voxel)
    # locate_track with the masks uses the hull, and says so.
    table = locate_track(cams, qc, LocateParams(smooth_ms=0, center="visual_hull"), masks=lambda name, f: masks[[c.name for c in cams].index(name)])
    assert table["center_method"].tolist() == ["visual_hull"]
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy()[0], X_hull, atol=1e-9)
    np.testing.assert_allclose(table[["tri_x", "tri_y", "tri_z"]].to_numpy()[0], X_tri, atol=1e-9)


def test_empty_hull_keeps_triangulated_centre(scene):
    cams, masks, _ = scene
    qc = {}
    for cam, m in zip(cams, masks):
        ys, xs = np.nonzero(m)
        qc[cam.name] = pd.DataFrame({"frame_index": [7], "area": [float(len(xs))], "centroid_x": [xs.mean() + 0.5],
                                     "centroid_y": [ys.mean() + 0.5], "touches_border": [False], "valid": [True]})
    # Masks that disagree completely (each camera sees the shape shifted far away): nothing survives.
    shifted = [np.roll(m, 100, axis=1) if i % 2 else m for i, m in enumerate(masks)]
    table = locate_track(cams, qc, LocateParams(smooth_ms=0, center="visual_hull"), masks=lambda name, f: shifted[[c.name for c in cams].index(name)])
    assert table["valid"].tolist() == [True] and table["center_method"].tolist() == ["triangulation"]
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), table[["tri_x", "tri_y", "tri_z"]].to_numpy())


def test_parallel_carving_gives_identical_centres(scene):
    cams, masks, _ = scene
    frames = np.arange(5)
    qc = {}
    for cam, m in zip(cams, masks):
        ys, xs = np.nonzero(m)
        qc[cam.name] = pd.DataFrame({"frame_index": frames, "area": float(len(xs)), "centroid_x": xs.mean() + 0.5 + frames * 0.2,
                                     "centroid_y": ys.mean() + 0.5, "touches_border": False, "valid": True})
    src = lambda name, f: masks[[c.name for c in cams].index(name)]  # noqa: E731
    one = locate_track(cams, qc, LocateParams(smooth_ms=0, center="visual_hull"), masks=src, threads=1)
    three = locate_track(cams, qc, LocateParams(smooth_ms=0, center="visual_hull"), masks=src, threads=3)
    pd.testing.assert_frame_equal(one, three)
    assert (one["center_method"] == "visual_hull").all()


# ------------------------------------------------------------------ the body model fitted to the masks
from workflow_scripts.body_model import load_body_model, pose_mesh  # noqa: E402
from workflow_scripts.errors import InputError  # noqa: E402
from workflow_scripts.locate import estimate_up  # noqa: E402
from workflow_scripts.poses import PoseSampler, PoseSamplerConfig, WalkPath  # noqa: E402
from workflow_scripts.visual_hull import ARTICULATIONS, N_GLOBAL, ArticulatedMesh, BodyFitter, MaskViews  # noqa: E402


@pytest.fixture(scope="module")
def mouse(mammal_dir):
    model = load_body_model(mammal_dir)
    return model, ArticulatedMesh(model)


def mesh_mask(cam: Camera, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """uint8 [H, W] silhouette of a mesh (every face filled at its projected corners; faces are ~1 px)."""
    import cv2

    img = np.zeros((cam.height, cam.width), np.uint8)
    pts = np.round((cam.project(verts) - 0.5) * 16).astype(np.int32)  # OpenCV pixel centres, 4 fractional bits
    for f in pts[faces]:
        cv2.fillConvexPoly(img, f, 255, lineType=cv2.LINE_8, shift=4)
    return img


def mouse_rig() -> list[Camera]:
    """6 distorted, skewed cameras 300 mm out and 180 mm up, about 1.4 px per mm at the mouse."""
    cams = []
    for i, a in enumerate(np.linspace(0, 2 * np.pi, 6, endpoint=False) + 0.3):
        eye = np.array([300 * np.cos(a), 300 * np.sin(a), 180.0])
        K = [[420.0, -1.0, 163.0], [0.0, 424.0, 118.0], [0.0, 0.0, 1.0]]
        cams.append(Camera.from_c2w(f"cam{i + 1}", K, look_at_c2w(eye, [0, 0, 20], [0, 0, 1]), 320, 240, [-0.12, 0.08, 0.001, -0.001, 0.0]))
    return cams


def test_articulated_mesh_is_pose_mesh(mouse):
    model, mesh = mouse
    rng = np.random.default_rng(5)
    qs = np.stack([np.concatenate([rng.normal(0, 30, 3), rng.normal(0, 0.5, 3), [np.log(rng.uniform(80, 120))],
                                   mesh.prior_mean + rng.uniform(-1.5, 1.5, len(ARTICULATIONS)) * mesh.prior_half]) for _ in range(3)])
    R0 = Camera.from_c2w("r", np.eye(3), look_at_c2w([1.0, 2.0, 3.0], [0, 0, 0], [0, 0, 1]), 2, 2).R
    full = mesh.world(qs, R0)
    some = mesh.world(qs, R0, mesh.blend[::7])
    for b, q in enumerate(qs):
        v, _ = pose_mesh(model, mesh.pose(q, R0))
        np.testing.assert_allclose(full[b], v, atol=1e-9)
        np.testing.assert_allclose(some[b], v[::7], atol=1e-9)
        np.testing.assert_allclose(mesh.center(q, R0), center_of_mass(v, model.faces), atol=1e-9)
    assert len(qs[0]) == N_GLOBAL + len(ARTICULATIONS)


def test_mask_views_project_and_signed_distance():
    cams = rig()
    masks = [silhouette(c) for c in cams]
    views = MaskViews(cams, [None] + masks[1:])
    assert len(views) == 5 and views.cameras[0] is cams[1]
    X = np.random.default_rng(1).normal(size=(300, 3)) * 30 + [10, 0, 20]
    uv = views.project(X)
    for k, cam in enumerate(views.cameras):
        np.testing.assert_allclose(uv[k], cam.project(X), atol=1e-9)
    # signed distance: + inside, - outside, ~0 on the contour points, and inside <=> the mask pixel is set
    k = np.repeat(np.arange(5), len(X))
    s = views.sample_at(k, uv.reshape(-1, 2))
    pix = np.floor(uv.reshape(-1, 2)).astype(int)
    ok = (pix[:, 0] >= 0) & (pix[:, 1] >= 0) & (pix[:, 0] < 320) & (pix[:, 1] < 240)
    inside = np.array([masks[1:][kk][v, u] > 0 for kk, (u, v) in zip(k[ok], pix[ok])])
    assert np.mean((s[ok] > 0) == inside) > 0.97
    assert np.abs(views.sample_at(views.contour_view, views.contour)).max() < 0.75
    # contour normals point out of the mask (but where the outline is concave within 2 px)
    assert np.mean(views.sample_at(views.contour_view, views.contour + 2 * views.normal) < 0) > 0.95
    assert np.mean(views.sample_at(views.contour_view, views.contour - 2 * views.normal) > 0) > 0.95


@pytest.mark.parametrize("seed", [3, 8])
def test_body_fit_recovers_the_centre_of_a_random_pose(mouse, seed):
    """A pose drawn by the pose sampler (limb abduction, per-joint tail wiggle and bone lengths
    beyond what the fit varies), rendered into 6 cameras: the fitted mesh's centre is within
    0.5 mm of the truth; the visual hull's is 1.5-3 mm off."""
    model, mesh = mouse
    rng = np.random.default_rng(seed)
    v, _ = pose_mesh(model, PoseSampler(model, PoseSamplerConfig(base_scale=100.0)).sample(rng))
    truth = center_of_mass(v, model.faces)
    cams = mouse_rig()
    masks = [mesh_mask(c, v, model.faces) for c in cams]
    start = truth + rng.normal(0, 3, 3)
    fitter = BodyFitter(mesh)
    fit = fitter.fit(cams, masks, start, estimate_up(cams))
    err_fit = np.linalg.norm(fit.center - truth)
    err_hull = np.linalg.norm(hull_center(cams, masks, start)[0] - truth)
    assert err_fit < 0.5 and err_fit < 0.3 * err_hull, (err_fit, err_hull)
    again = fitter.fit(cams, masks, start, estimate_up(cams))
    np.testing.assert_allclose(again.center, fit.center, rtol=0, atol=1e-9)  # deterministic (to rounding: SIMD sums vary in the last bits)
    assert fitter.fit(cams, [masks[0]] + [None] * 5, start, estimate_up(cams)) is None  # one view cannot be fitted


def _walk(model, n=3):
    rng = np.random.default_rng(2)
    poses = PoseSampler(model, PoseSamplerConfig()).walk_sequence(rng, n, path=WalkPath(radius=60.0, wall_margin=20.0, fps=30.0,
                                                                                           units_per_model_unit=100.0), progress=False)
    return [pose_mesh(model, p)[0] for p in poses]


def test_locate_track_with_the_body_model(mouse, monkeypatch):
    import workflow_scripts.locate as locate

    model, _ = mouse
    cams = mouse_rig()
    verts = _walk(model)
    truth = np.array([center_of_mass(v, model.faces) for v in verts])
    masks = {c.name: [mesh_mask(c, v, model.faces) for v in verts] for c in cams}
    qc = {}
    for c in cams:
        area = np.array([(m > 0).sum() for m in masks[c.name]], float)
        cxy = np.array([[np.nonzero(m)[1].mean() + 0.5, np.nonzero(m)[0].mean() + 0.5] for m in masks[c.name]])
        qc[c.name] = pd.DataFrame({"frame_index": np.arange(len(verts)), "area": area, "centroid_x": cxy[:, 0], "centroid_y": cxy[:, 1],
                                   "touches_border": False, "valid": True})
    src = lambda name, f: masks[name][f]  # noqa: E731
    params = LocateParams(smooth_ms=0, center="body_model")
    table = locate_track(cams, qc, params, masks=src, body_model=model)
    assert (table["center_method"] == "body_model").all()
    err = np.linalg.norm(table[["x", "y", "z"]].to_numpy() - truth, axis=1)
    hull = locate_track(cams, qc, LocateParams(smooth_ms=0, center="visual_hull"), masks=src)
    err_hull = np.linalg.norm(hull[["x", "y", "z"]].to_numpy() - truth, axis=1)
    assert err.max() < 0.5 and np.median(err) < 0.3 * np.median(err_hull), (err, err_hull)
    with pytest.raises(InputError, match="body model"):
        locate_track(cams, qc, params, masks=src)
    # fits that are not trusted (here: all, with a zero cost limit) fall back to the visual hull
    monkeypatch.setattr(locate, "BODY_FALLBACK_RATIO", 0.0)
    fallback = locate_track(cams, qc, params, masks=src, body_model=model)
    assert (fallback["center_method"] == "visual_hull").all()
    pd.testing.assert_frame_equal(fallback.drop(columns="center_method"), hull.drop(columns="center_method"))


def test_body_model_pieces_in_worker_processes_match_one_process(mouse, tmp_path, monkeypatch):
    """Pieces of a run fitted in spawned worker processes (masks read from the masks files by
    H5Masks, which each process opens itself) give the centres of the same pieces fitted in turn."""
    import pickle

    import h5py

    import workflow_scripts.locate as locate

    model, _ = mouse
    cams = mouse_rig()
    verts = _walk(model)
    paths, qc = {}, {}
    for c in cams:
        masks = np.stack([mesh_mask(c, v, model.faces) for v in verts])
        paths[c.name] = str(tmp_path / f"{c.name}.h5")
        with h5py.File(paths[c.name], "w") as f:
            f["masks"], f["frame_index"] = masks, np.arange(len(verts))
        ys, xs = [np.array([np.nonzero(m)[k].mean() + 0.5 for m in masks]) for k in (0, 1)]
        qc[c.name] = pd.DataFrame({"frame_index": np.arange(len(verts)), "area": (masks > 0).sum(axis=(1, 2)).astype(float),
                                   "centroid_x": xs, "centroid_y": ys, "touches_border": False, "valid": True})
    source = locate.H5Masks(paths, cams)
    copy = pickle.loads(pickle.dumps(source))  # what a worker gets: paths and rows, no open files
    assert copy._files == {} and np.array_equal(copy("cam2", 1), source("cam2", 1)) and set(copy._files) == {"cam2"}
    with pytest.raises(InputError, match="no mask for frame 7"):
        source("cam1", 7)
    monkeypatch.setattr(locate, "BODY_PIECE", 2)  # pieces [0, 1] and [2]: the second starts cold
    params = LocateParams(smooth_ms=0, center="body_model")
    one = locate_track(cams, qc, params, masks=source, threads=1, body_model=model)
    pools = []
    real_pool = locate.ForkedWorkers
    monkeypatch.setattr(locate, "ForkedWorkers", lambda n, *a, **k: pools.append((n,)) or real_pool(n, *a, **k))
    two = locate_track(cams, qc, params, masks=source, threads=2, body_model=model)
    assert pools == [(2,)]  # the pieces did run in two worker processes
    assert (one["center_method"] == "body_model").all()
    np.testing.assert_allclose(two[["x", "y", "z"]].to_numpy(), one[["x", "y", "z"]].to_numpy(), rtol=0, atol=1e-9)
    truth = np.array([center_of_mass(v, model.faces) for v in verts])
    assert np.linalg.norm(one[["x", "y", "z"]].to_numpy() - truth, axis=1).max() < 0.5
    source.close()
