"""lstmc: a compiled LSTM for NumPy users.

The classic NumPy LSTM API (LSTM(Wx, Wh, b), params/grads, forward, backward,
and the sequence layer TimeLSTM), with the numeric work in a Cython extension:
SciPy's BLAS for the matrix products, vectorized C loops for the gates, the GIL
released.
"""
import os as _os
import sys as _sys
from importlib.machinery import EXTENSION_SUFFIXES as _SUFFIXES


def _find_installed_build():
    """Run from a source checkout that has no compiled extension (say `python -m
    lstmc` in the repository after `pip install .`, where Python puts the
    checkout first on sys.path), lstmc loads its modules from the installed
    build instead. Returns that package folder, or None."""
    def built(folder):
        return any(_os.path.exists(_os.path.join(folder, "_cell" + s)) for s in _SUFFIXES)

    here = _os.path.dirname(_os.path.abspath(__file__))
    if built(here):
        return None
    for entry in _sys.path:
        candidate = _os.path.join(entry or _os.getcwd(), "lstmc")
        if _os.path.realpath(candidate) != _os.path.realpath(here) and built(candidate):
            return candidate
    return None


_installed = _find_installed_build()
if _installed is not None:
    __path__[:] = [_installed]

from ._layers import LSTM, TimeLSTM  # noqa: E402
from ._io import load, save  # noqa: E402
from . import convert  # noqa: E402

__version__ = "0.1.0"
__all__ = ["LSTM", "TimeLSTM", "convert", "load", "save", "__version__"]
