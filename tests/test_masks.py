"""Masks step: background median, blob masks vs truth, QC flags, external masks."""
from __future__ import annotations

import dataclasses

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workflow_scripts.errors import InputError
from workflow_scripts.masks import (FRAME_MARGIN, MaskConfig, compute_mask, estimate_background, mask_iou,
                                    mask_qc, run_masks, stored_region)
from workflow_scripts.video import iter_frames, write_video

W, H, T = 192, 144, 24


def background_texture() -> np.ndarray:
    """Static textured floor: smooth random blotches plus fine noise, uint8 [H, W, 3]."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(90, 170, (H // 8, W // 8, 3), dtype=np.uint8)
    bg = cv2.resize(coarse, (W, H), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    bg += rng.integers(-6, 7, (H, W, 3)).astype(np.int16)
    return np.clip(bg, 0, 255).astype(np.uint8)


def blob_mask(t: int) -> np.ndarray:
    """True mouse mask of frame t: a rotated ellipse moving along a circle, uint8 [H, W] 255/0."""
    m = np.zeros((H, W), np.uint8)
    ang = 2 * np.pi * t / T
    cx, cy = W / 2 + 45 * np.cos(ang), H / 2 + 30 * np.sin(ang)
    cv2.ellipse(m, (int(round(cx)), int(round(cy))), (26, 15), np.degrees(ang), 0, 360, 255, -1)
    return m


def scene(t: int) -> np.ndarray:
    f = background_texture()
    m = blob_mask(t) > 0
    f[m] = (35, 30, 28)  # dark mouse on a lighter floor
    return f


def image_folder(path, frames) -> str:
    """Frames as a folder of PNGs: a lossless 'video' (the masks step reads image folders too)."""
    path.mkdir()
    for t, f in enumerate(frames):
        Image.fromarray(f).save(path / f"{t:05d}.png")
    return str(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The moving blob as H.264 with one keyframe (libx264's default interval > T)."""
    path = tmp_path_factory.mktemp("masks") / "cam1.mp4"
    write_video(path, (scene(t) for t in range(T)), fps=30, crf=16)
    return str(path)


def test_background_is_median_without_the_mouse(video):
    bg, used = estimate_background(video, samples=T)
    np.testing.assert_array_equal(used, np.arange(T))  # one keyframe only: every frame, decoded in one pass
    diff = np.abs(bg.astype(int) - background_texture().astype(int)).max(axis=2)
    # Only codec noise (same size as in any decoded frame) remains ...
    assert np.median(diff) < 8 and np.percentile(diff, 99) < 25
    # ... and no trace of the dark blob (it differs from the floor by ~100) anywhere it went.
    assert diff.max() < 60
    np.testing.assert_array_equal(bg, estimate_background(video, samples=T)[0])  # deterministic


def test_background_from_keyframes_without_a_second_pass(tmp_path):
    """With keyframes every 4 frames, 6 samples of frames 2..21 are the keyframes at or before
    evenly spaced targets, decoded alone: they equal those frames of a full decode."""
    path = tmp_path / "gop4.mp4"
    write_video(path, (scene(t) for t in range(T)), fps=30, crf=16, gop=4)
    vids = range(2, 22)
    bg, used = estimate_background(path, vids, samples=6)
    targets = [vids[i] for i in np.round(np.linspace(0, len(vids) - 1, 6)).astype(int)]  # 2, 6, 10, 13, 17, 21
    np.testing.assert_array_equal(used, [t // 4 * 4 for t in targets])  # 0, 4, 8, 12, 16, 20
    decoded = dict(iter_frames(path))
    planar = dict(iter_frames(path, planar=True))
    from workflow_scripts.masks import estimate_backgrounds, median_uint8

    sample = [planar[int(i)] for i in used]
    medians = [median_uint8(np.stack([getattr(f, p) for f in sample])) for p in "yuv"]
    rgb_median = median_uint8(np.stack([decoded[int(i)] for i in used]))
    # 4:2:0: the image is the RGB conversion of the plane medians, the frames' own conversion
    np.testing.assert_array_equal(bg, sample[0].with_planes(*medians).rgb())
    got, yuv, used_again = estimate_backgrounds(path, vids, samples=6, rgb_median=True)
    np.testing.assert_array_equal(got, rgb_median)
    np.testing.assert_array_equal(used_again, used)
    for p, m in zip("yuv", medians):
        np.testing.assert_array_equal(getattr(yuv, p), m)
    assert np.abs(bg.astype(int) - rgb_median).max() <= 8  # (round-offs; the mouse would be ~100)
    # Too few distinct keyframes (14 targets, 6 keyframes): the targets themselves, in one pass
    bg2, used2 = estimate_background(path, vids, samples=14)
    assert len(used2) == 14 and used2[0] == 2 and used2[-1] == 21


def test_compute_mask_exact_frames():
    bg = background_texture()
    for t in range(0, T, 5):
        m = compute_mask(scene(t), bg, MaskConfig())
        assert set(np.unique(m)) <= {0, 255}
        assert mask_iou(m, blob_mask(t)) >= 0.97


def test_run_masks_iou_and_qc(video, tmp_path):
    out, qc_csv = tmp_path / "m.h5", tmp_path / "qc.csv"
    qc = run_masks(video, str(out), str(qc_csv), MaskConfig(background_samples=T))
    decoded = [f for _, f in iter_frames(video)]
    with h5py.File(out, "r") as f:
        masks, frames, boxes = f["masks"], f["frames"], f["stored_box"][:]
        assert masks.shape == (T, H, W) and masks.chunks == (1, 128, 128) and masks.compression == "lzf"
        assert frames.shape == (T, H, W, 3) and frames.chunks == (1, 128, 128, 3) and frames.compression is None
        # only the tiles that meet the mouse are stored; the others read as 0
        assert masks.id.get_num_chunks() < T * 4 and frames.id.get_num_chunks() < T * 4
        np.testing.assert_array_equal(f["frame_index"][:], np.arange(T))
        assert f["background"].shape == (H, W, 3) and f.attrs["store_frames"] == "mouse"
        ious = [mask_iou(masks[t], blob_mask(t)) for t in range(T)]
        for t in range(T):
            x0, y0, x1, y1 = boxes[t]
            m = masks[t]
            assert m.any() and not m[:y0].any() and not m[y1:].any() and not m[:, :x0].any() and not m[:, x1:].any()
            ys, xs = np.nonzero(m)  # the stored frame pixels reach FRAME_MARGIN beyond the mask ...
            assert x0 <= max(xs.min() - FRAME_MARGIN, 0) and x1 >= min(xs.max() + 1 + FRAME_MARGIN, W)
            assert y0 <= max(ys.min() - FRAME_MARGIN, 0) and y1 >= min(ys.max() + 1 + FRAME_MARGIN, H)
            # ... and are the decoded frame's
            np.testing.assert_array_equal(frames[t, y0:y1, x0:x1], decoded[t][y0:y1, x0:x1])
    assert min(ious) >= 0.95, ious
    table = pd.read_csv(qc_csv, keep_default_na=False)
    assert list(table.columns) == ["frame_index", "area", "centroid_x", "centroid_y", "bbox_x0",
                                   "bbox_y0", "bbox_x1", "bbox_y1", "touches_border", "valid", "reason"]
    assert len(table) == T and table["valid"].all() and (table["reason"] == "").all()
    assert len(qc) == T
    for t in (0, 7):
        truth = blob_mask(t) > 0
        ys, xs = np.nonzero(truth)
        assert abs(table.centroid_x[t] - (xs.mean() + 0.5)) < 0.5
        assert abs(table.centroid_y[t] - (ys.mean() + 0.5)) < 0.5


def test_qc_exact_values():
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:7] = 255  # rows 2..4, columns 3..6
    row = mask_qc(m, 42, MaskConfig(min_area_px=1))
    assert row["area"] == 12 and row["frame_index"] == 42
    assert row["centroid_x"] == pytest.approx(5.0)  # columns 3..6 centres 3.5..6.5 -> 5.0
    assert row["centroid_y"] == pytest.approx(3.5)  # rows 2..4 centres 2.5..4.5 -> 3.5
    assert (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]) == (3, 2, 7, 5)
    assert row["valid"] and row["reason"] == "" and not row["touches_border"]


def test_qc_flags():
    cfg = MaskConfig(min_area_px=50, border_margin=2)
    empty = mask_qc(np.zeros((40, 40), np.uint8), 0, cfg)
    assert not empty["valid"] and empty["reason"] == "empty" and empty["area"] == 0
    small = np.zeros((40, 40), np.uint8)
    small[10:15, 10:15] = 255
    r = mask_qc(small, 1, cfg)
    assert not r["valid"] and r["reason"] == "too_small"
    edge = np.zeros((40, 40), np.uint8)
    edge[10:30, 31:40] = 255
    r = mask_qc(edge, 2, cfg)
    assert not r["valid"] and r["touches_border"] and r["reason"] == "touches_border"
    near = np.zeros((40, 40), np.uint8)
    near[1:20, 10:30] = 255  # within the 2-pixel margin of the top edge
    assert mask_qc(near, 3, cfg)["touches_border"]
    big = np.full((40, 40), 255, np.uint8)
    assert "too_large" in mask_qc(big, 4, cfg)["reason"]


def test_empty_and_border_frames_flagged_not_crashing(tmp_path):
    """A frame with no mouse and a frame with the mouse cut by the edge are flagged in the CSV."""
    bg = background_texture()
    frames = [scene(t) for t in range(10)]
    frames[3] = bg.copy()  # mouse left the view
    edge = np.zeros((H, W), np.uint8)
    cv2.ellipse(edge, (W - 10, H // 2), (26, 15), 0, 0, 360, 255, -1)
    frames[6] = bg.copy()
    frames[6][edge > 0] = (35, 30, 28)
    folder = image_folder(tmp_path / "frames", frames)  # exact frames, no codec
    qc = run_masks(folder, str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig(), start_frame=100, offset=-100)
    table = pd.read_csv(tmp_path / "qc.csv", keep_default_na=False).set_index("frame_index")
    assert not table.loc[103, "valid"] and table.loc[103, "reason"] == "empty"
    assert not table.loc[106, "valid"] and table.loc[106, "touches_border"]
    assert "touches_border" in table.loc[106, "reason"]
    others = table.drop(index=[103, 106])
    assert others["valid"].all()
    assert list(qc["frame_index"]) == list(range(100, 110))


def test_external_masks_replace_builtin(video, tmp_path):
    folder = tmp_path / "sam2"
    folder.mkdir()
    ext = [np.zeros((H, W), np.uint8) for _ in range(T)]
    for t, m in enumerate(ext):
        m[20 + t: 60 + t, 30:90] = 200  # a rectangle, unlike the blob; >127 -> foreground
        m[0:5, 0:5] = 100  # below the 127 binarization threshold -> background
        Image.fromarray(m).save(folder / f"{t:05d}.png")
    out = tmp_path / "m.h5"
    qc = run_masks(video, str(out), str(tmp_path / "qc.csv"), MaskConfig(), external=str(folder))
    with h5py.File(out, "r") as f:
        assert f.attrs["external"] == str(folder)
        for t in range(T):
            np.testing.assert_array_equal(f["masks"][t], np.where(ext[t] > 127, 255, 0))
    assert (qc["area"] == 40 * 60).all()


def test_external_mask_video_for_full_source(tmp_path):
    """Mask video with one mask per *source* frame; the selection used offset and stride."""
    d = tmp_path
    write_video(d / "cam.mp4", (scene(t) for t in range(T)), fps=30)
    write_video(d / "ext.mp4", (blob_mask(t) for t in range(T)), fps=30, crf=0)
    run_masks(str(d / "cam.mp4"), str(d / "m.h5"), str(d / "qc.csv"), MaskConfig(), external=str(d / "ext.mp4"),
              start_frame=1, stride=4, offset=2)
    with h5py.File(d / "m.h5", "r") as f:
        fi = f["frame_index"][:]
        np.testing.assert_array_equal(fi, [1, 5, 9, 13, 17, 21])
        for k, s in enumerate(fi):
            assert mask_iou(f["masks"][k], blob_mask(s + 2)) > 0.98  # video index = s + offset


def test_external_frame_count_mismatch(video, tmp_path):
    folder = tmp_path / "short"
    folder.mkdir()
    for t in range(T - 3):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / f"{t}.png")
    with pytest.raises(InputError, match=f"{folder}.*{T - 3} frames"):
        run_masks(video, str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig(),
                  external=str(folder))
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "qc.csv").exists()


def test_mask_iou():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    assert mask_iou(a, b) == 1.0
    a[:2] = 255
    b[1:3] = 255
    assert mask_iou(a, b) == pytest.approx(4 / 12)


def test_missing_video(tmp_path):
    with pytest.raises(InputError, match="nofile.mp4"):
        run_masks(str(tmp_path / "nofile.mp4"), str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig())
    assert not (tmp_path / "m.h5").exists()


def test_stored_region_is_tile_aligned_and_covers_the_margin():
    assert stored_region(None, 300, 400) == (0, 0, 0, 0)
    assert stored_region((130, 10, 140, 20), 300, 400) == (128, 0, 256, 128)
    assert stored_region((126, 126, 127, 127), 300, 400) == (0, 0, 256, 256)  # the margin crosses into the next tiles
    assert stored_region((390, 290, 400, 300), 300, 400) == (384, 256, 400, 300)  # clipped to the image


def test_fast_largest_filled_equals_component_then_fill():
    """The contour fast path equals connected components + hole filling (unambiguous largest)."""
    from workflow_scripts.masks import _fill_holes, _largest_component, _largest_filled

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        noise = rng.normal(size=(12, 16)).astype(np.float32)
        field = cv2.resize(noise, (64, 48), interpolation=cv2.INTER_CUBIC)
        m = np.where(field > rng.uniform(-0.3, 1.0), 255, 0).astype(np.uint8)
        _, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        areas = sorted(stats[1:, cv2.CC_STAT_AREA])[::-1]
        if len(areas) > 1 and areas[0] < 1.2 * areas[1]:
            continue  # near-tie: the two rankings may legitimately pick different blobs
        checked += 1
        np.testing.assert_array_equal(_largest_filled(m), _fill_holes(_largest_component(m)))
    assert checked > 150
    ring = np.zeros((30, 30), np.uint8)
    cv2.circle(ring, (15, 15), 10, 255, 3)  # a ring: the hole must be filled
    filled = _largest_filled(ring)
    assert filled[15, 15] == 255 and filled[0, 0] == 0


def _ref_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component as first written: connectedComponentsWithStats' areas."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    return cv2.compare(labels, 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), cv2.CMP_EQ)


def _ref_fill_small_holes(mask: np.ndarray, max_frac: float) -> np.ndarray:
    """Small-hole filling as first written: every background component of the whole image
    labelled, those not touching the border with area <= max_frac x the mask's area filled."""
    limit = max_frac * cv2.countNonZero(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.bitwise_not(mask), connectivity=4)
    h, w = mask.shape
    x, y, bw, bh, area = (stats[:, i] for i in range(5))
    inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h) & (area <= limit)
    inner[0] = False
    if not inner.any():
        return mask
    return cv2.bitwise_or(mask, np.where(inner[labels], np.uint8(255), np.uint8(0)))


def _random_masks(rng: np.random.Generator, n: int, size: tuple[int, int] = (1, 40)):
    """Random 255/0 masks: salt and pepper, smooth blobs (holes, many components, ties), blobs
    off the edge."""
    for i in range(n):
        hh, ww = (int(v) for v in rng.integers(*size, 2))
        if i % 4 == 0:
            m = np.where(rng.random((hh, ww)) < rng.uniform(0.1, 0.9), 255, 0).astype(np.uint8)
        else:
            noise = rng.normal(size=(max(hh // 4, 1), max(ww // 4, 1))).astype(np.float32)
            field = cv2.resize(noise, (ww, hh), interpolation=cv2.INTER_CUBIC)
            m = np.where(field > rng.uniform(-0.5, 1.0), 255, 0).astype(np.uint8)
            if i % 4 == 2:
                m[[0, -1]] = 0
                m[:, [0, -1]] = 0
        yield m


def test_component_and_hole_steps_equal_the_whole_labelling():
    """_largest_component, _fill_small_holes and the contour shortcut of both together equal
    labelling the whole mask and background with statistics, bit for bit (ties, edges, holes,
    sizes where OpenCV labels in parallel)."""
    from workflow_scripts.masks import _fill_small_holes, _largest_component, _largest_small_holes_filled

    rng = np.random.default_rng(11)
    masks = [*_random_masks(rng, 4000), *_random_masks(rng, 40, (200, 600))]
    ring = np.zeros((40, 40), np.uint8)
    cv2.circle(ring, (20, 20), 12, 255, 8)  # a hole of ~1/3 of the ring's area
    blob = np.zeros((40, 40), np.uint8)
    cv2.ellipse(blob, (20, 20), (12, 7), 30, 0, 360, 255, -1)
    shortcut = 0
    for m in [*masks, ring, blob, np.zeros((5, 5), np.uint8), np.full((5, 5), 255, np.uint8)]:
        frac = float(rng.choice([0.0, 0.01, 0.05, 0.2, 0.99]))
        largest = _ref_largest_component(m)
        np.testing.assert_array_equal(_largest_component(m), largest)
        np.testing.assert_array_equal(_fill_small_holes(m, frac), _ref_fill_small_holes(m, frac))
        got = _largest_small_holes_filled(m, frac)
        np.testing.assert_array_equal(got, _ref_fill_small_holes(largest, frac))
        shortcut += got is m
    assert shortcut > 100  # the shortcut was taken often enough to be tested
    assert _largest_small_holes_filled(blob, 0.01) is blob  # one blob, no hole: the shortcut
    assert _largest_small_holes_filled(ring, 0.5)[20, 20] == 255 and _largest_small_holes_filled(ring, 0.2)[20, 20] == 0


def test_largest_blob_among_specks_without_labelling(monkeypatch):
    """A mouse-like blob (holes, hollows) with specks around it, in its hollows and holes, some
    touching it diagonally: kept by the flood fill, without labelling the whole mask, as
    labelling gives it."""
    import workflow_scripts.masks as masks_mod

    rng = np.random.default_rng(4)
    cases = []
    for _ in range(600):
        m = np.zeros((int(rng.integers(40, 90)), int(rng.integers(40, 90))), np.uint8)
        h, w = m.shape
        cv2.ellipse(m, (w // 2, h // 2), (int(rng.integers(8, w // 2 - 3)), int(rng.integers(6, h // 2 - 3))),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1)
        for _ in range(rng.integers(0, 4)):  # holes (fur like the floor) and bites out of the rim
            cv2.circle(m, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 6)), 0, -1)
        for _ in range(rng.integers(1, 12)):  # specks of 1 to 4 x 4 pixels, anywhere but the edge
            sx, sy = int(rng.integers(1, w - 5)), int(rng.integers(1, h - 5))
            m[sy:sy + int(rng.integers(1, 5)), sx:sx + int(rng.integers(1, 5))] = rng.choice([0, 255])
        m[[0, -1]] = 0
        m[:, [0, -1]] = 0
        cases.append((m, float(rng.choice([0.0, 0.01, 0.05, 0.3]))))
    expected = [_ref_fill_small_holes(_ref_largest_component(m), f) for m, f in cases]
    labelled = []
    real = masks_mod._largest_component
    monkeypatch.setattr(masks_mod, "_largest_component", lambda m: labelled.append(1) or real(m))
    for (m, f), ref in zip(cases, expected):
        np.testing.assert_array_equal(masks_mod._largest_small_holes_filled(m, f), ref)
    assert len(labelled) < 0.2 * len(cases)


def _reference_mask(frame: np.ndarray, background: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """compute_mask as it was before the cleaning ran on a box: every step on the whole image,
    components and holes labelled as first written."""
    from workflow_scripts.masks import _channel_max, _fill_holes, _kernel, _largest_filled

    _largest_component, _fill_small_holes = _ref_largest_component, _ref_fill_small_holes

    diff = _channel_max(cv2.absdiff(frame, background))
    if cfg.blur_ksize > 1:
        diff = cv2.medianBlur(diff, cfg.blur_ksize | 1)
    mask = cv2.threshold(diff, cfg.threshold, 255, cv2.THRESH_BINARY)[1]
    if cfg.open_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(cfg.open_ksize))
    if cfg.close_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(cfg.close_ksize))
    if cfg.keep_largest and cfg.fill_holes and cfg.max_hole_frac >= 1:
        return _largest_filled(mask)
    if cfg.keep_largest:
        mask = _largest_component(mask)
    if not cfg.fill_holes:
        return mask
    return _fill_holes(mask) if cfg.max_hole_frac >= 1 else _fill_small_holes(mask, cfg.max_hole_frac)


def test_box_cleaning_equals_whole_image_bit_for_bit():
    """Cleaning only the box around the thresholded pixels gives the whole-image mask and QC row,
    for blobs cut by the image border, rings, speckle and every combination of settings."""
    from workflow_scripts.masks import _compute_mask_box

    rng = np.random.default_rng(3)
    h, w = 70, 90
    boxed = 0
    for _ in range(400):
        bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        fr = np.clip(bg + rng.normal(0, rng.choice([0, 4, 10]), bg.shape), 0, 255).astype(np.uint8)
        for _ in range(rng.integers(0, 4)):
            centre = (int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10)))
            axes = (int(rng.integers(1, 30)), int(rng.integers(1, 20)))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.ellipse(fr, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        if rng.random() < 0.3:  # a ring: a hole to fill
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(fr, centre, int(rng.integers(3, 30)), (0, 0, 0), int(rng.integers(1, 4)))
        cfg = MaskConfig(threshold=int(rng.integers(5, 60)), blur_ksize=int(rng.choice([0, 3, 5])),
                         open_ksize=int(rng.choice([0, 2, 3, 5])), close_ksize=int(rng.choice([0, 3, 6, 9])),
                         fill_holes=bool(rng.random() < 0.7), keep_largest=bool(rng.random() < 0.7),
                         max_hole_frac=float(rng.choice([1.0, 0.01, 0.2])))
        ref = _reference_mask(fr, bg, cfg)
        got, box = _compute_mask_box(fr, bg, cfg)
        np.testing.assert_array_equal(got, ref)
        if box is not None:
            boxed += (box[2] - box[0]) * (box[3] - box[1]) < h * w
            x0, y0, x1, y1 = box
            assert not ref[:y0].any() and not ref[y1:].any() and not ref[:, :x0].any() and not ref[:, x1:].any()
        row, row_box = mask_qc(ref, 5, cfg), mask_qc(got, 5, cfg, box)
        assert row.keys() == row_box.keys()
        for k in row:  # identical, NaN included
            assert row[k] == row_box[k] or (row[k] != row[k] and row_box[k] != row_box[k]), k
    assert boxed > 50  # the box is smaller than the image often enough to test something


@pytest.mark.parametrize("K", [1, 2, 5, 50, 51, 256])
def test_median_uint8_equals_numpy_median(K):
    from workflow_scripts.masks import median_uint8

    rng = np.random.default_rng(K)
    stack = rng.integers(0, 256, (K, 9, 11, 3), dtype=np.uint8)
    stack[: K // 2, :4] = rng.integers(0, 3, (K // 2, 4, 11, 3))  # many ties in part of the image
    ref = np.clip(np.floor(np.median(stack, axis=0) + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(median_uint8(stack), ref)


def test_median_uint8_in_threads():
    from workflow_scripts.masks import median_uint8

    rng = np.random.default_rng(5)
    for K in (7, 50):
        stack = rng.integers(0, 256, (K, 301, 457), dtype=np.uint8)  # 137557 px: split in threads
        stack[:, :100] //= 16  # ties
        np.testing.assert_array_equal(median_uint8(stack, workers=2), median_uint8(stack))
        np.testing.assert_array_equal(median_uint8(stack, workers=3),
                                      np.floor(np.median(stack, axis=0) + 0.5).astype(np.uint8))


def test_rgb_fallback_compares_with_the_rgb_median(video, tmp_path, monkeypatch):
    """Frames that cannot be compared in their planes (here: all, by a changed tag) are compared
    in RGB with the median of the RGB frames, as when the video has no plane background, though
    the stored image is the conversion of the plane medians."""
    import workflow_scripts.masks as masks_mod

    real = masks_mod.estimate_backgrounds
    run_masks(video, str(tmp_path / "yuv.h5"), str(tmp_path / "qc0.csv"), MaskConfig())

    def other_tags(*a, **k):
        rgb, yuv, used = real(*a, **k)
        return rgb, dataclasses.replace(yuv, tags=("another",)), used

    monkeypatch.setattr(masks_mod, "estimate_backgrounds", other_tags)
    qc = run_masks(video, str(tmp_path / "fallback.h5"), str(tmp_path / "qc1.csv"), MaskConfig())
    monkeypatch.setattr(masks_mod, "estimate_backgrounds",
                        lambda *a, **k: (lambda r: (r[0], None, r[2]))(real(*a, **k, rgb_median=True)))
    ref = run_masks(video, str(tmp_path / "rgb.h5"), str(tmp_path / "qc2.csv"), MaskConfig())
    pd.testing.assert_frame_equal(qc, ref)
    with h5py.File(tmp_path / "fallback.h5", "r") as f, h5py.File(tmp_path / "rgb.h5", "r") as g, \
            h5py.File(tmp_path / "yuv.h5", "r") as y:
        np.testing.assert_array_equal(f["masks"][:], g["masks"][:])
        np.testing.assert_array_equal(f["background"][:], y["background"][:])  # the stored image: unchanged
        assert not np.array_equal(f["background"][:], g["background"][:])


@pytest.mark.parametrize("store_frames", ["mouse", "full"])
def test_mask_store_tiles_read_back(tmp_path, store_frames):
    """MaskStore's directly written chunks (added through its writer thread, or prepared as
    FrameTiles and written as run_masks' workers do; LZF by h5py's compressor or through h5py)
    read back as the stored parts of the masks and frames, edge tiles included; a failed
    write is raised by close()."""
    from workflow_scripts.masks import MaskStore, _nonzero_box

    rng = np.random.default_rng(2)
    h, w, n = 300, 280, 5
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    masks[0, 5:20, 250:270] = 255  # edge tile in x
    masks[1, 130:140, 3:9] = 255
    masks[1, 290:300, 200:280] = 255  # corner tile
    masks[3, 100:200, 100:200] = rng.integers(0, 2, (100, 100)) * 255  # incompressible: stored raw
    results = []
    for threaded, lzf in ((True, True), (False, True), (True, False)):
        path = tmp_path / f"s{threaded}{lzf}.h5"
        with h5py.File(path, "w") as f:
            store = MaskStore(f, n, h, w, store_frames, threaded=threaded)
            store.layout = dataclasses.replace(store.layout, lzf=lzf)
            for t in range(n):
                if threaded:
                    store.add(t, frames[t], masks[t], _nonzero_box(masks[t]))
                else:  # as run_masks' workers prepare them
                    region, part = store.layout.cut(masks[t], _nonzero_box(masks[t]))
                    store.write(t, store.layout.tiles(frames[t], part, region))
            store.close()
        with h5py.File(path, "r") as f:
            results.append((f["masks"][:], f["frames"][:], f["stored_box"][:]))
    for t in range(n):
        x0, y0, x1, y1 = results[0][2][t]
        np.testing.assert_array_equal(results[0][0][t], masks[t])
        np.testing.assert_array_equal(results[0][1][t, y0:y1, x0:x1], frames[t, y0:y1, x0:x1])
        assert (x1 - x0) * (y1 - y0) > 0 or t in (2, 4) and store_frames == "mouse"
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        store = MaskStore(f, n, h, w, store_frames)
        store.add(0, None, masks[0], _nonzero_box(masks[0]))  # not a frame: fails in the writer thread
        with pytest.raises(RuntimeError, match="writer"):
            store.close()


def test_external_masks_stored_exactly_in_tiles(tmp_path):
    """External masks with pixels in scattered tiles (and an empty one) read back unchanged."""
    h, w, n = 300, 280, 4
    frames = np.full((n, h, w, 3), 120, np.uint8)
    ext = tmp_path / "ext"
    ext.mkdir()
    truth = np.zeros((n, h, w), np.uint8)
    truth[0, 5:20, 250:270] = 255
    truth[1, 130:140, 3:9] = 255
    truth[1, 290:300, 200:280] = 255
    for t in range(n):
        Image.fromarray(truth[t]).save(ext / f"m{t:02d}.png")
    folder = image_folder(tmp_path / "frames", frames)
    run_masks(folder, str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig(), external=str(ext))
    with h5py.File(tmp_path / "m.h5", "r") as f:
        np.testing.assert_array_equal(f["masks"][:], truth)


def test_only_small_holes_are_filled():
    """A fur-sized hole is filled, a gap between leg and body (large hole) stays background."""
    from workflow_scripts.masks import _fill_small_holes

    m = np.zeros((100, 100), np.uint8)
    cv2.rectangle(m, (10, 10), (89, 89), 255, -1)  # 6400 px
    m[20:23, 20:23] = 0   # 9 px hole (0.14 %)
    m[40:70, 40:70] = 0   # 900 px hole (14 %)
    out = _fill_small_holes(m, 0.01)
    assert (out[20:23, 20:23] == 255).all() and (out[40:70, 40:70] == 0).all()
    assert (_fill_small_holes(m, 0.2)[40:70, 40:70] == 255).all()
    bg = np.full((100, 100, 3), 90, np.uint8)
    fr = bg.copy()
    fr[m > 0] = 200
    full = compute_mask(fr, bg, MaskConfig(max_hole_frac=1.0))
    assert (full[40:70, 40:70] == 255).all()  # the old behaviour: every hole filled
    assert (compute_mask(fr, bg, MaskConfig())[41:69, 41:69] == 0).all()  # (closing rounds its corners)


def _planes(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random Y [h, w], U and V [ceil(h/2), ceil(w/2)] planes."""
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    u, v = (rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), dtype=np.uint8) for _ in range(2))
    return y, u, v


def _reference_mask_yuv(fr, bg, cfg: MaskConfig) -> np.ndarray:
    """The YUV mask computed directly from its definition (module doc) on the whole image: each
    plane's |difference| in RGB grey levels (round(gain * d), at most 255), chroma repeated over
    its 2 x 2 block, max over planes, [median blur], > threshold, then the whole-image cleaning."""
    h, w = fr.y.shape

    def rgb_units(a, b, gain):
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        return np.minimum(np.floor(gain * d + 0.5), 255).astype(np.uint8)

    gy, gu, gv = bg.gains
    c = np.maximum(rgb_units(fr.u, bg.u, gu), rgb_units(fr.v, bg.v, gv))
    d = np.maximum(rgb_units(fr.y, bg.y, gy), c.repeat(2, 0).repeat(2, 1)[:h, :w])
    fake_rgb = np.repeat(d[:, :, None], 3, axis=2)  # its channel max is d: reuse the RGB reference
    return _reference_mask(fake_rgb, np.zeros_like(fake_rgb), cfg)


def test_yuv_mask_box_cleaning_equals_its_definition_bit_for_bit():
    """The YUV mask (plane thresholds, chroma hits combined only in the box, cleaning on the box)
    equals the definition computed on the whole image, for odd and even sizes, every colour
    matrix/range, and every combination of settings (median blur included)."""
    from types import SimpleNamespace

    from workflow_scripts.masks import YUVBackground, _compute_mask_box, yuv_rgb_gains

    rng = np.random.default_rng(11)
    boxed = 0
    for k in range(300):
        h, w = (70, 90) if k % 3 else (71, 89)
        tags = [("yuv420p", 2, 0), ("yuvj420p", 2, 2), ("yuv420p", 1, 1), ("yuv420p", 5, 2)][k % 4]
        bgp = _planes(rng, h, w)
        noise = rng.choice([0, 3, 10])
        y, u, v = (np.clip(p + rng.normal(0, noise, p.shape), 0, 255).astype(np.uint8) for p in bgp)
        for _ in range(int(rng.integers(0, 4))):  # blobs: luma and colour, or colour only
            centre = (int(rng.integers(-10, w + 10)), int(rng.integers(-10, h + 10)))
            axes = (int(rng.integers(1, 30)), int(rng.integers(1, 20)))
            ang = float(rng.uniform(0, 180))
            if rng.random() < 0.7:
                cv2.ellipse(y, centre, axes, ang, 0, 360, int(rng.integers(0, 256)), -1)
            if rng.random() < 0.5:  # colour-only blobs (the luma unchanged) too
                for p in (u, v):
                    cv2.ellipse(p, (centre[0] // 2, centre[1] // 2), (axes[0] // 2, axes[1] // 2), ang, 0, 360,
                                int(rng.integers(0, 256)), -1)
        fr = SimpleNamespace(y=y, u=u, v=v)
        bg = YUVBackground(*bgp, tags=(tags[0], w, h, tags[1], tags[2], 2, 2), gains=yuv_rgb_gains(*tags))
        cfg = MaskConfig(threshold=int(rng.integers(5, 60)), blur_ksize=int(rng.choice([0, 0, 3, 5])),
                         open_ksize=int(rng.choice([0, 2, 3, 5])), close_ksize=int(rng.choice([0, 3, 6, 9])),
                         fill_holes=bool(rng.random() < 0.7), keep_largest=bool(rng.random() < 0.7),
                         max_hole_frac=float(rng.choice([1.0, 0.01, 0.2])))
        ref = _reference_mask_yuv(fr, bg, cfg)
        got, box = _compute_mask_box(fr, bg, cfg, buffers={} if k % 2 else None)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(compute_mask(fr, bg, cfg), ref)
        if box is not None:
            boxed += (box[2] - box[0]) * (box[3] - box[1]) < h * w
            x0, y0, x1, y1 = box
            assert not ref[:y0].any() and not ref[y1:].any() and not ref[:, :x0].any() and not ref[:, x1:].any()
    assert boxed > 30


def test_yuv_gains_and_plane_thresholds():
    """Gains: the largest RGB change per unit of Y, U or V alone (BT.601 limited range: 255/219,
    255/224 * 1.772, 255/224 * 1.402); a plane difference d is foreground iff round(gain * d) >
    threshold, i.e. iff d > that plane's integer threshold."""
    from workflow_scripts.masks import YUVBackground, yuv_rgb_gains

    assert yuv_rgb_gains("yuv420p", 2, 0) == pytest.approx((255 / 219, 255 / 224 * 1.772, 255 / 224 * 1.402))
    assert yuv_rgb_gains("yuvj420p", 2, 0) == pytest.approx((1.0, 1.772, 1.402))  # full range
    assert yuv_rgb_gains("yuv420p", 2, 2) == pytest.approx((1.0, 1.772, 1.402))
    assert yuv_rgb_gains("yuv420p", 1, 1) == pytest.approx((255 / 219, 255 / 224 * 1.8556, 255 / 224 * 1.5748))
    z = np.zeros((2, 2), np.uint8)
    for gains in (yuv_rgb_gains("yuv420p", 2, 0), yuv_rgb_gains("yuv420p", 1, 2), (0.3, 1.0, 7.5)):
        bg = YUVBackground(z, z[:1, :1], z[:1, :1], tags=(), gains=gains)
        for t in (0, 1, 19, 20, 21, 100, 254, 255):
            for g, thr in zip(gains, bg.thresholds(t)):
                d = np.arange(256)
                np.testing.assert_array_equal(d > thr, np.minimum(np.floor(g * d + 0.5), 255) > t)
    # 20 RGB grey levels = a luma step of 18 in limited range (17 * 255/219 = 19.8 rounds to 20)
    assert YUVBackground(z, z, z, tags=(), gains=yuv_rgb_gains("yuv420p", 2, 0)).thresholds(20)[0] == 17


@pytest.mark.parametrize("pix_fmt", ["yuvj420p", "yuv422p"])
def test_run_masks_other_yuv_formats(tmp_path, pix_fmt):
    """Full-range 4:2:0 goes the planar way, 4:2:2 the RGB way; both give good masks and store the
    decoded frame's pixels bit for bit, in tiles and with store_frames='full'."""
    path = tmp_path / f"{pix_fmt}.mp4"
    write_video(path, (scene(t) for t in range(T)), fps=30, crf=16, pix_fmt=pix_fmt)
    decoded = [f for _, f in iter_frames(path)]
    for store in ("mouse", "full"):
        out = tmp_path / f"m_{store}.h5"
        run_masks(str(path), str(out), str(tmp_path / "qc.csv"), MaskConfig(background_samples=T), store_frames=store)
        with h5py.File(out, "r") as f:
            assert min(mask_iou(f["masks"][t], blob_mask(t)) for t in range(T)) >= 0.95
            for t in range(T):
                x0, y0, x1, y1 = f["stored_box"][t]
                if store == "full":
                    assert (x0, y0, x1, y1) == (0, 0, W, H)
                np.testing.assert_array_equal(f["frames"][t, y0:y1, x0:x1], decoded[t][y0:y1, x0:x1])


def test_external_masks_store_exact_frame_tiles(video, tmp_path):
    """With external masks the frame tiles are converted alone, still the decoded frame's pixels."""
    folder = tmp_path / "ext"
    folder.mkdir()
    for t in range(T):
        m = np.zeros((H, W), np.uint8)
        m[3 + t: 31 + 2 * t, 5 + 3 * t: 40 + 4 * t] = 255  # odd offsets, growing
        Image.fromarray(m).save(folder / f"{t:05d}.png")
    run_masks(video, str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig(), external=str(folder))
    decoded = [f for _, f in iter_frames(video)]
    with h5py.File(tmp_path / "m.h5", "r") as f:
        for t in range(T):
            x0, y0, x1, y1 = f["stored_box"][t]
            assert x1 > x0 and y1 > y0
            np.testing.assert_array_equal(f["frames"][t, y0:y1, x0:x1], decoded[t][y0:y1, x0:x1])


def _masks_file(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][:] for k in f}


@pytest.mark.parametrize("selection", [{}, {"start_frame": 5, "stride": 2, "max_frames": 70}])
def test_run_masks_in_worker_processes_writes_the_same_file(tmp_path, selection, monkeypatch):
    """Masks from 2 or 3 forked workers (each decoding its own part of the selection, which
    starts between keyframes) are the file and QC table of one process, bit for bit, for the
    built-in masks, external masks and whole stored frames."""
    import workflow_scripts.masks as masks_mod

    monkeypatch.setattr(masks_mod, "_MIN_FRAMES_PER_WORKER", 8)
    monkeypatch.setattr(masks_mod, "_PIECE_FRAMES", 5)  # several jobs per worker, of unequal sizes
    n = 3 * T + 10
    path = tmp_path / "long.mp4"
    write_video(path, (scene(t % T) for t in range(n)), fps=30, crf=16, gop=7)
    ext = tmp_path / "ext"
    ext.mkdir()
    for t in range(n):
        Image.fromarray(np.where(blob_mask(t % T) > 0, 200, 0).astype(np.uint8)).save(ext / f"{t:05d}.png")
    for kw in ({}, {"external": str(ext)}, {"store_frames": "full"}):
        files = []
        for workers in (1, 2, 3):
            out, qc = tmp_path / f"m{workers}.h5", tmp_path / f"qc{workers}.csv"
            table = run_masks(str(path), str(out), str(qc), MaskConfig(background_samples=12), workers=workers,
                              **selection, **kw)
            files.append((_masks_file(out), pd.read_csv(qc), table))
        ref, ref_csv, ref_table = files[0]
        assert ref_table["valid"].all() and len(ref_table) == (len(range(5, n, 2)) if selection else n)
        for got, got_csv, got_table in files[1:]:
            assert got.keys() == ref.keys()
            for k in ref:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
            pd.testing.assert_frame_equal(got_csv, ref_csv)
            pd.testing.assert_frame_equal(got_table, ref_table)


def test_run_masks_in_workers_truncated_video_leaves_nothing(tmp_path, monkeypatch):
    """A video whose end is cut off fails in the worker decoding that part: the error names the
    file, and neither the masks file nor the QC table is left behind."""
    import workflow_scripts.masks as masks_mod

    monkeypatch.setattr(masks_mod, "_MIN_FRAMES_PER_WORKER", 8)
    n = 3 * T
    good = tmp_path / "good.mp4"
    write_video(good, (scene(t % T) for t in range(n)), fps=30, crf=16, gop=7)
    data = good.read_bytes()
    bad = tmp_path / "cut.mp4"
    bad.write_bytes(data[: int(len(data) * 0.7)])
    # the background from the intact video, so that the workers are the first to meet the cut
    background = masks_mod.estimate_backgrounds(str(good), range(n), 6)
    monkeypatch.setattr(masks_mod, "estimate_backgrounds", lambda *a, **k: background)
    with pytest.raises(InputError, match="cut.mp4: decoding failed after frame"):
        run_masks(str(bad), str(tmp_path / "m.h5"), str(tmp_path / "qc.csv"), MaskConfig(background_samples=6),
                  workers=2)
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "qc.csv").exists()
    assert not list(tmp_path.glob("*.tmp*"))
