"""model/checkpoint.py and model/schedule.py: atomic safe checkpoints, RNG round trip, AdamW + warmup-cosine."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.checkpoint import (capture_rng_state, checkpoint_path, latest_checkpoint, link_or_copy, load_checkpoint,
                              model_state_from_file, prune_checkpoints, restore_rng_state, restore_training_state, save_checkpoint, to_plain)
from model.schedule import build_optimizer, lr_factor, split_decay, warmup_cosine
from workflow_scripts.errors import InputError


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.tokens_embeddings = nn.Parameter(torch.randn(2, 4))
        self.emb = nn.Embedding(5, 4)
        self.patch_embedder = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 1, bias=False)

    def forward(self, x):
        return self.out(self.norm(self.patch_embedder(x + self.tokens_embeddings.sum(0) + self.emb.weight[0])))


@dataclass
class Cfg:
    out: Path = Path("/tmp/x")
    sizes: tuple = (1, 2)
    nested: dict = field(default_factory=lambda: {"a": np.float32(1.5)})


def test_lr_factor_exact():
    assert lr_factor(0, 10, 110) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(500, 10, 110, 0.1) == pytest.approx(0.1)
    assert lr_factor(35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    m = Toy()
    opt = build_optimizer(m, lr=2e-3)
    sched = warmup_cosine(opt, 10, 110)
    lrs = []
    for _ in range(120):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [2e-3 * lr_factor(s, 10, 110) for s in range(120)], rtol=1e-12)


def test_no_decay_on_norms_biases_embeddings():
    m = Toy()
    decay, no_decay = split_decay(m)
    assert {id(p) for p in decay} == {id(m.patch_embedder.weight), id(m.out.weight)}
    assert {id(p) for p in no_decay} == {id(m.tokens_embeddings), id(m.emb.weight), id(m.patch_embedder.bias),
                                         id(m.norm.weight), id(m.norm.bias)}
    opt = build_optimizer(m, lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def _train_steps(m, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(n):
        x = torch.randn(8, 4, generator=g)
        loss = (m(x) ** 2).mean() + torch.rand(()).item() * 0  # touches the global RNG too
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_save_load_exact_resume(tmp_path):
    torch.manual_seed(0)
    m = Toy()
    opt = build_optimizer(m, lr=1e-2)
    sched = warmup_cosine(opt, 3, 20)
    _train_steps(m, opt, sched, 5, seed=1)
    p = save_checkpoint(checkpoint_path(tmp_path, 5), model=m, optimizer=opt, scheduler=sched, step=5,
                        data_position=5, config=Cfg(), metrics={"loss": np.float64(0.5)})
    ref = _train_steps(m, opt, sched, 5, seed=2)
    ref_rng = (torch.rand(3), np.random.rand(3), random.random())

    ck = load_checkpoint(p)                       # weights_only=True inside
    assert ck["step"] == 5 and ck["config"] == {"out": "/tmp/x", "sizes": [1, 2], "nested": {"a": 1.5}}
    m2 = Toy()
    opt2 = build_optimizer(m2, lr=1e-2)
    sched2 = warmup_cosine(opt2, 3, 20)
    restore_training_state(ck, m2, opt2, sched2)
    # Restoring RNG state replays the same global random numbers after the resumed steps.
    got = _train_steps(m2, opt2, sched2, 5, seed=2)
    assert got == ref
    assert torch.equal(torch.rand(3), ref_rng[0]) and (np.random.rand(3) == ref_rng[1]).all()
    assert random.random() == ref_rng[2]


def test_rng_roundtrip():
    np.random.standard_normal()  # has_gauss state
    st = capture_rng_state()
    a = (torch.randn(4), np.random.standard_normal(3), random.random())
    restore_rng_state(st)
    b = (torch.randn(4), np.random.standard_normal(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_latest_and_prune(tmp_path):
    m = Toy()
    for s in (10, 2, 30, 20):
        save_checkpoint(checkpoint_path(tmp_path, s), model=m, optimizer=None, scheduler=None, step=s, data_position=s)
    (tmp_path / ".step_000000040.pt.abc.tmp.pt").write_bytes(b"partial")     # an interrupted save
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 30)
    assert latest_checkpoint(tmp_path / "none") is None
    gone = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in gone) == ["step_000000002.pt", "step_000000010.pt"]
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 30)
    final = link_or_copy(checkpoint_path(tmp_path, 30), tmp_path / "checkpoint.pt")
    assert load_checkpoint(final)["step"] == 30


def test_bad_files_and_weights(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.pt"):
        load_checkpoint(bad)
    # FaceLift-style file: {"model": state_dict} with frozen VGG loss weights that we drop.
    m = Toy()
    sd = dict(m.state_dict())
    sd["loss_calculator.perceptual_loss_module.net.conv1.weight"] = torch.zeros(1)
    torch.save({"model": sd, "fwdbwd_pass_step": 3}, tmp_path / "fl.pt")
    state = model_state_from_file(tmp_path / "fl.pt")
    Toy().load_state_dict(state, strict=True)
    torch.save({"model": {"x": "not a tensor"}}, tmp_path / "nomodel.pt")
    with pytest.raises(InputError, match="no model state_dict"):
        model_state_from_file(tmp_path / "nomodel.pt")
    assert to_plain({"p": Path("/a"), "t": (1, np.int64(2))}) == {"p": "/a", "t": [1, 2]}
