"""lstmc: a compiled LSTM for NumPy users.

The classic NumPy LSTM API (LSTM(Wx, Wh, b), params/grads, forward, backward,
and the sequence layer TimeLSTM), with the numeric work in a Cython extension:
SciPy's BLAS for the matrix products, vectorized C loops for the gates, the GIL
released.
"""
from ._layers import LSTM, TimeLSTM
from ._io import load, save
from . import convert

__version__ = "0.1.0"
__all__ = ["LSTM", "TimeLSTM", "convert", "load", "save", "__version__"]
