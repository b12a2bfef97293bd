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
import functools
import logging
from dataclasses import dataclass
from typing import Callable

import h5py
import numpy as np

log = logging.getLogger(__name__)

_lzf: Callable | None = None
_checked = False


def _liblzf(name: str, source_type) -> Callable | None:
    """h5py's liblzf ``name(in, in_len, out, out_len) -> out bytes or 0`` (``lzf_compress`` or
    ``lzf_decompress``; ``in`` typed as ``source_type``), or None where it is not exported."""
    try:
        from h5py import h5z

        fn = getattr(ctypes.CDLL(h5z.__file__), name)
    except (OSError, AttributeError, ImportError):
        return None
    fn.restype = ctypes.c_uint
    fn.argtypes = [source_type, ctypes.c_uint, ctypes.c_void_p, ctypes.c_uint]
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


@dataclass(frozen=True)
class StoredChunk:
    """A sample's array with its chunk as stored (``filter_mask``, ``data``: what lzf_chunk or
    lzf_join give for it), for ShardWriter.add to store without compressing again."""

    array: np.ndarray
    filter_mask: int
    data: bytes | np.ndarray


def lzf_stream(arr: np.ndarray) -> np.ndarray:
    """The LZF encoding of ``arr``'s bytes (C order) as a standalone stream, however long it gets
    (LZF grows incompressible data by at most ~3 %). Releases the GIL while compressing."""
    if _lzf is None and not lzf_threads_available():
        raise RuntimeError("h5py's lzf_compress is not usable here; write through h5py instead")
    src = np.ascontiguousarray(arr)
    out = np.empty(src.nbytes + src.nbytes // 16 + 64, np.uint8)
    n = _lzf(src.ctypes.data, src.nbytes, out.ctypes.data, out.nbytes) if src.nbytes else 0
    if src.nbytes and not n:
        raise RuntimeError("lzf_compress failed with a worst-case output buffer")
    return out[:n]


@functools.lru_cache(maxsize=4096)
def lzf_constant(value: int, n: int) -> bytes:
    """An LZF stream that decodes to ``n`` bytes equal to ``value``, independent of what was
    decoded before it: one literal byte, then back references of distance 1 (up to 264 bytes
    each), and 1-2 literal bytes for a remainder too short for a reference.

    LZF back references count back from the current output position, so standalone streams
    concatenated decode to the concatenation of their data: a chunk can be assembled from such
    runs and :func:`lzf_stream` pieces (e.g. the plain background above and below a crop's
    mouse rows) without compressing the constant parts.
    """
    if n <= 0:
        return b""
    b = bytes([value])
    out = [b"\x00" + b]  # literal run of 1 byte
    rest = n - 1
    full, rem = divmod(rest, 264)
    out.append(b"\xe0\xff\x00" * full)  # length 7 + 255 + 2 = 264, distance 1
    if rem >= 9:
        out.append(bytes([0xE0, rem - 9, 0x00]))
    elif rem >= 3:
        out.append(bytes([(rem - 2) << 5, 0x00]))
    elif rem:
        out.append(bytes([rem - 1]) + b * rem)  # literal run
    return b"".join(out)


def lzf_join(pieces: list, arr: np.ndarray) -> tuple[int, bytes | np.ndarray]:
    """(filter_mask, stored bytes) of the chunk ``arr`` from LZF pieces that decode, in order,
    to its bytes (:func:`lzf_stream`, :func:`lzf_constant`); stored raw, as the filter would,
    when the joined stream is not shorter than the data (:func:`lzf_chunk`)."""
    n = sum(len(p) for p in pieces)
    if n >= arr.nbytes:
        return 1, np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return 0, b"".join(pieces)  # numpy pieces join through the buffer protocol


def lzf_decompress_into(data: bytes, out: np.ndarray) -> bool:
    """Decode the LZF stream ``data`` into the C-contiguous ``out`` (exactly its size); False if
    that fails or h5py's ``lzf_decompress`` is not usable. Releases the GIL while decoding."""
    fn = _load_lzf_decompress()
    if fn is None:
        return False
    return fn(data, len(data), out.ctypes.data, out.nbytes) == out.nbytes


@functools.lru_cache(maxsize=1)
def _load_lzf_decompress() -> Callable | None:
    return _liblzf("lzf_decompress", ctypes.c_char_p)


def lzf_threads_available() -> bool:
    """True when lzf_chunk's chunks read back through h5py (checked once)."""
    global _lzf, _checked
    if not _checked:
        _checked = True
        _lzf = _liblzf("lzf_compress", ctypes.c_void_p)
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
        if not (masks == [0, 1] and np.array_equal(d[0], smooth) and np.array_equal(d[1], noise)):
            return False
        # a chunk joined from standalone pieces: constant runs of every remainder length and a
        # compressed middle part
        joined = np.concatenate([np.full(1, 7, np.uint8), np.full(300, 9, np.uint8), smooth.reshape(-1)[:4000],
                                 np.full(530, 255, np.uint8), np.full(2, 1, np.uint8), np.full(7, 3, np.uint8)])
        j = f.create_dataset("j", shape=(1, joined.size), dtype=np.uint8, chunks=(1, joined.size), compression="lzf")
        mask, data = lzf_join([lzf_constant(7, 1), lzf_constant(9, 300), lzf_stream(smooth.reshape(-1)[:4000]),
                               lzf_constant(255, 530), lzf_constant(1, 2), lzf_constant(3, 7)], joined)
        j.id.write_direct_chunk((0, 0), data, filter_mask=mask)
        return mask == 0 and np.array_equal(j[0], joined)
