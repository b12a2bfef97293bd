"""The built-in demo recording: its videos, DANNCE calibration and ground truth agree."""
import cv2
import h5py
import numpy as np
import pytest

from workflow_scripts.body_model import load_body_model, save_npz
from workflow_scripts.calibration import read_calibration
from workflow_scripts.demo import DemoConfig, run_demo_recording
from workflow_scripts.video import probe_video


@pytest.fixture(scope="module")
def demo(tmp_path_factory, mammal_dir):
    d = tmp_path_factory.mktemp("demo")
    save_npz(load_body_model(mammal_dir), d / "mouse.npz")
    cfg = DemoConfig(num_frames=4, width=192, height=160, focal_px=280, num_cameras=3)
    run_demo_recording(str(d / "mouse.npz"), str(d / "out"), cfg)
    return d / "out", cfg


def test_videos_have_the_configured_size_and_length(demo):
    out, cfg = demo
    for i in range(1, cfg.num_cameras + 1):
        info = probe_video(out / "videos" / f"cam{i}.mp4")
        assert (info.width, info.height, info.num_frames) == (cfg.width, cfg.height, cfg.num_frames)


def test_dannce_calibration_reads_back_exactly(demo):
    out, cfg = demo
    cams, fmt = read_calibration(out / "calibration", image_size=(cfg.width, cfg.height))
    assert fmt == "dannce"
    with h5py.File(out / "ground_truth.h5") as f:
        for i, cam in enumerate(cams):
            np.testing.assert_allclose(cam.K, f["K"][i], atol=1e-9)
            np.testing.assert_allclose(cam.dist, f["dist"][i], atol=1e-12)
            np.testing.assert_allclose(cam.w2c, f["w2c"][i], atol=1e-9)


def test_ground_truth_projects_onto_the_true_masks(demo):
    """The true centre of mass and the posed mesh, projected through the *distorted* calibration,
    land on the true masks, which are themselves non-empty and mostly inside the image."""
    out, cfg = demo
    cams, _ = read_calibration(out / "calibration", image_size=(cfg.width, cfg.height))
    with h5py.File(out / "ground_truth.h5") as f:
        com, verts, masks = f["com"][:], f["vertices"][:], f["masks"][:]
    assert masks.shape == (cfg.num_cameras, cfg.num_frames, cfg.height, cfg.width)
    assert np.all(np.abs(verts[..., 2].min(axis=1)) < 5.0)  # feet on the floor (mm)
    for c, cam in enumerate(cams):
        for t in range(cfg.num_frames):
            m = masks[c, t] > 0
            assert m.sum() > 50
            near = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # within 1 px
            uv = cam.project(verts[t]).astype(int)
            inside = (uv[:, 0] >= 0) & (uv[:, 0] < cfg.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cfg.height)
            # thin parts (tail, digits) are narrower than a pixel here (the mouse is ~35 px long)
            assert near[uv[inside, 1], uv[inside, 0]].mean() > 0.95
            u, v = cam.project(com[t])
            ys, xs = np.nonzero(m)
            assert np.hypot(xs.mean() + 0.5 - u, ys.mean() + 0.5 - v) < 0.25 * np.sqrt(m.sum()) + 3
