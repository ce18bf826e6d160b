"""How many threads lstmc runs on: set_num_threads, get_num_threads, threads.

lstmc has its own pool of worker threads (they sleep when idle). A call splits
its work into tasks (whole rows of the batch through every step, column blocks
of the weight gradients) that the calling thread and free workers take in
turn. The limit counts every thread doing lstmc work at once, over all Python
threads that call lstmc; while a call large enough for BLAS to thread runs,
SciPy's BLAS is held at one thread (lstmc restores its setting when the last
such call returns), so BLAS does not add threads of its own. NumPy's BLAS is
never touched.

Default: LSTMC_NUM_THREADS when set, else the cores this process may run on
(os.sched_getaffinity). 1 runs every call on its caller's thread.
"""
import contextlib
import operator
import os
import warnings

from . import _work

__all__ = ["set_num_threads", "get_num_threads", "threads", "default_threads"]

ENV_VAR = "LSTMC_NUM_THREADS"


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _checked(n, name):
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError("%s must be an integer >= 1; got %s" % (name, type(n).__name__)) from None
    if n < 1:
        raise ValueError("%s must be >= 1; got %d" % (name, n))
    return min(n, 256)


def default_threads():
    """LSTMC_NUM_THREADS when it holds an integer >= 1, else the usable cores."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        try:
            return _checked(int(text), ENV_VAR)
        except (ValueError, TypeError):
            warnings.warn("%s=%r is not an integer >= 1; lstmc uses %d threads (the cores "
                          "it may run on)" % (ENV_VAR, text, _cores()), RuntimeWarning,
                          stacklevel=3)
    return min(_cores(), 256)


def set_num_threads(n):
    """Run lstmc's calls on at most n threads (the caller's included), from now on,
    in every Python thread. n=1: each call runs on its caller's thread only. More
    than 256 counts as 256."""
    _work.set_threads(_checked(n, "n"))


def get_num_threads():
    """The thread limit lstmc's calls run under."""
    return _work.get_threads()


@contextlib.contextmanager
def threads(n):
    """with lstmc.threads(n): ... runs lstmc on at most n threads inside the block,
    and restores the limit it found when the block exits. The limit is the
    process's (like threadpoolctl's), not the calling thread's."""
    n = _checked(n, "n")
    before = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(before)


set_num_threads(default_threads())


@contextlib.contextmanager
def scipy_blas_threads(n):
    """SciPy's BLAS at n threads inside the block (the benchmark's floor at n=1);
    does nothing where lstmc cannot set it (not OpenBLAS)."""
    before = _work.set_scipy_blas_threads(n)
    try:
        yield
    finally:
        if before > 0:
            _work.set_scipy_blas_threads(before)
