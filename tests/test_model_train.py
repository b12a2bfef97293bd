"""model/train.py: overfitting, exact resume, SIGTERM preemption, torchrun/gloo DDP, non-finite steps.

The training sample is a ray-traced textured ellipsoid (model.data.write_toy_shard) written with
ShardWriter; the tiny preset runs at 16-32 px so that every test stays within CPU budgets.
"""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import model.render_torch as render_torch
import model.train as T
from model.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from model.config import ModelConfig
from model.data import DataConfig, ShardDataset, write_toy_shard
from model.gslrm import GSLRM
from model.renderer import render
from workflow_scripts.errors import InputError

# Only the terms that need no extra inputs/weights; the full loss set is tested in test_model_losses.
LOSSES = {"mse": 1.0, "masked_mse": 0.0, "ssim": 0.0, "silhouette": 0.5, "depth": 0.0, "temporal": 0.0, "perceptual": 0.0}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices: one thread is faster and immune to oversubscription when other tests run.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("toy")
    return write_toy_shard(d / "toy.h5", "synthetic", num_samples=1, num_views=6, size=32)


def config(toy: Path, out: Path, **kw) -> dict:
    d = {"stage": "test", "preset": "tiny", "synthetic": [str(toy)], "image_size": 16, "num_input_views": 4,
         "num_supervision_views": 2, "view_selection": "random", "background": "white", "batch_size": 1,
         "steps": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": 100, "log_every": 1, "num_workers": 0,
         "losses": dict(LOSSES), "out_dir": str(out), "seed": 3}
    d.update(kw)
    return d


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_overfits_one_sample(toy, tmp_path, monkeypatch):
    # Smaller tile groups: same images, much less padding work for tiny renders on CPU.
    monkeypatch.setattr(render_torch, "GROUP_BUDGET", 1 << 18)
    # Photometric terms only: the BCE silhouette term slows this tiny overfit down (measured).
    losses = {**LOSSES, "silhouette": 0.0, "ssim": 0.2}
    cfg = T.TrainConfig.from_dict(config(toy, tmp_path / "run", image_size=32, steps=400, warmup_steps=20,
                                         log_every=25, checkpoint_every=1000, losses=losses))
    final = T.train(cfg)
    ck = load_checkpoint(final)
    model = GSLRM(ModelConfig.from_dict(ck["config"]["model"]))
    model.load_state_dict(ck["model"])
    model.eval()
    ds = ShardDataset(cfg.data.synthetic, cfg.data)
    psnrs = []
    with torch.no_grad():
        for seed in range(4):     # several input/supervision view splits of the one sample
            it = {k: v[None] for k, v in ds[(0, seed, seed)].items()}
            g = model(it["input_images"], it["input_K"], it["input_c2w"])
            out = render(g, it["target_K"], it["target_c2w"], 32, 32, (1.0, 1.0, 1.0), backend="torch")
            mse = torch.mean((out.rgb.clamp(0, 1) - it["target_images"]) ** 2).item()
            psnrs.append(-10 * math.log10(mse))
    assert np.mean(psnrs) > 25.0, psnrs
    rows = read_log(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(25, 401, 25))
    assert float(rows[-1]["total"]) < 0.2 * float(rows[0]["total"])


def test_resume_is_exact(toy, tmp_path):
    kw = dict(steps=8, checkpoint_every=3, background="random", view_selection="overlap")
    T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "a", **kw)))
    with pytest.raises(T.Preempted) as e:
        T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "b", stop_at_step=5, **kw)))
    assert e.value.step == 5 and e.value.checkpoint.exists()
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "checkpoints")] == [3, 5]
    T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "b", **kw)))
    a, b = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in b] == [str(s) for s in range(1, 9)]
    for ra, rb in zip(a, b):
        for k in ("total", "mse", "silhouette", "lr", "grad_norm", "psnr"):
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])      # bitwise (9 significant digits of fp32)
    wa = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    wb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert wa["step"] == wb["step"] == 8 and wa["data_position"] == 8
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    # A finished run called again just returns the final checkpoint.
    assert T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "a", **kw))) == tmp_path / "a" / "checkpoint.pt"


def test_changed_settings_start_afresh_instead_of_resuming(toy, tmp_path):
    """Snakemake reruns a training job when its params or inputs change: the earlier run's step
    checkpoints must not be resumed then (a preempted run of the same settings is, above)."""
    out = tmp_path / "run"
    T.train(T.TrainConfig.from_dict(config(toy, out, steps=4, checkpoint_every=2)))
    first = load_checkpoint(out / "checkpoint.pt")
    (out / "checkpoint.pt").unlink()  # Snakemake removes the outputs of a job it reruns
    T.train(T.TrainConfig.from_dict(config(toy, out, steps=4, checkpoint_every=2, lr=5e-4)))
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows][-4:] == ["1", "2", "3", "4"]  # started at step 1 again
    second = load_checkpoint(out / "checkpoint.pt")
    assert not all(torch.equal(first["model"][k], second["model"][k]) for k in first["model"])
    # bookkeeping settings and the length (extending a run) do not change the run's identity
    assert T.run_identity(T.TrainConfig.from_dict(config(toy, out, checkpoint_every=7, log_every=3, steps=9))) == \
        T.run_identity(T.TrainConfig.from_dict(config(toy, out)))
    assert T.run_identity(T.TrainConfig.from_dict(config(toy, out, seed=4))) != T.run_identity(T.TrainConfig.from_dict(config(toy, out)))


def test_sigterm_saves_and_rerun_resumes(toy, tmp_path):
    out = tmp_path / "run"
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(toy, out, steps=400, num_workers=2)))
    cmd = [sys.executable, "-m", "model.train", "--config", str(cfg_path)]
    # Own session/process group, so the signal can reach the DataLoader workers too, as under SLURM.
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (out / "log.csv").exists() and len(read_log(out / "log.csv")) >= 2:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == T.PREEMPTED_EXIT_CODE, output[-3000:]
    ck = latest_checkpoint(out / "checkpoints")
    step = load_checkpoint(ck)["step"]
    assert 2 <= step < 400 and not (out / "checkpoint.pt").exists()
    # Same settings (stop_at_step only bounds this test's runtime; it is not part of the run's
    # identity), so the rerun resumes from the checkpoint the signal left.
    res = subprocess.run(cmd + ["--set", f"stop_at_step={step + 2}"], env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == T.PREEMPTED_EXIT_CODE, res.stderr[-3000:]
    assert f"resumed from {ck}" in res.stderr
    assert load_checkpoint(latest_checkpoint(out / "checkpoints"))["step"] == step + 2
    assert [int(r["step"]) for r in read_log(out / "log.csv")] == list(range(1, step + 3))


def test_torchrun_gloo_two_processes(toy, tmp_path):
    # DDP with batch 1 per rank must see the same first loss as one process with batch 2
    # (rank r takes slice r of each global batch, and the logged loss is the mean over ranks).
    one = tmp_path / "one"
    T.train(T.TrainConfig.from_dict(config(toy, one, steps=2, batch_size=2)))
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config(toy, tmp_path / "ddp", steps=2, batch_size=1)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "model.train", "--config", str(cfg_path)]
    res = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    assert ck["step"] == 2 and ck["metrics"]["world_size"] == 2
    a, b = read_log(one / "log.csv"), read_log(tmp_path / "ddp" / "log.csv")
    assert len(b) == 2                          # only rank 0 writes
    assert float(b[0]["total"]) == pytest.approx(float(a[0]["total"]), rel=1e-5)
    assert float(b[1]["total"]) == pytest.approx(float(a[1]["total"]), rel=1e-3)


def test_nonfinite_steps_are_skipped_and_counted(toy, tmp_path, monkeypatch):
    real = T.compute_step_losses
    calls = {"n": 0}
    bad_calls = {2, 3, 6}

    def flaky(*args, **kw):
        losses, out = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            if calls["n"] == 6:   # compute_losses' own report of a non-finite term
                raise FloatingPointError("non-finite loss term 'mse'")
            losses = {**losses, "total": losses["total"] * float("nan")}
        return losses, out

    monkeypatch.setattr(T, "compute_step_losses", flaky)

    final = T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "r", steps=7, max_consecutive_nonfinite=3)))
    ck = load_checkpoint(final)
    assert ck["metrics"]["nonfinite_steps"] == 3
    rows = read_log(tmp_path / "r" / "log.csv")
    assert [int(r["nonfinite_steps"]) for r in rows] == [0, 1, 2, 2, 2, 3, 3]
    assert math.isnan(float(rows[1]["grad_norm"])) and math.isfinite(float(rows[3]["grad_norm"]))
    assert all(torch.isfinite(v).all() for v in ck["model"].values())

    calls["n"] = 0
    bad_calls.update(range(1, 100))
    with pytest.raises(RuntimeError, match="3 consecutive non-finite"):
        T.train(T.TrainConfig.from_dict(config(toy, tmp_path / "abort", steps=7, max_consecutive_nonfinite=3)))


def test_config_forms_and_errors(repo_root, tmp_path):
    section = yaml.safe_load((repo_root / "config.yaml").read_text())["train_synthetic"]
    cfg = T.TrainConfig.from_dict({**section, "synthetic": ["x.h5"], "seed": 7, "out_dir": str(tmp_path)})
    assert cfg.data.image_size == section["image_size"] and cfg.data.seed == 7 and cfg.seed == 7
    assert cfg.model_config().image_size == section["image_size"]
    nested = T.TrainConfig.from_dict({"data": {"image_size": 32, "synthetic": ["y.h5"]}, "steps": 5})
    assert nested.data.image_size == 32 and nested.steps == 5
    assert T.apply_overrides({"data": {}}, ["data.image_size=48", "lr=2e-4", "model.depth=2"]) == {
        "data": {"image_size": 48}, "lr": 2e-4, "model": {"depth": 2}}
    with pytest.raises(InputError, match="unknown training setting"):
        T.TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(InputError, match="steps"):
        T.TrainConfig.from_dict({"steps": 0})
    with pytest.raises(InputError, match="background"):
        T.TrainConfig.from_dict({"background": "purple"})
    with pytest.raises(InputError, match="unknown loss setting"):
        T.TrainConfig.from_dict({"losses": {"l2": 1.0}})
    with pytest.raises(InputError, match="unknown model preset"):
        T.TrainConfig.from_dict({"preset": "huge"})


def test_run_training_keyword_form(toy, tmp_path):
    # The form workflow_scripts/entry/train.py uses (Snakemake params and outputs).
    section = {k: v for k, v in config(toy, tmp_path, steps=2).items() if k not in ("synthetic", "out_dir", "seed", "stage")}
    out = T.run_training(stage="synthetic", settings=section, shards={"synthetic": [str(toy)], "real": []},
                         out_dir=tmp_path / "run", init_checkpoint=None, seed=5, holdout_fraction=0.0,
                         checkpoint_out=tmp_path / "outputs" / "checkpoint.pt", log_csv_out=tmp_path / "run" / "log.csv")
    assert out == tmp_path / "run" / "checkpoint.pt"
    ck = load_checkpoint(tmp_path / "outputs" / "checkpoint.pt")
    assert ck["step"] == 2 and ck["config"]["seed"] == 5 and ck["config"]["stage"] == "synthetic"
    assert ck["config"]["data"]["synthetic"] == [str(toy)]
    # The next stage starts from these weights.
    T.run_training({**section, "synthetic": [str(toy)], "steps": 1}, tmp_path / "next", init_checkpoint=out)
    assert load_checkpoint(tmp_path / "next" / "checkpoint.pt")["config"]["init_checkpoint"] == str(out)
