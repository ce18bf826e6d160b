"""The BLAS thread pools of this process, through threadpoolctl when it is installed.

lstmc calls SciPy's BLAS; NumPy brings its own. Both are usually OpenBLAS, each
with its own pool of threads. The self-test reports them, the benchmark names the
kernel its figures were measured with, and the benchmark and the demo pin them
for runs that must not depend on what the other pool is doing. threadpoolctl is
optional: without it, pools are reported as unknown and nothing is pinned.
"""
import contextlib
import os

__all__ = ["available", "pools", "owner", "describe", "limit"]


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    return threadpoolctl


def available():
    """True when threadpoolctl is installed (pools can be seen and pinned)."""
    return _threadpoolctl() is not None


def pools():
    """threadpoolctl's description of each BLAS library loaded (a list of dicts),
    SciPy's included; [] without threadpoolctl."""
    tpc = _threadpoolctl()
    if tpc is None:
        return []
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, the one lstmc calls)

    return [i for i in tpc.threadpool_info() if i.get("user_api") == "blas"]


def owner(pool):
    """Which package shipped a pool's library: 'scipy', 'numpy', 'torch', ... or '?'."""
    parts = (pool.get("filepath") or "").replace("\\", "/").split("/")
    for name in ("scipy", "numpy", "torch", "onnxruntime"):
        if name in parts or name + ".libs" in parts:
            return name
    return os.path.basename(pool.get("filepath") or "") or "?"


def describe(pool):
    """One line: 'openblas 0.3.30, Haswell kernels, 2 threads (scipy)'."""
    text = "%s %s" % (pool.get("internal_api", "?"), pool.get("version") or "?")
    if pool.get("architecture"):
        text += ", %s kernels" % pool["architecture"]
    elif pool.get("threading_layer"):
        text += ", %s" % pool["threading_layer"]
    return "%s, %s threads (%s)" % (text, pool.get("num_threads", "?"), owner(pool))


def limit(n):
    """A context manager holding every BLAS pool at n threads while it is open.
    n None, or no threadpoolctl: changes nothing."""
    tpc = _threadpoolctl()
    if n is None or tpc is None:
        return contextlib.nullcontext()
    return tpc.threadpool_limits(limits=n, user_api="blas")
