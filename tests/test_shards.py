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
