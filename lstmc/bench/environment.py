"""What the benchmark runs on: cores, load, versions, BLAS pools, and the optional
contenders (torch, onnxruntime, the compiled floor) that could be imported."""
import os
import platform

import numpy as np

import lstmc
from lstmc import _blas_threads

__all__ = ["Env", "cores", "load", "blas_threads", "ENV_VARS", "OTHER_ENV_VARS"]

# The OpenBLAS variables the targets are stated without, and others that change speed.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
OTHER_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_VERBOSE",
                  "OMP_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")


class Env:
    """Optional frameworks, their threads, and what was skipped and why; the contenders
    that failed; the run's time budget (set by the caller)."""

    def __init__(self, args):
        self.cores = cores()
        self.load_start = load()
        self.skipped = []          # (contender, reason)
        self.failed = []           # (case, contender, error)
        self.budget = None
        self.torch = None
        self.ort = None
        self.onnx = None
        self.floor = None
        self.torch_threads = None
        self.ort_threads = None
        try:
            from lstmc.bench import _floor
            self.floor = _floor.floor
        except ImportError as exc:
            self.skipped.append(("floor", "lstmc.bench._floor not importable (%s)" % exc))
        if args.section in ("threads", "pipeline"):
            pass  # lstmc and NumPy only
        elif args.no_torch:
            self.skipped.append(("torch", "--no-torch"))
        else:
            try:
                import torch
                self.torch = torch
                self.torch_threads = args.torch_threads or self.cores
                torch.set_num_threads(self.torch_threads)
            except ImportError:
                self.skipped.append(("torch", "not installed"))
        if args.no_onnxruntime:
            self.skipped.append(("onnxruntime", "--no-onnxruntime"))
        elif args.section in ("seq", "models", "all"):
            try:
                import onnx
                import onnxruntime
                self.onnx, self.ort = onnx, onnxruntime
                self.ort_threads = args.ort_threads or self.cores
            except ImportError as exc:
                self.skipped.append(("onnxruntime", "not installed (%s)" % exc.name))
        if not _blas_threads.available():
            self.skipped.append(("threadpoolctl", "not installed: BLAS info unknown and "
                                 "the threads section cannot pin OpenBLAS to one thread"))

    def versions(self):
        """'name version' of lstmc, Python and every library timed."""
        vers = ["lstmc %s" % lstmc.__version__, "Python %s" % platform.python_version(),
                "numpy %s" % np.__version__]
        try:
            import scipy
            vers.append("scipy %s" % scipy.__version__)
        except ImportError:
            pass
        vers.append("torch %s" % (self.torch.__version__ if self.torch else "-"))
        vers.append("onnxruntime %s" % (self.ort.__version__ if self.ort else "-"))
        if self.onnx:
            vers.append("onnx %s" % self.onnx.__version__)
        return vers


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load():
    """The one-minute load average, None where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def blas_threads():
    """The thread counts of this process's BLAS pools, as '2' or '1,2'; '?' unknown."""
    counts = sorted({p.get("num_threads") for p in _blas_threads.pools()} - {None})
    return ",".join(map(str, counts)) or "?"
