"""Set-up shared by the forked worker processes of a job (synthetic sample preparation,
body-model fits in locate_mouse).

Fork, not spawn: spawn re-runs the main module, which under Snakemake's ``script:`` is the rule's
script itself. A forked process inherits the parent's objects, open files and threads' state, so a
worker calls :func:`forked_worker_setup` first.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from typing import Callable, Iterator


def forked_worker_setup() -> None:
    """Call first thing in a forked worker: never collect what the fork copied (garbage of the
    parent, e.g. an unreachable renderer or HDF5 file, would run its finalizer here, in a process
    that must not touch the parent's GL context or files), and one BLAS thread (the parallelism
    is the worker processes). Not ``cv2.setNumThreads``: it joins OpenCV's pool threads, which a
    fork does not copy: a hang."""
    gc.freeze()
    one_blas_thread()


def one_blas_thread() -> None:
    """Best effort: one OpenBLAS thread in this (worker) process. The parallelism is the worker
    processes; W workers x one BLAS thread per core only spin against each other (a [28800, 3] x
    [3, 32] product took 10 ms instead of 0.3 ms on a busy 2-core machine). threadpoolctl does
    this too, but is not a dependency; without an OpenBLAS loaded this does nothing."""
    for set_threads, _ in _openblas_thread_controls():
        set_threads(1)


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Best effort: ``n`` OpenBLAS threads inside the block, the previous counts after it. For
    code of many small matrix products (the body-model fit: 4 ms per frame's evaluation turned
    into 10-20 ms with two spinning BLAS threads on a busy 2-core machine)."""
    controls = _openblas_thread_controls()
    before = [get_threads() for _, get_threads in controls]
    for set_threads, _ in controls:
        set_threads(n)
    try:
        yield
    finally:
        for (set_threads, _), k in zip(controls, before):
            set_threads(k)


def _openblas_thread_controls() -> list[tuple[Callable[[int], None], Callable[[], int]]]:
    """(set, get) thread-count functions of every OpenBLAS this process has loaded (NumPy's and
    SciPy's are separate libraries); none when not on Linux or none is loaded."""
    try:
        with open("/proc/self/maps") as f:
            paths = {fields[5] for fields in map(str.split, f) if len(fields) >= 6}
    except OSError:  # not Linux
        return []
    out = []
    for path in sorted(p for p in paths if "openblas" in os.path.basename(p).lower() and ".so" in p):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                set_fn = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                get_fn = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if set_fn is not None and get_fn is not None:
                    get_fn.restype = ctypes.c_int
                    out.append((set_fn, get_fn))
                    break
            else:
                continue
            break
    return out
