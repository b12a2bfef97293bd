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
