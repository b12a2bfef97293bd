"""Frame selection and synchronization of a session's cameras (decoding happens in the masks step).

Frame indices: each camera's video has its own frame counter v (0 = first frame of the file).
The session's *common* frame index is s = v - offset, where `offset` is the camera's entry of
the config's `frame_offsets` (a camera that started recording 3 frames early has offset 3).
`start_frame`, `max_frames` and `stride` select common indices s = start_frame + k * stride,
so every camera of a session yields the same `frame_index` list.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Mapping

from workflow_scripts.errors import InputError
from workflow_scripts.video import VideoInfo


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


def check_expected(info: VideoInfo, expected: Mapping | None) -> None:
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
