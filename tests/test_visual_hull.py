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
    tri = locate_track(cams, qc, LocateParams(smooth_window=1, center="triangulation"))
    X_tri = tri[["x", "y", "z"]].to_numpy()[0]
    X_hull, hull = hull_center(cams, masks, X_tri)
    err_tri, err_hull = np.linalg.norm(X_tri - truth), np.linalg.norm(X_hull - truth)
    assert err_hull < 0.6 * hull.voxel + 0.3 and err_hull < 0.5 * err_tri, (err_hull, err_tri, hull.voxel)
    # locate_track with the masks uses the hull, and says so.
    table = locate_track(cams, qc, LocateParams(smooth_window=1), masks=lambda name, f: masks[[c.name for c in cams].index(name)])
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
    table = locate_track(cams, qc, LocateParams(smooth_window=1), masks=lambda name, f: shifted[[c.name for c in cams].index(name)])
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
    one = locate_track(cams, qc, LocateParams(smooth_window=1), masks=src, threads=1)
    three = locate_track(cams, qc, LocateParams(smooth_window=1), masks=src, threads=3)
    pd.testing.assert_frame_equal(one, three)
    assert (one["center_method"] == "visual_hull").all()
