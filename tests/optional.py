"""Optional frameworks: skipped on a developer's machine, required in CI.

Some tests need a package lstmc itself does not depend on (PyTorch, ONNX,
onnxruntime, Dask, distributed, threadpoolctl, Cython and setuptools for the
C-API build). They get it through ``require(name)``, never through a bare
``try: import`` or ``pytest.importorskip``:

- without ``LSTMC_REQUIRE_ALL`` the test is skipped, with a reason that says
  what to install;
- with ``LSTMC_REQUIRE_ALL=1`` (``.ci/run`` sets it) the test fails instead,
  so a framework CI was meant to install, or a broken import of it, cannot
  turn a test into a silent skip.

Guard only the import of the optional package itself: lstmc's own modules
(``lstmc.dask`` included, once Dask is known to be there) are imported
without a guard, so that a broken import inside lstmc fails. conftest.py also
turns every other skip (and xfail) into a failure when the variable is set.
"""

import importlib
import os

import pytest

__all__ = ["REQUIRE_ALL", "require"]

#: True when every test must run (CI): skips become failures.
REQUIRE_ALL = os.environ.get("LSTMC_REQUIRE_ALL", "").strip() not in ("", "0")


def require(name, install=None):
    """Import and return the optional module `name`; skip the test without it
    (fail it under LSTMC_REQUIRE_ALL=1).

    install: what to ``pip install`` to get it (default: the top-level name).
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        msg = (f"needs {name}, which cannot be imported ({exc}); "
               f"pip install {install or name.split('.')[0]!r}")
        if REQUIRE_ALL:
            pytest.fail(f"LSTMC_REQUIRE_ALL=1: {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
