"""Preprocessing QC figures (PNG, written atomically) that the report embeds.

People judge a 3D track or a batch of crops faster by eye than from a table.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.atomic import atomic_path  # noqa: E402
from workflow_scripts.shards import open_shard  # noqa: E402


def plot_locate_qc(centers_csv: str, out_png: str, title: str = "") -> None:
    """Top view of the 3D centre track, residuals and cameras per frame, dropped-frame reasons."""
    t = pd.read_csv(centers_csv, keep_default_na=False)
    valid = t["valid"].astype(str).str.lower().isin(["true", "1"])
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    ax[0].plot(t.loc[valid, "x"], t.loc[valid, "y"], ".-", ms=3, label="kept (smoothed)")
    ax[0].plot(pd.to_numeric(t["x_raw"], errors="coerce"), pd.to_numeric(t["y_raw"], errors="coerce"), "x", ms=3, alpha=0.5, label="triangulated")
    ax[0].set_aspect("equal")
    ax[0].set_title("3D centre, top view (raw world)")
    ax[0].legend(fontsize=7)
    ax[1].plot(t["frame_index"], pd.to_numeric(t["residual_px_median"], errors="coerce"), label="median residual (px)")
    ax[1].plot(t["frame_index"], t["n_cameras"], label="cameras used")
    ax[1].set_xlabel("frame")
    ax[1].legend(fontsize=7)
    ax[1].set_title("triangulation per frame")
    reasons = t.loc[~valid, "reason"].replace("", "unknown").value_counts()
    counts = pd.concat([pd.Series({"kept": int(valid.sum())}), reasons])
    ax[2].barh(counts.index.astype(str), counts.values, color=["tab:green"] + ["tab:red"] * len(reasons))
    ax[2].set_title("frames kept / dropped by reason")
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def plot_crop_qc(shard_h5: str, out_png: str, max_samples: int = 4, title: str = "") -> None:
    """A grid of crops (rows: samples, columns: views) with each view's size ratio."""
    with open_shard(shard_h5) as f:
        n = f["images"].shape[0]
        idx = np.linspace(0, n - 1, min(n, max_samples)).round().astype(int) if n else []
        V = int(f.attrs["num_views"])
        fig, axes = plt.subplots(max(len(idx), 1), V, figsize=(1.6 * V, 1.7 * max(len(idx), 1)), squeeze=False)
        for r, i in enumerate(idx):
            for v in range(V):
                a = axes[r, v]
                a.imshow(f["images"][i, v])
                a.contour(f["masks"][i, v] > 127, levels=[0.5], colors="r", linewidths=0.5)
                S = f["images"].shape[2]
                a.plot([S / 2], [S / 2], "c+", ms=6)
                ratio = np.sqrt((f["masks"][i, v] > 127).sum()) / S
                ok = bool(f["view_valid"][i, v])
                a.set_title(f"f{int(f['frame_index'][i])} v{v} {ratio:.3f}{'' if ok else ' X'}", fontsize=6)
                a.axis("off")
        if not len(idx):
            axes[0, 0].text(0.5, 0.5, "no valid frames in this shard", ha="center")
            for a in axes.ravel():
                a.axis("off")
    fig.suptitle(title or f"crops: mask outline (red), crop centre (+), sqrt(area)/S", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
