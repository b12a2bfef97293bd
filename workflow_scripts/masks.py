"""The `masks` step: one camera's video -> per-frame mouse masks, the mouse's pixels, and QC.

Frames are decoded once, here, and never stored whole: a 1152 x 1024 RGB frame is 3.5 MB, so a
six-camera hour at 100 fps would be 7.5 TB, and writing it costs about as much as decoding it.
What later steps need of a frame is the mouse and its rim (a white or black crop background
replaces everything else), so only the frame tiles around the mask are kept (all tiles with
``store_frames="full"``, which ``crop.background: keep`` needs).

Frame selection (common index s = video index v - offset; start_frame, max_frames, stride):
workflow_scripts/frames.py.

Background model: temporal median of about `background_samples` frames spread evenly over the
selection, which removes a mouse that moves around. To avoid a second decoding pass, each sample
is the keyframe at or before an evenly spaced frame (one seek + one decoded frame); when that
gives fewer than half as many distinct frames (a short video, long keyframe intervals), the
evenly spaced frames themselves are decoded in one pass. A mouse that sits still for most of the
recording ends up in the background; use external masks (e.g. SAM2) for such sessions. For
yuv420p / yuvj420p videos the median is taken of each of the frames' Y, U, V planes
(YUVBackground) and the `background` dataset is their RGB conversion (informational: no later
step reads it); otherwise, and for frames that must be compared in RGB, it is the median of the
RGB frames.

Decoding: 4:2:0 videos are decoded to their planes and never converted to RGB whole (the
conversion costs about a third of decoding a frame): the mask comes from the planes and only the
stored tiles are converted, bit-identical to the whole-frame conversion of video.iter_frames
(video._ToRGB.region says why; it checks it per stream and converts whole frames where it cannot
be shown). Image folders and other pixel formats (4:2:2, 4:4:4, RGB codecs) go the RGB way.

Processes: with workers > 1 (the rule's threads) the selection is cut into that many contiguous
parts, each decoded and masked by a forked process (one decoder thread each: a decoder's own
threads keep only ~1.5 of 2 cores busy and wait for each other), which also converts and
compresses the tiles; this process writes them into the file. Same file for any number.

Mask: the difference from the background in RGB grey levels (0..255) > threshold. RGB frames:
max over channels of |frame - background|. 4:2:0 planes: each plane's |frame - background| is
expressed as the largest change of any RGB channel it causes alone, gain * d with the gains of
the frame's colour matrix and range (yuv_rgb_gains: BT.601 limited range 1.164 for Y, 2.018 for
U, 1.596 for V), and the max over Y and the chroma of the pixel's 2 x 2 block is taken (swscale
gives each pixel its block's chroma too). A pure brightness change thus counts as in RGB; a
change of both luma and colour may count up to ~2x more or less than in RGB, which only shifts
where the mouse's rim crosses the threshold (demo IoU vs true masks unchanged: median 0.970 at
480 x 400, 0.986 at 1152 x 960). Then morphological open (remove speckle) and close (bridge
gaps), hole filling, and the largest connected component. Masks are uint8 [H, W], 255 = mouse,
0 = background.

Output HDF5 (atomic):
  masks        uint8 [T, H, W]     chunks (1, 128, 128) (clipped to the image), lzf
  frames       uint8 [T, H, W, 3]  RGB, chunks (1, 128, 128, 3), uncompressed
  stored_box   int32 [T, 4]        (x0, y0, x1, y1), x1/y1 exclusive: the tile-aligned region of
                                   frame t that is stored: every tile meeting the mask's box
                                   grown by FRAME_MARGIN px ((0, 0, 0, 0) for an empty mask;
                                   the whole image with store_frames="full"). Chunks outside it
                                   are not written and read as 0 (masks: exactly; frames: no data).
  frame_index  int64 [T]           common (session) frame index s
  background   uint8 [H, W, 3]     RGB (see Background model)
  background_frames int64 [K]      video indices of the frames the median used
  attrs: source (video path), camera, fps, fps_num/fps_den, width, height, stride, offset,
         start_frame, num_frames_source, store_frames ("mouse"/"full"), frame_margin,
         external (path or ""), config_json
QC CSV columns: frame_index, area (pixels), centroid_x, centroid_y (continuous pixel coordinates,
corner origin: OpenCV moment centroid + 0.5), bbox_x0, bbox_y0, bbox_x1, bbox_y1 (corner
coordinates, x1/y1 exclusive, i.e. column max + 1), touches_border, valid, reason
('' when valid; else ';'-joined of empty, too_small, too_large, touches_border).
"""
from __future__ import annotations

import json
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError
from workflow_scripts.frames import check_expected, selected_video_indices
from workflow_scripts.h5chunks import lzf_chunk, lzf_threads_available
from workflow_scripts.video import YUV420Frame, iter_frames, keyframes_before, prefetched, probe_video
from workflow_scripts.workers import ForkedWorkers

_TILE = 128  # masks and frames are stored in _TILE x _TILE chunks; only those around the mouse are written
# Stored frame pixels reach this far beyond the mask: a crop pixel is mouse where the bilinearly
# remapped mask is >= 0.5, i.e. within 1 px of a mask pixel, and its colour interpolates pixels
# within 1 px of that point, so a white/black-background crop never reads beyond 2 px.
FRAME_MARGIN = 2
STORE_FRAMES = ("mouse", "full")

QC_COLUMNS = ["frame_index", "area", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0",
              "bbox_x1", "bbox_y1", "touches_border", "valid", "reason"]


@dataclass(frozen=True)
class MaskConfig:
    """Settings of background subtraction and mask QC.

    background_samples: frames sampled (evenly, deterministic) for the temporal median.
    threshold: a pixel is foreground when its difference from the background in RGB grey levels
        (0..255) is > threshold: max_c |frame - background| of RGB frames, or of 4:2:0 planes the
        largest RGB change that one plane's difference causes (module doc).
    blur_ksize: median filter (odd kernel, 0/1 = off) of the difference, against codec noise.
    open_ksize, close_ksize: elliptical kernel sizes of morphological open / close (0 = off).
    fill_holes: fill enclosed background holes (mouse parts coloured like the floor).
    max_hole_frac: fill only holes smaller than this fraction of the mask's area (1 = all):
        small holes are fur matching the floor, large ones are real gaps (between a leg and
        the body, under a curled tail) that filling would turn into mouse.
    keep_largest: keep only the largest connected component (the mouse).
    min_area_px: QC: masks with fewer pixels are flagged 'too_small'.
    max_area_frac: QC: masks covering more than this fraction of the image are flagged
        'too_large' (lighting change, camera bump).
    border_margin: QC: a mask pixel within this many pixels of the image edge flags
        'touches_border' (the mouse is cut off).
    """

    background_samples: int = 50
    threshold: int = 20
    blur_ksize: int = 1
    open_ksize: int = 0
    close_ksize: int = 3
    fill_holes: bool = True
    max_hole_frac: float = 0.01
    keep_largest: bool = True
    min_area_px: int = 200
    max_area_frac: float = 0.5
    border_margin: int = 2


def _sample_indices(T: int, n: int) -> np.ndarray:
    """Evenly spaced, deterministic frame positions 0..T-1 (all frames when T <= n)."""
    if T <= n:
        return np.arange(T)
    return np.unique(np.round(np.linspace(0, T - 1, n)).astype(np.int64))


def estimate_background(video: str | Path, vids: Sequence[int] | None = None, samples: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """The background image (uint8 [H, W, 3] RGB; the masks file's ``background``) of `video`
    and the video indices of its sample (int64 [K]): estimate_backgrounds. The sample (module
    doc): the keyframes at or before `samples` evenly spaced frames of `vids` (the selected
    video indices; all frames when None), or those frames themselves when the keyframes are
    too few."""
    rgb, _, used = estimate_backgrounds(video, vids, samples)
    return rgb, used


@dataclass(frozen=True)
class YUVBackground:
    """Background model of a 4:2:0 video in its own planes: the temporal median of each of the Y
    (uint8 [H, W]), U and V (uint8 [ceil(H/2), ceil(W/2)]) planes of the background sample.

    tags: the frames' YUV420Frame.tags (a frame with other tags is compared in RGB instead).
    gains: (g_y, g_u, g_v), the RGB change per unit of each plane (yuv_rgb_gains).
    """

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    tags: tuple
    gains: tuple[float, float, float]

    def luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per plane: |difference| (0..255) -> RGB grey levels, round(gain * d) clipped to 255."""
        d = np.arange(256, dtype=np.float64)
        return tuple(np.minimum(np.floor(g * d + 0.5), 255).astype(np.uint8) for g in self.gains)

    def thresholds(self, threshold: int) -> tuple[int, int, int]:
        """Per plane: the largest |difference| whose RGB equivalent (luts) is <= threshold, so
        that d > it  <=>  lut[d] > threshold (the luts increase)."""
        return tuple(int(np.count_nonzero(lut <= threshold)) - 1 for lut in self.luts())


# Kr, Kb of the YCbCr matrices by AVColorSpace (FFmpeg's numbering); anything else, unspecified
# included, is converted by swscale as BT.601 (SWS_CS_DEFAULT).
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087),
          9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
_BT601 = (0.299, 0.114)


def yuv_rgb_gains(pix_fmt: str, colorspace: int, color_range: int) -> tuple[float, float, float]:
    """(g_y, g_u, g_v): the largest change of any RGB channel (0..255) per unit change of Y, U
    or V alone, from the YCbCr -> RGB matrix the frame's tags select: R = Y' + 2 (1 - Kr) V',
    B = Y' + 2 (1 - Kb) U', G in between, with Y' = (Y - 16) 255/219 and U', V' = (U - 128) 255/224
    in limited ("MPEG", tv) range, Y' = Y and U', V' = U - 128 in full ("JPEG", pc) range
    (yuvj420p, or color_range 2). BT.601 limited: (1.164, 2.018, 1.596)."""
    kr, kb = _KR_KB.get(int(colorspace), _BT601)
    full = pix_fmt == "yuvj420p" or int(color_range) == 2
    sy, sc = (1.0, 1.0) if full else (255 / 219, 255 / 224)
    return sy, sc * 2 * (1 - kb), sc * 2 * (1 - kr)


def estimate_backgrounds(video: str | Path, vids: Sequence[int] | None = None, samples: int = 50,
                         rgb_median: bool = False) -> tuple[np.ndarray, YUVBackground | None, np.ndarray]:
    """(background image, YUVBackground or None, sample indices) of the sample of `video`
    (estimate_background).

    When the sampled frames are all 4:2:0 frames with the same tags, the YUVBackground is the
    per-plane median and the image its RGB conversion (as the frames' own, video.YUV420Frame:
    one conversion instead of one per sample); otherwise there is no YUVBackground and the image
    is the median of the RGB frames, which rgb_median=True always gives (a pixel's median RGB
    may differ from the RGB of its median planes by a level or two).
    """
    if vids is None:
        vids = range(probe_video(video).num_frames)
    if len(vids) == 0:
        raise InputError(f"{video}: no frames selected, nothing to estimate a background from.")
    targets = [int(vids[i]) for i in _sample_indices(len(vids), samples)]
    got = keyframes_before(video, targets, planar=True)
    if 2 * len(got) < len(targets):
        got = list(iter_frames(video, start=targets[0], stop=targets[-1] + 1, only=targets, planar=True))
    if not got:
        raise InputError(f"{video}: no frame could be decoded for the background. Fix: re-encode the video.")
    frames = [f for _, f in got]
    used = np.array([i for i, _ in got], np.int64)
    yuv = None
    if all(isinstance(f, YUV420Frame) for f in frames) and len({f.tags for f in frames}) == 1:
        tags = frames[0].tags
        yuv = YUVBackground(*(median_uint8(np.stack([getattr(f, p) for f in frames]), workers=2) for p in "yuv"),
                            tags=tags, gains=yuv_rgb_gains(tags[0], tags[3], tags[4]))
        if not rgb_median:
            return frames[0].with_planes(yuv.y, yuv.u, yuv.v).rgb(), yuv, used
    rgb = np.empty((len(frames), *frames[0].shape), np.uint8)
    for k, f in enumerate(frames):
        rgb[k] = f if isinstance(f, np.ndarray) else f.rgb()
    return median_uint8(rgb, workers=2), yuv, used


def median_uint8(stack: np.ndarray, workers: int = 1) -> np.ndarray:
    """Median over axis 0 of uint8 [K, ...], rounded half up: equals
    ``floor(np.median(stack, axis=0) + 0.5)`` (an even K averages the two middle values).

    Radix selection, bit by bit (8 passes counting the samples below a candidate value, in
    OpenCV/numpy operations over whole frames): ~5x faster than np.median's partition, exact.
    workers > 1: that many threads take a part of the pixels each (the operations release the
    GIL; ~1.8x faster with 2 on 2 cores); the same result.
    """
    K = stack.shape[0]
    if K > 255:  # the uint8 counters below would overflow
        return np.clip(np.floor(np.median(stack, axis=0) + 0.5), 0, 255).astype(np.uint8)
    flat = stack.reshape(K, -1)
    N = flat.shape[1]
    if workers > 1 and N >= 2 * 65536:
        out = np.empty(N, np.uint8)
        cuts = np.linspace(0, N, workers + 1).astype(np.int64)

        def part(i: int) -> None:
            out[cuts[i]:cuts[i + 1]] = median_uint8(flat[:, cuts[i]:cuts[i + 1]])

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(part, range(workers)))
        return out.reshape(stack.shape[1:])
    lo = _kth_smallest(flat, (K - 1) // 2)
    if K % 2:
        return lo.reshape(stack.shape[1:])
    hi = _next_smallest(flat, lo, K // 2)
    # (lo + hi) / 2 rounded half up, without overflow.
    return ((lo.astype(np.uint16) + hi + 1) >> 1).astype(np.uint8).reshape(stack.shape[1:])


def _kth_smallest(flat: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest (0-based) over axis 0 of uint8 [K, N], K <= 255 -> uint8 [N].

    Invariant: the answer has the bits fixed so far in `value`; bit b is set when at most k
    samples lie below value | 2**b. cv2.compare gives 255 (= -1 in uint8) for "below", so
    subtracting it with numpy's wrap-around counts up by one.
    """
    N = flat.shape[1]
    value, cand, count, hit = (np.zeros(N, np.uint8) for _ in range(4))
    for b in range(7, -1, -1):
        np.bitwise_or(value, np.uint8(1 << b), out=cand)
        count.fill(0)
        for row in flat:
            cv2.compare(row, cand, cv2.CMP_LT, dst=hit)
            np.subtract(count, hit, out=count)
        np.copyto(value, cand, where=count <= k)
    return value


def _next_smallest(flat: np.ndarray, prev: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest (0-based) over axis 0 of uint8 [K, N] given `prev`, the (k-1)-th: prev
    itself when more than k samples are <= prev, else the least sample above prev."""
    N = flat.shape[1]
    count, le, cand = (np.zeros(N, np.uint8) for _ in range(3))
    least_above = np.full(N, 255, np.uint8)
    for row in flat:
        cv2.compare(row, prev, cv2.CMP_LE, dst=le)  # 255 where row <= prev
        np.subtract(count, le, out=count)
        cv2.bitwise_or(row, le, dst=cand)  # samples <= prev become 255: out of the minimum
        cv2.min(least_above, cand, dst=least_above)
    return np.where(count > k, prev, least_above)


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


def _fill_small_holes(mask: np.ndarray, max_frac: float) -> np.ndarray:
    """Fill background regions not connected to the image border (4-connected, as the
    background of 8-connected blobs) whose area is at most ``max_frac`` x the mask's area.

    The holes are what a 4-connected flood fill from outside the image leaves unreached; only
    they (their bounding box) are labelled to measure their areas, not the whole background:
    the same holes, so the same result as labelling all of it (tests/test_masks.py).
    """
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    cv2.floodFill(padded, None, (0, 0), 255, flags=4)  # the background reachable from outside
    holes = cv2.bitwise_not(padded[1:-1, 1:-1])  # 255: background the flood did not reach
    x, y, bw, bh = cv2.boundingRect(holes)
    if bw == 0:
        return mask
    limit = max_frac * cv2.countNonZero(mask)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(holes[y:y + bh, x:x + bw], connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= limit
    small[0] = False  # label 0: not a hole
    if not small.any():
        return mask
    out = mask.copy()
    part = out[y:y + bh, x:x + bw]
    cv2.bitwise_or(part, np.where(small[labels], np.uint8(255), np.uint8(0)), dst=part)
    return out


def _largest_small_holes_filled(mask: np.ndarray, max_frac: float) -> np.ndarray:
    """_fill_small_holes(_largest_component(mask), max_frac), for most masks without labelling.

    For a mask off the array's edge, its contours (Suzuki-Abe border following: 8-connected
    foreground, 4-connected background, what cv2.findContours implements) give one outer border
    per blob and one hole border per hole, under the outer border of the blob around it. One
    blob without holes is left as it is (a mouse after closing often is). Of several blobs, the
    one whose border's box (w x h) has max(w, h) > w' x h' of every other box is the largest (it
    has >= max(w, h) pixels, the others <= w' x h'): it is kept by a flood fill (the specks of
    codec noise around a mouse are dropped so), and its holes filled if it has any. Otherwise
    (near the edge, blobs of similar size) both steps run as written; the same result ~5-10x
    faster (tests/test_masks.py checks it against labelling the whole mask).
    """
    h, w = mask.shape
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0:
        return mask
    if not (x > 0 and y > 0 and x + bw < w and y + bh < h):
        return _fill_small_holes(_largest_component(mask), max_frac)
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parent = hierarchy[0, :, 3]
    outer = np.flatnonzero(parent < 0)  # top level: outer borders, one per blob
    if len(outer) == 1:
        return mask if len(contours) == 1 else _fill_small_holes(mask, max_frac)
    rects = np.array([cv2.boundingRect(contours[i]) for i in outer], np.int64)
    areas = rects[:, 2] * rects[:, 3]
    k = int(np.argmax(areas))
    if max(rects[k, 2], rects[k, 3]) <= np.delete(areas, k).max():
        return _fill_small_holes(_largest_component(mask), max_frac)
    blob = mask.copy()
    cv2.floodFill(blob, None, tuple(int(v) for v in contours[outer[k]][0, 0]), 128, flags=8)
    largest = cv2.compare(blob, 128, cv2.CMP_EQ)  # 255 on the largest blob
    return _fill_small_holes(largest, max_frac) if np.any(parent == outer[k]) else largest


def _channel_max(img: np.ndarray) -> np.ndarray:
    """max over channels of uint8 [H, W, 3] -> [H, W] (cv2: ~10x faster than ndarray.max(axis=2))."""
    c0, c1, c2 = cv2.split(img)
    return cv2.max(cv2.max(c0, c1), c2)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component (by pixel count; the first label on a tie) of a
    255/0 mask. Labels as connectedComponentsWithStats gives them (the same labelling, without
    the statistics, which cost as much again), areas counted with bincount."""
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 2:
        return mask
    areas = np.bincount(labels.ravel(), minlength=n)
    return cv2.compare(labels, 1 + int(np.argmax(areas[1:])), cv2.CMP_EQ)  # 255 where equal


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


def compute_mask(frame: Any, background: np.ndarray | YUVBackground, cfg: MaskConfig) -> np.ndarray:
    """Foreground mask uint8 [H, W] (255/0) of RGB frame [H, W, 3] against background [H, W, 3],
    or of a 4:2:0 frame (anything with planes y, u, v: a YUV420Frame) against a YUVBackground."""
    return _compute_mask_box(frame, background, cfg)[0]


def _threshold_diff_yuv(frame: Any, background: YUVBackground, cfg: MaskConfig,
                        buffers: dict[str, np.ndarray] | None = None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The thresholded difference of 4:2:0 planes (module doc): a pixel is foreground when
    g_p |frame_p - background_p| > threshold for some plane p, a chroma sample applying to its
    2 x 2 pixel block. Returns (hit_y uint8 [H, W], hit_c uint8 [ceil(H/2), ceil(W/2)]), 255/0,
    the luma and the chroma hits; _upsample_max combines them. With blur_ksize, max_p of the
    RGB-equivalent differences (luts) is median-blurred and thresholded instead (as max_c |RGB
    difference| is): then the uint8 [H, W] 255/0 result.
    """
    y, u, v = frame.y, frame.u, frame.v
    if y.shape != background.y.shape or u.shape != background.u.shape or v.shape != background.v.shape:
        raise ValueError(f"compute_mask: frame planes {y.shape} {u.shape} and background planes "
                         f"{background.y.shape} {background.u.shape} differ")
    H, W = y.shape
    h, w = u.shape
    buf = buffers if buffers is not None else {}
    if buf.get("yuv_shape") != (H, W):
        buf.update(yuv_shape=(H, W), dy=np.empty((H, W), np.uint8), hit_y=np.empty((H, W), np.uint8),
                   du=np.empty((h, w), np.uint8), dv=np.empty((h, w), np.uint8), hit_c=np.empty((h, w), np.uint8))
    if buf.get("yuv_cfg") != (background.gains, cfg.threshold):
        buf.update(yuv_cfg=(background.gains, cfg.threshold), luts=background.luts(),
                   thresholds=background.thresholds(cfg.threshold))
    dy = cv2.absdiff(y, background.y, dst=buf["dy"])
    du = cv2.absdiff(u, background.u, dst=buf["du"])
    dv = cv2.absdiff(v, background.v, dst=buf["dv"])
    if cfg.blur_ksize > 1:
        ly, lu, lv = buf["luts"]
        dc = cv2.max(cv2.LUT(du, lu), cv2.LUT(dv, lv))
        grey = _upsample_max(cv2.LUT(dy, ly), dc, (0, 0, W, H))
        grey = cv2.medianBlur(grey, cfg.blur_ksize | 1)  # edge-preserving: no mask growth
        return cv2.threshold(grey, cfg.threshold, 255, cv2.THRESH_BINARY)[1]  # > threshold
    ty, tu, tv = buf["thresholds"]
    hit_y = cv2.threshold(dy, ty, 255, cv2.THRESH_BINARY, dst=buf["hit_y"])[1]
    cv2.threshold(du, tu, 255, cv2.THRESH_BINARY, dst=du)
    cv2.threshold(dv, tv, 255, cv2.THRESH_BINARY, dst=dv)
    return hit_y, cv2.max(du, dv, dst=buf["hit_c"])


def _upsample_max(full: np.ndarray, half: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """max(full, half upsampled 2x by repetition) on box (x0, y0, x1, y1) of full's pixels:
    pixel (r, c) meets half[r // 2, c // 2], as in swscale's 4:2:0 -> RGB. uint8 [y1-y0, x1-x0]."""
    x0, y0, x1, y1 = box
    cx0, cy0, cx1, cy1 = x0 // 2, y0 // 2, (x1 + 1) // 2, (y1 + 1) // 2
    up = cv2.resize(half[cy0:cy1, cx0:cx1], (2 * (cx1 - cx0), 2 * (cy1 - cy0)), interpolation=cv2.INTER_NEAREST)
    return cv2.max(full[y0:y1, x0:x1], up[y0 - 2 * cy0:y1 - 2 * cy0, x0 - 2 * cx0:x1 - 2 * cx0])


def _threshold_diff(frame: np.ndarray, background: np.ndarray, cfg: MaskConfig,
                    buffers: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """max_c |frame - background| (median-blurred) > threshold, uint8 [H, W] 255/0.

    buffers: a dict kept across the frames of a video, in which the full-frame intermediates are
    allocated once: a fresh 3.5 MB array per step costs more in page faults than the step itself.
    """
    if frame.shape != background.shape:
        raise ValueError(f"compute_mask: frame {frame.shape} and background {background.shape} differ")
    H, W = frame.shape[:2]
    buf = buffers if buffers is not None else {}
    if buf.get("shape") != (H, W):
        buf.update(shape=(H, W), diff=np.empty((H, W, 3), np.uint8), hit=np.empty((H, 3 * W), np.uint8),
                   grey=np.empty((H, W), np.uint8), raw=np.empty((H, W), np.uint8))
    diff = cv2.absdiff(frame, background, dst=buf["diff"])  # uint8 [H, W, 3]
    if cfg.blur_ksize > 1:
        grey = cv2.medianBlur(_channel_max(diff), cfg.blur_ksize | 1)  # edge-preserving: no mask growth
        return cv2.threshold(grey, cfg.threshold, 255, cv2.THRESH_BINARY, dst=buf["raw"])[1]  # > threshold
    # max_c d_c > t  <=>  some channel > t: threshold all channels at once (as one [H, 3W]
    # image), then any nonzero channel makes the grey value nonzero (all weights of
    # RGB->grey are > 0; 255 * 0.114 rounds to 29): ~2x faster than splitting the channels.
    hit = cv2.threshold(diff.reshape(H, 3 * W), cfg.threshold, 255, cv2.THRESH_BINARY, dst=buf["hit"])[1]
    grey = cv2.cvtColor(hit.reshape(H, W, 3), cv2.COLOR_RGB2GRAY, dst=buf["grey"])
    return cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY, dst=buf["raw"])[1]


def _roi_margin(cfg: MaskConfig) -> int:
    """Margin around the thresholded pixels' box outside which the cleaned mask is 0 and inside
    which cleaning on the box alone equals cleaning the whole image (see _clean)."""
    r_open = cfg.open_ksize // 2 if cfg.open_ksize > 1 else 0
    r_close = cfg.close_ksize // 2 if cfg.close_ksize > 1 else 0
    return r_open + 2 * r_close + 1


def mask_chunks(H: int, W: int) -> tuple[int, int, int]:
    """Chunk shape of the masks dataset: (1, 128, 128) tiles, clipped to the image."""
    return 1, min(_TILE, H), min(_TILE, W)


def _nonzero_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the nonzero pixels of uint8 [H, W]; None if none."""
    x, y, w, h = cv2.boundingRect(mask)
    return None if w == 0 or h == 0 else (x, y, x + w, y + h)


def _compute_mask_box(frame: Any, background: np.ndarray | YUVBackground, cfg: MaskConfig, out: np.ndarray | None = None,
                      buffers: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """compute_mask (into `out`, uint8 [H, W], when given) and a box (x0, y0, x1, y1), x1/y1
    exclusive, holding all its nonzero pixels (None when the mask is empty).

    Only the thresholding runs on the whole image; the cleaning runs on the box around the
    thresholded pixels (_clean says why that is exact): a mouse covers a few % of a frame. On
    4:2:0 planes the luma and chroma hits are combined only in that box (the box of the
    combination is the union of the luma hits' box and the chroma hits' box doubled).
    """
    hits = None
    if isinstance(background, YUVBackground):
        raw = _threshold_diff_yuv(frame, background, cfg, buffers)
        if isinstance(raw, tuple):
            hits, raw = raw, raw[0]
    else:
        raw = _threshold_diff(frame, background, cfg, buffers)
    H, W = raw.shape
    if out is None:
        out = np.empty((H, W), np.uint8)
    out[...] = 0
    x, y, w, h = cv2.boundingRect(raw)
    box = None if w == 0 or h == 0 else (x, y, x + w, y + h)
    if hits is not None:
        cx, cy, cw, ch = cv2.boundingRect(hits[1])
        if cw and ch:
            cbox = (2 * cx, 2 * cy, min(2 * (cx + cw), W), min(2 * (cy + ch), H))
            box = cbox if box is None else (min(box[0], cbox[0]), min(box[1], cbox[1]),
                                            max(box[2], cbox[2]), max(box[3], cbox[3]))
    if box is None:
        return out, None  # all zero: nothing to clean
    m = _roi_margin(cfg)
    x0, y0, x1, y1 = max(box[0] - m, 0), max(box[1] - m, 0), min(box[2] + m, W), min(box[3] + m, H)
    crop = _upsample_max(*hits, (x0, y0, x1, y1)) if hits is not None else np.ascontiguousarray(raw[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = _clean(crop, cfg)
    return out, (x0, y0, x1, y1)


def _clean(mask: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """Open, close, keep the largest blob, fill holes (per cfg) of a 255/0 mask.

    Run on the box of the thresholded pixels grown by _roi_margin (clipped to the image) it
    gives exactly the whole-image result: OpenCV's morphology ignores pixels beyond the array
    (erosion pads with 255, dilation with 0), and within the margin every difference between
    that padding and the true zeros outside the box is provably masked: erosion near the box
    edge sees zeros inside it anyway, dilation pads with the true value 0, and the cleaned blob
    stays > margin - r_open - 2 r_close >= 1 px away from the edge, so contours, components and
    hole filling see the same shapes, only shifted (tests/test_masks.py checks it bit for bit).
    """
    if cfg.open_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _kernel(cfg.open_ksize))
    if cfg.close_ksize > 1:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _kernel(cfg.close_ksize))
    if cfg.keep_largest and cfg.fill_holes:
        if cfg.max_hole_frac >= 1:
            return _largest_filled(mask)
        return _largest_small_holes_filled(mask, cfg.max_hole_frac)
    if cfg.keep_largest:
        mask = _largest_component(mask)
    if cfg.fill_holes:
        mask = _fill_holes(mask) if cfg.max_hole_frac >= 1 else _fill_small_holes(mask, cfg.max_hole_frac)
    return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (nonzero = foreground); 1.0 when both are empty."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_qc(mask: np.ndarray, frame_index: int, cfg: MaskConfig,
            box: tuple[int, int, int, int] | None = None) -> dict:
    """One QC row (see module doc) for a mask uint8 [H, W]. Never raises on bad masks.

    box: optional (x0, y0, x1, y1) known to hold every nonzero pixel (as _compute_mask_box
    gives); the measures are then taken on that part only, with identical results (moments
    m00, m10, m01 of a binary image are integer sums, exact in float64, so shifting them by the
    box origin changes no bit).
    """
    h, w = mask.shape
    x0 = y0 = 0
    if box is not None:
        x0, y0, x1, y1 = box
        mask = mask[y0:y1, x0:x1]
    fg = np.ascontiguousarray(mask, dtype=np.uint8)
    area = int(cv2.countNonZero(fg))
    row = {"frame_index": int(frame_index), "area": area, "centroid_x": np.nan,
           "centroid_y": np.nan, "bbox_x0": np.nan, "bbox_y0": np.nan, "bbox_x1": np.nan,
           "bbox_y1": np.nan, "touches_border": False, "valid": False, "reason": "empty"}
    if area == 0:
        return row
    m = cv2.moments(fg, binaryImage=True)
    # OpenCV moments put pixel centres at integers; +0.5 converts to the corner-origin convention.
    row["centroid_x"] = (m["m10"] + x0 * m["m00"]) / m["m00"] + 0.5
    row["centroid_y"] = (m["m01"] + y0 * m["m00"]) / m["m00"] + 0.5
    x, y, bw, bh = cv2.boundingRect(fg)  # box of the nonzero pixels
    x, y = x + x0, y + y0
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
                   offset: int, num_source: int, part: slice = slice(None)) -> Iterator[np.ndarray]:
    """Binarized (>127 -> 255) external masks matching the selected frames, one per frame
    (part: of the selected frames at these positions only).

    Accepted lengths: exactly T (one mask per selected frame) or the source video's frame count
    (then masks are picked at video index = frame_index + offset).
    """
    info = probe_video(external)
    T = len(frame_index)
    if info.num_frames == T:
        wanted = np.arange(T)
    elif info.num_frames == num_source:
        wanted = frame_index + offset
    else:
        raise InputError(
            f"{external}: external masks have {info.num_frames} frames, expected {T} (the selected "
            f"frames) or {num_source} (the source video). Fix: export one mask per frame of the camera video."
        )
    if (info.height, info.width) != shape:
        raise InputError(
            f"{external}: external masks are {info.width}x{info.height}, frames are "
            f"{shape[1]}x{shape[0]}. Fix: export masks at the video resolution."
        )
    wanted = wanted[part]
    if len(wanted) == 0:
        return
    lo, hi = int(wanted[0]), int(wanted[-1]) + 1
    steps = np.unique(np.diff(wanted))
    stride = int(steps[0]) if len(steps) == 1 else 1  # the selected frames are evenly strided
    want_set = set(int(v) for v in wanted)
    for v, rgb in iter_frames(external, start=lo, stop=hi, stride=stride):
        if v in want_set:
            yield cv2.threshold(_channel_max(rgb), 127, 255, cv2.THRESH_BINARY)[1]  # > 127 -> 255


def stored_region(box: tuple[int, int, int, int] | None, H: int, W: int) -> tuple[int, int, int, int]:
    """The tile-aligned region (x0, y0, x1, y1) of a frame kept for a mask with nonzero box `box`:
    every _TILE x _TILE tile meeting the box grown by FRAME_MARGIN px; (0, 0, 0, 0) for None."""
    if box is None:
        return 0, 0, 0, 0
    x0, y0, x1, y1 = box
    x0, y0 = max(x0 - FRAME_MARGIN, 0) // _TILE * _TILE, max(y0 - FRAME_MARGIN, 0) // _TILE * _TILE
    x1 = min(-(-(x1 + FRAME_MARGIN) // _TILE) * _TILE, W)
    y1 = min(-(-(y1 + FRAME_MARGIN) // _TILE) * _TILE, H)
    return x0, y0, x1, y1


@dataclass(frozen=True)
class FrameTiles:
    """What the masks file stores of one frame, ready to write: ``box`` (its stored_box row),
    ``chunks`` [(dataset "masks" or "frames", tile y, tile x, filter mask, stored bytes)], whole
    chunks as HDF5 would store them, and ``mask`` (the mask's part in its stored region
    ``mask_region``, uint8) only when h5py's lzf_compress is not usable, to be written through
    h5py instead."""

    box: tuple[int, int, int, int]
    chunks: list[tuple[str, int, int, int, np.ndarray]]
    mask: np.ndarray | None = None
    mask_region: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class TileLayout:
    """How a frame's mask and pixels become the masks file's chunks (MaskStore); no file access,
    so that forked workers prepare FrameTiles and the one process holding the file writes them.

    Tiles are whole chunks, stored with ``write_direct_chunk`` as HDF5 would store them (frame
    tiles raw; mask tiles LZF-compressed by h5py's own lzf_compress, workflow_scripts/h5chunks.py;
    an edge tile padded with the fill value 0): this skips HDF5's selection and filter machinery
    (~0.1 ms a tile), and readers see the same datasets.
    """

    H: int
    W: int
    store_frames: str = "mouse"
    lzf: bool = True

    def cut(self, mask: np.ndarray, bbox: tuple[int, int, int, int] | None) -> tuple[tuple[int, int, int, int] | None, np.ndarray | None]:
        """(stored region, the mask's part in it) of a mask uint8 [H, W] with nonzero box bbox
        (x0, y0, x1, y1; None: empty): stored_region; (None, None) for an empty mask."""
        if bbox is None:
            return None, None
        region = x0, y0, x1, y1 = stored_region(bbox, self.H, self.W)
        return region, mask[y0:y1, x0:x1]

    def tiles(self, frame: np.ndarray | YUV420Frame, mask: np.ndarray | None,
              region: tuple[int, int, int, int] | None) -> FrameTiles:
        """The FrameTiles of a frame (RGB uint8 [H, W, 3], or a YUV420Frame of which only the
        stored region is converted to RGB: the same pixels as converting the whole frame) whose
        mask's stored part is ``mask`` (cut)."""
        chunks: list[tuple[str, int, int, int, np.ndarray]] = []
        fallback = None
        box = (0, 0, 0, 0) if region is None else region
        if region is not None:
            if self.lzf:
                self._tiles(chunks, "masks", mask, region, region[:2], compress=True)
            else:
                fallback = np.ascontiguousarray(mask)
        if self.store_frames == "full":
            box = (0, 0, self.W, self.H)
            rgb = frame if isinstance(frame, np.ndarray) else frame.rgb()
            self._tiles(chunks, "frames", rgb, box, (0, 0))
        elif region is not None:
            x0, y0, x1, y1 = region
            rgb = frame[y0:y1, x0:x1] if isinstance(frame, np.ndarray) else frame.rgb_region(x0, y0, x1, y1)
            self._tiles(chunks, "frames", rgb, region, (x0, y0))
        return FrameTiles(box, chunks, fallback, region if fallback is not None else None)

    def _tiles(self, chunks: list, name: str, arr: np.ndarray, region: tuple[int, int, int, int],
               origin: tuple[int, int], compress: bool = False) -> None:
        """Append the chunks of the tile-aligned ``region`` of a frame whose pixels are ``arr``'s
        (pixel (x, y) of the frame at arr[y - origin[1], x - origin[0]])."""
        th, tw = mask_chunks(self.H, self.W)[1:]
        ox, oy = origin
        x0, y0, x1, y1 = region
        for ty in range(y0, y1, th):
            for tx in range(x0, x1, tw):
                part = arr[ty - oy:min(ty + th, y1) - oy, tx - ox:min(tx + tw, x1) - ox]
                if part.shape[:2] == (th, tw):
                    tile = np.ascontiguousarray(part)
                else:  # an edge tile: the chunk's part beyond the image holds the fill value
                    tile = np.zeros((th, tw, *arr.shape[2:]), np.uint8)
                    tile[:part.shape[0], :part.shape[1]] = part
                fmask, data = lzf_chunk(tile) if compress else (0, tile)
                chunks.append((name, ty, tx, fmask, data))


class MaskStore:
    """Writes the masks file's per-frame datasets (module doc) into an open h5py.File ``fout``.

    ``add(t, frame, mask, bbox)`` stores frame t: the mask and frame tiles of its stored region
    (bbox: (x0, y0, x1, y1) of the mask's nonzero pixels, x1/y1 exclusive, None when empty), or
    the whole frame with store_frames="full"; ``write(t, tiles)`` stores FrameTiles prepared
    elsewhere (``layout.tiles``). ``close()`` writes ``stored_box``; ``abort()`` (after an error)
    stops writing.

    threaded: ``add``'s tiles (the RGB conversion of a YUV420Frame's stored region, the
    compression) are prepared and written in a writer thread, one frame after another (swscale
    and LZF release the GIL: they overlap the caller's next frame). ``add`` copies the mask's
    stored part; the frame is read later, so it must not change after ``add`` (decoded frames do
    not).
    """

    def __init__(self, fout: h5py.File, T: int, H: int, W: int, store_frames: str = "mouse",
                 threaded: bool = True) -> None:
        if store_frames not in STORE_FRAMES:
            raise ValueError(f"store_frames must be one of {STORE_FRAMES}, got {store_frames!r}")
        self.layout = TileLayout(H, W, store_frames, lzf_threads_available())
        self._datasets = {
            "masks": fout.create_dataset("masks", shape=(T, H, W), dtype=np.uint8, chunks=mask_chunks(H, W),
                                         compression="lzf", fillvalue=0),
            "frames": fout.create_dataset("frames", shape=(T, H, W, 3), dtype=np.uint8,
                                          chunks=(*mask_chunks(H, W), 3), fillvalue=0),
        }
        self.boxes = np.zeros((T, 4), np.int32)
        self._fout = fout
        fout.attrs.update({"store_frames": store_frames, "frame_margin": FRAME_MARGIN})
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None
        if threaded:
            self._queue = queue.Queue(8)
            self._thread = threading.Thread(target=self._drain, name="masks-writer", daemon=True)
            self._thread.start()

    def add(self, t: int, frame: np.ndarray | YUV420Frame, mask: np.ndarray,
            bbox: tuple[int, int, int, int] | None) -> None:
        """frame: RGB uint8 [H, W, 3] or a YUV420Frame; mask uint8 [H, W]; bbox as above."""
        region, part = self.layout.cut(mask, bbox)
        if self._queue is None:
            self.write(t, self.layout.tiles(frame, part, region))
            return
        if self._error is not None:
            raise RuntimeError("the masks file's writer thread failed") from self._error
        self._queue.put((t, frame, None if part is None else part.copy(), region))

    def write(self, t: int, tiles: FrameTiles) -> None:
        """Store frame t's FrameTiles."""
        self.boxes[t] = tiles.box
        for name, ty, tx, fmask, data in tiles.chunks:
            ds = self._datasets[name]
            ds.id.write_direct_chunk((t, ty, tx) + (0,) * (ds.ndim - 3), data, filter_mask=fmask)
        if tiles.mask is not None:
            x0, y0, x1, y1 = tiles.mask_region
            self._datasets["masks"][t, y0:y1, x0:x1] = tiles.mask

    def _drain(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    t, frame, part, region = item
                    self.write(t, self.layout.tiles(frame, part, region))
                except BaseException as exc:  # raised in the caller's thread (add / close)
                    self._error = exc

    def _join(self) -> None:
        if self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def abort(self) -> None:
        """Stop the writer thread (what it has not written is dropped); no stored_box."""
        if self._queue is not None:
            self._error = self._error or RuntimeError("aborted")
            self._join()

    def close(self) -> None:
        """Finish writing (raising the writer thread's error, if any) and write ``stored_box``."""
        self._join()
        if self._error is not None:
            raise RuntimeError("the masks file's writer thread failed") from self._error
        self._fout.create_dataset("stored_box", data=self.boxes)


# The most frames a worker of run_masks masks per job, and the fewest selected frames per worker: each
# worker decodes a contiguous part of the video (so it seeks once and decodes at most one
# keyframe interval it does not keep); a job's answer carries its frames' tiles (~0.25 MB each).
_PIECE_FRAMES = 16
_MIN_FRAMES_PER_WORKER = 32


@dataclass
class _Masker:
    """Masks of the selected frames of one camera (run_masks): ``frames(a, b)`` decodes the
    frames at selection positions a..b-1 and yields (t, QC row, frame, mask, mask box) for each,
    the mask in one buffer reused for the next frame. decoder_threads: iter_frames' threads."""

    video: str
    vids: range
    stride: int
    offset: int
    frame_index: np.ndarray
    shape: tuple[int, int]
    cfg: MaskConfig
    yuv_background: YUVBackground | None
    rgb_background: np.ndarray | None
    external: str | None
    num_source: int
    decoder_threads: int = 0

    def frames(self, a: int, b: int) -> Iterator[tuple[int, dict, np.ndarray | YUV420Frame, np.ndarray,
                                                       tuple[int, int, int, int] | None]]:
        vids, cfg = self.vids, self.cfg
        if a >= b:
            return
        ext = None
        if self.external:
            ext = _iter_external(self.external, self.frame_index, self.shape, self.offset, self.num_source, slice(a, b))
        mask = np.empty(self.shape, np.uint8)
        buffers: dict[str, np.ndarray] = {}
        t = a
        for v, frame in prefetched(iter_frames(self.video, start=vids[a], stop=vids[b - 1] + 1, stride=self.stride,
                                               planar=True, threads=self.decoder_threads)):
            if v != vids[t]:  # cannot happen unless the decoder skips frames silently
                raise InputError(f"{self.video}: expected frame {vids[t]}, decoder gave {v}. Fix: re-encode the video.")
            if ext is not None:
                mask = next(ext, None)
                if mask is None:
                    raise InputError(f"{self.external}: ran out of masks at frame {self.frame_index[t]}. "
                                     "Fix: export one mask per frame.")
                box = _nonzero_box(mask)
            elif (self.yuv_background is not None and isinstance(frame, YUV420Frame)
                  and frame.tags == self.yuv_background.tags):
                _, box = _compute_mask_box(frame, self.yuv_background, cfg, out=mask, buffers=buffers)
            else:  # image folders, other pixel formats (and a stream that changes its format)
                frame = frame if isinstance(frame, np.ndarray) else frame.rgb()
                if self.rgb_background is None:  # the median of the RGB frames (estimate_backgrounds)
                    self.rgb_background = estimate_backgrounds(self.video, vids, cfg.background_samples,
                                                               rgb_median=True)[0]
                _, box = _compute_mask_box(frame, self.rgb_background, cfg, out=mask, buffers=buffers)
            row = mask_qc(mask, int(self.frame_index[t]), cfg, box)
            bbox = None if not row["area"] else tuple(int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
            yield t, row, frame, mask, bbox
            t += 1
            if t == b:
                return
        raise InputError(f"{self.video}: only {t} of {len(vids)} selected frames could be decoded. "
                         "Fix: re-encode the video.")


def _pack(frames: list[tuple[int, dict, FrameTiles]]) -> tuple[list, bytes]:
    """A worker's answer: the frames' tiles with their chunks' bytes joined into one buffer (a
    pipe carries one large bytes object at memory speed; a dozen small arrays per frame pickled
    one by one cost ~0.5 ms per frame on both sides)."""
    meta, data = [], []
    for t, row, tiles in frames:
        meta.append((t, row, tiles.box, [(n, y, x, f, memoryview(d).nbytes) for n, y, x, f, d in tiles.chunks], tiles.mask,
                     tiles.mask_region))
        data += [d for *_, d in tiles.chunks]
    return meta, b"".join(data)


def _unpack(packed: tuple[list, bytes]) -> Iterator[tuple[int, dict, FrameTiles]]:
    meta, data = packed
    view, at = memoryview(data), 0
    for t, row, box, chunks, mask, mask_region in meta:
        parts = []
        for name, y, x, fmask, size in chunks:
            parts.append((name, y, x, fmask, view[at:at + size]))
            at += size
        yield t, row, FrameTiles(box, parts, mask, mask_region)


def _masked_in_workers(masker: _Masker, layout: TileLayout, T: int,
                       workers: int) -> Iterator[tuple[int, dict, FrameTiles]]:
    """(t, QC row, FrameTiles) of every selected frame, in no particular order, from `workers`
    forked processes, each masking a contiguous part of the selection (one seek each) in as many
    jobs of up to _PIECE_FRAMES frames as the others; this process only writes. Two jobs per
    worker are kept in flight."""
    cuts = np.linspace(0, T, workers + 1).round().astype(int)
    per_worker = -(-int(np.diff(cuts).max()) // _PIECE_FRAMES)
    # job k * workers + w: piece k of part w (ForkedWorkers sends job i to worker i % workers)
    pieces = [np.linspace(s, e, per_worker + 1).round().astype(int) for s, e in zip(cuts[:-1], cuts[1:])]
    jobs = [(int(p[k]), int(p[k + 1]), int(p[-1])) for k in range(per_worker) for p in pieces]
    state: dict[str, Any] = {}  # a worker's open decoding of its part
    # one decoder thread per worker: the workers are the parallelism (with FFmpeg's own threads
    # as well, the masks step was ~10 % slower: they wait for each other on busy cores)
    masker = replace(masker, decoder_threads=1)

    def work(job: tuple[int, int, int]) -> tuple[list, bytes]:
        """Frames a..b-1 of the part a0..end-1 (decoding continues where the last job stopped)."""
        a, b, end = job
        if state.get("next") != a:
            if "frames" in state:
                state.pop("frames").close()
            state["frames"] = masker.frames(a, end)
        out = []
        for _ in range(b - a):
            t, row, frame, mask, bbox = next(state["frames"])
            region, part = layout.cut(mask, bbox)
            out.append((t, row, layout.tiles(frame, part, region)))
        state["next"] = b
        if b == end:
            state.pop("frames").close()
        return _pack(out)

    with ForkedWorkers(workers, work, f"masks of {masker.video}, frames") as pool:
        for packed in pool.map(jobs, label=lambda job: f"{job[0]}-{job[1] - 1}"):
            yield from _unpack(packed)


def run_masks(video: str, out_h5: str, out_qc_csv: str, cfg: MaskConfig, *, start_frame: int = 0,
              max_frames: int | None = None, stride: int = 1, offset: int = 0, expected: dict | None = None,
              camera: str | None = None, external: str | None = None, store_frames: str = "mouse",
              workers: int = 1) -> pd.DataFrame:
    """Decode the selected frames of one camera's `video` once into masks, the mouse's pixels and
    QC (schema in the module doc); returns the QC table.

    start_frame, max_frames, stride, offset: the frame selection (workflow_scripts/frames.py).
    expected: optional {"width", "height", "fps", "num_frames", "camera"} to check the video
    against. camera: name for attrs and messages (default: the file stem). external: a mask video
    or image folder (e.g. from SAM2) whose masks, binarized at 127, replace the built-in
    background subtraction (the background image is still estimated). store_frames: "mouse"
    (the tiles around the mask) or "full" (whole frames, for crop.background: keep). Bad masks
    (empty, too small/large, touching the border) are flagged in the QC table.

    workers: forked processes that decode and mask a contiguous part of the selection each (at
    most one per _MIN_FRAMES_PER_WORKER frames) while this one writes the file: the decoder keeps
    only ~1.5 of 2 cores busy, the masks and tiles need the rest. The same file for any number.
    """
    info = probe_video(video)
    check_expected(info, expected)
    vids = selected_video_indices(info, start_frame, max_frames, stride, offset)
    cam = camera or (expected or {}).get("camera") or Path(video).stem
    T, H, W = len(vids), info.height, info.width
    frame_index = np.asarray(vids, dtype=np.int64) - offset
    background, yuv_background, bg_frames = estimate_backgrounds(video, vids, cfg.background_samples)
    # RGB frames are compared with the RGB median: the background image unless it was converted
    # from the plane medians (then decoded again if a frame needs it: a stream changing format)
    masker = _Masker(str(video), vids, stride, offset, frame_index, (H, W), cfg, yuv_background,
                     background if yuv_background is None else None, external, info.num_frames)
    workers = max(1, min(int(workers), T // _MIN_FRAMES_PER_WORKER))
    fps = info.fps if info.fps is not None else Fraction(0)
    rows: list[dict | None] = [None] * T
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w", libver=("v110", "latest")) as fout:
            # libver v110+: chunk indices stay O(1) per access however many chunks a long
            # recording has (fixed-array index instead of a version-1 B-tree).
            store = MaskStore(fout, T, H, W, store_frames, threaded=workers == 1)
            fout.create_dataset("frame_index", data=frame_index)
            fout.create_dataset("background", data=background)
            fout.create_dataset("background_frames", data=bg_frames)
            fout.attrs.update({
                "source": str(video), "camera": str(cam), "fps": float(fps), "fps_num": fps.numerator,
                "fps_den": fps.denominator, "width": W, "height": H, "stride": stride, "offset": offset,
                "start_frame": start_frame, "num_frames_source": info.num_frames, "external": str(external or ""),
                "config_json": json.dumps(asdict(cfg), sort_keys=True),
            })
            try:
                if workers > 1:  # forked before the progress bar's thread starts
                    masked = _masked_in_workers(masker, store.layout, T, workers)
                    with tqdm(total=T, desc=f"masks {cam} ({workers} processes)", unit="frame") as bar:
                        for t, row, tiles in masked:
                            rows[t] = row
                            store.write(t, tiles)
                            bar.update()
                else:
                    for t, row, frame, mask, bbox in tqdm(masker.frames(0, T), total=T, desc=f"masks {cam}",
                                                          unit="frame"):
                        rows[t] = row
                        store.add(t, frame, mask, bbox)
                store.close()
            finally:
                store.abort()  # after an error: stop the writer thread (nothing to do after close)
    qc = pd.DataFrame(rows, columns=QC_COLUMNS)
    with atomic_path(out_qc_csv) as tmp:
        qc.to_csv(tmp, index=False)
    return qc
