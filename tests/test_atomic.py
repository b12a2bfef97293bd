import json

import pytest

from workflow_scripts.atomic import atomic_path, write_json


def test_atomic_path_renames_on_success(tmp_path):
    out = tmp_path / "sub" / "a.txt"
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp != out
        tmp.write_text("x")
        assert not out.exists()
    assert out.read_text() == "x"
    assert list(out.parent.iterdir()) == [out]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_write_json_rejects_nan(tmp_path):
    out = tmp_path / "m.json"
    write_json(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        write_json(out, {"a": float("nan")})
    assert json.loads(out.read_text()) == {"a": 1}


def test_atomic_output_has_umask_permissions(tmp_path):
    import os
    out = tmp_path / "p.txt"
    old = os.umask(0o022)
    try:
        with atomic_path(out) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644
