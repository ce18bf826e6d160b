"""lstmc: a compiled LSTM for NumPy users.

The classic NumPy LSTM API (LSTM(Wx, Wh, b), params/grads, forward, backward,
and the sequence layer TimeLSTM), with the numeric work in a Cython extension:
SciPy's BLAS for the matrix products, vectorized C loops for the gates, the GIL
released.
"""
try:
    from . import _cell, _work  # noqa: F401  (the compiled core)
except ImportError:
    import os as _os
    from importlib.machinery import EXTENSION_SUFFIXES as _SUFFIXES

    _here = _os.path.dirname(_os.path.abspath(__file__))
    if any(_os.path.exists(_os.path.join(_here, "_work" + s)) for s in _SUFFIXES):
        raise                   # built, but broken: the error as it is
    # Not built here: usually Python found a source checkout (the current
    # directory comes first on sys.path) rather than the installed package.
    raise ImportError(
        "lstmc is not built in %s (a source checkout?). Install it with "
        "`pip install .` and run `lstmc`, Python or pytest from outside this folder, "
        "or build it in place with `python setup.py build_ext --inplace`." % _here) from None

from ._layers import LSTM, TimeLSTM  # noqa: E402
from ._stacked import StackedLSTM  # noqa: E402
from ._io import load, save  # noqa: E402
from ._threads import get_num_threads, set_num_threads, threads  # noqa: E402
from . import convert  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LSTM", "StackedLSTM", "TimeLSTM", "convert", "get_num_threads", "load", "save",
           "set_num_threads", "threads", "__version__"]
