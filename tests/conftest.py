"""Shared fixtures for the lstmc tests.

The tests import the *installed* ``lstmc`` (there is no ``tests/__init__.py``;
pytest puts this directory on ``sys.path`` so ``from reference import ...``
finds the sibling NumPy reference).
"""

import zlib

import numpy as np
import pytest

DTYPES = (np.float32, np.float64)


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    """Both supported dtypes."""
    return np.dtype(request.param)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
