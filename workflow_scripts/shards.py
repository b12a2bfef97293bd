"""HDF5 shards: the one on-disk format shared by real and synthetic samples (schema v1).

See docs/shard_schema.md for the full schema. Images are uint8 [N, V, S, S, 3]; cameras are
``K`` [N, V, 3, 3] (pixels, corner-origin convention) and ``c2w`` [N, V, 4, 4] (OpenCV
camera-to-world in the normalized world). A shard is written to a temporary file and renamed
when complete, so a killed job never leaves a file that looks like a shard.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from workflow_scripts.atomic import atomic_path
from workflow_scripts.errors import InputError
from workflow_scripts.h5chunks import StoredChunk, lzf_chunk, lzf_threads_available

SCHEMA_VERSION = 1
KINDS = ("real", "synthetic")

# Per-sample datasets common to both kinds: name -> (dtype, shape after [N] given V and S).
_COMMON = {
    "images": (np.uint8, lambda V, S: (V, S, S, 3)),
    "masks": (np.uint8, lambda V, S: (V, S, S)),
    "K": (np.float32, lambda V, S: (V, 3, 3)),
    "c2w": (np.float32, lambda V, S: (V, 4, 4)),
    "frame_index": (np.int64, lambda V, S: ()),
    "norm_from_raw": (np.float64, lambda V, S: (4, 4)),
    "view_valid": (np.bool_, lambda V, S: (V,)),
}
_SYNTHETIC = {
    "depth": (np.float32, lambda V, S: (V, S, S)),
}


def params_hash(params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the settings that made a shard."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


class ShardWriter:
    """Append samples one at a time; the file appears at ``path`` only after ``close()``.

    Usage::

        with ShardWriter(path, kind="synthetic", num_views=32, image_size=256, params=p) as w:
            w.add(images=..., masks=..., K=..., c2w=..., frame_index=i, session="synthetic",
                  depth=..., vertices=..., extras={"pose/body_scale": ...})

    ``extras`` holds any further per-sample arrays (e.g. ``vertices``, ``joints``, ``pose/*``,
    ``lights/*``, ``qc/*``); each becomes a dataset [N, *shape]. ``file_attrs``/``set_constant``
    store per-file data such as ``faces``.

    ``images``/``masks``/``depth`` may come as :class:`workflow_scripts.h5chunks.StoredChunk`
    (the array and its chunk already compressed, e.g. by the caller's threads); it is stored as
    is where the field is one LZF chunk per sample, else its array is written.

    Speed: the small per-sample fields (one HDF5 chunk per 64 samples) are buffered and written
    64 samples at a time, the large fields' datasets grow 64 samples at a time (cut to N on
    close), and dataset handles are kept: h5py costs ~0.1 ms per call, ~7 ms per sample when each
    of a dozen fields was looked up, resized and written one sample at a time.
    """

    _BLOCK = 64  # samples buffered per small field (= their chunk length) / growth of the large ones

    def __init__(self, path: str | os.PathLike, kind: str, num_views: int, image_size: int, params: dict[str, Any],
                 compress_threads: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.kind, self.V, self.S = kind, int(num_views), int(image_size)
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._f = h5py.File(self._tmp, "w")
        self._n = 0
        self._sessions: list[tuple[int, str]] = []  # buffered session names
        pj = json.dumps(params, sort_keys=True)
        self._f.attrs.update(schema_version=SCHEMA_VERSION, kind=kind, image_size=self.S, num_views=self.V,
                             params_json=pj, params_hash=params_hash(params))
        self._f.create_dataset("session", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(256,))
        # compress_threads > 0: the large per-sample fields (images, masks, depth: one chunk each
        # per sample) are LZF-compressed in parallel threads and stored as whole chunks
        # (workflow_scripts/h5chunks.py). h5py compresses them one after the other, ~100 ms per
        # 32-view sample: the synthetic job's bottleneck once rendering runs on a GPU. With a CPU
        # renderer the threads would only take cores from it, hence off by default.
        # Without threads the big fields are still compressed by the same LZF function and
        # stored as whole chunks, in the calling thread: HDF5's own filter pipeline copies each
        # chunk on the way (~10 ms more CPU per 32 x 256 px synthetic sample).
        self._direct = lzf_threads_available()
        use_pool = compress_threads > 0 and self._direct
        self._pool = ThreadPoolExecutor(int(compress_threads), thread_name_prefix="shard-lzf") if use_pool else None
        self._stack.callback(lambda: self._pool and self._pool.shutdown(wait=True))
        self._ds: dict[str, h5py.Dataset] = {}  # per-sample datasets by name
        self._shape: dict[str, tuple[int, ...]] = {}  # their sample shape
        self._kind: dict[str, str] = {}  # "direct" (one LZF chunk per sample), "block" (buffered), "row"
        self._rows: dict[str, int] = {}  # rows allocated (direct) or written (block, row)
        self._buf: dict[str, list[tuple[int, Any]]] = {}  # buffered (sample, value) of block fields

    def _dataset(self, name: str, dtype, shape: tuple[int, ...]) -> h5py.Dataset:
        ds = self._ds.get(name)
        if ds is not None:
            if self._shape[name] != tuple(shape):
                raise ValueError(f"{self.path}: sample field {name!r} has shape {shape}, earlier samples {self._shape[name]}")
            return ds
        if name in self._f:
            raise ValueError(f"{self.path}: {name!r} is already a per-file dataset")
        big = int(np.prod(shape)) * np.dtype(dtype).itemsize > 4096
        ds = self._f.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                    chunks=(1, *shape) if big else (64, *shape),
                                    compression="lzf" if big else None)
        self._ds[name], self._shape[name], self._rows[name] = ds, tuple(shape), 0
        if self._direct and big and ds.dtype == np.dtype(dtype):
            self._kind[name] = "direct"
        elif not big and ds.dtype == np.dtype(dtype):
            self._kind[name] = "block"
            self._buf[name] = []
        else:
            self._kind[name] = "row"
        return ds

    def add(self, *, images, masks, K, c2w, frame_index: int, session: str, norm_from_raw=None, view_valid=None,
            depth=None, extras: dict[str, np.ndarray] | None = None) -> None:
        fields: dict[str, Any] = {
            "images": images, "masks": masks, "K": K, "c2w": c2w, "frame_index": frame_index,
            "norm_from_raw": np.eye(4) if norm_from_raw is None else norm_from_raw,
            "view_valid": np.ones(self.V, bool) if view_valid is None else view_valid,
        }
        specs = dict(_COMMON)
        if self.kind == "synthetic":
            if depth is None:
                raise ValueError("synthetic samples need depth")
            fields["depth"] = depth
            specs.update(_SYNTHETIC)
        arrays = []
        for name, value in fields.items():
            dtype, shape_fn = specs[name]
            stored = value if isinstance(value, StoredChunk) else None
            arr = np.asarray(value.array if stored else value, dtype=dtype)
            want = shape_fn(self.V, self.S)
            if arr.shape != want:
                raise ValueError(f"{self.path}: {name} has shape {arr.shape}, expected {want}")
            arrays.append((name, arr, stored))
        arrays += [(name, np.asarray(value), None) for name, value in (extras or {}).items()]
        compressed = {}
        for name, arr, stored in arrays:
            self._dataset(name, arr.dtype, arr.shape)
            if self._kind[name] == "direct" and stored is None and self._pool is not None:
                compressed[name] = self._pool.submit(lzf_chunk, np.ascontiguousarray(arr))
        n = self._n
        for name, arr, stored in arrays:
            kind, ds = self._kind[name], self._ds[name]
            if kind == "direct":
                if self._rows[name] <= n:
                    self._rows[name] = n + self._BLOCK
                    ds.resize((self._rows[name], *arr.shape))
                if stored is not None and stored.array.dtype == ds.dtype:
                    mask, data = stored.filter_mask, stored.data
                else:
                    mask, data = compressed[name].result() if name in compressed else lzf_chunk(np.ascontiguousarray(arr))
                ds.id.write_direct_chunk((n,) + (0,) * arr.ndim, data, filter_mask=mask)
            elif kind == "block":
                self._buf[name].append((n, arr))
                if len(self._buf[name]) >= self._BLOCK:
                    self._flush(name)
            else:
                ds.resize((n + 1, *arr.shape))
                ds[n] = arr
                self._rows[name] = n + 1
        self._sessions.append((n, session))
        if len(self._sessions) >= self._BLOCK:
            self._flush_sessions()
        self._n += 1

    def _flush(self, name: str) -> None:
        """Write the buffered samples of a small field (contiguous runs in one call each)."""
        buf, ds = self._buf[name], self._ds[name]
        if not buf:
            return
        end = max(i for i, _ in buf) + 1
        if end > ds.shape[0]:
            ds.resize((end, *ds.shape[1:]))
        start = 0
        while start < len(buf):  # runs of consecutive samples (normally all of them)
            stop = start + 1
            while stop < len(buf) and buf[stop][0] == buf[stop - 1][0] + 1:
                stop += 1
            ds[buf[start][0]:buf[stop - 1][0] + 1] = np.stack([a for _, a in buf[start:stop]])
            start = stop
        self._rows[name] = end
        buf.clear()

    def _flush_sessions(self) -> None:
        if not self._sessions:
            return
        ds = self._f["session"]
        first, last = self._sessions[0][0], self._sessions[-1][0]
        ds.resize((last + 1,))
        ds[first:last + 1] = np.array([s for _, s in self._sessions], dtype=object)
        self._sessions.clear()

    def _finish(self) -> None:
        """Write what is buffered and cut the grown datasets to the samples written."""
        for name in self._ds:
            if self._kind[name] == "block":
                self._flush(name)
            elif self._kind[name] == "direct" and self._ds[name].shape[0] > self._n:
                self._ds[name].resize((self._n, *self._shape[name]))
        self._flush_sessions()

    def set_constant(self, name: str, value: np.ndarray) -> None:
        """A per-file dataset (e.g. mesh ``faces`` [F, 3])."""
        self._f.create_dataset(name, data=np.asarray(value))

    def __len__(self) -> int:
        return self._n

    def close(self) -> None:
        """Finish the file and move it into place."""
        self._finish()
        self._f.attrs["num_samples"] = self._n
        self._f.close()
        self._stack.close()

    def abort(self) -> None:
        self._f.close()
        self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._f.close()
            self._stack.__exit__(exc_type, exc, tb)


def open_shard(path: str | os.PathLike) -> h5py.File:
    """Open a shard read-only and check its schema version (clear error otherwise)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 shard ({e}). Fix: delete it and rerun the rule that makes it.") from e
    version = f.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        f.close()
        raise InputError(f"{path}: shard schema version {version!r}, this code reads {SCHEMA_VERSION}. Fix: rerun the rule that makes it.")
    return f


def read_sample(f: h5py.File, i: int, views: np.ndarray | list[int] | None = None) -> dict[str, Any]:
    """One sample as NumPy arrays; ``views`` selects views (sorted on read, returned in the given order)."""
    out: dict[str, Any] = {}
    for name in ("images", "masks", "K", "c2w", "view_valid", "depth"):
        if name not in f:
            continue
        # A sample is one chunk, so reading it whole and selecting views costs nothing extra.
        out[name] = f[name][i] if views is None else f[name][i][np.asarray(views)]
    out["frame_index"] = int(f["frame_index"][i])
    out["session"] = f["session"][i].decode() if isinstance(f["session"][i], bytes) else str(f["session"][i])
    out["norm_from_raw"] = f["norm_from_raw"][i]
    for name in ("vertices", "joints"):
        if name in f:
            out[name] = f[name][i]
    return out


def iter_samples(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with open_shard(path) as f:
        for i in range(f["images"].shape[0]):
            yield read_sample(f, i)
