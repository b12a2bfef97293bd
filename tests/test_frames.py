"""Frame selection (read by the masks step): common frame indices with offsets, stride and
max_frames, checks against the calibration, truncated videos, synchronization checks."""
from __future__ import annotations

from fractions import Fraction

import h5py
import numpy as np
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.frames import check_synchronized, selected_video_indices
from workflow_scripts.masks import MaskConfig, run_masks
from workflow_scripts.video import VideoInfo, iter_frames, probe_video, write_video

W, H, N = 48, 32, 30


def numbered_frames(n: int = N) -> list[np.ndarray]:
    """Frame i has a bright bar whose length encodes i, so decoded frames identify themselves."""
    out = []
    for i in range(n):
        f = np.full((H, W, 3), 30, np.uint8)
        f[8:24, : i + 4] = 220
        out.append(f)
    return out


def bar_length(frame: np.ndarray) -> int:
    return int((frame[16, :, 0] > 125).sum())


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("frames") / "cam2.mp4"
    write_video(path, numbered_frames(), fps=25, crf=10)
    return str(path)


def _select(video, out, **kw):
    """run_masks keeping whole frames: the selection's frames, as decoded, in `frames`."""
    return run_masks(video, str(out), str(out.with_suffix(".csv")), MaskConfig(background_samples=5),
                     store_frames="full", **kw)


def test_selection_layout_and_indices(video, tmp_path):
    out = tmp_path / "f.h5"
    qc = _select(video, out, start_frame=2, max_frames=5, stride=3, offset=4,
                 expected={"width": W, "height": H, "fps": 25, "camera": "cam2"})
    assert len(qc) == 5
    with h5py.File(out, "r") as f:
        frames, fi = f["frames"], f["frame_index"][:]
        assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8 and fi.dtype == np.int64
        # common indices s = 2, 5, 8, 11, 14 read video frames v = s + 4
        np.testing.assert_array_equal(fi, [2, 5, 8, 11, 14])
        np.testing.assert_array_equal(qc["frame_index"], fi)
        assert [bar_length(frames[k]) for k in range(5)] == [s + 4 + 4 for s in fi]
        np.testing.assert_array_equal(f["stored_box"][:], [[0, 0, W, H]] * 5)
        a = dict(f.attrs)
        assert a["camera"] == "cam2" and a["fps"] == 25.0 and a["width"] == W and a["height"] == H
        assert a["stride"] == 3 and a["offset"] == 4 and a["source"] == video and a["store_frames"] == "full"
        assert a["num_frames_source"] == N
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv", "f.h5"]


def test_all_frames_match_decoder(video, tmp_path):
    out = tmp_path / "all.h5"
    assert len(_select(video, out)) == N
    ref = [f for _, f in iter_frames(video)]
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["frames"][:], np.stack(ref))
        np.testing.assert_array_equal(f["frame_index"][:], np.arange(N))
        assert f.attrs["camera"] == "cam2"  # default: the file stem


def test_selection_clips_at_end():
    info = VideoInfo("v.mp4", W, H, Fraction(25), 30, "h264")
    assert list(selected_video_indices(info, 20, None, 4, 3)) == [23, 27]
    assert list(selected_video_indices(info, 0, 2, 1, 0)) == [0, 1]
    with pytest.raises(InputError, match="v.mp4.*start_frame"):
        selected_video_indices(info, 0, None, 1, -2)
    with pytest.raises(InputError, match="v.mp4"):
        selected_video_indices(info, 40, None, 1, 0)


def test_expected_mismatch(video, tmp_path):
    with pytest.raises(InputError, match=r"cam2\.mp4.*width is 48, expected 1152"):
        _select(video, tmp_path / "x.h5", expected={"width": 1152, "camera": "cam2"})
    assert not list(tmp_path.iterdir())


def test_truncated_video_leaves_no_output(tmp_path):
    rng = np.random.default_rng(0)
    full = tmp_path / "full.mp4"
    write_video(full, [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(N)], fps=25)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    with pytest.raises(InputError, match="cut.mp4"):
        _select(str(cut), tmp_path / "o.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "full.mp4"]


def _info(name: str, n: int, fps=Fraction(30)) -> VideoInfo:
    return VideoInfo(f"/data/{name}.mp4", 64, 48, fps, n, "h264")


def test_check_synchronized_ok_with_offsets():
    infos = {"cam1": _info("cam1", 100), "cam2": _info("cam2", 103), "cam3": _info("cam3", 98)}
    check_synchronized(infos, {"cam2": 3, "cam3": -2}, None)


def test_check_synchronized_frame_count():
    infos = {"cam1": _info("cam1", 100), "cam2": _info("cam2", 103)}
    with pytest.raises(InputError) as exc:
        check_synchronized(infos, {}, {"cam1": "a/cam1.mp4", "cam2": "a/cam2.mp4"})
    msg = str(exc.value)
    assert "cam1" in msg and "a/cam2.mp4" in msg and "frame_offsets" in msg
    assert "'cam2': 3" in msg  # the suggested fix aligns the ends


def test_check_synchronized_fps():
    infos = {"cam1": _info("cam1", 100), "cam2": _info("cam2", 100, Fraction(25))}
    with pytest.raises(InputError, match=r"cam2 \(/data/cam2.mp4\): 25.0000 fps"):
        check_synchronized(infos, None)


def test_check_synchronized_real_videos(video, tmp_path):
    other = tmp_path / "cam5.mp4"
    write_video(other, numbered_frames(N + 2), fps=25)
    infos = {"cam2": probe_video(video), "cam5": probe_video(other)}
    check_synchronized(infos, {"cam5": 2})
    with pytest.raises(InputError, match="cam5.mp4"):
        check_synchronized(infos, {"cam5": 0})
