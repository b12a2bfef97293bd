"""Preprocessing throughput for one camera: decode, extract_frames (decode + HDF5), masks.

    .venv/bin/python benchmarks/preprocess_throughput.py [--frames 300] [--width 640] [--height 512]
        [--video existing.mp4]

Prints frames/s of each stage. Without --video it generates a synthetic H.264 test video (a
dark ellipse moving over a textured floor) in a temporary folder. The crop stage is to be added
here (time_crop) by the owner of workflow_scripts/crop.py.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from workflow_scripts.frames import run_extract_frames
from workflow_scripts.masks import MaskConfig, run_masks
from workflow_scripts.video import iter_frames, probe_video, write_video


def make_test_video(path: str | Path, frames: int = 300, width: int = 640, height: int = 512,
                    fps: float = 30.0, seed: int = 0) -> Path:
    """Write a synthetic mouse-like H.264 video (deterministic for a seed) and return its path."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(80, 180, (height // 16, width // 16, 3), dtype=np.uint8)
    floor = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)

    def gen():
        for t in range(frames):
            f = floor.copy()
            ang = 2 * np.pi * t / frames
            c = (int(width / 2 + 0.3 * width * np.cos(ang)), int(height / 2 + 0.3 * height * np.sin(ang)))
            cv2.ellipse(f, c, (width // 12, height // 20), np.degrees(ang), 0, 360, (35, 30, 28), -1)
            yield f

    write_video(path, gen(), fps=fps, gop=30)
    return Path(path)


def time_decode(video: str | Path, stride: int = 1) -> float:
    """Decode every `stride`-th frame of `video` to RGB; return frames/s (yielded frames)."""
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_frames(video, stride=stride))
    return n / (time.perf_counter() - t0)


def time_extract_and_masks(video: str | Path, workdir: str | Path,
                           compression: str | None = "lzf") -> dict[str, float]:
    """Run extract_frames then masks on `video`; return frames/s of each and of both together."""
    workdir = Path(workdir)
    t0 = time.perf_counter()
    T = run_extract_frames(str(video), str(workdir / "frames.h5"), compression=compression)
    t1 = time.perf_counter()
    run_masks(str(workdir / "frames.h5"), str(workdir / "masks.h5"), str(workdir / "qc.csv"), MaskConfig())
    t2 = time.perf_counter()
    return {"extract_fps": T / (t1 - t0), "masks_fps": T / (t2 - t1), "extract_masks_fps": T / (t2 - t0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", help="existing video (default: generate one)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(args.video) if args.video else make_test_video(
            Path(tmp) / "cam1.mp4", args.frames, args.width, args.height)
        info = probe_video(video)
        print(f"video: {video} {info.width}x{info.height} {info.num_frames} frames "
              f"{float(info.fps):.3f} fps {info.codec}")
        print(f"decode:          {time_decode(video):8.1f} frames/s")
        print(f"decode stride 5: {time_decode(video, stride=5):8.1f} frames/s (of yielded frames)")
        for comp in ("lzf", None):
            r = time_extract_and_masks(video, tmp, compression=comp)
            print(f"[frames h5 compression={comp}]")
            print(f"extract_frames:  {r['extract_fps']:8.1f} frames/s")
            print(f"masks:           {r['masks_fps']:8.1f} frames/s")
            print(f"extract+masks:   {r['extract_masks_fps']:8.1f} frames/s")


if __name__ == "__main__":
    main()
