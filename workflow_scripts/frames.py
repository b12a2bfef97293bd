"""The `extract_frames` step: one camera's video -> an HDF5 file of RGB frames.

Frame indices: each camera's video has its own frame counter v (0 = first frame of the file).
The session's *common* frame index is s = v - offset, where `offset` is the camera's entry of
the config's `frame_offsets` (a camera that started recording 3 frames early has offset 3).
`start_frame`, `max_frames` and `stride` select common indices s = start_frame + k * stride,
so every camera of a session yields the same `frame_index` list.

Output HDF5 (written atomically):
  frames       uint8 [T, H, W, 3]  RGB, chunk (1, H, W, 3), lzf or none (frames.compression)
  frame_index  int64 [T]           common (session) frame index s
  attrs: source (video path), fps (float), fps_num/fps_den, width, height, stride, offset,
         start_frame, camera, num_frames_source (frames in the video)
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterator, Mapping

import h5py
import numpy as np
from tqdm import tqdm

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError
from workflow_scripts.h5chunks import write_frames
from workflow_scripts.video import VideoInfo, iter_frames, probe_video


def session_length(info: VideoInfo, offset: int) -> int:
    """Common-index end (exclusive) of one camera: its last frame has s = num_frames - 1 - offset."""
    return info.num_frames - offset


def selected_video_indices(
    info: VideoInfo, start_frame: int, max_frames: int | None, stride: int, offset: int
) -> range:
    """Video frame indices v (not common indices) that the extraction reads, as a range."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    v0 = start_frame + offset
    if v0 < 0:
        raise InputError(
            f"{info.path}: start_frame {start_frame} with frame offset {offset} points before the "
            f"first frame of the video. Fix: set start_frame >= {-offset} or correct frame_offsets."
        )
    rng = range(v0, info.num_frames, stride)
    if max_frames is not None:
        rng = rng[: max(0, int(max_frames))]
    if len(rng) == 0:
        raise InputError(
            f"{info.path}: no frames selected (video has {info.num_frames} frames, start_frame "
            f"{start_frame}, offset {offset}, max_frames {max_frames}). Fix: lower start_frame."
        )
    return rng


def _check_expected(info: VideoInfo, expected: Mapping | None) -> None:
    """Compare the probed video with what the config/calibration says (only keys present)."""
    if not expected:
        return
    problems = []
    for key in ("width", "height", "num_frames"):
        if expected.get(key) is not None and int(expected[key]) != getattr(info, key):
            problems.append(f"{key} is {getattr(info, key)}, expected {expected[key]}")
    if expected.get("fps") is not None and info.fps is not None:
        if abs(float(info.fps) - float(expected["fps"])) > 1e-3 * float(expected["fps"]):
            problems.append(f"fps is {float(info.fps):.4f}, expected {float(expected['fps']):.4f}")
    if problems:
        cam = expected.get("camera", "")
        raise InputError(
            f"{info.path}: video{' of camera ' + cam if cam else ''} does not match the calibration/"
            f"config: {'; '.join(problems)}. Fix: check that the video belongs to this camera and "
            "session (and is not rescaled), or fix the calibration."
        )


def run_extract_frames(
    video: str,
    out_h5: str,
    start_frame: int = 0,
    max_frames: int | None = None,
    stride: int = 1,
    offset: int = 0,
    expected: dict | None = None,
    camera: str | None = None,
    compression: str | None = "lzf",
    workers: int = 2,
) -> int:
    """Decode the selected frames of `video` into `out_h5` (schema in the module doc).

    expected: optional {"width", "height", "fps", "num_frames", "camera"} to verify against
    (e.g. the calibration's image size); a mismatch raises InputError. camera: name stored in
    attrs (default expected["camera"], else the video file stem). compression: h5py filter of
    `frames` ("lzf" default; None writes several times faster and makes every later read
    faster, while lzf saves only 7-15% on camera footage, see
    benchmarks/preprocess_throughput.py). workers: LZF compression threads, running while the
    next frames decode (workflow_scripts/h5chunks.py; the stored bytes are h5py's). Returns T,
    the frame count.
    """
    info = probe_video(video)
    _check_expected(info, expected)
    vids = selected_video_indices(info, start_frame, max_frames, stride, offset)
    cam = camera or (expected or {}).get("camera") or Path(video).stem
    T, H, W = len(vids), info.height, info.width
    fps = info.fps if info.fps is not None else Fraction(0)
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            dset = f.create_dataset("frames", shape=(T, H, W, 3), dtype=np.uint8,
                                    chunks=(1, H, W, 3), compression=compression)
            f.create_dataset("frame_index", data=np.asarray(vids, dtype=np.int64) - offset)
            f.attrs.update({
                "source": str(video), "fps": float(fps), "fps_num": fps.numerator,
                "fps_den": fps.denominator, "width": W, "height": H, "stride": stride,
                "offset": offset, "start_frame": start_frame, "camera": str(cam),
                "num_frames_source": info.num_frames,
            })
            decoded = iter_frames(video, start=vids.start, stop=vids.stop, stride=stride)
            n = write_frames(dset, _checked_frames(decoded, vids, video, cam), workers=workers)
            if n != T:
                raise InputError(f"{video}: only {n} of {T} selected frames could be decoded. Fix: re-encode the video.")
    return T


def _checked_frames(decoded: Iterator[tuple[int, np.ndarray]], vids: range, video: str,
                    cam: str) -> Iterator[np.ndarray]:
    """RGB frames of `decoded` ((video index, frame) pairs), checking the indices are `vids`."""
    for k, (v, rgb) in enumerate(tqdm(decoded, total=len(vids), desc=f"extract {cam}", unit="frame")):
        if v != vids[k]:  # cannot happen unless the decoder skips frames silently
            raise InputError(f"{video}: expected frame {vids[k]}, decoder gave {v}. Fix: re-encode the video.")
        yield rgb


def check_synchronized(
    infos: Mapping[str, VideoInfo],
    offsets: Mapping[str, int] | None,
    video_paths: Mapping[str, str] | None = None,
) -> None:
    """Raise InputError when cameras disagree on fps or on length after offsets.

    infos: camera name -> VideoInfo. offsets: camera name -> frame offset (missing = 0).
    Lengths are compared on the common timeline: num_frames - offset must be equal for all
    cameras (the last frame of every video is the same instant). The message names each camera
    and file and suggests the `frame_offsets` entry that would align them.
    """
    if not infos:
        return
    offsets = dict(offsets or {})
    paths = {c: (video_paths or {}).get(c, infos[c].path) for c in infos}
    rates = {c: i.fps for c, i in infos.items() if i.fps is not None}
    if len({Fraction(r) for r in rates.values()}) > 1:
        listing = ", ".join(f"{c} ({paths[c]}): {float(r):.4f} fps" for c, r in rates.items())
        raise InputError(
            f"cameras record at different frame rates: {listing}. Fix: re-encode the videos to a "
            "common rate or remove the mismatched camera from the session."
        )
    ends = {c: session_length(i, int(offsets.get(c, 0))) for c, i in infos.items()}
    if len(set(ends.values())) > 1:
        ref_cam = max(ends, key=lambda c: ends[c])  # the longest as reference
        ref = ends[ref_cam]
        listing = ", ".join(
            f"{c} ({paths[c]}): {infos[c].num_frames} frames, offset {offsets.get(c, 0)}"
            for c in infos
        )
        suggest = {c: int(offsets.get(c, 0)) + (ends[c] - min(ends.values())) for c in infos}
        raise InputError(
            f"cameras are not synchronized: frame counts after offsets differ ({listing}). "
            f"Fix: set frame_offsets so that num_frames - offset is equal for every camera, "
            f"e.g. frame_offsets: {suggest} if the videos end together (longest: {ref_cam}, {ref})."
        )
