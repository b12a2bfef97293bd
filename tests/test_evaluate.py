"""Evaluation protocols end to end on tiny shards and a tiny untrained GS-LRM (CPU)."""
from __future__ import annotations

import dataclasses
import json
import math

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import trimesh
from PIL import Image

from model.checkpoint import save_checkpoint
from model.config import preset
from model.data import render_toy_ellipsoid, toy_K, write_toy_shard
from model.evaluate import EvalParams, loo_input_views, ring_input_views, run_evaluate
from model.gslrm import GSLRM
from model.ply import load_ply
from model.report import run_report
from workflow_scripts.cameras import look_at_c2w
from workflow_scripts.errors import InputError
from workflow_scripts.shards import ShardWriter

RADII = (0.6, 0.35, 0.3)
ELEVATIONS = (-20.0, 10.0, 35.0, 60.0)


def _rig(n_az=8, elevations=ELEVATIONS, dist=2.7):
    c2w = []
    for el in elevations:
        for k in range(n_az):
            e, a = math.radians(el), 2 * math.pi * k / n_az
            c2w.append(look_at_c2w(dist * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)]), np.zeros(3)))
    return np.stack(c2w).astype(np.float32)


def _ellipsoid_mesh():
    m = trimesh.creation.icosphere(subdivisions=2)
    return (m.vertices * np.asarray(RADII)).astype(np.float32), m.faces.astype(np.int32)


def _synthetic_shard(path, n=2, size=16):
    c2w = _rig(elevations=(10.0, 35.0))  # 16 views keep the CPU renderer fast
    K = toy_K(size, len(c2w))
    verts, faces = _ellipsoid_mesh()
    with ShardWriter(path, kind="synthetic", num_views=len(c2w), image_size=size, params={"test": 1}) as w:
        for i in range(n):
            img, msk, dep = render_toy_ellipsoid(c2w, K, size, phase=0.3 * i)
            w.add(images=img, masks=msk, K=K, c2w=c2w, frame_index=i, session="synthetic", depth=dep,
                  extras={"vertices": verts})
        w.set_constant("faces", faces)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    # Small max scale: an untrained net would otherwise emit huge Gaussians that make CPU rendering slow.
    cfg = preset("tiny", image_size=16, width=32, depth=1, heads=2, num_input_views=4, max_log_scale=-4.0)
    torch.manual_seed(0)
    ckpt = save_checkpoint(d / "step_000000001.pt", model=GSLRM(cfg), optimizer=None, scheduler=None, step=1, data_position=0,
                           config={"model": cfg.to_dict(), "data": {"holdout_fraction": 0.5}})
    syn = _synthetic_shard(d / "syn.h5")
    real = write_toy_shard(d / "real.h5", kind="real", num_samples=4, num_views=6, size=16, session="demo")
    verts, faces = _ellipsoid_mesh()
    with h5py.File(d / "gt.h5", "w") as f:  # raw world == normalized world (toy norm_from_raw is identity)
        f["vertices"] = np.repeat(verts[None], 4, 0)
        f["faces"] = faces
    params = EvalParams(max_real_frames=1, turntable_frames=4, turntable_size=16, ground_truth=str(d / "gt.h5"),
                        body_length=1.2, render_chunk=16)
    out = d / "out"
    res = run_evaluate(ckpt, [syn], [real], out, params)
    return {"dir": d, "ckpt": ckpt, "syn": syn, "real": real, "out": out, "res": res, "params": params}


def test_ring_input_views_pick_the_35_degree_ring():
    c2w = _rig()
    valid = np.ones(len(c2w), bool)
    # Ring 2 (35 deg) has views 16..23 at azimuths 0, 45, ...; 4 inputs -> azimuths 0, 90, 180, 270.
    np.testing.assert_array_equal(ring_input_views(c2w, valid, 4), [16, 18, 20, 22])
    np.testing.assert_array_equal(ring_input_views(c2w, valid, 4, azimuth0_deg=45.0), [17, 19, 21, 23])
    valid[16] = False  # an invalid view is never chosen; the nearest valid one replaces it
    picked = ring_input_views(c2w, valid, 4)
    assert 16 not in picked and len(set(picked)) == 4 and picked[0] in (8, 24, 17, 23)


def test_loo_input_views():
    c2w = _rig(n_az=6, elevations=(30.0,))
    valid = np.ones(6, bool)
    assert list(loo_input_views(c2w, valid, 0, 5)) == [1, 2, 3, 4, 5]
    # 4 of 5: starts at a neighbour of camera 0 (1 or 5), spreads in azimuth.
    ins = loo_input_views(c2w, valid, 0, 4)
    assert 0 not in ins and len(ins) == 4 and (1 in ins or 5 in ins)
    np.testing.assert_array_equal(ins, loo_input_views(c2w, valid, 0, 4))
    valid[3] = False
    assert 3 not in loo_input_views(c2w, valid, 0, 4)


def test_outputs_and_protocols(setup):
    out, res = setup["out"], setup["res"]
    pv = pd.read_csv(out / "per_view.csv")
    ps = pd.read_csv(out / "per_sample.csv")
    syn = pv[pv.protocol == "synthetic"]
    assert len(syn) == 2 * 16  # every view of both samples is a target
    assert set(syn.target_view) == set(range(16))
    inputs = syn[syn.is_input]
    assert sorted(inputs.target_view.unique()) == [8, 10, 12, 14]
    assert np.allclose(inputs.angle_to_nearest_input_deg, 0.0, atol=1e-3)
    assert syn[~syn.is_input].angle_to_nearest_input_deg.min() > 1.0
    assert syn.depth_abs_rel.notna().any() and syn.psnr_fg.notna().all() and syn.depth_abs_body.notna().any()
    # Real: 1 frame x 6 held-out cameras per protocol; holdout frames are the last half (frame_index 2, 3).
    loo, hold = pv[pv.protocol == "real_loo"], pv[pv.protocol == "real_holdout"]
    assert len(loo) == 6 and len(hold) == 6
    assert set(hold.frame_index) <= {2, 3} and hold.heldout_time.all()
    assert (~loo.is_input).all() and (loo.angle_to_nearest_input_deg > 1).all()
    assert loo.lpips.isna().all()  # LPIPS not configured: NaN, not 0
    assert loo.depth_abs_rel.isna().all()  # real data has no depth
    # Chamfer for synthetic samples and for real reconstructions with ground truth.
    assert len(ps) == 2 + 6 + 6
    syn_ps, real_ps = ps[ps.protocol == "synthetic"], ps[ps.protocol != "synthetic"]
    assert syn_ps.chamfer.notna().all() and (syn_ps.chamfer > 0).all()
    # real: surface metrics once per frame (its first leave-one-out fold), NaN for the other folds
    for _, c in real_ps.groupby(["protocol", "frame_index"]).chamfer:
        assert c.notna().sum() == 1 and (c.dropna() > 0).all()
    f = ps.fraction_within_tau.dropna()
    assert len(f) == len(syn_ps) + real_ps.chamfer.notna().sum() and ((f >= 0) & (f <= 1)).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m == res
    assert m["lead"]["psnr_fg_heldout_camera"] == pytest.approx(hold.psnr_fg.mean())
    assert m["lead"]["chamfer"] == pytest.approx(ps[ps.protocol == "synthetic"].chamfer.mean())
    assert m["protocols"]["synthetic"]["input_views_first_sample"] == [8, 10, 12, 14]
    assert m["lpips"] == "unavailable" and m["holdout_fraction"] == 0.5
    assert m["protocols"]["synthetic"]["means_novel"]["psnr_fg"] == pytest.approx(syn[~syn.is_input].psnr_fg.mean())


def test_side_outputs(setup):
    out = setup["out"]
    grids = sorted(p.name for p in (out / "qualitative").glob("*.png"))
    assert grids == ["real_holdout_000.png", "real_holdout_001.png", "real_loo_000.png", "real_loo_001.png",
                     "synthetic_000.png", "synthetic_001.png"]
    im = Image.open(out / "qualitative" / "synthetic_000.png")
    assert im.size == (4 * 18 + 2, 5 * 18 + 2)  # 4 input columns; 1 input row + 4 target rows of 16 px + 2 px gaps
    gif = Image.open(out / "turntable.gif")
    assert gif.n_frames == 4 and gif.size == (16, 16)
    g = load_ply(out / "ply" / "synthetic_000.ply")
    assert g.num_gaussians > 0 and bool((g.opacities > 0.04).all())


def test_deterministic(setup, tmp_path):
    out2 = tmp_path / "again"
    params = dataclasses.replace(setup["params"], turntable_frames=0, num_ply=0, num_qualitative=0)
    res2 = run_evaluate(setup["ckpt"], [setup["syn"]], [], out2, params)
    pv1 = pd.read_csv(setup["out"] / "per_view.csv")
    pv2 = pd.read_csv(out2 / "per_view.csv")
    pd.testing.assert_frame_equal(pv1[pv1.protocol == "synthetic"].reset_index(drop=True), pv2)
    assert res2["protocols"]["synthetic"]["means"] == setup["res"]["protocols"]["synthetic"]["means"]


def test_report_from_real_eval_dir(setup, tmp_path):
    log = tmp_path / "train.csv"
    pd.DataFrame({"step": [0, 1, 2], "total": [1.0, 0.8, 0.7], "mse": [0.5, 0.4, 0.3], "lr": [1e-4] * 3,
                  "grad_norm": [1.0, 0.9, 0.8], "samples_per_s": [5.0] * 3}).to_csv(log, index=False)
    html = run_report({"tiny": setup["out"]}, {"tiny": log}, tmp_path / "r.html").read_text()
    assert "image/gif" in html and html.count("data:image/png") >= 3 + 6


def test_bad_inputs(setup, tmp_path):
    with pytest.raises(InputError, match="not a real shard"):
        run_evaluate(setup["ckpt"], [], [setup["syn"]], tmp_path / "x", EvalParams(turntable_frames=0))
    with pytest.raises(InputError, match="unknown evaluate setting"):
        EvalParams.from_dict({"bogus": 1})
    torch.save({"model": {}}, tmp_path / "noconfig.pt")
    with pytest.raises(InputError, match="noconfig.pt"):
        run_evaluate(tmp_path / "noconfig.pt", [setup["syn"]], [], tmp_path / "y")


def test_ground_truth_is_mapped_into_the_normalized_world(tmp_path):
    from scipy.spatial.transform import Rotation

    from model.evaluate import _GroundTruth

    raw = np.random.default_rng(0).normal(size=(3, 5, 3)) * 50 + 100  # mm
    with h5py.File(tmp_path / "gt.h5", "w") as f:
        f["vertices"] = raw
        f["faces"] = np.array([[0, 1, 2]], np.int32)
    T = np.eye(4)
    T[:3, :3] = 0.01 * Rotation.from_euler("z", 30, degrees=True).as_matrix()
    T[:3, 3] = [0.1, -0.2, 0.3]
    gt = _GroundTruth({"demo": str(tmp_path / "gt.h5")})
    v, faces = gt.mesh("demo", 2, T)
    hom = np.concatenate([raw[2], np.ones((5, 1))], axis=1) @ T.T
    np.testing.assert_allclose(v, hom[:, :3], atol=1e-12)
    assert faces.tolist() == [[0, 1, 2]]
    assert gt.mesh("other_session", 0, T) is None
    with pytest.raises(InputError, match="no ground truth for frame 7"):
        gt.mesh("demo", 7, T)
    gt.close()
