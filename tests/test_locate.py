"""locate_mouse: recovered track, drops with reasons, smoothing without bridging gaps, the
normalization, real DANNCE keypoints, bad input, determinism."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.io as sio

from workflow_scripts.calibration import read_dannce
from workflow_scripts.cameras import Camera, cameras_to_json, look_at_c2w
from workflow_scripts.errors import InputError
from workflow_scripts.locate import (
    LocateParams, compute_normalization, estimate_up, load_normalization, locate_track, norm_from_raw,
    read_locate_table, rotation_to_z, run_locate_mouse,
)
from workflow_scripts.triangulate import CameraRig, normalized_coords, triangulate_robust

N_FRAMES = 40


def ring(up=(0.0, 0.0, 1.0)) -> list[Camera]:
    """6 distorted cameras on a ring 300 mm from, and 150 mm above, the origin (world up = ``up``)."""
    up = np.asarray(up, dtype=np.float64)
    a_ax = np.array([1.0, 0.0, 0.0]) if abs(up[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    b_ax = np.cross(up, a_ax)
    cams = []
    for i, a in enumerate(np.linspace(0, 2 * np.pi, 6, endpoint=False)):
        eye = 300 * (np.cos(a) * a_ax + np.sin(a) * b_ax) + 150 * up
        K = [[1000.0, -2.0, 320.0], [0.0, 1005.0, 240.0], [0.0, 0.0, 1.0]]
        cams.append(Camera.from_c2w(f"cam{i + 1}", K, look_at_c2w(eye, [0, 0, 0], up), 640, 480, [-0.15, 0.3, 0.001, -0.001, -0.2]))
    return cams


def truth_track() -> np.ndarray:
    """[N_FRAMES, 3] a quadratic-in-time path (mm): Savitzky-Golay of order 2 keeps it exactly."""
    t = np.arange(N_FRAMES, dtype=np.float64)
    return np.stack([-40 + 2.0 * t, 30 - 0.05 * t**2, 15 + 0.3 * t - 0.004 * t**2], axis=1)


def qc_tables(cams, track, frames=None) -> dict[str, pd.DataFrame]:
    frames = np.arange(len(track)) if frames is None else frames
    out = {}
    for c in cams:
        uv = c.project(track)
        out[c.name] = pd.DataFrame({
            "frame_index": frames, "area": np.full(len(track), 2500.0), "centroid_x": uv[:, 0], "centroid_y": uv[:, 1],
            "touches_border": np.zeros(len(track), bool), "valid": np.ones(len(track), bool),
        })
    return out


def test_track_recovered_exactly_with_smoothing():
    cams, X = ring(), truth_track()
    table = locate_track(cams, qc_tables(cams, X), LocateParams(smooth_ms=90), frame_rate=100.0)
    assert table["valid"].all() and (table["reason"] == "").all() and (table["n_cameras"] == 6).all()
    np.testing.assert_allclose(table[["x_raw", "y_raw", "z_raw"]].to_numpy(), X, atol=1e-6)
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), X, atol=1e-6)
    assert table["residual_px_max"].max() < 1e-6


def test_smoothing_reduces_noise():
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X)
    rng = np.random.default_rng(1)
    for df in qc.values():
        df["centroid_x"] += rng.normal(0, 1.0, len(df))
        df["centroid_y"] += rng.normal(0, 1.0, len(df))
    table = locate_track(cams, qc, LocateParams(smooth_ms=110), frame_rate=100.0)
    err_raw = np.linalg.norm(table[["x_raw", "y_raw", "z_raw"]].to_numpy() - X, axis=1).mean()
    err_s = np.linalg.norm(table[["x", "y", "z"]].to_numpy() - X, axis=1).mean()
    assert err_s < 0.7 * err_raw


def test_corrupted_camera_is_rejected():
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X)
    qc["cam3"].loc[5:9, "centroid_x"] += 80.0
    table = locate_track(cams, qc, LocateParams(smooth_ms=0, max_residual_px=3.0))
    assert table["valid"].all()
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), X, atol=1e-6)
    assert (table.loc[5:9, "rejected_cameras"] == "cam3").all() and (table.loc[5:9, "n_cameras"] == 5).all()
    assert (table.drop(index=range(5, 10))["rejected_cameras"] == "").all()


def test_dropped_frames_have_reasons_and_are_not_bridged():
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X)
    for name in ("cam1", "cam2", "cam3", "cam4"):
        qc[name].loc[20:22, "valid"] = False
    qc["cam5"].loc[20:22, "touches_border"] = True  # down-weighted, still usable
    table = locate_track(cams, qc, LocateParams(min_cameras=3, smooth_ms=90), frame_rate=100.0)
    dropped = table.loc[20:22]
    assert not dropped["valid"].any() and dropped["x"].isna().all()
    assert dropped["reason"].str.startswith("too_few_cameras").all() and (dropped["n_cameras"] == 2).all()
    kept = table.drop(index=range(20, 23))
    assert kept["valid"].all()
    # Savitzky-Golay per run: both runs still reproduce the quadratic truth exactly.
    np.testing.assert_allclose(kept[["x", "y", "z"]].to_numpy(), X[kept.index], atol=1e-6)


def test_smoothing_does_not_cross_a_gap():
    cams, X = ring(), truth_track()
    X = X.copy()
    X[20:] += [50.0, 0.0, 0.0]  # the mouse "jumps" across dropped frames 18, 19
    qc = qc_tables(cams, X)
    for df in qc.values():
        df.loc[18:19, "valid"] = False
    table = locate_track(cams, qc, LocateParams(smooth_ms=90), frame_rate=100.0)
    kept = table[table["valid"]]
    np.testing.assert_allclose(kept[["x", "y", "z"]].to_numpy(), X[kept.index], atol=1e-6)


def test_normalization_ring_and_axes():
    cams = ring()
    centers = truth_track()
    norm = compute_normalization(cams, centers)
    np.testing.assert_array_equal(norm.up_raw, [0, 0, 1])
    eyes = np.stack([c.center for c in cams])
    dists = []
    for c in centers:
        M = norm_from_raw(norm, c)
        np.testing.assert_allclose(M[:3, :3] @ c + M[:3, 3], 0, atol=1e-12)  # centre -> origin
        e = eyes @ M[:3, :3].T + M[:3, 3]
        dists.append(np.linalg.norm(e, axis=1))
        assert np.all(e[:, 2] > 0)  # cameras above the arena stay above
    assert np.mean(dists) == pytest.approx(2.7, rel=1e-12)
    # World with y up: auto finds +y and R_up turns it into +z.
    cams_y = ring(up=(0.0, 1.0, 0.0))
    n_y = compute_normalization(cams_y, centers, up="auto")
    np.testing.assert_allclose(n_y.R_up @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(compute_normalization(cams, centers, up="-z").R_up @ [0, 0, -1], [0, 0, 1], atol=1e-12)
    assert compute_normalization(cams, centers, metric_scale=0.01).scale == 0.01
    for u in ([1.0, 2.0, 3.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]):
        R = rotation_to_z(u)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(R @ (np.asarray(u) / np.linalg.norm(u)), [0, 0, 1], atol=1e-12)
    with pytest.raises(InputError, match="up"):
        compute_normalization(cams, centers, up="w")


def _dannce_labels(path):
    m = sio.loadmat(str(path))
    X3 = m["labelData"][0, 0][0, 0]["data_3d"].reshape(-1, 22, 3)
    uv = np.stack([m["labelData"][i, 0][0, 0]["data_2d"].reshape(-1, 22, 2) for i in range(6)], axis=2)  # [N, 22, 6, 2]
    return X3, uv


def test_dannce_keypoints_triangulate_to_labels(dannce_dir):
    path = dannce_dir / "markerless_mouse_1" / "label3d_dannce.mat"
    cams = read_dannce(path, image_size=(1152, 1024))
    rig = CameraRig.from_cameras(cams)
    X3, uv = _dannce_labels(path)
    xn = normalized_coords(uv, rig)
    errs = []
    for n in range(X3.shape[0]):
        for k in range(22):
            if np.all(np.isfinite(X3[n, k])) and np.isfinite(uv[n, k, :, 0]).sum() >= 2:
                r = triangulate_robust(uv[n, k], rig, min_cameras=2, max_residual_px=1.0, xn=xn[n, k])
                errs.append(np.linalg.norm(r.X - X3[n, k]))
    assert len(errs) > 1500
    assert np.median(errs) < 1.0  # mm
    assert np.max(errs) < 1e-6  # data_2d are exact projections of data_3d


def test_dannce_rig_normalization(dannce_dir):
    path = dannce_dir / "markerless_mouse_1" / "label3d_dannce.mat"
    cams = read_dannce(path, image_size=(1152, 1024))
    np.testing.assert_array_equal(estimate_up(cams), [0, 0, 1])
    com = sio.loadmat(str(path))["com"][0, 0]["com3d"]  # [18000, 3] DANNCE's centre-of-mass track
    norm = compute_normalization(cams, com)
    np.testing.assert_array_equal(norm.R_up, np.eye(3))
    eyes = np.stack([c.center for c in cams])
    d = [np.linalg.norm(eyes @ (norm.scale * norm.R_up).T + norm_from_raw(norm, c)[:3, 3], axis=1) for c in com[::50]]
    assert np.mean(d) == pytest.approx(2.7, rel=0.01)  # subsampled frames: ~ the session mean


def _write_inputs(tmp_path, cams, qc):
    cj = tmp_path / "cameras.json"
    cj.write_text(json.dumps(cameras_to_json(cams, "synthetic", "test")))
    paths = {}
    for name, df in qc.items():
        paths[name] = str(tmp_path / f"{name}_mask_qc.csv")
        df.to_csv(paths[name], index=False)
    return str(cj), paths


def test_run_locate_mouse_end_to_end_and_deterministic(tmp_path):
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X, frames=np.arange(100, 100 + N_FRAMES))
    for df in qc.values():
        df.loc[10:11, "valid"] = False
    cj, csvs = _write_inputs(tmp_path, cams, qc)
    params = {"min_cameras": 3, "max_residual_px": 5.0, "smooth_ms": 70, "up": "auto", "camera_distance": 2.7, "metric_scale": None}
    out_csv, out_norm = tmp_path / "out" / "locate.csv", tmp_path / "out" / "normalization.json"
    run_locate_mouse(cj, csvs, str(out_csv), str(out_norm), params, frame_rate=100.0)
    table = read_locate_table(out_csv)
    assert list(table["frame_index"]) == list(range(100, 100 + N_FRAMES))
    assert table["valid"].sum() == N_FRAMES - 2 and (table.loc[table["valid"], "reason"] == "").all()
    np.testing.assert_allclose(table.loc[table["valid"], ["x", "y", "z"]].to_numpy(), X[table["valid"].to_numpy()], atol=1e-5)
    norm = load_normalization(out_norm)
    meta = json.loads(out_norm.read_text())
    assert meta["summary"] == {"kept": N_FRAMES - 2, "too_few_cameras": 2, "cameras_never_seeing_the_mouse": 0,
                               "centre_from_visual_hull": 0, "centre_from_body_model": 0}  # no masks given: triangulation
    np.testing.assert_array_equal(norm.up_raw, [0, 0, 1])
    first = out_csv.read_bytes(), out_norm.read_bytes()
    run_locate_mouse(cj, csvs, str(out_csv), str(out_norm), params, frame_rate=100.0)
    assert (out_csv.read_bytes(), out_norm.read_bytes()) == first
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["locate.csv", "normalization.json"]  # no temp files left


def test_bad_inputs(tmp_path):
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X)
    cj, csvs = _write_inputs(tmp_path, cams, qc)
    out = (str(tmp_path / "o.csv"), str(tmp_path / "o.json"))
    pd.read_csv(csvs["cam2"]).drop(columns=["area"]).to_csv(csvs["cam2"], index=False)
    with pytest.raises(InputError, match=r"cam2_mask_qc.csv.*area"):
        run_locate_mouse(cj, csvs, *out, {})
    with pytest.raises(InputError, match="unknown locate setting"):
        run_locate_mouse(cj, csvs, *out, {"smoothing": 3})
    with pytest.raises(InputError, match="min_cameras"):
        LocateParams.from_dict({"min_cameras": 1})
    with pytest.raises(InputError, match="not in the calibration"):
        locate_track(cams, {"camX": qc["cam1"]}, LocateParams())
    (tmp_path / "b").mkdir()
    cj2, csvs2 = _write_inputs(tmp_path / "b", cams, {k: v.assign(valid=False) for k, v in qc.items()})
    with pytest.raises(InputError, match="no frame has a valid 3D centre"):
        run_locate_mouse(cj2, csvs2, *out, {})


def test_a_camera_that_never_sees_the_mouse_is_named_and_left_out(tmp_path, caplog):
    cams, X = ring(), truth_track()
    qc = qc_tables(cams, X)
    blind = cams[2].name
    qc[blind]["valid"] = False
    qc[blind]["area"] = 0
    cj, csvs = _write_inputs(tmp_path, cams, qc)
    out_csv, out_norm = tmp_path / "locate.csv", tmp_path / "normalization.json"
    with caplog.at_level("WARNING"):
        run_locate_mouse(cj, csvs, str(out_csv), str(out_norm), {"min_cameras": 3})
    assert any(csvs[blind] in r.getMessage() and "never sees the mouse" in r.getMessage() for r in caplog.records)
    table = read_locate_table(out_csv)
    assert table["valid"].all() and (table["n_cameras"] == len(cams) - 1).all()
    np.testing.assert_allclose(table[["x", "y", "z"]].to_numpy(), X, atol=1e-5)
    assert json.loads(out_norm.read_text())["summary"]["cameras_never_seeing_the_mouse"] == 1


def test_smoothing_window_follows_the_frame_rate(tmp_path):
    import h5py

    from workflow_scripts.locate import sampled_frame_rate, smooth_window_frames

    assert [smooth_window_frames(50, r) for r in (15, 30, 60, 100, 200)] == [1, 1, 3, 5, 9]
    assert smooth_window_frames(60, 100) == 5 and smooth_window_frames(70, 100) == 7  # largest odd count within the span
    assert smooth_window_frames(0, None) == 1
    with pytest.raises(InputError, match="frame rate"):
        smooth_window_frames(50, None)

    def masks_file(name, fps, stride):
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.attrs["fps"], f.attrs["stride"] = fps, stride
        return str(path)

    assert sampled_frame_rate({"a": masks_file("a", 100.0, 2), "b": masks_file("b", 100.0, 2)}) == 50.0
    assert sampled_frame_rate({"a": masks_file("c", 0.0, 1)}) is None  # image folders have no frame rate
    with pytest.raises(InputError, match="disagree"):
        sampled_frame_rate({"a": masks_file("d", 100.0, 1), "b": masks_file("e", 50.0, 1)})
