"""One self-contained HTML report comparing experiments (images embedded as base64).

Inputs are the directories written by :func:`model.evaluate.run_evaluate` (layout below) and the
training CSV logs (columns ``step``, ``total``, one column per loss term, ``lr``, ``grad_norm``,
``samples_per_s``; extra numeric columns are plotted too). Evaluation directory layout::

    metrics.json        {"lead": {...}, "protocols": {name: {"means": {...}, "means_novel": {...}, ...}}, "lpips": ...}
    per_view.csv        one row per (protocol, sample, target view): metrics + angle_to_nearest_input_deg
    per_sample.csv      one row per (protocol, sample): chamfer, accuracy, completeness, fraction_within_tau
    qualitative/*.png   inputs | target | prediction | error grids
    turntable.gif (or turntable.mp4)

Sections: summary table (foreground PSNR on held-out cameras and Chamfer first), training
curves, per-view metrics, metric vs angular distance to the nearest input view (binned, one
line per experiment), qualitative grids, turntables, optional preprocessing QC figures.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workflow_scripts.atomic import write_text
from workflow_scripts.errors import InputError

# (label, protocol, key in "means"/"means_novel"/"lead", format, higher_is_better). Order = table order.
SUMMARY_ROWS: tuple[tuple[str, str, str, str, bool], ...] = (
    ("Foreground PSNR, held-out camera (dB) [lead]", "lead", "psnr_fg_heldout_camera", "{:.2f}", True),
    ("Chamfer, Gaussians vs mesh (norm. units) [lead]", "lead", "chamfer", "{:.4f}", False),
    ("Foreground SSIM, held-out camera [lead]", "lead", "ssim_fg_heldout_camera", "{:.4f}", True),
    ("Foreground PSNR, real leave-one-camera-out (dB)", "real_loo", "means.psnr_fg", "{:.2f}", True),
    ("Foreground PSNR, real held-out time + camera (dB)", "real_holdout", "means.psnr_fg", "{:.2f}", True),
    ("Foreground SSIM, real leave-one-camera-out", "real_loo", "means.ssim_fg", "{:.4f}", True),
    ("Mask IoU, real leave-one-camera-out", "real_loo", "means.mask_iou", "{:.4f}", True),
    ("Chamfer, real with ground truth", "real_loo", "means.chamfer", "{:.4f}", False),
    ("Foreground PSNR, synthetic novel views (dB)", "synthetic", "means_novel.psnr_fg", "{:.2f}", True),
    ("Foreground SSIM, synthetic novel views", "synthetic", "means_novel.ssim_fg", "{:.4f}", True),
    ("Mask IoU, synthetic novel views", "synthetic", "means_novel.mask_iou", "{:.4f}", True),
    ("Depth abs. rel., synthetic novel views", "synthetic", "means_novel.depth_abs_rel", "{:.4f}", False),
    ("Depth error, synthetic novel views (body lengths)", "synthetic", "means_novel.depth_abs_body", "{:.4f}", False),
    ("Chamfer, synthetic", "synthetic", "means.chamfer", "{:.4f}", False),
    ("Fraction of Gaussians within tau, synthetic", "synthetic", "means.fraction_within_tau", "{:.3f}", True),
    ("Full-image PSNR, real leave-one-camera-out (dB, inflated by background)", "real_loo", "means.psnr", "{:.2f}", True),
    ("Full-image PSNR, synthetic novel views (dB, inflated by background)", "synthetic", "means_novel.psnr", "{:.2f}", True),
    ("LPIPS, real leave-one-camera-out", "real_loo", "means.lpips", "{:.4f}", False),
    ("LPIPS, synthetic novel views", "synthetic", "means_novel.lpips", "{:.4f}", False),
)
ANGLE_METRICS = ("psnr_fg", "ssim_fg", "mask_iou", "depth_abs_rel")
_NOT_LOSS = {"step", "lr", "grad_norm", "samples_per_s", "epoch", "time", "wall_time", "elapsed_s"}


# ------------------------------------------------------------------------------------ embedding
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fig_png(fig: Figure) -> str:
    """Render a matplotlib Figure (no pyplot global state) to a base64 PNG."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return _b64(buf.getvalue())


def _img_tag(b64: str, mime: str = "image/png", alt: str = "", width: str = "") -> str:
    w = f' style="max-width:{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:{mime};base64,{b64}"{w}>'


def _media_tag(path: Path) -> str:
    """Embed a PNG/GIF image or an MP4 video file."""
    data = path.read_bytes()
    ext = path.suffix.lower()
    if ext == ".mp4":
        return f'<video controls loop autoplay muted src="data:video/mp4;base64,{_b64(data)}"></video>'
    mime = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(ext)
    if mime is None:
        raise InputError(f"{path}: cannot embed a {ext} file. Fix: give PNG, GIF, JPEG or MP4 figures.")
    return _img_tag(_b64(data), mime, alt=path.name, width="100%")


# ------------------------------------------------------------------------------------ inputs
def _load_eval(name: str, d: Path) -> dict:
    mpath = d / "metrics.json"
    if not mpath.is_file():
        raise InputError(f"{mpath}: missing (experiment {name!r}). Fix: run the evaluate rule for this experiment first.")
    try:
        metrics = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{mpath}: not valid JSON ({e}). Fix: rerun the evaluate rule.") from e
    per_view = pd.read_csv(d / "per_view.csv") if (d / "per_view.csv").is_file() else pd.DataFrame()
    per_sample = pd.read_csv(d / "per_sample.csv") if (d / "per_sample.csv").is_file() else pd.DataFrame()
    return {"metrics": metrics, "per_view": per_view, "per_sample": per_sample, "dir": d}


def _load_train_log(name: str, paths: Sequence[str | os.PathLike] | str | os.PathLike) -> pd.DataFrame:
    """Concatenate a run's CSV segments (e.g. after resumes); the last row per step wins."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    frames = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"{p}: training log missing (experiment {name!r}). Fix: point train_logs at the run's CSV.")
        df = pd.read_csv(p)
        if "step" not in df.columns:
            raise InputError(f"{p}: training log has no 'step' column (columns: {list(df.columns)}). Fix: use the train rule's CSV log.")
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    return df.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _lookup(metrics: dict, protocol: str, key: str):
    """metrics["protocols"][protocol]["means"]["psnr_fg"] for key 'means.psnr_fg' (protocol 'lead':
    metrics["lead"][key]); None if absent or not finite."""
    node = metrics.get("lead") if protocol == "lead" else metrics.get("protocols", {}).get(protocol)
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if isinstance(node, (int, float)) and np.isfinite(node) else None


# ------------------------------------------------------------------------------------ sections
def _summary_table(evals: dict[str, dict]) -> str:
    names = list(evals)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for label, proto, key, fmt, higher in SUMMARY_ROWS:
        vals = [_lookup(evals[n]["metrics"], proto, key) for n in names]
        if all(v is None for v in vals):
            continue
        best = None
        present = [v for v in vals if v is not None]
        if len(present) > 1:
            best = max(present) if higher else min(present)
        cells = []
        for v in vals:
            if v is None:
                unavailable = key.endswith("lpips")
                cells.append(f"<td class='na'>{'unavailable' if unavailable else '&ndash;'}</td>")
            else:
                cls = " class='best'" if best is not None and v == best else ""
                cells.append(f"<td{cls}>{fmt.format(v)}</td>")
        arrow = "&uarr;" if higher else "&darr;"
        rows.append(f"<tr><th class='row'>{html.escape(label)} {arrow}</th>{''.join(cells)}</tr>")
    lp = [evals[n]["metrics"].get("lpips") for n in names]
    note = ""
    if any(v in (None, "unavailable") for v in lp):
        note = "<p class='note'>LPIPS is reported only where a local LPIPS weights file was configured; otherwise it is unavailable (never 0).</p>"
    return (f"<section id='summary'><h2>Summary</h2><table class='summary'><tr><th></th>{head}</tr>{''.join(rows)}</table>"
            "<p class='note'>Foreground metrics lead: with a white background, full-image PSNR is inflated by 10 dB or more.</p>"
            f"{note}</section>")


def _training_section(logs: dict[str, pd.DataFrame]) -> str:
    logs = {k: v for k, v in logs.items() if len(v)}
    if not logs:
        return "<section id='training'><h2>Training curves</h2><p>No training logs given.</p></section>"
    loss_cols = sorted({c for df in logs.values() for c in df.columns
                        if c not in _NOT_LOSS and pd.api.types.is_numeric_dtype(df[c])},
                       key=lambda c: (c != "total", c))
    panels = [(c, True) for c in loss_cols] + [(c, c == "grad_norm") for c in ("lr", "grad_norm", "samples_per_s")]
    panels = [(c, log) for c, log in panels if any(c in df.columns for df in logs.values())]
    ncols = 3
    nrows = (len(panels) + ncols - 1) // ncols
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows))
    for i, (col, logy) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for name, df in logs.items():
            if col in df.columns:
                y = pd.to_numeric(df[col], errors="coerce")
                ax.plot(df["step"], y, label=name, lw=1)
        if logy:
            ax.set_yscale("log")
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return f"<section id='training'><h2>Training curves</h2>{_img_tag(_fig_png(fig), alt='training curves')}</section>"


def _per_view_section(evals: dict[str, dict]) -> str:
    protos = sorted({p for e in evals.values() if len(e["per_view"]) for p in e["per_view"]["protocol"].unique()})
    if not protos:
        return "<section id='per-view'><h2>Per-view metrics</h2><p>No per-view metrics.</p></section>"
    fig = Figure(figsize=(5.0 * len(protos), 3.4))
    for i, proto in enumerate(protos):
        ax = fig.add_subplot(1, len(protos), i + 1)
        for name, e in evals.items():
            pv = e["per_view"]
            if not len(pv):
                continue
            pv = pv[pv["protocol"] == proto]
            if len(pv) and "psnr_fg" in pv:
                m = pv.groupby("target_view")["psnr_fg"].mean()
                ax.plot(m.index, m.values, marker="o", ms=3, label=name)
        ax.set_title(f"{proto}: foreground PSNR per target view")
        ax.set_xlabel("target view / camera index")
        ax.set_ylabel("dB")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return f"<section id='per-view'><h2>Per-view metrics</h2>{_img_tag(_fig_png(fig), alt='per-view metrics')}</section>"


def _angle_section(evals: dict[str, dict], bin_deg: float = 15.0) -> str:
    frames = {n: e["per_view"] for n, e in evals.items()
              if len(e["per_view"]) and "angle_to_nearest_input_deg" in e["per_view"]}
    if not frames:
        return "<section id='angle'><h2>Metrics vs angle to nearest input view</h2><p>No angular data.</p></section>"
    metrics = [m for m in ANGLE_METRICS if any(m in df and df[m].notna().any() for df in frames.values())]
    fig = Figure(figsize=(4.2 * len(metrics), 3.4))
    for i, met in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for name, df in frames.items():
            if met not in df:
                continue
            d = df[["angle_to_nearest_input_deg", met]].dropna()
            if not len(d):
                continue
            b = np.floor(d["angle_to_nearest_input_deg"].to_numpy() / bin_deg) * bin_deg + bin_deg / 2
            g = d.groupby(b)[met].agg(["mean", "std", "count"])
            ax.errorbar(g.index, g["mean"], yerr=g["std"].fillna(0) / np.sqrt(g["count"]), marker="o", ms=3,
                        capsize=2, label=name)
        ax.set_title(met)
        ax.set_xlabel(f"angle to nearest input view (deg, {bin_deg:g} deg bins)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return ("<section id='angle'><h2>Metrics vs angle to nearest input view</h2>"
            f"{_img_tag(_fig_png(fig), alt='metrics vs angle')}"
            "<p class='note'>Mean and standard error per bin over all protocols' target views; 0 deg = an input view.</p></section>")


def _media_section(sec_id: str, title: str, evals: dict[str, dict], pattern: str, limit: int) -> str:
    parts = []
    for name, e in evals.items():
        files = sorted(e["dir"].glob(pattern))[:limit]
        if files:
            items = "".join(f"<figure>{_media_tag(f)}<figcaption>{html.escape(f.name)}</figcaption></figure>" for f in files)
            parts.append(f"<h3>{html.escape(name)}</h3>{items}")
    body = "".join(parts) or "<p>None.</p>"
    return f"<section id='{sec_id}'><h2>{title}</h2>{body}</section>"


def _qc_section(qc_figures: Iterable[str | os.PathLike]) -> str:
    items = []
    for p in qc_figures:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"{p}: QC figure missing. Fix: run the preprocessing rule that draws it, or drop it from the report inputs.")
        items.append(f"<figure>{_media_tag(p)}<figcaption>{html.escape(str(p))}</figcaption></figure>")
    return f"<section id='qc'><h2>Preprocessing QC</h2>{''.join(items)}</section>"


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} th.row{text-align:left;font-weight:normal}
td.best{font-weight:bold;background:#e8f5e9} td.na{color:#999} .note{color:#555;font-size:90%}
figure{display:inline-block;margin:0.5em;max-width:100%} figure img,figure video{max-width:100%}"""


def run_report(eval_dirs: dict[str, str | os.PathLike], train_logs: dict[str, Sequence[str | os.PathLike] | str | os.PathLike],
               out_html: str | os.PathLike, qc_figures: Sequence[str | os.PathLike] | None = None,
               title: str = "mouse-facelift evaluation", max_grids: int = 6) -> Path:
    """Write one self-contained HTML report (atomically) and return its path.

    eval_dirs: experiment name -> directory written by ``run_evaluate``.
    train_logs: experiment name -> training CSV path(s) (several = resumed segments, concatenated by step).
    qc_figures: optional preprocessing QC images (e.g. crop QC PNGs) embedded at the end.
    """
    evals = {name: _load_eval(name, Path(d)) for name, d in eval_dirs.items()}
    logs = {name: _load_train_log(name, p) for name, p in train_logs.items()}
    sections = [
        _summary_table(evals),
        _training_section(logs),
        _per_view_section(evals),
        _angle_section(evals),
        _media_section("qualitative", "Qualitative (inputs | target | prediction | error)", evals, "qualitative/*.png", max_grids),
        _media_section("turntable", "Turntable", evals, "turntable.*", 1),
    ]
    if qc_figures:
        sections.append(_qc_section(qc_figures))
    nav = " | ".join(f"<a href='#{s}'>{s}</a>" for s in ("summary", "training", "per-view", "angle", "qualitative", "turntable"))
    doc = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
           f"<body><h1>{html.escape(title)}</h1><p>{nav}</p>{''.join(sections)}</body></html>\n")
    out = Path(out_html)
    write_text(out, doc)
    return out
