import numpy as np  # noqa: F401  (loads NumPy's OpenBLAS)
import pytest
import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS)

from workflow_scripts.workers import _openblas_thread_controls, blas_threads, one_blas_thread


def test_blas_threads_sets_and_restores_every_openblas():
    controls = _openblas_thread_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded (not the NumPy/SciPy wheels)")
    before = [get() for _, get in controls]
    with blas_threads(1):
        assert [get() for _, get in controls] == [1] * len(controls)
    assert [get() for _, get in controls] == before
    with pytest.raises(RuntimeError), blas_threads(1):
        raise RuntimeError  # restored on the way out of an error too
    assert [get() for _, get in controls] == before
    try:
        one_blas_thread()
        assert [get() for _, get in controls] == [1] * len(controls)
    finally:
        for (set_threads, _), k in zip(controls, before):
            set_threads(k)


def test_forked_workers_answer_in_order_and_raise_in_the_caller():
    import os

    from workflow_scripts.workers import ForkedWorkers

    pool = ForkedWorkers(2, lambda job: (job * job, os.getpid()), "square")
    try:
        for i in range(5):
            pool.submit(i, i)
        answers = [pool.result(i) for i in range(5)]
        assert [a for a, _ in answers] == [0, 1, 4, 9, 16]
        assert len({pid for _, pid in answers}) == 2 and os.getpid() not in {pid for _, pid in answers}
        pool.submit(5, "x")  # str * str: TypeError in the worker, raised here
        with pytest.raises(TypeError):
            pool.result(5)
    finally:
        pool.close()

    def start(stack):
        raise OSError("cannot open the masks file")

    pool = ForkedWorkers(1, lambda job: job, "frame", start=start)
    try:
        pool.submit(0, 7)
        with pytest.raises(OSError, match="masks file"):
            pool.result(0)
    finally:
        pool.close()


def test_forked_workers_map_keeps_order_and_drains_after_an_early_stop():
    """map: the answers in job order from a window of jobs in flight; a caller that stops early
    with drain=True leaves the workers in step for another map; the context closes the pool."""
    from workflow_scripts.workers import ForkedWorkers

    import os

    def times_ten(job):
        if job == "die":
            os._exit(1)  # a worker killed (for memory, say)
        return 10 * int(job)

    with ForkedWorkers(2, times_ten, "times ten") as pool:
        assert list(pool.map(range(9), ahead=1)) == [10 * i for i in range(9)]
        answers = pool.map(range(20), drain=True)
        assert [next(answers) for _ in range(3)] == [0, 10, 20]
        answers.close()  # 4 more were in flight: read and dropped
        assert list(pool.map([5, 6, 7])) == [50, 60, 70]
        with pytest.raises(ValueError):  # raised in the worker, raised here
            list(pool.map(["1", "x"]))
        with pytest.raises(RuntimeError, match="times ten job two: its worker process died"):
            list(pool.map([1, "die"], label=lambda job: "job two" if job == "die" else job))
    assert all(not proc.is_alive() for proc in pool._procs)
