"""The Snakemake DAG: every stage is reachable from the main target, and config errors are clear."""
import shutil

import pytest

from tests import smk

STAGES = {"demo_recording", "check_sync", "masks", "calibration", "locate_mouse", "crop_shards",
          "body_model", "synthetic_shards", "train_synthetic", "train_mouse_model", "evaluate", "report", "train_mouse"}


@pytest.fixture
def workdir(tmp_path, repo_root, monkeypatch, mammal_dir):
    shutil.copy(repo_root / "config.yaml", tmp_path / "config.yaml")
    monkeypatch.setenv("MAMMAL_MOUSE_DIR", str(mammal_dir))
    return tmp_path


def test_dry_run_lists_every_stage(repo_root, workdir):
    rules = smk.run(repo_root, ["train_mouse"], workdir=workdir)
    assert STAGES <= set(rules), STAGES - set(rules)
    # one job per camera for the per-camera steps of the 6-camera demo
    assert rules.count("masks") == 6


def test_shard_count_changes_only_shard_jobs(repo_root, workdir):
    rules = smk.run(repo_root, ["train_mouse"], workdir=workdir, config={"synthetic": {"num_shards": 5}})
    assert rules.count("synthetic_shards") == 5 + 1  # + the test shard


def test_without_local_model_the_download_rule_runs(repo_root, workdir, monkeypatch):
    monkeypatch.delenv("MAMMAL_MOUSE_DIR")
    rules = smk.run(repo_root, ["results/body_model/mammal_mouse.npz"], workdir=workdir)
    assert rules == ["download_body_model", "body_model"]


def test_bad_config_is_a_clear_error(repo_root, workdir):
    with pytest.raises(Exception, match=r"crop\.size_ratio"):
        smk.run(repo_root, ["train_mouse"], workdir=workdir, config={"crop": {"size_ratio": "big"}})


def test_snakemake_lint_is_clean(repo_root, mammal_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("snakemake")
    r = subprocess.run([str(exe), "--lint"], cwd=repo_root, capture_output=True, text=True,
                       env={**os.environ, "MAMMAL_MOUSE_DIR": str(mammal_dir)}, timeout=300)
    assert r.returncode == 0 and "Congratulations" in r.stdout + r.stderr, r.stdout + r.stderr


def test_experiments_become_their_own_train_and_evaluate_jobs(repo_root, workdir):
    experiments = {
        "real_only": {"skip_synthetic": True, "train_mouse": {"synthetic_ratio": 0.0, "losses": {"silhouette": 0.0}}},
        "pretrained": {},
        "one_view": {"train_mouse": {"num_input_views": 1}},
    }
    rules = smk.run(repo_root, ["train_mouse"], workdir=workdir, config={"experiments": experiments})
    assert rules.count("train_mouse_model") == 3 and rules.count("evaluate") == 3
    assert rules.count("train_synthetic") == 2  # real_only skips synthetic pre-training
    assert rules.count("report") == 1  # one report compares them side by side
