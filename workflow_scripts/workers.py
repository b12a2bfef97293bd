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
import multiprocessing
import os
import traceback
from typing import Any, Callable, Iterator, Sequence


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


class ForkedWorkers:
    """``n`` forked processes that run ``work(job)``: job i goes to worker i % n, which answers in
    the order it was asked (so results come back in submission order). Plain pipes read by the
    caller, not multiprocessing.Pool: the Pool's worker-handler thread spins (~10,000 wake-ups/s)
    while results wait to be read and took the GIL from the caller's thread (synthetic rendering
    on an H200, 2026-11-27: 83 -> 108 ms per sample).

    ``start(stack)`` runs first in each worker (after :func:`forked_worker_setup`), e.g. to open
    files of its own (never use the parent's HDF5 handles in a child); what it enters on the
    ExitStack is closed when the worker stops. An exception in ``start`` or ``work`` is sent to
    the caller and raised by :meth:`result`; ``what`` names a job in messages ("synthetic sample").
    """

    def __init__(self, n: int, work: Callable[[Any], Any], what: str, start: Callable[[contextlib.ExitStack], None] | None = None):
        ctx = multiprocessing.get_context("fork")  # not spawn: it would re-run the Snakemake script that started us
        self.what = what
        self._conns, self._procs = [], []
        try:
            for _ in range(n):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=_forked_worker_main, args=(theirs, work, start, what), daemon=True,
                                   name=what.replace(" ", "-"))
                proc.start()
                theirs.close()
                self._conns.append(ours)
                self._procs.append(proc)
        except BaseException:
            self.close(abort=True)
            raise

    def __len__(self) -> int:
        return len(self._procs)

    def __enter__(self) -> "ForkedWorkers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(abort=exc_type is not None)  # after an error: terminate, do not finish the jobs

    def map(self, jobs: Sequence[Any], ahead: int = 2, label: Callable[[Any], Any] | None = None,
            drain: bool = False) -> Iterator[Any]:
        """``work(job)`` of each of ``jobs``, in order (job i to worker i % n), with ``ahead`` jobs
        per worker in flight, so the workers go on while the caller handles an answer.
        ``label(job)`` names a job in errors (default: the job). drain: when the caller stops
        early (an error), read the answers still coming, so the workers can take another map;
        otherwise the pool is to be closed."""
        window = min(len(jobs), ahead * len(self))
        for i in range(window):
            self.submit(i, jobs[i])
        submitted, received = window, 0
        try:
            for i in range(len(jobs)):
                if i + window < len(jobs):
                    self.submit(i + window, jobs[i + window])
                    submitted += 1
                received += 1
                yield self.result(i, jobs[i] if label is None else label(jobs[i]))
        finally:
            if drain:
                for j in range(received, submitted):
                    try:
                        self.result(j)
                    except Exception:  # noqa: BLE001 - the first error is the one being raised
                        pass

    def submit(self, i: int, job: Any) -> None:
        self._conns[i % len(self._conns)].send(job)

    def result(self, i: int, job: Any = None) -> Any:
        """The answer to the i-th submitted job (``job`` only names it in the error message)."""
        try:
            msg = self._conns[i % len(self._conns)].recv()
        except EOFError:
            raise RuntimeError(f"{self.what} {i if job is None else job}: its worker process died (killed for memory?)") from None
        if isinstance(msg, BaseException):
            raise msg
        return msg

    def close(self, abort: bool = False) -> None:
        """Stop the workers after their current job (``abort``: terminate them now)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc in self._procs:
            if abort:
                proc.terminate()
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()


def _forked_worker_main(conn, work: Callable[[Any], Any], start, what: str) -> None:
    """Worker process: answer each job with ``work(job)`` (or the exception it raised) until None."""
    forked_worker_setup()
    with contextlib.ExitStack() as stack:
        failed: BaseException | None = None
        if start is not None:
            try:
                start(stack)
            except BaseException as e:  # noqa: BLE001 - handed to the caller with the first job
                failed = e
        while True:
            try:
                job = conn.recv()
            except EOFError:  # the caller is gone
                return
            if job is None:
                return
            try:
                if failed is not None:
                    raise failed
                msg = work(job)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
                msg = e
            try:
                conn.send(msg)
            except Exception:  # an exception that does not pickle
                conn.send(RuntimeError(f"{what} {job!r}: {traceback.format_exc()}"))
