"""The `masks` step: per-frame foreground (mouse) masks from background subtraction, plus QC.

Background model: temporal median of `background_samples` evenly spaced frames (deterministic),
which removes a mouse that moves around. A mouse that sits still for most of the recording ends
up in the background; use external masks (e.g. SAM2) for such sessions.

Mask: max over RGB channels of |frame - background| (0..255) > threshold, then morphological
open (remove speckle) and close (bridge gaps), hole filling, and the largest connected
component. Masks are uint8 [H, W], 255 = mouse, 0 = background.

Output HDF5 (atomic):
  masks        uint8 [T, H, W]  chunk (1, H, W), lzf
  frame_index  int64 [T]        common frame index, copied from the frames file
  background   uint8 [H, W, 3]  RGB
  attrs: frames (input path), external (path or ""), config_json
QC CSV columns: frame_index, area (pixels), centroid_x, centroid_y (continuous pixel coordinates,
corner origin: OpenCV moment centroid + 0.5), bbox_x0, bbox_y0, bbox_x1, bbox_y1 (corner
coordinates, x1/y1 exclusive, i.e. column max + 1), touches_border, valid, reason
('' when valid; else ';'-joined of empty, too_small, too_large, touches_border).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import cv2
import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError
from workflow_scripts.video import iter_frames, probe_video

QC_COLUMNS = ["frame_index", "area", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0",
              "bbox_x1", "bbox_y1", "touches_border", "valid", "reason"]


@dataclass(frozen=True)
class MaskConfig:
    """Settings of background subtraction and mask QC.

    background_samples: frames sampled (evenly, deterministic) for the temporal median.
    threshold: a pixel is foreground when max_c |frame - background| > threshold (0..255).
    blur_ksize: median filter (odd kernel, 0/1 = off) of the difference, against codec noise.
    open_ksize, close_ksize: elliptical kernel sizes of morphological open / close (0 = off).
    fill_holes: fill enclosed background holes (mouse parts coloured like the floor).
    keep_largest: keep only the largest connected component (the mouse).
    min_area_px: QC: masks with fewer pixels are flagged 'too_small'.
    max_area_frac: QC: masks covering more than this fraction of the image are flagged
        'too_large' (lighting change, camera bump).
    border_margin: QC: a mask pixel within this many pixels of the image edge flags
        'touches_border' (the mouse is cut off).
    """

    background_samples: int = 50
    threshold: int = 28
    blur_ksize: int = 3
    open_ksize: int = 5
    close_ksize: int = 9
    fill_holes: bool = True
    keep_largest: bool = True
    min_area_px: int = 200
    max_area_frac: float = 0.5
    border_margin: int = 2


def _sample_indices(T: int, n: int) -> np.ndarray:
    """Evenly spaced, deterministic frame positions 0..T-1 (all frames when T <= n)."""
    if T <= n:
        return np.arange(T)
    return np.unique(np.round(np.linspace(0, T - 1, n)).astype(np.int64))


def _open_frames(frames_h5: str | Path) -> h5py.File:
    p = Path(frames_h5)
    if not p.exists():
        raise InputError(f"{p}: frames file not found. Fix: run the extract_frames step first.")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p}: not a readable HDF5 file ({exc}). Fix: delete it and rerun extract_frames.") from exc
    if "frames" not in f or "frame_index" not in f:
        f.close()
        raise InputError(f"{p}: lacks 'frames'/'frame_index' datasets. Fix: rerun extract_frames.")
    return f


def estimate_background(frames_h5: str | Path, samples: int = 50) -> np.ndarray:
    """Temporal median (uint8 [H, W, 3] RGB) over `samples` evenly spaced frames of the file."""
    with _open_frames(frames_h5) as f:
        frames = f["frames"]
        T = frames.shape[0]
        if T == 0:
            raise InputError(f"{frames_h5}: holds zero frames. Fix: rerun extract_frames.")
        idx = _sample_indices(T, samples)
        stack = np.stack([frames[int(i)] for i in idx])  # [K, H, W, 3] uint8
    # The median of an even count averages two values; round half up to stay in uint8.
    med = np.median(stack, axis=0)
    return np.clip(np.floor(med + 0.5), 0, 255).astype(np.uint8)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 255)  # outside of all objects becomes 255
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(mask, holes)


def _channel_max(img: np.ndarray) -> np.ndarray:
    """max over channels of uint8 [H, W, 3] -> [H, W] (cv2: ~10x faster than ndarray.max(axis=2))."""
    c0, c1, c2 = cv2.split(img)
    return cv2.max(cv2.max(c0, c1), c2)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component (by pixel count) of a 255/0 mask."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 2:
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return cv2.compare(labels, largest, cv2.CMP_EQ)  # 255 where equal


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    """_fill_holes(_largest_component(mask)) in one pass, about 3x faster.

    The filled outer contour of a blob (traced through boundary pixel centres, drawn
    inclusively) is that 8-connected component with its holes filled. The largest blob is chosen
    by contour pixel count + polygon area, which ranks like the pixel count except for near-ties.
    """
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(mask)
    if contours:
        best = max(contours, key=lambda c: cv2.contourArea(c) + 0.5 * len(c))
        cv2.drawContours(out, [best], -1, 255, thickness=cv2.FILLED)
    return out


def _kernel(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def compute_mask(frame: np.ndarray, background: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Foreground mask uint8 [H, W] (255/0) of RGB frame [H, W, 3] against background [H, W, 3]."""
    if frame.shape != background.shape:
        raise ValueError(f"compute_mask: frame {frame.shape} and background {background.shape} differ")
    diff = _channel_max(cv2.absdiff(frame, background))  # uint8 [H, W]
    if cfg.blur_ksize > 1:
        diff = cv2.medianBlur(diff, cfg.blur_ksize | 1)  # edge-preserving: no mask growth
    _, mask = cv2.threshold(diff, cfg.threshold, 255, cv2.THRESH_BINARY)  # diff > threshold
    if cfg.open_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(cfg.open_ksize))
    if cfg.close_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(cfg.close_ksize))
    if cfg.keep_largest and cfg.fill_holes:
        return _largest_filled(mask)
    if cfg.keep_largest:
        mask = _largest_component(mask)
    if cfg.fill_holes:
        mask = _fill_holes(mask)
    return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (nonzero = foreground); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_qc(mask: np.ndarray, frame_index: int, cfg: MaskConfig) -> dict:
    """One QC row (see module doc) for a mask uint8 [H, W]. Never raises on bad masks."""
    h, w = mask.shape
    fg = np.ascontiguousarray(mask, dtype=np.uint8)
    area = int(cv2.countNonZero(fg))
    row = {"frame_index": int(frame_index), "area": area, "centroid_x": np.nan,
           "centroid_y": np.nan, "bbox_x0": np.nan, "bbox_y0": np.nan, "bbox_x1": np.nan,
           "bbox_y1": np.nan, "touches_border": False, "valid": False, "reason": "empty"}
    if area == 0:
        return row
    m = cv2.moments(fg, binaryImage=True)
    # OpenCV moments put pixel centres at integers; +0.5 converts to the corner-origin convention.
    row["centroid_x"] = m["m10"] / m["m00"] + 0.5
    row["centroid_y"] = m["m01"] / m["m00"] + 0.5
    x, y, bw, bh = cv2.boundingRect(fg)  # box of the nonzero pixels
    row.update(bbox_x0=x, bbox_y0=y, bbox_x1=x + bw, bbox_y1=y + bh)
    mg = cfg.border_margin
    touches = x < mg or y < mg or x + bw > w - mg or y + bh > h - mg
    row["touches_border"] = bool(touches)
    reasons = []
    if area < cfg.min_area_px:
        reasons.append("too_small")
    if area > cfg.max_area_frac * h * w:
        reasons.append("too_large")
    if touches:
        reasons.append("touches_border")
    row["valid"] = not reasons
    row["reason"] = ";".join(reasons)
    return row


def _iter_external(external: str, frame_index: np.ndarray, shape: tuple[int, int],
                   offset: int, num_source: int | None) -> Iterator[np.ndarray]:
    """Binarized (>127 -> 255) external masks matching the frames file, one per frame.

    Accepted lengths: exactly T (one mask per extracted frame) or the source video's frame count
    (then masks are picked at video index = frame_index + offset).
    """
    info = probe_video(external)
    T = len(frame_index)
    if info.num_frames == T:
        wanted = np.arange(T)
    elif num_source is not None and info.num_frames == num_source:
        wanted = frame_index + offset
    else:
        extra = f" or {num_source} (the source video)" if num_source is not None else ""
        raise InputError(
            f"{external}: external masks have {info.num_frames} frames, expected {T} (the extracted "
            f"frames){extra}. Fix: export one mask per frame of the camera video."
        )
    if (info.height, info.width) != shape:
        raise InputError(
            f"{external}: external masks are {info.width}x{info.height}, frames are "
            f"{shape[1]}x{shape[0]}. Fix: export masks at the video resolution."
        )
    lo, hi = int(wanted[0]), int(wanted[-1]) + 1
    steps = np.unique(np.diff(wanted))
    stride = int(steps[0]) if len(steps) == 1 else 1  # extracted frames are evenly strided
    want_set = set(int(v) for v in wanted)
    for v, rgb in iter_frames(external, start=lo, stop=hi, stride=stride):
        if v in want_set:
            yield cv2.threshold(_channel_max(rgb), 127, 255, cv2.THRESH_BINARY)[1]  # > 127 -> 255


def run_masks(frames_h5: str, out_h5: str, out_qc_csv: str, cfg: MaskConfig,
              external: str | None = None) -> pd.DataFrame:
    """Masks + background + QC for one (session, camera); returns the QC table.

    With `external` (a mask video or an image folder, e.g. from SAM2) those masks, binarized at
    127, replace the built-in background subtraction; the background image is still estimated.
    Bad masks (empty, too small/large, touching the border) are flagged in the QC table.
    """
    background = estimate_background(frames_h5, cfg.background_samples)
    rows = []
    with _open_frames(frames_h5) as fin:
        frames = fin["frames"]
        frame_index = fin["frame_index"][:].astype(np.int64)
        T, H, W = frames.shape[:3]
        offset = int(fin.attrs.get("offset", 0))
        num_source = int(fin.attrs["num_frames_source"]) if "num_frames_source" in fin.attrs else None
        ext = (_iter_external(external, frame_index, (H, W), offset, num_source)
               if external else None)
        with atomic_path(out_h5) as tmp:
            with h5py.File(tmp, "w") as fout:
                dmask = fout.create_dataset("masks", shape=(T, H, W), dtype=np.uint8,
                                            chunks=(1, H, W), compression="lzf")
                fout.create_dataset("frame_index", data=frame_index)
                fout.create_dataset("background", data=background)
                fout.attrs.update({"frames": str(frames_h5), "external": str(external or ""),
                                   "config_json": json.dumps(asdict(cfg), sort_keys=True)})
                for t in tqdm(range(T), desc=f"masks {Path(frames_h5).stem}", unit="frame"):
                    if ext is not None:
                        m = next(ext, None)
                        if m is None:
                            raise InputError(f"{external}: ran out of masks at frame {frame_index[t]}. "
                                             "Fix: export one mask per frame.")
                    else:
                        m = compute_mask(frames[t], background, cfg)
                    dmask[t] = m
                    rows.append(mask_qc(m, int(frame_index[t]), cfg))
    qc = pd.DataFrame(rows, columns=QC_COLUMNS)
    with atomic_path(out_qc_csv) as tmp:
        qc.to_csv(tmp, index=False)
    return qc
