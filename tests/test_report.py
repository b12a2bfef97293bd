"""HTML report from small fake evaluation directories and training logs."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from model.report import run_report
from workflow_scripts.errors import InputError


def _fake_eval(d, psnr_fg: float, chamfer: float, seed: int):
    rng = np.random.default_rng(seed)
    (d / "qualitative").mkdir(parents=True)
    metrics = {
        "lead": {"psnr_fg_heldout_camera": psnr_fg, "chamfer": chamfer},
        "lpips": "unavailable",
        "protocols": {
            "real_loo": {"means": {"psnr_fg": psnr_fg, "ssim_fg": 0.8, "mask_iou": 0.9, "psnr": psnr_fg + 12, "lpips": None}},
            "synthetic": {"means": {"chamfer": chamfer, "fraction_within_tau": 0.7},
                          "means_novel": {"psnr_fg": psnr_fg + 1, "ssim_fg": 0.85, "depth_abs_rel": 0.02}},
        },
    }
    (d / "metrics.json").write_text(json.dumps(metrics))
    rows = []
    for proto, nv in (("synthetic", 8), ("real_loo", 6)):
        for s in range(2):
            for v in range(nv):
                rows.append({"protocol": proto, "sample": s, "target_view": v, "angle_to_nearest_input_deg": rng.uniform(0, 60),
                             "psnr_fg": psnr_fg + rng.normal(), "ssim_fg": rng.uniform(0.7, 0.9), "mask_iou": rng.uniform(0.8, 1),
                             "depth_abs_rel": rng.uniform(0, 0.05) if proto == "synthetic" else np.nan})
    pd.DataFrame(rows).to_csv(d / "per_view.csv", index=False)
    pd.DataFrame({"protocol": ["synthetic"] * 2, "sample": [0, 1], "chamfer": [chamfer] * 2}).to_csv(d / "per_sample.csv", index=False)
    Image.fromarray(rng.integers(0, 255, (32, 128, 3), dtype=np.uint8)).save(d / "qualitative" / "synthetic_000.png")
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(4)]
    frames[0].save(d / "turntable.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _fake_log(path, steps, seed):
    rng = np.random.default_rng(seed)
    pd.DataFrame({"step": steps, "total": np.exp(-np.asarray(steps) / 50) + 0.1, "mse": rng.uniform(0.01, 0.1, len(steps)),
                  "lpips_loss": rng.uniform(0.1, 0.3, len(steps)), "lr": 1e-4, "grad_norm": rng.uniform(0.5, 2, len(steps)),
                  "samples_per_s": 10.0}).to_csv(path, index=False)


def _embedded_images(text: str) -> list[tuple[str, bytes]]:
    return [(m.group(1), base64.b64decode(m.group(2))) for m in re.finditer(r'src="data:([a-z/0-9]+);base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_has_every_section_and_valid_images(tmp_path):
    _fake_eval(tmp_path / "a", psnr_fg=21.0, chamfer=0.02, seed=0)
    _fake_eval(tmp_path / "b", psnr_fg=23.5, chamfer=0.03, seed=1)
    _fake_log(tmp_path / "a1.csv", list(range(0, 60, 10)), 0)
    _fake_log(tmp_path / "a2.csv", list(range(50, 120, 10)), 1)  # resumed segment, overlapping step 50
    _fake_log(tmp_path / "b.csv", list(range(0, 100, 10)), 2)
    qc = tmp_path / "crop_qc.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(qc)
    out = run_report({"exp_a": tmp_path / "a", "exp_b": tmp_path / "b"},
                     {"exp_a": [tmp_path / "a1.csv", tmp_path / "a2.csv"], "exp_b": tmp_path / "b.csv"},
                     tmp_path / "report" / "index.html", qc_figures=[qc])
    text = out.read_text()
    for sec in ("summary", "training", "per-view", "angle", "qualitative", "turntable", "qc"):
        assert f"<section id='{sec}'>" in text, sec
    # Summary leads with foreground PSNR on held-out cameras, then Chamfer; best values marked.
    summary = text[text.index("id='summary'"):text.index("id='training'")]
    rows = re.findall(r"<th class='row'>([^<]*)", summary)
    assert rows[0].startswith("Foreground PSNR, held-out camera") and rows[1].startswith("Chamfer")
    assert "<td class='best'>23.50</td>" in summary and "<td class='best'>0.0200</td>" in summary
    assert "unavailable" in summary  # LPIPS not configured: not shown as 0
    imgs = _embedded_images(text)
    mimes = [m for m, _ in imgs]
    assert mimes.count("image/gif") == 2 and mimes.count("image/png") == 3 + 2 + 1  # 3 plots, 2 grids, 1 QC
    for mime, data in imgs:
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.format == {"image/png": "PNG", "image/gif": "GIF"}[mime]
        assert im.width > 0 and im.height > 0
    gif = Image.open(io.BytesIO(next(d for m, d in imgs if m == "image/gif")))
    assert gif.n_frames == 4


def test_report_errors_name_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="metrics.json"):
        run_report({"x": tmp_path / "empty"}, {}, tmp_path / "r.html")
    _fake_eval(tmp_path / "a", 20.0, 0.02, 0)
    with pytest.raises(InputError, match="nolog.csv"):
        run_report({"x": tmp_path / "a"}, {"x": tmp_path / "nolog.csv"}, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
