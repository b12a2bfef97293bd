import pytest
import yaml

from workflow_scripts.config import ConfigError, load, validate


def test_config_yaml_is_exactly_the_schema_defaults(repo_root):
    assert load(repo_root / "config.yaml") == validate({})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"crop: Additional properties are not allowed \('size_ration' was unexpected\)"):
        validate({"crop": {"size_ration": 0.3}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"crop\.image_size: '256' is not of type 'integer'|crop\.image_size"):
        validate({"crop": {"image_size": "256"}})


def test_session_needs_videos_and_calibration():
    with pytest.raises(ConfigError, match=r"sessions\.s1: 'calibration' is a required property"):
        validate({"sessions": {"s1": {"videos": {"cam1": "a.mp4"}}}})


def test_defaults_fill_nested_refs():
    cfg = validate({"train_mouse": {"steps": 7}})
    assert cfg["train_mouse"]["steps"] == 7
    assert cfg["train_mouse"]["losses"]["perceptual"] == 0.0  # perceptual loss off by default
    assert cfg["train_synthetic"]["losses"]["mse"] == 1.0


def test_bad_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"seed": "zero"}))
    with pytest.raises(ConfigError, match=str(p)):
        load(p)


def test_stage_defaults_survive_a_partial_section():
    cfg = validate({"train_mouse": {"steps": 3, "losses": {"ssim": 0.0}}})
    assert cfg["train_mouse"]["temporal_pairs"] is True and cfg["train_mouse"]["losses"]["temporal"] == 0.1
    assert cfg["train_mouse"]["losses"]["ssim"] == 0.0 and cfg["train_mouse"]["synthetic_ratio"] == 0.5
    assert cfg["train_synthetic"]["temporal_pairs"] is False and cfg["train_synthetic"]["losses"]["temporal"] == 0.0
