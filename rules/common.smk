# Configuration, sessions and helpers shared by every rule file.
import os
from pathlib import Path

from workflow_scripts.config import validate
from workflow_scripts.sample_sheet import merge_sessions

# Validate against the JSON schema (fills in documented defaults; unknown keys are errors).
config = validate(config, source="config.yaml / --config")

# Your sessions: config `sessions:` plus the rows of `sample_sheet:` (read once, while the workflow
# is parsed, so a bad sheet stops the run before any job). Empty: the demo recording.
USER_SESSIONS = merge_sessions(config["sessions"], config["sample_sheet"])

DEMO_SESSION = "demo"
DEMO_DIR = "results/demo_recording"


wildcard_constraints:
    session=r"[A-Za-z0-9_.-]+",
    camera=r"[A-Za-z0-9_.-]+",
    chunk=r"\d+",
    split=r"train|test",
    index=r"\d{4}",
    experiment=r"[A-Za-z0-9_.-]+",


def sessions():
    """Session name -> session dict (videos, calibration, frame_offsets, masks)."""
    if USER_SESSIONS:
        return USER_SESSIONS
    n = config["demo"]["num_cameras"]
    cams = [f"cam{i}" for i in range(1, n + 1)]
    return {
        DEMO_SESSION: {
            "videos": {c: f"{DEMO_DIR}/videos/{c}.mp4" for c in cams},
            "calibration": f"{DEMO_DIR}/calibration",
            "frame_offsets": {},
            "masks": None,
        }
    }


def cameras(session):
    return list(sessions()[session]["videos"])


def calibration_files(session):
    """The calibration's files (a folder counts as all its files) so edits trigger reruns."""
    path = sessions()[session]["calibration"]
    if session == DEMO_SESSION and not USER_SESSIONS:
        return [f"{DEMO_DIR}/calibration/hires_{c}_params.mat" for c in cameras(session)]
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.is_file())
    return [path]


def body_model_dir():
    """Local MAMMAL folder (config or MAMMAL_MOUSE_DIR) or the downloaded copy in resources/."""
    d = config["body_model"]["dir"] or os.environ.get("MAMMAL_MOUSE_DIR")
    return d if d else "resources/mammal_mouse"


def experiments():
    return list(config["experiments"]) or ["main"]


def experiment_settings(experiment, stage):
    """The training section of one stage with the experiment's overrides applied."""
    base = dict(config[stage])
    overrides = config["experiments"].get(experiment, {}).get(stage, {})
    merged = {**base, **overrides}
    if "losses" in overrides:
        merged["losses"] = {**base["losses"], **overrides["losses"]}
    return merged


def skip_synthetic(experiment):
    return bool(config["experiments"].get(experiment, {}).get("skip_synthetic", False))


def real_shards(session):
    return [f"results/shards/real/{session}/chunk{k:03d}.h5" for k in range(config["crop"]["num_chunks"])]


def all_real_shards():
    return [s for session in sessions() for s in real_shards(session)]


def synthetic_shards(split):
    n = config["synthetic"]["num_shards"] if split == "train" else config["synthetic"]["test_shards"]
    return [f"results/shards/synthetic/{split}_{i:04d}.h5" for i in range(n)]


def log_path(rule_name, pattern=""):
    return f"results/logs/{rule_name}/{pattern}.log" if pattern else f"results/logs/{rule_name}.log"


def bench_path(rule_name, pattern=""):
    return f"results/benchmarks/{rule_name}/{pattern}.tsv" if pattern else f"results/benchmarks/{rule_name}.tsv"


def demo_ground_truth():
    """The demo's ground truth (evaluation only); none for users' sessions."""
    return [] if USER_SESSIONS else [f"{DEMO_DIR}/ground_truth.h5"]


def train_resources(stage):
    """GPU rules ask for GPUs through the `gpu` resource only (never also `gres`)."""
    gpus = config[stage]["gpus"]
    return dict(mem_mb=16000 if gpus else 6000, runtime=24 * 60 if gpus else 60, gpu=gpus)


def train_logs():
    """Training CSV logs of every experiment's stages (no synthetic stage where it is skipped)."""
    return [f"results/train/{e}/{stage}/log.csv" for e in experiments()
            for stage in (["mouse"] if skip_synthetic(e) else ["synthetic", "mouse"])]
