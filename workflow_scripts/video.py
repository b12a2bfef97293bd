"""Streaming video I/O with PyAV: probe, iterate RGB frames, write H.264.

Never loads a whole video: `iter_frames` yields one decoded frame at a time. Frames are RGB
uint8 arrays of shape [H, W, 3] (row = y down, column = x right; pixel (r, c) covers
[c, c+1) x [r, r+1) in the corner-origin convention of docs/conventions.md).

`iter_frames(..., planar=True)` (and keyframes_before) keep yuv420p / yuvj420p frames in their
decoded planes instead (YUV420Frame: Y, U, V views, no copy), converting to RGB only on demand,
for the whole frame or just a region, with exactly the pixels iter_frames would give.

A "video" may also be a directory of still images (png/jpg/jpeg/bmp/tif, naturally sorted by
file name, e.g. masks exported by SAM2); then frame i is the i-th file and fps is None.

Every problem with an input file raises `InputError` naming the file and the fix: missing file,
not a video / corrupt header, zero frames, and truncated videos (fewer frames decodable than the
header claims; detected while iterating, with the frame number).
"""
from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Collection, Generator, Iterable, Iterator, Sequence, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Seeking only pays off when we would otherwise decode many frames just to throw them away.
_SEEK_MIN_FRAMES = 48


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` found.

    width, height: frame size in pixels. fps: exact frame rate (Fraction) for videos, None for
    image folders. num_frames: frames in the file (container header, or counted when the header
    does not say). codec: decoder name (e.g. "h264"), or "images" for an image folder.
    """

    path: str
    width: int
    height: int
    fps: Fraction | None
    num_frames: int
    codec: str


def _natural_key(name: str) -> list[Any]:
    """Sort key so that frame_2.png comes before frame_10.png."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_image_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder, naturally sorted by name. InputError if there are none."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InputError(
            f"{folder}: directory holds no image frames ({', '.join(IMAGE_SUFFIXES)}). "
            "Fix: point to a video file or a folder of per-frame images."
        )
    return sorted(files, key=lambda p: _natural_key(p.name))


def _load_image_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read image ({exc}). Fix: re-export this frame.") from exc


def _check_exists(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found. Fix: check the video path in the config.")
    return p


def _open_input(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: not a readable video (corrupt or missing header: {exc}). "
            "Fix: re-export or re-encode the video (e.g. ffmpeg -i in -c:v libx264 out.mp4)."
        ) from exc
    if not container.streams.video:
        container.close()
        raise InputError(f"{path}: has no video stream (empty recording with zero frames, or not a "
                         "video). Fix: point to the camera's video file and check the recording.")
    return container


def _count_packets(path: Path) -> int:
    """Frames counted by demuxing (no decoding) for containers whose header has no count."""
    with _open_input(path) as container:
        stream = container.streams.video[0]
        try:
            return sum(1 for pkt in container.demux(stream) if pkt.size > 0)
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: corrupt video data while counting frames ({exc}). "
                             "Fix: re-encode the video.") from exc


def probe_video(path: str | Path) -> VideoInfo:
    """Size, frame rate, frame count and codec of a video file or image folder."""
    p = _check_exists(path)
    if p.is_dir():
        files = list_image_frames(p)
        h, w = _load_image_rgb(files[0]).shape[:2]
        return VideoInfo(str(p), w, h, None, len(files), "images")
    with _open_input(p) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = Fraction(rate) if rate else None
        num = int(stream.frames or 0)
        codec = ctx.name
    if width <= 0 or height <= 0:
        raise InputError(f"{p}: video stream has no frame size (corrupt header). Fix: re-encode.")
    if num <= 0:
        num = _count_packets(p)  # header does not say (mkv, webm, raw streams): count
    if num <= 0:
        raise InputError(f"{p}: video has zero frames. Fix: check the recording / export.")
    if fps is None or fps <= 0:
        raise InputError(f"{p}: video has no frame rate. Fix: re-encode with a constant rate.")
    return VideoInfo(str(p), width, height, fps, num, codec)


YUV420_FORMATS = ("yuv420p", "yuvj420p")  # frames that iter_frames(planar=True) keeps in their planes


def _plane_view(plane: Any) -> np.ndarray:
    """uint8 [rows, columns] view (no copy) of one plane of a software frame."""
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :plane.width]


def _tags(frame: av.VideoFrame) -> tuple:
    """What decides how swscale converts a frame to RGB: pixel format, size, colour tags."""
    return (frame.format.name, frame.width, frame.height, frame.colorspace, frame.color_range,
            frame.color_trc, frame.color_primaries)


_REGION_TEST_REGIONS = 16  # random regions the exactness check converts (plus fixed ones)
_warned_inexact: set[tuple] = set()


class _ToRGB:
    """Decoded frame -> RGB uint8 [H, W, 3] through ONE swscale context for a whole stream.

    ``frame.to_ndarray(format="rgb24")`` builds a new swscale context for every frame (PyAV keeps
    the reformatter on the frame), which costs more than decoding a 640x512 H.264 frame; reusing
    one gives bit-identical pixels (same conversion, same flags) 1.3-4x faster.

    ``region(frame, x0, y0, x1, y1)`` converts only a rectangle of a yuv420p / yuvj420p frame,
    bit-identical to ``self(frame)[y0:y1, x0:x1]``: the rectangle grown to even rows and columns
    is copied into a frame of its own (same format and colour tags) and converted with the same
    settings, then trimmed. That is exact because swscale's unscaled 4:2:0 -> RGB converter, the
    one it uses for even frame heights, computes pixel (r, c) from Y[r, c], U[r // 2, c // 2] and
    V[r // 2, c // 2] alone (no filtering, no dithering at 8 bits per channel), so the same
    samples give the same pixel wherever they sit. Rather than trust that, the first region of
    each stream kind (``_tags``) runs a check: a random frame of that kind converted whole and in
    odd-placed, edge-touching and random regions, and the stream's own frame converted whole
    through the region route (colour tags copied correctly). Where it fails (odd heights take
    swscale's filtering scaler; some future swscale) regions are cut from whole-frame conversions
    and a warning is logged once per kind.
    """

    def __init__(self, name: str = "") -> None:
        self._reformatter = VideoReformatter()
        self._name = name
        self._by_size: dict[tuple[int, int], VideoReformatter] = {}  # region size -> its own context (no re-setup)
        self._exact: dict[tuple, bool] = {}
        self._last: tuple[Any, np.ndarray | None] = (None, None)  # whole-frame conversion for fallbacks
        # one conversion at a time: frames of a stream may be converted in several threads
        # (run_masks: regions in its writer thread); reentrant, as region falls back on __call__
        self._lock = threading.RLock()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        with self._lock:
            return self._reformatter.reformat(frame, format="rgb24").to_ndarray()

    def region(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """RGB uint8 [y1 - y0, x1 - x0, 3] of a rectangle (x1/y1 exclusive) of the frame."""
        with self._lock:
            return self._region(frame, x0, y0, x1, y1)

    def _region(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        W, H = frame.width, frame.height
        if not (0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H):
            raise ValueError(f"region ({x0}, {y0}, {x1}, {y1}) is not inside the {W}x{H} frame")
        if x0 == x1 or y0 == y1:
            return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
        key = _tags(frame)
        exact = self._exact.get(key)
        if exact is None:
            exact = self._exact[key] = key[0] in YUV420_FORMATS and self._check_exact(frame)
            if not exact and key not in _warned_inexact:
                _warned_inexact.add(key)
                log.warning("%s: frame regions of %s %dx%d frames (colorspace %s, range %s) cannot be converted "
                            "to RGB exactly on their own; converting whole frames (slower, same pixels)",
                            self._name or "video", *key[:5])
        if exact:
            return self._convert_region(frame, x0, y0, x1, y1)
        if self._last[0] is not frame:
            self._last = (frame, self(frame))
        return self._last[1][y0:y1, x0:x1].copy()

    def _convert_region(self, frame: av.VideoFrame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        W, H = frame.width, frame.height
        ex0, ey0 = x0 & ~1, y0 & ~1  # chroma sample (r // 2, c // 2) must stay whole
        ex1, ey1 = min(x1 + (x1 & 1), W), min(y1 + (y1 & 1), H)
        w, h = ex1 - ex0, ey1 - ey0
        sub = av.VideoFrame(w, h, frame.format.name)
        sub.colorspace, sub.color_range = frame.colorspace, frame.color_range
        sub.color_trc, sub.color_primaries = frame.color_trc, frame.color_primaries
        cx0, cy0, cx1, cy1 = ex0 // 2, ey0 // 2, (ex1 + 1) // 2, (ey1 + 1) // 2
        for src, dst, (a0, b0, a1, b1) in zip(frame.planes, sub.planes,
                                              ((ex0, ey0, ex1, ey1), (cx0, cy0, cx1, cy1), (cx0, cy0, cx1, cy1))):
            _plane_view(dst)[...] = _plane_view(src)[b0:b1, a0:a1]
        reformatter = self._by_size.get((w, h))
        if reformatter is None:
            if len(self._by_size) >= 64:
                self._by_size.clear()
            reformatter = self._by_size[w, h] = VideoReformatter()
        # one thread: a region is small, and a context with a thread pool costs ~3 ms to set up
        rgb = reformatter.reformat(sub, format="rgb24", threads=1).to_ndarray()
        return rgb[y0 - ey0:y1 - ey0, x0 - ex0:x1 - ex0]

    def _check_exact(self, frame: av.VideoFrame) -> bool:
        """Region conversion == whole-frame conversion, on random planes and on `frame` (class doc)."""
        W, H = frame.width, frame.height
        rng = np.random.default_rng(0)
        test = av.VideoFrame(W, H, frame.format.name)
        test.colorspace, test.color_range = frame.colorspace, frame.color_range
        test.color_trc, test.color_primaries = frame.color_trc, frame.color_primaries
        for plane in test.planes:
            view = _plane_view(plane)
            view[...] = np.frombuffer(rng.bytes(view.size), np.uint8).reshape(view.shape)
        whole = self(test)
        regions = [(0, 0, W, H), (1, 1, W, H), (0, 0, W - 1, H - 1), (1, 1, 2, 2), (W - 1, H - 1, W, H),
                   (W // 3 | 1, H // 3 | 1, W - (W // 5 | 1), H - (H // 7 | 1))]
        for _ in range(_REGION_TEST_REGIONS):
            xa, xb = sorted(int(v) for v in rng.integers(0, W + 1, 2))
            ya, yb = sorted(int(v) for v in rng.integers(0, H + 1, 2))
            regions.append((xa, ya, max(xb, xa + 1), max(yb, ya + 1)))
        for x0, y0, x1, y1 in regions:
            x0, y0, x1, y1 = min(x0, W - 1), min(y0, H - 1), min(x1, W), min(y1, H)
            if not np.array_equal(self._convert_region(test, x0, y0, x1, y1), whole[y0:y1, x0:x1]):
                return False
        return bool(np.array_equal(self._convert_region(frame, 0, 0, W, H), self(frame)))


class YUV420Frame:
    """A decoded yuv420p / yuvj420p frame in its native planes; RGB on demand.

    y: uint8 [H, W]; u, v: uint8 [ceil(H / 2), ceil(W / 2)] (chroma of 2 x 2 pixel blocks):
    read-only views into the decoder's buffers, no copy. ``rgb()`` is the whole frame exactly as
    iter_frames gives it; ``rgb_region(x0, y0, x1, y1)`` equals ``rgb()[y0:y1, x0:x1]`` bit for
    bit and converts only that region (see _ToRGB.region). ``tags``: (pixel format, width,
    height, colorspace, color_range, color_trc, color_primaries), the AVFrame's values: frames
    with equal tags have comparable planes.
    """

    __slots__ = ("frame", "y", "u", "v", "tags", "_to_rgb")

    def __init__(self, frame: av.VideoFrame, to_rgb: _ToRGB) -> None:
        self.frame, self._to_rgb, self.tags = frame, to_rgb, _tags(frame)
        self.y, self.u, self.v = (_plane_view(p) for p in frame.planes)
        for a in (self.y, self.u, self.v):
            a.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, 3): the shape of the RGB frame."""
        return self.frame.height, self.frame.width, 3

    def rgb(self) -> np.ndarray:
        return self._to_rgb(self.frame)

    def with_planes(self, y: np.ndarray, u: np.ndarray, v: np.ndarray) -> "YUV420Frame":
        """A frame like this one (pixel format, size, colour tags; converted to RGB the same
        way) holding a copy of other planes of the same shapes (e.g. a per-plane median)."""
        f = self.frame
        new = av.VideoFrame(f.width, f.height, f.format.name)
        new.colorspace, new.color_range = f.colorspace, f.color_range
        new.color_trc, new.color_primaries = f.color_trc, f.color_primaries
        for plane, src in zip(new.planes, (y, u, v)):
            _plane_view(plane)[...] = src
        return YUV420Frame(new, self._to_rgb)

    def rgb_region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._to_rgb.region(self.frame, x0, y0, x1, y1)


def _converter(planar: bool, name: str) -> Any:
    """frame -> what iter_frames yields: RGB array, or YUV420Frame (planar, 4:2:0 formats)."""
    to_rgb = _ToRGB(name)
    if not planar:
        return to_rgb
    native = _ToRGB(name)  # its own contexts: YUV420Frame converts in the consumer's thread

    def convert(frame: av.VideoFrame) -> np.ndarray | YUV420Frame:
        if frame.format.name in YUV420_FORMATS and all(p.line_size > 0 for p in frame.planes):
            return YUV420Frame(frame, native)
        return to_rgb(frame)

    return convert


def _selected(idx: int, start: int, stride: int) -> bool:
    return idx >= start and (idx - start) % stride == 0


def _iter_image_folder(p: Path, start: int, stop: int, stride: int,
                       wanted: frozenset[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    files = list_image_frames(p)
    shape = _load_image_rgb(files[0]).shape
    for i in range(start, min(stop, len(files)), stride):
        if wanted is not None and i not in wanted:
            continue
        img = _load_image_rgb(files[i])
        if img.shape != shape:
            raise InputError(f"{files[i]}: image is {img.shape[1]}x{img.shape[0]}, the first frame "
                             f"{files[0].name} is {shape[1]}x{shape[0]}. Fix: export all frames at one size.")
        yield i, img


def iter_frames(
    path: str | Path, start: int = 0, stop: int | None = None, stride: int = 1,
    only: Collection[int] | None = None, planar: bool = False, threads: int = 0,
) -> Iterator[tuple[int, np.ndarray | YUV420Frame]]:
    """Yield (frame_index, rgb uint8 [H, W, 3]) for frame_index in range(start, stop, stride).

    only: yield just these frame indices of that range (e.g. scattered samples): the others are
    decoded but not converted to RGB.
    planar: yield yuv420p / yuvj420p frames as YUV420Frame (their planes, not converted; RGB of
    the whole frame or of a region on demand, the same pixels); other frames stay RGB arrays.
    threads: the decoder's threads (0: FFmpeg's choice, one per core and more); 1 where the
    parallelism is processes, each decoding its own part (run_masks' workers).

    frame_index counts from 0 at the first frame of the file. Streaming: one frame in memory at a
    time. For a large `start` it seeks to the preceding keyframe and decodes forward; frames that
    are not selected by `stride` are decoded (inter-frame codecs need them) but never converted
    to RGB, which is the expensive part. `stop` beyond the end is clipped to the frame count.

    Raises InputError (naming the file and frame) when the video is truncated or corrupt, i.e.
    fewer frames decode than the header claims.
    """
    if start < 0 or stride < 1 or (stop is not None and stop < 0):
        raise ValueError(f"iter_frames: need start >= 0, stop >= 0, stride >= 1 (got {start}, {stop}, {stride})")
    info = probe_video(path)
    p = Path(path)
    stop = info.num_frames if stop is None else min(stop, info.num_frames)
    if start >= stop:
        return
    wanted = None if only is None else frozenset(int(i) for i in only)
    if p.is_dir():
        yield from _iter_image_folder(p, start, stop, stride, wanted)
        return
    yield from _iter_video(p, info, start, stop, stride, wanted, planar, threads)


_Item = TypeVar("_Item")


def prefetched(items: Generator[_Item, None, None], depth: int = 4) -> Iterator[_Item]:
    """Yield what `items` yields, produced up to `depth` items ahead in a background thread.

    For decoding: PyAV and OpenCV release the GIL, so the decoder works on the next frames while
    the caller works on this one (the masks step: ~20 % faster on 2 cores). Only the thread
    touches `items`. An exception in it is raised here; when the caller stops early, the thread
    stops and closes `items` (and with it the video file).
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((None, x)):
                    return
            put((done, None))
        except BaseException as exc:  # handed to the caller, who re-raises it
            put((exc, None))
        finally:
            items.close()

    thread = threading.Thread(target=run, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            tag, x = q.get()
            if tag is done:
                return
            if tag is not None:
                raise tag
            yield x
    finally:
        stop.set()
        thread.join()


def keyframes_before(path: str | Path, targets: Sequence[int],
                     planar: bool = False) -> list[tuple[int, np.ndarray | YUV420Frame]]:
    """(frame_index, RGB uint8 [H, W, 3]) of the keyframe at or before each target frame index,
    distinct and sorted: one seek and one decoded frame each (a keyframe needs no other frame),
    so frames spread over a long recording cost almost nothing. planar: as in iter_frames.

    The keyframes' packets are collected first and decoded together by one frame-threaded
    decoder (they do not depend on each other, so its threads decode several at once); unless
    that gives exactly one frame per packet, with its timestamp, each packet is decoded alone
    (and the decoder drained) instead. Same frames either way.

    For an image folder every frame is a "keyframe": the targets themselves. Returns [] when
    the stream cannot seek or its timestamps cannot place frames (then decode sequentially).
    """
    p = _check_exists(path)
    info = probe_video(p)
    targets = sorted({int(t) for t in targets if 0 <= int(t) < info.num_frames})
    if p.is_dir():
        files = list_image_frames(p)
        return [(t, _load_image_rgb(files[t])) for t in targets]
    together = _keyframes(p, info, targets, planar, together=True)
    return together if together is not None else _keyframes_one_by_one(p, info, targets, planar)


def _decode_together(packets: list, ctx: Any) -> dict[int, av.VideoFrame] | None:
    """{pts: frame} of independent keyframe packets decoded in one go (distinct timestamps,
    increasing), or None unless each gave exactly one frame with its own timestamp."""
    if any(pk.pts is None for pk in packets):
        return None
    unique = {pk.pts: pk for pk in packets}
    decoded = []
    for pts in sorted(unique):
        decoded += ctx.decode(unique[pts])
    decoded += ctx.decode(None)
    frames = {f.pts: f for f in decoded}
    return frames if len(decoded) == len(unique) and frames.keys() == unique.keys() else None


def _keyframes_one_by_one(p: Path, info: VideoInfo, targets: list[int],
                          planar: bool) -> list[tuple[int, np.ndarray | YUV420Frame]]:
    """keyframes_before, each keyframe's packet decoded alone (then the decoder drained)."""
    return _keyframes(p, info, targets, planar, together=False)


def _keyframes(p: Path, info: VideoInfo, targets: list[int], planar: bool,
               together: bool) -> list[tuple[int, np.ndarray | YUV420Frame]] | None:
    """keyframes_before of sorted, distinct ``targets``: the keyframe packets at or before them
    (one seek each), decoded ``together`` by one frame-threaded decoder (None when that does not
    give one frame per packet) or each alone by a slice-threaded one; [] when the stream's
    timestamps cannot place the keyframes."""
    got: dict[int, np.ndarray | YUV420Frame] = {}
    with _open_input(p) as container:
        stream = container.streams.video[0]
        # alone, frame threading would decode several frames before giving the first one
        stream.thread_type = "FRAME" if together else "SLICE"
        to_rgb = _converter(planar, str(p))
        tb, t0 = stream.time_base, stream.start_time or 0
        if tb is None or info.fps is None:
            return []
        ctx = stream.codec_context
        try:
            packets, frames = [], []  # the keyframe's packet of each target (and frame, alone)
            for t in targets:
                container.seek(t0 + int((Fraction(t) / info.fps) / tb), stream=stream, backward=True, any_frame=False)
                packet = next((p for p in container.demux(stream) if p.size > 0), None)
                if packet is None or not packet.is_keyframe:
                    return []
                packets.append(packet)
                if not together:
                    # the keyframe's packet alone, then drain (the next seek resets the decoder): no
                    # waiting for the frames that follow it (B-frame reordering would decode several)
                    decoded = [*ctx.decode(packet), *ctx.decode(None)]
                    if not decoded or decoded[0].pts is None:
                        return []
                    frames.append(decoded[0])
            if together:
                by_pts = _decode_together(packets, ctx)
                if by_pts is None:
                    return None
                frames = [by_pts[pk.pts] for pk in packets]
        except av.error.FFmpegError as exc:
            raise InputError(f"{p}: decoding failed while sampling keyframes ({exc}). The video is corrupt or "
                             "truncated. Fix: re-copy or re-encode the video.") from exc
        for t, frame in zip(targets, frames):
            idx = int(round((frame.pts - t0) * tb * info.fps))
            if idx > t or idx < 0:
                return []  # the seek landed after the target: timestamps are not usable
            if idx not in got:
                got[idx] = to_rgb(frame)
    return sorted(got.items())


def _iter_video(p: Path, info: VideoInfo, start: int, stop: int, stride: int,
                wanted: frozenset[int] | None = None,
                planar: bool = False, threads: int = 0) -> Iterator[tuple[int, np.ndarray | YUV420Frame]]:
    assert info.fps is not None
    with _open_input(p) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threading in the decoder
        stream.thread_count = threads
        to_rgb = _converter(planar, str(p))
        tb = stream.time_base
        t0 = stream.start_time or 0

        def index_of(frame: av.VideoFrame, fallback: int) -> int:
            # Constant frame rate: index = (pts - start_time) * time_base * fps.
            if frame.pts is None or tb is None:
                return fallback
            return int(round((frame.pts - t0) * tb * info.fps))

        seeked = False
        if start >= _SEEK_MIN_FRAMES and tb is not None:
            target = t0 + int((Fraction(start) / info.fps) / tb)
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.error.FFmpegError:
                seeked = False  # unseekable stream: decode from the beginning instead

        expected = None if seeked else 0  # next frame index we must see
        counter = 0
        last_needed = stop - 1
        try:
            for frame in container.decode(stream):
                idx = index_of(frame, counter)
                counter = idx + 1
                if expected is None:
                    if idx > start:
                        # Seek overshot (inexact index): fall back to a plain decode from 0.
                        yield from _iter_video_sequential(p, info, start, stop, stride, wanted, planar, threads)
                        return
                    expected = idx
                if idx < expected:
                    continue  # duplicated timestamp: already handled
                if idx > expected and expected <= last_needed:
                    missing = expected
                    raise InputError(
                        f"{p}: frame {missing} could not be decoded (the stream jumps to frame "
                        f"{idx}; header claims {info.num_frames} frames). The video is corrupt or "
                        "truncated. Fix: re-copy or re-encode the video."
                    )
                expected = idx + 1
                if _selected(idx, start, stride) and idx < stop and (wanted is None or idx in wanted):
                    yield idx, to_rgb(frame)
                if idx >= last_needed:
                    return
        except av.error.FFmpegError as exc:
            raise InputError(
                f"{p}: decoding failed after frame {counter - 1} of {info.num_frames} ({exc}). "
                "The video is corrupt or truncated. Fix: re-copy or re-encode the video."
            ) from exc
        got = (expected or 0) - 1
        raise InputError(
            f"{p}: truncated video: header claims {info.num_frames} frames but decoding ended "
            f"after frame {got} (needed up to frame {last_needed}). Fix: re-copy the file or "
            "re-encode it; if it is really shorter, lower max_frames."
        )


def _iter_video_sequential(p: Path, info: VideoInfo, start: int, stop: int, stride: int,
                           wanted: frozenset[int] | None = None, planar: bool = False,
                           threads: int = 0) -> Iterator[tuple[int, np.ndarray | YUV420Frame]]:
    """Decode from frame 0 counting frames (used when timestamps cannot place a seek)."""
    with _open_input(p) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        to_rgb = _converter(planar, str(p))
        idx = -1
        try:
            for idx, frame in enumerate(container.decode(stream)):
                if _selected(idx, start, stride) and idx < stop and (wanted is None or idx in wanted):
                    yield idx, to_rgb(frame)
                if idx >= stop - 1:
                    return
        except av.error.FFmpegError as exc:
            raise InputError(f"{p}: decoding failed after frame {idx} ({exc}). "
                             "Fix: re-copy or re-encode the video.") from exc
    raise InputError(f"{p}: truncated video: header claims {info.num_frames} frames but decoding "
                     f"ended after frame {idx}. Fix: re-copy or re-encode the video.")


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float | Fraction,
    codec: str = "libx264",
    crf: int = 18,
    preset: str = "medium",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> int:
    """Encode frames (uint8 [H, W, 3] RGB or [H, W] gray) to `path` atomically; return the count.

    Streaming: `frames` may be a generator. H and W must be even for yuv420p. `crf` (0 =
    lossless .. 51, 18 ~ visually lossless) and `preset` apply to libx264/libx265; other encoders
    take `options`. `gop` sets the keyframe interval (smaller = faster seeking, bigger files).
    MP4/MOV files get the index at the front (+faststart) so a truncated copy is still
    recognisable as truncated rather than as an unreadable file.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1_000_000)
    if rate <= 0:
        raise ValueError(f"write_video: fps must be > 0, got {fps}")
    container_opts = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
    n = 0
    # atomic_path keeps the suffix (".tmp.mp4"), so PyAV picks the muxer from it.
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", container_options=container_opts) as out:
            stream = None
            for frame in frames:
                arr = np.asarray(frame)
                if arr.ndim == 2:
                    arr = np.repeat(arr[:, :, None], 3, axis=2)
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                    raise ValueError(f"write_video: frames must be uint8 [H,W,3] or [H,W]; got {arr.dtype} {arr.shape}")
                if stream is None:
                    h, w = arr.shape[:2]
                    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
                        raise ValueError(f"write_video: yuv420p needs even width/height, got {w}x{h}")
                    stream = out.add_stream(codec, rate=rate)
                    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
                    opts = dict(options or {})
                    if codec in ("libx264", "libx265"):
                        opts.setdefault("crf", str(crf))
                        opts.setdefault("preset", preset)
                    stream.options = opts
                    if gop is not None:
                        stream.codec_context.gop_size = int(gop)
                elif arr.shape[:2] != (stream.height, stream.width):
                    raise ValueError(f"write_video: frame {n} has shape {arr.shape}, expected {(stream.height, stream.width, 3)}")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
                for pkt in stream.encode(vf):
                    out.mux(pkt)
                n += 1
            if stream is None:
                raise ValueError(f"write_video: no frames given for {path}")
            for pkt in stream.encode():
                out.mux(pkt)
    return n
