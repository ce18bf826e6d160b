"""lstmc: a compiled LSTM for NumPy users.

The classic NumPy LSTM API (LSTM(Wx, Wh, b), params/grads, forward, backward,
and the sequence layer TimeLSTM), with the numeric work in a Cython extension:
SciPy's BLAS for the matrix products, vectorized C loops for the gates, the GIL
released.
"""
import glob as _glob
import os as _os
import sys as _sys


def _find_installed_build():
    """Run from a source checkout that has no compiled extension (say `python -m
    lstmc` in the repository after `pip install .`, where Python puts the
    checkout first on sys.path), lstmc loads its modules from the installed
    build instead. Returns that package folder, or None."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    if _glob.glob(_os.path.join(here, "_cell.*")):
        return None
    for entry in _sys.path:
        candidate = _os.path.join(entry or _os.getcwd(), "lstmc")
        if (_os.path.realpath(candidate) != _os.path.realpath(here)
                and _glob.glob(_os.path.join(candidate, "_cell.*"))):
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
