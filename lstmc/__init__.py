"""lstmc: a compiled LSTM for NumPy users.

The classic NumPy LSTM API (LSTM(Wx, Wh, b), params/grads, forward, backward,
and the sequence layer TimeLSTM), with the numeric work in a Cython extension:
SciPy's BLAS for the matrix products, vectorized C loops for the gates, the GIL
released.
"""
try:
    from . import _cell, _work  # noqa: F401  (the compiled core)
except ImportError as _exc:
    import os as _os

    # The usual cause: Python found the source checkout (the current directory
    # comes first on sys.path) rather than the installed build.
    raise ImportError(
        "lstmc's compiled extensions are not importable from %s: this looks like a "
        "source checkout that was not built. Install it (`pip install .`) and run "
        "`lstmc`, Python or pytest from outside the source folder, or build in place "
        "(`python setup.py build_ext --inplace`). Cause: %s"
        % (_os.path.dirname(_os.path.abspath(__file__)), _exc)) from _exc

from ._layers import LSTM, TimeLSTM  # noqa: E402
from ._io import load, save  # noqa: E402
from . import convert  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LSTM", "TimeLSTM", "convert", "load", "save", "__version__"]
