"""Built-in masks against the demo recording's true masks (issue 3 bar: IoU >= 0.9).

    .venv/bin/python benchmarks/mask_accuracy.py --run WORK [--session demo]

WORK holds results/ of a run of the built-in demo (``snakemake ... preprocess``): the masks
rule's results/masks/SESSION/camN.h5 against results/demo_recording/ground_truth.h5 ``masks``
[C, T, H, W]. Prints the per-frame IoU per camera (median / min) and over all; writes nothing.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np


def mask_ious(work: Path, session: str = "demo") -> dict[str, np.ndarray]:
    """camera name -> per-frame IoU [T] of the built-in mask vs the true mask."""
    res = work / "results"
    with h5py.File(res / "demo_recording" / "ground_truth.h5", "r") as g:
        names = [s.decode() for s in g["camera_names"][:]]
        true_frames = g["frame_index"][:]
        out = {}
        for c, name in enumerate(names):
            with h5py.File(res / "masks" / session / f"{name}.h5", "r") as f:
                frames, built = f["frame_index"][:], f["masks"][:] > 0
            truth = g["masks"][c][np.searchsorted(true_frames, frames)] > 0
            out[name] = (built & truth).sum(axis=(1, 2)) / np.maximum((built | truth).sum(axis=(1, 2)), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, type=Path, help="work folder holding results/ of the demo")
    ap.add_argument("--session", default="demo")
    args = ap.parse_args()
    ious = mask_ious(args.run, args.session)
    print("| camera | IoU median | IoU min |\n|---|---|---|")
    for name, iou in ious.items():
        print(f"| {name} | {np.median(iou):.4f} | {iou.min():.4f} |")
    every = np.concatenate(list(ious.values()))
    print(f"| all | {np.median(every):.4f} | {every.min():.4f} |")


if __name__ == "__main__":
    main()
