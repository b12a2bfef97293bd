"""model/data.py: resizing with exact K, view selection, datasets, deterministic DDP-aware sampling."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from model.data import (DataConfig, MixedBatchSampler, ShardDataset, build_loader, composite, holdout_mask,
                        render_toy_ellipsoid, resize_views, select_views, toy_K, toy_views, write_toy_shard)
from workflow_scripts.errors import InputError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    valid = np.ones((3, 32), bool)
    valid[1, ::2] = False          # sample 1: half its views failed QC
    valid[2, 3:] = False           # sample 2: only 3 valid views -> not usable with 4 inputs
    syn = write_toy_shard(d / "syn.h5", "synthetic", num_samples=3, num_views=32, size=32, view_valid=valid)
    real = write_toy_shard(d / "real.h5", "real", num_samples=5, num_views=6, size=32, session="s1")
    return {"syn": syn, "real": real, "dir": d}


def project(K, c2w, X):
    w2c = np.linalg.inv(c2w)
    x = w2c[:3, :3] @ X + w2c[:3, 3]
    u = K @ x
    return u[:2] / u[2]


def test_resize_scales_K_exactly_and_matches_direct_render():
    c2w = toy_views(4)
    K64 = toy_K(64, 4)
    img, msk, dep = render_toy_ellipsoid(c2w, K64, 64)
    r_img, r_msk, r_K, r_dep = resize_views(img, msk, K64, 32, dep)
    # K' = diag(s, s, 1) K with the corner-origin convention: a 3D point projects to s * u.
    X = np.array([0.3, -0.2, 0.1])
    for v in range(4):
        np.testing.assert_allclose(project(r_K[v], c2w[v], X), 0.5 * project(K64[v], c2w[v], X), rtol=1e-6)
    # ...and the resized image is what a camera with K' sees (ray tracing at 32 px).
    img32, msk32, dep32 = render_toy_ellipsoid(c2w, r_K, 32)
    assert np.abs(r_img - img32 / 255.0).mean() < 0.02
    fg = (r_msk > 0.5) == (msk32 > 127)
    assert fg.mean() > 0.98
    # Depth is averaged over foreground pixels only: no silhouette blending with background zeros.
    both = (r_dep > 0) & (dep32 > 0) & (r_msk > 0.99)
    assert both.sum() > 100
    np.testing.assert_allclose(r_dep[both], dep32[both], rtol=0.03)
    assert (r_dep[r_msk == 0] == 0).all()
    assert r_dep[r_dep > 0].min() > 1.5   # nothing in between 0 and the object's depth (~2.1 .. 3.3)


def test_composite_uses_mask():
    img = np.full((1, 2, 2, 3), 0.25, np.float32)
    msk = np.array([[[1.0, 0.0], [0.5, 0.0]]], np.float32)
    out = composite(img, msk, np.array([1.0, 0.0, 0.5], np.float32))
    np.testing.assert_allclose(out[0, 0, 0], [0.25, 0.25, 0.25])
    np.testing.assert_allclose(out[0, 0, 1], [1.0, 0.0, 0.5])
    np.testing.assert_allclose(out[0, 1, 0], [0.625, 0.125, 0.375])


def test_overlap_selection_spreads_inputs_and_keeps_targets_near():
    c2w = toy_views(32)
    valid = np.ones(32, bool)
    valid[5] = False
    az = np.degrees(np.arctan2(c2w[:, 1, 3], c2w[:, 0, 3]))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        vin, vtg = select_views(c2w, valid, 4, 4, "overlap", rng, max_angle_deg=30.0)
        assert len(set(vin) | set(vtg)) == 8 and valid[vin].all() and valid[vtg].all()
        a = np.sort(az[vin] % 360)
        gaps = np.diff(np.concatenate([a, a[:1] + 360]))
        assert gaps.min() >= 90 - 360 / 32 - 1e-6       # 4 inputs on 32 azimuths: spread ~90 deg apart
        dirs = c2w[:, :3, 3] / np.linalg.norm(c2w[:, :3, 3], axis=1, keepdims=True)
        nearest = np.degrees(np.arccos(np.clip(dirs[vtg] @ dirs[vin].T, -1, 1).max(1)))
        assert (nearest <= 30.0 + 1e-6).all()
    # Same generator state -> same choice; random mode too.
    a = select_views(c2w, valid, 4, 4, "random", np.random.default_rng(3))
    b = select_views(c2w, valid, 4, 4, "random", np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b))


def test_selection_reuses_inputs_when_too_few_views():
    c2w = toy_views(6)
    valid = np.array([1, 1, 1, 1, 1, 0], bool)
    vin, vtg = select_views(c2w, valid, 4, 2, "overlap", np.random.default_rng(0))
    assert len(vtg) == 2 and valid[vtg].all()
    assert len(set(vtg) - set(vin)) == 1        # the only spare view, plus one input reused


def test_dataset_items(shards):
    cfg = DataConfig(synthetic=[str(shards["dir"] / "syn*.h5")], image_size=16, background="black")
    ds = ShardDataset(cfg.synthetic, cfg)
    assert ds.kind == "synthetic" and len(ds) == 2                # sample 2 has too few valid views
    it = ds[1]
    assert it["input_images"].shape == (4, 3, 16, 16) and it["target_images"].shape == (4, 3, 16, 16)
    assert it["target_masks"].shape == (4, 1, 16, 16) and it["target_depth"].shape == (4, 1, 16, 16)
    assert (it["input_views"] % 2 == 1).all() and (it["target_views"] % 2 == 1).all()  # only valid views
    # Cameras are consistent: the world origin projects to the principal point (16/2 = 8).
    for K, c2w in zip(it["target_K"].numpy(), it["target_c2w"].numpy()):
        np.testing.assert_allclose(project(K, c2w, np.zeros(3)), [8, 8], atol=1e-4)
    # Black background: pixels outside the mask are 0.
    bgpix = it["target_masks"].expand(-1, 3, -1, -1) == 0
    assert it["target_images"][bgpix].abs().max() == 0
    # Deterministic per key.
    again = ds[1]
    assert all(torch.equal(it[k], again[k]) for k in it)


def test_random_background_shared_by_batch_seed(shards):
    cfg = DataConfig(synthetic=[str(shards["syn"])], image_size=16, background="random")
    ds = ShardDataset(cfg.synthetic, cfg)
    a, b, c = ds[(0, 1, 99)], ds[(1, 2, 99)], ds[(0, 1, 100)]
    assert torch.equal(a["background"], b["background"]) and not torch.equal(a["background"], c["background"])
    outside = a["target_masks"][0, 0] == 0
    np.testing.assert_allclose(a["target_images"][0][:, outside].T.numpy(),
                               np.broadcast_to(a["background"].numpy(), (int(outside.sum()), 3)), atol=1e-6)


def test_temporal_pairs_and_holdout(shards):
    cfg = DataConfig(real=[str(shards["real"])], image_size=32, temporal_pairs=True, temporal_max_gap=1,
                     num_supervision_views_real=2)
    ds = ShardDataset(cfg.real, cfg)
    plain = ShardDataset(cfg.real, DataConfig(real=cfg.real, image_size=32))
    assert len(ds) == 5
    for j in range(5):
        it = ds[j]
        assert bool(it["has_neighbor"])
        nb = j + 1 if j < 4 else 3          # next frame, or the previous one at the end of the session
        ref = plain._frame(nb, it["input_views"].numpy(), it["target_views"].numpy(), it["background"].numpy())
        assert torch.equal(it["neighbor_target_images"], ref["target_images"])
        assert not torch.equal(it["neighbor_target_images"], it["target_images"])  # texture phase differs
    # Holdout: the last 40% of the session's frames (2 of 5) are not trained on.
    held = ShardDataset(cfg.real, DataConfig(real=cfg.real, image_size=32, holdout_fraction=0.4))
    assert len(held) == 3
    np.testing.assert_array_equal(holdout_mask(["a"] * 5 + ["b"] * 2, np.array([0, 1, 2, 3, 4, 7, 9]), 0.4),
                                  [0, 0, 0, 1, 1, 0, 1])


def test_sampler_resume_ratio_and_ddp():
    s = MixedBatchSampler([7, 5], [0.7, 0.3], batch_size=3, seed=1)
    full = list(itertools.islice(iter(s), 200))
    resumed = list(itertools.islice(iter(MixedBatchSampler([7, 5], [0.7, 0.3], 3, seed=1, start=120)), 80))
    assert resumed == full[120:]
    assert all(len({k[0] for k in b}) == 1 for b in full)            # batches never mix sources
    frac = np.mean([b[0][0] == 0 for b in full])
    assert 0.6 < frac < 0.8
    # Every epoch of a source visits each sample exactly once.
    stream = [k[1] for b in full if b[0][0] == 1 for k in b][:5 * 10]
    for e in range(10):
        assert sorted(stream[5 * e:5 * e + 5]) == list(range(5))
    # DDP: two ranks split the same global batch the way world_size=1 with batch 6 would draw it.
    one = list(itertools.islice(iter(MixedBatchSampler([7, 5], [0.7, 0.3], 6, seed=1)), 30))
    r0 = list(itertools.islice(iter(MixedBatchSampler([7, 5], [0.7, 0.3], 3, seed=1, rank=0, world_size=2)), 30))
    r1 = list(itertools.islice(iter(MixedBatchSampler([7, 5], [0.7, 0.3], 3, seed=1, rank=1, world_size=2)), 30))
    for g, a, b in zip(one, r0, r1):
        assert [k[:2] for k in g] == [k[:2] for k in a + b]
        assert [k[2] for k in a] != [k[2] for k in b]                 # different per-item seeds


def test_loader_workers_match_single_process(shards):
    cfg = DataConfig(synthetic=[str(shards["syn"])], real=[str(shards["real"])], synthetic_ratio=0.5,
                     image_size=16, background="random", temporal_pairs=True)
    b0 = list(itertools.islice(iter(build_loader(cfg, batch_size=2, num_workers=0)), 6))
    b2 = list(itertools.islice(iter(build_loader(cfg, batch_size=2, num_workers=2)), 6))
    kinds = set()
    for x, y in zip(b0, b2):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[k], y[k]) for k in x)
        kinds.add("target_depth" in x)
        assert x["target_images"].shape[1] == (4 if "target_depth" in x else 2)
    assert kinds == {True, False}
    late = next(iter(build_loader(cfg, batch_size=2, num_workers=0, start=4)))
    assert all(torch.equal(late[k], b0[4][k]) for k in late)


def test_bad_inputs(shards, tmp_path):
    with pytest.raises(InputError, match="no shard file matches"):
        ShardDataset([str(tmp_path / "nothing*.h5")], DataConfig())
    with pytest.raises(InputError, match="mixes shard kinds"):
        ShardDataset([str(shards["syn"]), str(shards["real"])], DataConfig())
    with pytest.raises(InputError, match="view_selection"):
        DataConfig(view_selection="best").validate()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="bad.h5"):
        ShardDataset([str(bad)], DataConfig())
