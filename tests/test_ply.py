"""3DGS .ply export: layout, value ranges, round trip, filters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from model.gaussians import Gaussians
from model.ply import PLY_FIELDS, PlyFilter, load_ply, save_ply
from workflow_scripts.errors import InputError


def _gaussians(B=2, N=300, seed=0, num_global=2) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(B, N, 3, generator=g) * 0.5,
        scales=torch.exp(torch.randn(B, N, 3, generator=g) - 4),
        quats=torch.nn.functional.normalize(torch.randn(B, N, 4, generator=g), dim=-1),
        opacities=torch.rand(B, N, generator=g) * 0.98 + 0.01,
        sh_dc=torch.randn(B, N, 3, generator=g),
        num_global=num_global,
    )


def test_layout_dtypes_and_ranges(tmp_path):
    path = tmp_path / "g.ply"
    n = save_ply(path, _gaussians(), index=1)
    assert n == 300
    assert b"format binary_little_endian 1.0" in path.read_bytes()[:300]
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    assert v.dtype.names == PLY_FIELDS
    assert all(v.dtype[f] == np.dtype("<f4") for f in PLY_FIELDS)
    arr = np.stack([v[f] for f in PLY_FIELDS], axis=1)
    assert np.isfinite(arr).all()
    assert np.all(v["nx"] == 0) and np.all(v["ny"] == 0) and np.all(v["nz"] == 0)
    op = 1 / (1 + np.exp(-v["opacity"].astype(np.float64)))
    assert np.all((op > 0) & (op < 1))
    q = np.stack([v[f"rot_{i}"] for i in range(4)], axis=1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)
    assert np.all(v["scale_0"] < 0)  # log of scales << 1


def test_round_trip_equals_input(tmp_path):
    g = _gaussians()
    save_ply(tmp_path / "g.ply", g, index=1)
    back = load_ply(tmp_path / "g.ply")
    ref = g.select(1)
    assert back.means.shape == (1, 300, 3) and back.num_global == 2
    for name in ("means", "scales", "quats", "opacities", "sh_dc"):
        torch.testing.assert_close(getattr(back, name), getattr(ref, name), rtol=1e-5, atol=1e-6)


def test_filters(tmp_path):
    N = 6
    means = torch.tensor([[0, 0, 0.0], [0, 0, 0.0], [0.5, 0, -0.5], [0.7, 0.7, -0.8], [0.95, 0, 0], [0, 0, 0.5]])
    scales = torch.full((N, 3), 0.01)
    scales[2] = 0.2  # large and below z = 0
    scales[5] = 0.2  # large but above z = 0: kept
    op = torch.tensor([0.5, 0.01, 0.5, 0.5, 0.5, 0.5])
    g = Gaussians(means[None], scales[None], torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1)[None], op[None],
                  torch.zeros(1, N, 3), num_global=1)
    assert save_ply(tmp_path / "a.ply", g, filter=PlyFilter()) == 5  # only the opacity rule by default
    assert save_ply(tmp_path / "b.ply", g, filter=PlyFilter.facelift()) == 2  # rows 0 and 5
    back = load_ply(tmp_path / "b.ply")
    torch.testing.assert_close(back.means[0], means[[0, 5]])
    assert back.num_global == 1


def test_bad_files_raise_input_error(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply")
    with pytest.raises(InputError, match="bad.ply"):
        load_ply(bad)
    import trimesh
    mesh_ply = tmp_path / "mesh.ply"
    trimesh.creation.box().export(mesh_ply)  # a mesh .ply without Gaussian properties
    with pytest.raises(InputError, match="missing 3D Gaussian properties"):
        load_ply(mesh_ply)
