"""The body-model download, exercised against a local file:// mirror (no internet in tests)."""
import shutil

import pytest

from workflow_scripts import download


def _mirror(tmp_path, mammal_dir):
    for name, (upstream, _) in download.FILES.items():
        dst = tmp_path / "mirror" / upstream
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mammal_dir / name, dst)
    return (tmp_path / "mirror").as_uri() + "/"


def test_pinned_sums_match_the_shared_copy(mammal_dir):
    for name, (_, sha) in download.FILES.items():
        assert download.sha256_file(mammal_dir / name) == sha, name


def test_download_from_mirror_verifies(tmp_path, mammal_dir):
    url = _mirror(tmp_path, mammal_dir)
    files = download.download_body_model(tmp_path / "out", base_url=url)
    assert len(files) == len(download.FILES)
    assert all(f.read_bytes() == (mammal_dir / f.name).read_bytes() for f in files)


def test_checksum_mismatch_writes_nothing(tmp_path, mammal_dir):
    url = _mirror(tmp_path, mammal_dir)
    (tmp_path / "mirror" / download.FILES["vertices.txt"][0]).write_text("tampered")
    with pytest.raises(RuntimeError, match="vertices.txt.*sha256"):
        download.download_body_model(tmp_path / "out", base_url=url)
    assert not (tmp_path / "out" / "vertices.txt").exists()
