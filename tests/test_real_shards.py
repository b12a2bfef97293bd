"""crop_shards step + FaceLift folder export (workflow_scripts.real_shards)."""
import json
import logging

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workflow_scripts.atomic import write_json
from workflow_scripts.cameras import Camera, cameras_to_json, look_at_c2w
from workflow_scripts.crop import CropParams, crop_view, prepare_camera, project_pinhole
from workflow_scripts.errors import InputError
from workflow_scripts.masks import MaskStore, _nonzero_box
from workflow_scripts.real_shards import (PartReader, chunk_frames, export_facelift_folder, norm_from_raw,
                                         read_cameras_json, read_normalization, run_crop_shards)
from workflow_scripts.shards import open_shard, read_sample

W, H, T, S = 320, 256, 6, 64
NAMES = ["camA", "camB", "camC"]
PARAMS = {"image_size": S, "size_ratio": 0.3, "background": "white", "num_chunks": 2}


def _cameras():
    cams = []
    for i, n in enumerate(NAMES):
        a = 2 * np.pi * i / len(NAMES)
        c2w = look_at_c2w(np.array([300 * np.cos(a), 300 * np.sin(a), 180.0]), np.zeros(3), np.array([0.0, 0.0, 1.0]))
        K = np.array([[320.0, -2.0, 161.0], [0.0, 318.0, 127.0], [0.0, 0.0, 1.0]])
        cams.append(Camera.from_c2w(n, K, c2w, W, H, dist=np.array([-0.1, 0.02, 0.001, 0.0, 0.0])))
    return cams


def write_masks_files(tmp_path, cams, frames, masks, frame_index, store_frames="mouse", tag=""):
    """One masks file per camera as the masks step writes them (MaskStore)."""
    out = {}
    for cam in cams:
        p = tmp_path / f"masks{tag}_{cam.name}.h5"
        fr, ms = frames[cam.name], masks[cam.name]
        with h5py.File(p, "w") as f:
            store = MaskStore(f, len(fr), H, W, store_frames)
            for t in range(len(fr)):
                store.add(t, fr[t], ms[t], _nonzero_box(ms[t]))
            store.close()
            f.create_dataset("frame_index", data=frame_index)
        out[cam.name] = str(p)
    return out


@pytest.fixture()
def session(tmp_path):
    """A 3-camera recording of a coloured disk 'mouse' moving on a textured floor; frame 3 invalid."""
    cams = _cameras()
    frame_index = np.arange(10, 10 + T, dtype=np.int64)
    centers = np.stack([np.linspace(-30, 30, T), np.linspace(20, -10, T), np.full(T, 15.0)], 1)
    rng = np.random.default_rng(0)
    frames, masks = {}, {}
    for cam in cams:
        fr = rng.integers(30, 130, (T, H, W, 3), dtype=np.uint8)
        ms = np.zeros((T, H, W), np.uint8)
        for t in range(T):
            u, v = cam.project(centers[t])
            cv2.circle(fr[t], (int(u), int(v)), 18, (200, 150, 100), -1)
            cv2.circle(ms[t], (int(u), int(v)), 18, 255, -1)
        frames[cam.name], masks[cam.name] = fr, ms
    write_json(tmp_path / "cameras.json", cameras_to_json(cams, "test", "test"))
    valid = np.ones(T, bool)
    valid[3] = False
    pd.DataFrame({"frame_index": frame_index, "x": centers[:, 0], "y": centers[:, 1], "z": centers[:, 2],
                  "valid": valid, "reason": ["" if v else "too few cameras" for v in valid]}).to_csv(tmp_path / "centers.csv", index=False)
    R_up = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # a yaw: z stays up
    write_json(tmp_path / "normalization.json", {"R_up": R_up.tolist(), "scale": 2.7 / 350.0})
    return dict(masks_h5=write_masks_files(tmp_path, cams, frames, masks, frame_index),
                full_h5=write_masks_files(tmp_path, cams, frames, masks, frame_index, "full", "_full"),
                cameras_json=str(tmp_path / "cameras.json"),
                centers_csv=str(tmp_path / "centers.csv"), normalization_json=str(tmp_path / "normalization.json"),
                cams=cams, centers=centers, frame_index=frame_index, valid=valid, tmp=tmp_path)


def _run(s, out, chunk, num_chunks, **kw):
    return run_crop_shards(kw.get("masks_h5", s["masks_h5"]), s["cameras_json"], s["centers_csv"], s["normalization_json"],
                           str(out), chunk, num_chunks, kw.get("params", PARAMS), session="sess1", workers=kw.get("workers", 1))


def test_chunks_cover_valid_frames_with_exact_cameras(session):
    s = session
    got = []
    for chunk in range(2):
        out = s["tmp"] / f"shard_{chunk}.h5"
        n = _run(s, out, chunk, 2)
        with open_shard(out) as f:
            assert f.attrs["kind"] == "real" and f.attrs["num_samples"] == n
            p = json.loads(f.attrs["params_json"])
            assert p["image_size"] == S and p["crop"]["background"] == "white" and p["chunk"] == chunk
            for i in range(n):
                smp = read_sample(f, i)
                got.append(smp["frame_index"])
                assert smp["session"] == "sess1" and smp["view_valid"].all()
                assert smp["images"].shape == (3, S, S, 3)
                t = int(np.where(s["frame_index"] == smp["frame_index"])[0][0])
                N = smp["norm_from_raw"]
                np.testing.assert_allclose(N, norm_from_raw(json.loads(open(s["normalization_json"]).read()), s["centers"][t]))
                # the mouse centre is the normalized origin and projects to the crop centre
                np.testing.assert_allclose(N[:3, :3] @ s["centers"][t] + N[:3, 3], 0, atol=1e-9)
                for v in range(3):
                    uv = project_pinhole(smp["K"][v].astype(np.float64), smp["c2w"][v].astype(np.float64), np.zeros(3))
                    np.testing.assert_allclose(uv, [S / 2, S / 2], atol=1e-3)  # float32 storage
                    # world up (+z normalized) is image up
                    up = project_pinhole(smp["K"][v].astype(np.float64), smp["c2w"][v].astype(np.float64), [0, 0, 0.1])
                    assert abs(up[0] - S / 2) < 1e-3 and up[1] < S / 2
                np.testing.assert_allclose(f["qc/size_ratio"][i], 0.3, rtol=0.02)
                assert (f["qc/center_offset_px"][i] < 1.5).all() and f["qc/focal"].shape == (n, 3)
                assert not f["qc/touches_crop_border"][i].any()
                assert (smp["images"][0][smp["masks"][0] == 0] == 255).all()
    assert got == [i for i, v in zip(s["frame_index"], s["valid"]) if v]


def _chunks(path):
    """Every dataset's stored chunks (raw bytes and filter masks) or values, and the file's attributes."""
    out = {}
    with h5py.File(path) as f:
        def visit(name, ds):
            if not isinstance(ds, h5py.Dataset):
                return
            if ds.chunks is not None and ds.compression and ds.shape[0]:
                out[name] = [ds.id.read_direct_chunk(ds.id.get_chunk_info(i).chunk_offset) for i in range(ds.id.get_num_chunks())]
            else:
                out[name] = ds[()].tolist()
        f.visititems(visit)
        out["attrs"] = {k: str(f.attrs[k]) for k in f.attrs}
    return out


def test_same_inputs_same_shard(session):
    """Deterministic, and the same shard (chunk for chunk) with frames cropped in forked worker processes."""
    s = session
    a = s["tmp"] / "a.h5"
    _run(s, a, 0, 1)
    want = _chunks(a)
    assert want["images"] and want["masks"]
    for workers in (1, 2, 3, 8):
        b = s["tmp"] / f"b{workers}.h5"
        _run(s, b, 0, 1, workers=workers)
        assert _chunks(b) == want, workers
        assert b.read_bytes() == a.read_bytes(), workers


def test_worker_pipe_round_trip():
    """A frame's images/masks as the workers send them: the LZF chunk alone (a stand-in array of
    the right shape), or the array where LZF did not shorten it (stored raw) or is not usable."""
    from workflow_scripts.h5chunks import StoredChunk, lzf_join, lzf_stream
    from workflow_scripts.real_shards import _for_pipe, _from_pipe

    rng = np.random.default_rng(1)
    for arr in (np.full((2, 8, 8, 3), 7, np.uint8), rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)):
        sc = StoredChunk(arr, *lzf_join([lzf_stream(arr)], arr))
        got = _from_pipe(_for_pipe(sc))
        assert got.filter_mask == sc.filter_mask and bytes(got.data) == bytes(sc.data)
        assert got.array.shape == arr.shape and got.array.dtype == np.uint8
        if sc.filter_mask:
            np.testing.assert_array_equal(got.array, arr)
    np.testing.assert_array_equal(_from_pipe(_for_pipe(arr)), arr)


@pytest.mark.parametrize("how", ["raise", "die"])
def test_worker_error_surfaces_and_leaves_no_shard(session, monkeypatch, how):
    """An error in a crop worker process is raised in the caller (a dead worker as a RuntimeError);
    no shard is left behind."""
    import os

    import workflow_scripts.real_shards as rs

    real = rs.crop_view

    def failing(image, mask, prep, c, N, **kw):
        if os.getpid() != parent and c[0] > 15:  # the last two frames, in a worker only
            if how == "die":
                os._exit(3)
            raise ValueError("boom in worker")
        return real(image, mask, prep, c, N, **kw)

    parent = os.getpid()
    monkeypatch.setattr(rs, "crop_view", failing)
    s = session
    out = s["tmp"] / "failed.h5"
    with pytest.raises(ValueError if how == "raise" else RuntimeError, match="boom in worker" if how == "raise" else "died"):
        _run(s, out, 0, 1, workers=2)
    assert not out.exists()
    assert not list(s["tmp"].glob("*failed*"))  # nor its temporary file


def test_shard_holds_crop_view_results(session):
    """The shard stores exactly what crop_view gives for each view (images and masks from the
    views' LZF pieces, constant background rows included), whatever the background and threads."""
    s = session
    cams = read_cameras_json(s["cameras_json"])
    normalization = read_normalization(s["normalization_json"])
    for bg, files, workers in (("white", s["masks_h5"], 2), ("black", s["masks_h5"], 1), ("keep", s["full_h5"], 2)):
        params = {**PARAMS, "background": bg}
        out = s["tmp"] / f"direct_{bg}.h5"
        _run(s, out, 0, 1, params=params, masks_h5=files, workers=workers)
        with open_shard(out) as f:
            for i, fidx in enumerate(f["frame_index"][:]):
                t = int(np.where(s["frame_index"] == fidx)[0][0])
                N = norm_from_raw(normalization, s["centers"][t])
                for v, cam in enumerate(cams):
                    with h5py.File(files[cam.name]) as m:
                        x0, y0, x1, y1 = m["stored_box"][t]
                        r = crop_view(m["frames"][t, y0:y1, x0:x1], m["masks"][t, y0:y1, x0:x1], prepare_camera(cam),
                                      s["centers"][t], N, params=CropParams.from_dict(params), origin=(x0, y0))
                    np.testing.assert_array_equal(f["images"][i, v], r.image, err_msg=f"{bg} {i} {v}")
                    np.testing.assert_array_equal(f["masks"][i, v], r.mask, err_msg=f"{bg} {i} {v}")
                    np.testing.assert_array_equal(f["K"][i, v], r.K.astype(np.float32))
                    assert f["qc/focal"][i, v] == np.float32(r.f)


def test_part_reader_matches_h5py(session):
    """Tiles read directly (LZF decoded here) equal h5py's slicing, edge tiles and whole frames too;
    parts not aligned to the tiles go through h5py."""
    s = session
    for files in (s["masks_h5"], s["full_h5"]):
        with h5py.File(files["camA"]) as f:
            reader = PartReader(f)
            assert reader.tile == (128, 128)
            boxes = [tuple(int(b) for b in box) for box in f["stored_box"][:]] + [(0, 0, W, H), (3, 5, 200, 70), (0, 0, 1, 1)]
            for t, box in enumerate(boxes):
                t = t % T
                x0, y0, x1, y1 = box
                image, mask = reader.read(t, box)
                np.testing.assert_array_equal(image, f["frames"][t, y0:y1, x0:x1])
                np.testing.assert_array_equal(mask, f["masks"][t, y0:y1, x0:x1])


def test_empty_chunk_writes_valid_empty_shard(session, caplog):
    s = session
    out = s["tmp"] / "empty.h5"
    with caplog.at_level(logging.WARNING):
        assert _run(s, out, 5, 6) == 0  # 5 valid frames in 6 chunks: the last is empty
    assert "no valid frames" in caplog.text
    with open_shard(out) as f:
        assert f.attrs["num_samples"] == 0
        assert f["images"].shape == (0, 3, S, S, 3) and f["c2w"].shape == (0, 3, 4, 4) and f["qc/focal"].shape == (0, 3)
        assert f["qc/touches_crop_border"].shape == (0, 3)


def test_mouse_pixels_alone_crop_like_whole_frames(session):
    """White/black crops from the pixels kept around the mouse equal those from whole frames, bit
    for bit; the kept background needs whole frames and says so."""
    s = session
    for bg in ("white", "black"):
        params = {**PARAMS, "background": bg}
        _run(s, s["tmp"] / f"m_{bg}.h5", 0, 1, params=params)
        _run(s, s["tmp"] / f"f_{bg}.h5", 0, 1, params=params, masks_h5=s["full_h5"])
        with h5py.File(s["tmp"] / f"m_{bg}.h5") as fa, h5py.File(s["tmp"] / f"f_{bg}.h5") as fb:
            for k in ("images", "masks", "K", "c2w", "qc/focal", "view_valid"):
                np.testing.assert_array_equal(fa[k][:], fb[k][:], err_msg=f"{bg} {k}")
    keep = {**PARAMS, "background": "keep"}
    with pytest.raises(InputError, match="needs whole frames"):
        _run(s, s["tmp"] / "k.h5", 0, 1, params=keep)
    assert not (s["tmp"] / "k.h5").exists()
    _run(s, s["tmp"] / "k.h5", 0, 1, params=keep, masks_h5=s["full_h5"])
    with h5py.File(s["tmp"] / "k.h5") as f:
        assert (f["images"][0][f["masks"][0] == 0] != 255).any()  # the floor is kept


def test_bad_inputs(session):
    s = session
    with pytest.raises(InputError, match="camC"):
        run_crop_shards({k: v for k, v in s["masks_h5"].items() if k != "camC"}, s["cameras_json"],
                        s["centers_csv"], s["normalization_json"], str(s["tmp"] / "x.h5"), 0, 1, PARAMS)
    with pytest.raises(InputError, match="not found"):
        run_crop_shards({**s["masks_h5"], "camB": str(s["tmp"] / "nope.h5")}, s["cameras_json"],
                        s["centers_csv"], s["normalization_json"], str(s["tmp"] / "x.h5"), 0, 1, PARAMS)
    small = s["tmp"] / "masks_small.h5"  # masks of another image size than camB's calibration
    with h5py.File(small, "w") as f:
        f.create_dataset("masks", data=np.zeros((T, H // 2, W, 3), np.uint8))
        f.create_dataset("frame_index", data=s["frame_index"])
    with pytest.raises(InputError, match=r"masks_small.h5: masks .* do not match camera 'camB'"):
        run_crop_shards({**s["masks_h5"], "camB": str(small)}, s["cameras_json"],
                        s["centers_csv"], s["normalization_json"], str(s["tmp"] / "x.h5"), 0, 1, PARAMS)
    with h5py.File(s["masks_h5"]["camB"], "r+") as f:
        f["frame_index"][0] = 999
    with pytest.raises(InputError, match="frame_index of camera 'camB'"):
        _run(s, s["tmp"] / "x.h5", 0, 1)
    assert not (s["tmp"] / "x.h5").exists()
    with pytest.raises(InputError, match="chunk"):
        chunk_frames(np.arange(5), 2, 2)


def test_export_facelift_folder_round_trip(session):
    s = session
    shard = s["tmp"] / "s.h5"
    _run(s, shard, 0, 1)
    out = s["tmp"] / "facelift" / "sample_0001"
    for _ in range(2):  # the second export replaces the first atomically
        export_facelift_folder(shard, 1, out)
    meta = json.loads((out / "opencv_cameras.json").read_text())
    with open_shard(shard) as f:
        smp = read_sample(f, 1)
    assert len(meta["frames"]) == 3
    for v, fr in enumerate(meta["frames"]):
        np.testing.assert_allclose(np.linalg.inv(np.array(fr["w2c"])), smp["c2w"][v], atol=1e-6)
        assert (fr["fx"], fr["cx"], fr["w"], fr["h"]) == pytest.approx((smp["K"][v][0, 0], smp["K"][v][0, 2], S, S))
        rgba = np.asarray(Image.open(out / fr["file_path"]))
        np.testing.assert_array_equal(rgba[..., :3], smp["images"][v])
        np.testing.assert_array_equal(rgba[..., 3], smp["masks"][v])
    assert sorted(p.name for p in out.parent.iterdir()) == ["sample_0001"]  # no temp dirs left
