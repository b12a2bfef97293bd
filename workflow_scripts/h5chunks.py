"""LZF-compress HDF5 chunks in threads, stored exactly as h5py's LZF filter stores them.

h5py compresses inside HDF5, one chunk at a time under its global lock, and LZF runs at
~150 MB/s. Here each chunk is compressed by the very function h5py's LZF filter calls
(``lzf_compress``, which h5py's ``h5z`` extension exports) through ctypes, which releases the
GIL, so several chunks compress in parallel (workflow_scripts/shards.py); the caller stores the
result with H5Dwrite_chunk (``write_direct_chunk``) as the filter stores it: the output buffer is
as long as the chunk, and a chunk that LZF cannot shrink is stored raw with bit 0 of its filter
mask set, as HDF5 does when the optional LZF filter declines it. Readers see no difference. (The
compressed bytes themselves may differ from a write through h5py, as they may between two
threads: liblzf leaves its hash table uninitialised; every encoding decodes to the same data.)

A self-check on first use stores test chunks this way and reads them back through h5py; if the
symbol is missing or the check fails, ``lzf_threads_available`` is False and callers write
through h5py.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Callable

import h5py
import numpy as np

log = logging.getLogger(__name__)

_lzf: Callable | None = None
_checked = False


def _load_lzf() -> Callable | None:
    """h5py's liblzf ``lzf_compress(in, in_len, out, out_len) -> out bytes or 0``, or None."""
    try:
        from h5py import h5z

        fn = ctypes.CDLL(h5z.__file__).lzf_compress
    except (OSError, AttributeError, ImportError):
        return None
    fn.restype = ctypes.c_uint
    fn.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint]
    return fn


def lzf_chunk(arr: np.ndarray) -> tuple[int, np.ndarray]:
    """(filter_mask, stored bytes) of one chunk as h5py's LZF filter would store it.

    arr: the chunk's data, C-contiguous. The output buffer is as long as the input, as in the
    filter: when LZF needs more, the chunk is stored raw and the mask marks the filter skipped.
    """
    if _lzf is None and not lzf_threads_available():
        raise RuntimeError("h5py's lzf_compress is not usable here; write through h5py instead")
    src = np.ascontiguousarray(arr)
    out = np.empty(src.nbytes, np.uint8)
    n = _lzf(src.ctypes.data, src.nbytes, out.ctypes.data, out.nbytes)
    return (0, out[:n]) if n else (1, src.reshape(-1).view(np.uint8))


def lzf_threads_available() -> bool:
    """True when lzf_chunk's chunks read back through h5py (checked once)."""
    global _lzf, _checked
    if not _checked:
        _checked = True
        _lzf = _load_lzf()
        if _lzf is not None and not _self_check():
            log.warning("h5py's lzf_compress failed the self-check; writing LZF chunks through h5py")
            _lzf = None
    return _lzf is not None


def _self_check() -> bool:
    """Store a compressible and an incompressible chunk with lzf_chunk; h5py must read both back."""
    rng = np.random.default_rng(0)
    smooth = np.repeat(np.arange(64, dtype=np.uint8), 3 * 48).reshape(64, 48, 3)
    noise = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    with h5py.File("selfcheck.h5", "w", driver="core", backing_store=False) as f:
        d = f.create_dataset("x", shape=(2, 64, 48, 3), dtype=np.uint8, chunks=(1, 64, 48, 3), compression="lzf")
        masks = []
        for k, a in enumerate((smooth, noise)):
            mask, data = lzf_chunk(a)
            d.id.write_direct_chunk((k, 0, 0, 0), data, filter_mask=mask)
            masks.append(mask)
        return masks == [0, 1] and np.array_equal(d[0], smooth) and np.array_equal(d[1], noise)
