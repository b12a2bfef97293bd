"""The whole demo DAG at a tiny size, run through the Snakemake API, and "rerun only what changed"."""
import json
import math
import shutil

import pytest
import yaml

from tests import smk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, repo_root, mammal_dir):
    work = tmp_path_factory.mktemp("demo_e2e")
    shutil.copy(repo_root / "config.yaml", work / "config.yaml")
    tiny = yaml.safe_load((repo_root / "tests" / "tiny_config.yaml").read_text())
    mp = pytest.MonkeyPatch()
    mp.setenv("MAMMAL_MOUSE_DIR", str(mammal_dir))
    ran = smk.run(repo_root, ["train_mouse"], config=tiny, dryrun=False, workdir=work)
    yield work, tiny, ran
    mp.undo()


def test_demo_runs_every_stage_and_leaves_checkpoint_metrics_report(demo_run):
    work, _, ran = demo_run
    assert {"demo_recording", "crop_shards", "synthetic_shards", "train_synthetic", "train_mouse_model", "evaluate", "report"} <= set(ran)
    assert (work / "results/train/main/mouse/checkpoint.pt").stat().st_size > 0
    metrics = json.loads((work / "results/eval/main/metrics.json").read_text())
    assert math.isfinite(metrics["lead"]["psnr_fg_heldout_camera"])
    assert math.isfinite(metrics["lead"]["chamfer"])
    html = (work / "results/report.html").read_text()
    assert "data:image/png;base64" in html and "main" in html
    # one log and one benchmark file per job
    assert len(list((work / "results/logs").rglob("*.log"))) >= len(ran) - 1
    assert len(list((work / "results/benchmarks").rglob("*.tsv"))) >= len(ran) - 1


def test_nothing_changed_reruns_nothing(demo_run, repo_root):
    work, tiny, _ = demo_run
    assert smk.run(repo_root, ["train_mouse"], config=tiny, workdir=work) == []


def test_a_crop_parameter_reruns_exactly_the_crops_and_what_depends_on_them(demo_run, repo_root):
    work, tiny, _ = demo_run
    changed = {**tiny, "crop": {**tiny.get("crop", {}), "size_ratio": 0.25}}
    rules = smk.run(repo_root, ["train_mouse"], config=changed, workdir=work)
    assert sorted(rules) == sorted(["crop_shards", "train_mouse_model", "evaluate", "report", "train_mouse"])


def test_a_synthetic_parameter_leaves_real_preprocessing_alone(demo_run, repo_root):
    work, tiny, _ = demo_run
    changed = {**tiny, "synthetic": {**tiny["synthetic"], "fov_deg": 40.0}}
    rules = set(smk.run(repo_root, ["train_mouse"], config=changed, workdir=work))
    assert "synthetic_shards" in rules and "train_synthetic" in rules
    assert not rules & {"demo_recording", "masks", "calibration", "locate_mouse", "crop_shards"}


def test_snakemake_report_bundles_the_report_and_qc_figures(demo_run, repo_root, mammal_dir, tmp_path):
    import os
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    work, _, _ = demo_run
    out = tmp_path / "report.zip"
    exe = Path(sys.executable).with_name("snakemake")
    r = subprocess.run([str(exe), "-s", str(repo_root / "Snakefile"), "--configfile", "config.yaml",
                        str(repo_root / "tests" / "tiny_config.yaml"), "--report", str(out), "train_mouse"],
                       cwd=work, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MAMMAL_MOUSE_DIR": str(mammal_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    names = zipfile.ZipFile(out).namelist()
    assert any(n.endswith("report.html") and "/data/raw/" in n for n in names)  # our report, bundled
    assert any(n.endswith("qc.png") for n in names) and any(n.endswith("chunk000_qc.png") for n in names)


def test_centre_from_the_body_model_by_default_and_the_hull_on_request(demo_run, repo_root, tmp_path):
    """The default centre is the body model's (locate_mouse gets the MAMMAL model as an input);
    switching to the visual hull reruns only locate_mouse, which then no longer needs the model
    (on a copy of the demo's work folder, so the other tests keep theirs)."""
    import pandas as pd

    src, tiny, _ = demo_run
    target = "results/locate/demo/centers.csv"

    def methods(folder):
        table = pd.read_csv(folder / target, keep_default_na=False)
        return table.loc[table["valid"].astype(str) == "True", "center_method"]

    assert len(methods(src)) and (methods(src) == "body_model").mean() > 0.8
    work = tmp_path / "work"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("train", "eval", "shards"))
    cfg = {**tiny, "locate": {**tiny.get("locate", {}), "center": "visual_hull"}}
    assert smk.run(repo_root, [target], config=cfg, workdir=work) == ["locate_mouse"]  # only the centres change
    (work / "results/body_model/mammal_mouse.npz").unlink()  # not an input of the hull's locate_mouse
    smk.run(repo_root, [target], config=cfg, workdir=work, dryrun=False)
    assert (methods(work) == "visual_hull").all()
