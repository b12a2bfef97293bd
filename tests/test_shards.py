import h5py
import numpy as np
import pytest

from workflow_scripts.errors import InputError
from workflow_scripts.shards import SCHEMA_VERSION, ShardWriter, open_shard, read_sample


def _sample(rng, V=3, S=8):
    return dict(images=rng.integers(0, 255, (V, S, S, 3), dtype=np.uint8), masks=rng.integers(0, 2, (V, S, S), dtype=np.uint8) * 255,
                K=np.tile(np.eye(3), (V, 1, 1)), c2w=np.tile(np.eye(4), (V, 1, 1)))


def test_round_trip_and_view_selection(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "s.h5"
    samples = [_sample(rng) for _ in range(2)]
    with ShardWriter(p, "synthetic", 3, 8, {"seed": 1}) as w:
        for i, s in enumerate(samples):
            w.add(**s, frame_index=i, session="synthetic", depth=np.ones((3, 8, 8)), extras={"vertices": np.zeros((5, 3), np.float32)})
        w.set_constant("faces", np.zeros((2, 3), np.int32))
    with open_shard(p) as f:
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["num_samples"] == 2
        r = read_sample(f, 1, views=[2, 0])
        np.testing.assert_array_equal(r["images"], samples[1]["images"][[2, 0]])
        assert r["session"] == "synthetic" and r["frame_index"] == 1 and r["vertices"].shape == (5, 3)


def test_killed_writer_leaves_no_file(tmp_path):
    p = tmp_path / "s.h5"
    with pytest.raises(KeyboardInterrupt):
        with ShardWriter(p, "real", 3, 8, {}) as w:
            w.add(**_sample(np.random.default_rng(0)), frame_index=0, session="a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_wrong_shape_and_bad_file(tmp_path):
    p = tmp_path / "s.h5"
    with pytest.raises(ValueError, match="images"):
        with ShardWriter(p, "real", 3, 8, {}) as w:
            s = _sample(np.random.default_rng(0), V=2)
            w.add(**s, frame_index=0, session="a")
    assert not p.exists()
    p.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="s.h5"):
        open_shard(p)
    with h5py.File(tmp_path / "old.h5", "w") as f:
        f.attrs["schema_version"] = 0
    with pytest.raises(InputError, match="schema version"):
        open_shard(tmp_path / "old.h5")


def test_parallel_lzf_chunks_read_back_through_h5py(tmp_path):
    """Large fields are compressed in the writer's threads and stored as whole chunks; h5py reads
    them back exactly, compressible ones compressed (filter mask 0), random ones stored raw."""
    from workflow_scripts.h5chunks import lzf_threads_available

    rng = np.random.default_rng(1)
    V, S = 4, 64
    smooth = np.broadcast_to(np.arange(S, dtype=np.uint8)[None, :, None, None], (V, S, S, 3)).copy()
    noisy = rng.integers(0, 256, (V, S, S, 3), dtype=np.uint8)
    depth = rng.random((V, S, S)).astype(np.float32)
    p = tmp_path / "s.h5"
    with ShardWriter(p, "synthetic", V, S, {}, compress_threads=2) as w:
        for i, img in enumerate((smooth, noisy)):
            w.add(images=img, masks=(img[..., 0] > 30).astype(np.uint8) * 255, K=np.tile(np.eye(3), (V, 1, 1)),
                  c2w=np.tile(np.eye(4), (V, 1, 1)), frame_index=i, session="s", depth=depth * (i + 1))
    with open_shard(p) as f:
        np.testing.assert_array_equal(f["images"][0], smooth)
        np.testing.assert_array_equal(f["images"][1], noisy)
        np.testing.assert_array_equal(f["depth"][1], depth * 2)
        if lzf_threads_available():
            mask0, data0 = f["images"].id.read_direct_chunk((0, 0, 0, 0, 0))
            mask1, _ = f["images"].id.read_direct_chunk((1, 0, 0, 0, 0))
            assert mask0 == 0 and len(data0) < smooth.nbytes // 4 and mask1 == 1


def test_many_samples_round_trip(tmp_path):
    """More samples than the writer buffers (small fields are written 64 at a time, large ones
    grow 64 at a time and are cut to N on close)."""
    rng = np.random.default_rng(2)
    p = tmp_path / "s.h5"
    n = 150
    samples = [_sample(rng, V=2, S=32) for _ in range(n)]
    for i, s in enumerate(samples):
        s["K"] = s["K"] * (i + 1)
    with ShardWriter(p, "real", 2, 32, {}) as w:
        for i, s in enumerate(samples):
            w.add(**s, frame_index=i, session=f"sess{i % 3}", view_valid=np.array([i % 2 == 0, True]),
                  extras={"qc/focal": np.full(2, i, np.float32)})
    with open_shard(p) as f:
        assert f.attrs["num_samples"] == n
        for name in ("images", "masks", "K", "c2w", "frame_index", "session", "view_valid", "qc/focal"):
            assert f[name].shape[0] == n, name
        assert f["images"].chunks == (1, 2, 32, 32, 3) and f["K"].chunks == (64, 2, 3, 3)
        for i in (0, 63, 64, 100, n - 1):
            r = read_sample(f, i)
            np.testing.assert_array_equal(r["images"], samples[i]["images"])
            np.testing.assert_array_equal(r["masks"], samples[i]["masks"])
            np.testing.assert_array_equal(r["K"], samples[i]["K"].astype(np.float32))
            assert r["frame_index"] == i and r["session"] == f"sess{i % 3}"
            assert f["view_valid"][i, 0] == (i % 2 == 0) and f["qc/focal"][i, 1] == i


def test_stored_chunks_from_lzf_pieces(tmp_path):
    """Chunks handed over already compressed (constant runs + compressed rows, joined) are stored
    as they are and read back exactly; one LZF cannot shrink is stored raw."""
    from workflow_scripts.h5chunks import StoredChunk, lzf_constant, lzf_join, lzf_stream, lzf_threads_available

    if not lzf_threads_available():
        pytest.skip("h5py's lzf_compress is not usable here")
    rng = np.random.default_rng(3)
    V, S = 2, 32
    img = np.full((V, S, S, 3), 255, np.uint8)
    img[:, 10:20, 5:25] = rng.integers(0, 256, (V, 10, 20, 3), dtype=np.uint8)
    pieces = []
    for v in range(V):
        pieces += [lzf_constant(255, 10 * S * 3), lzf_stream(img[v, 10:20]), lzf_constant(255, 12 * S * 3)]
    stored = StoredChunk(img, *lzf_join(pieces, img))
    assert stored.filter_mask == 0
    noisy = rng.integers(0, 256, (V, S, S, 3), dtype=np.uint8)
    raw = StoredChunk(noisy, *lzf_join([lzf_stream(noisy[v]) for v in range(V)], noisy))
    assert raw.filter_mask == 1
    masks = np.zeros((V, S, S), np.uint8)
    p = tmp_path / "s.h5"
    with ShardWriter(p, "real", V, S, {}) as w:
        for images in (stored, raw, img):
            w.add(images=images, masks=StoredChunk(masks, *lzf_join([lzf_constant(0, masks.size)], masks)),
                  K=np.tile(np.eye(3), (V, 1, 1)), c2w=np.tile(np.eye(4), (V, 1, 1)), frame_index=0, session="s")
    with open_shard(p) as f:
        np.testing.assert_array_equal(f["images"][0], img)
        np.testing.assert_array_equal(f["images"][1], noisy)
        np.testing.assert_array_equal(f["images"][2], img)
        assert not f["masks"][:].any()
        assert f["images"].id.read_direct_chunk((0, 0, 0, 0, 0))[1] == b"".join(bytes(x) for x in pieces)
