"""How far the located 3D mouse centre is from the true one, per estimator, on demo recordings.

Truth: ``com`` of the demo's ground_truth.h5 (area-weighted surface centroid of the posed MAMMAL
mesh, ``body_model.center_of_mass``). For each work folder (one that ran ``snakemake ...
preprocess`` or at least ``results/locate/demo/centers.csv`` on the built-in demo), with the
built-in masks (results/masks/demo) and with the demo's true masks, every estimator runs through
``locate.locate_track`` (the pipeline's own code, the triangulation start included):

- ``triangulation``: triangulated mask centroids;
- ``visual_hull`` (``hull64``, ``hull128``: hull_resolution): the hull's surface centroid;
- ``body_model``: the surface centroid of the MAMMAL model fitted to the masks.

Printed per (folder, masks, estimator): 3D error (mm) of the per-frame centre (``x_raw``) and of
the smoothed one the crops use (``x``, the config's smooth_ms at the masks files' frame rate), median / 90th percentile /
max, the mean error vector (world x, y, z; z is up), the median reprojection error (pixels of the
original images, per view, of the smoothed centre), and the time per frame. The smoothing floor
(the true track smoothed the same way, against itself) is printed once per folder. Nothing is
written.

    .venv/bin/python benchmarks/centre_accuracy.py --run /tmp/centre/default --run /tmp/centre/rig
    .venv/bin/python benchmarks/centre_accuracy.py --run DIR --methods hull64 body_model --masks builtin --smooth-ms 0
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from workflow_scripts.body_model import load_npz
from workflow_scripts.cameras import cameras_from_json
from workflow_scripts.locate import LocateParams, locate_track, read_mask_qc, sampled_frame_rate, smooth_track, smooth_window_frames

METHODS = {"triangulation": {"center": "triangulation"}, "hull64": {"center": "visual_hull", "hull_resolution": 64},
           "hull128": {"center": "visual_hull", "hull_resolution": 128}, "body_model": {"center": "body_model"}}


def qc_from_masks(masks: np.ndarray, frames: np.ndarray) -> pd.DataFrame:
    """The masks rule's QC columns computed from masks [T, H, W] (for the true masks)."""
    rows = []
    for f, m in zip(frames, masks):
        ys, xs = np.nonzero(m)
        H, W = m.shape
        touches = bool(len(xs)) and (xs.min() == 0 or ys.min() == 0 or xs.max() == W - 1 or ys.max() == H - 1)
        rows.append({"frame_index": int(f), "area": float(len(xs)), "centroid_x": xs.mean() + 0.5 if len(xs) else np.nan,
                     "centroid_y": ys.mean() + 0.5 if len(xs) else np.nan, "touches_border": touches, "valid": bool(len(xs))})
    return pd.DataFrame(rows)


def load_run(folder: Path, session: str = "demo") -> dict:
    res = folder / "results"
    cams = cameras_from_json(json.loads((res / "calibration" / session / "cameras.json").read_text()))
    names = [c.name for c in cams]
    builtin = {}
    for n in names:
        with h5py.File(res / "masks" / session / f"{n}.h5") as f:
            builtin[n] = {int(i): m for i, m in zip(f["frame_index"][:], f["masks"][:])}
    with h5py.File(res / "demo_recording" / "ground_truth.h5") as f:
        com, frames = f["com"][:], f["frame_index"][:]
        gnames = [s.decode() for s in f["camera_names"][:]]
        true_masks = {n: f["masks"][gnames.index(n)] for n in names}
    cfg = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
    return {
        "cameras": cams, "names": names, "com": com, "frames": frames, "config": cfg,
        "qc": {"builtin": {n: read_mask_qc(res / "masks" / session / f"{n}_qc.csv") for n in names},
               "true": {n: qc_from_masks(true_masks[n], frames) for n in names}},
        "masks": {"builtin": lambda n, f: builtin[n][int(f)], "true": lambda n, f: true_masks[n][int(f)]},
        "body_model": load_npz(res / "body_model" / "mammal_mouse.npz"),
        "frame_rate": sampled_frame_rate({n: res / "masks" / session / f"{n}.h5" for n in names}),
    }


def reprojection_px(cams, X: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[C] median over frames of |project(X) - project(truth)| per camera (original pixels)."""
    ok = np.all(np.isfinite(X), axis=1)
    return np.array([np.median(np.linalg.norm(c.project(X[ok]) - c.project(truth[ok]), axis=1)) for c in cams])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="work folder holding results/ of the demo (repeatable)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--masks", nargs="+", default=["builtin", "true"], choices=["builtin", "true"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smooth-ms", type=float, default=None, help="override the config's locate.smooth_ms")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print("| folder | masks | estimator | per-frame err mm (median / p90 / max) | smoothed err mm (median / p90 / max) "
          "| mean err vector (x, y, z) | reproj. px median (views) | s/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in map(Path, args.run):
        d = load_run(folder)
        locate_cfg = dict((d["config"].get("locate") or {}))
        base = {k: v for k, v in locate_cfg.items() if k in LocateParams.__dataclass_fields__ and k not in ("center", "hull_resolution")}
        if args.smooth_ms is not None:
            base["smooth_ms"] = args.smooth_ms
        p0 = LocateParams.from_dict(base)
        T = len(d["com"])
        window = smooth_window_frames(p0.smooth_ms, d["frame_rate"])
        floor = smooth_track(d["com"], np.ones(T, bool), d["frames"], window, p0.smooth_polyorder)
        e_floor = np.linalg.norm(floor - d["com"], axis=1)
        for masks in args.masks:
            for name in args.methods:
                params = LocateParams.from_dict({**base, **METHODS[name]})
                t0 = time.perf_counter()
                table = locate_track(d["cameras"], d["qc"][masks], params, masks=d["masks"][masks], threads=args.threads,
                                     body_model=d["body_model"], frame_rate=d["frame_rate"])
                dt = (time.perf_counter() - t0) / T
                rows = np.searchsorted(d["frames"], table["frame_index"].to_numpy())
                truth = d["com"][rows]
                raw = table[["x_raw", "y_raw", "z_raw"]].to_numpy()
                sm = table[["x", "y", "z"]].to_numpy()
                e_raw, e_sm = np.linalg.norm(raw - truth, axis=1), np.linalg.norm(sm - truth, axis=1)
                px = reprojection_px(d["cameras"], sm, truth)
                stats = lambda e: "%.2f / %.2f / %.2f" % (np.nanmedian(e), np.nanpercentile(e, 90), np.nanmax(e))  # noqa: E731
                print(f"| {folder.name} | {masks} | {name} | {stats(e_raw)} | {stats(e_sm)} | "
                      f"{np.round(np.nanmean(raw - truth, axis=0), 2).tolist()} | {np.median(px):.2f} ({px.min():.2f}-{px.max():.2f}) "
                      f"| {dt:.3f} |", flush=True)
        print(f"| {folder.name} | - | smoothing floor (true track, smooth_ms {p0.smooth_ms:g} = {window} frames) | 0 | "
              f"{np.median(e_floor):.2f} / {np.percentile(e_floor, 90):.2f} / {e_floor.max():.2f} | | | |")


if __name__ == "__main__":
    main()
