"""Shared fixtures for the lstmc tests.

The tests import the *installed* ``lstmc`` (there is no ``tests/__init__.py``;
pytest puts this directory on ``sys.path`` so ``from reference import ...``
finds the sibling NumPy reference).

With ``LSTMC_REQUIRE_ALL=1`` (set by ``.ci/run``) no test may skip: the hooks
below turn every skip -- ``optional.require`` of a framework that is missing,
a ``pytest.skip``/``skipif``/``importorskip`` anyone adds later, a module
skipped at collection -- and every non-strict xfail into a failure that names
the reason. Only ``xfail(strict=True)`` stays: it names one known gap and fails
as soon as the gap closes, so it hides nothing.
"""

import zlib

import numpy as np
import pytest

from optional import REQUIRE_ALL

DTYPES = (np.float32, np.float64)


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    """Both supported dtypes."""
    return np.dtype(request.param)


@pytest.fixture
def rng(request):
    """A generator seeded from the test id: reproducible, different per test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ------------------------------------------------------ LSTMC_REQUIRE_ALL: no skip in CI

def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:      # (path, line, "Skipped: ...")
        return longrepr[2]
    return str(longrepr)


def _as_failure(report, what):
    reason = getattr(report, "wasxfail", None)
    reason = f"xfail ({reason})" if reason is not None else _skip_reason(report)
    if hasattr(report, "wasxfail"):
        del report.wasxfail
    report.outcome = "failed"
    report.longrepr = (f"LSTMC_REQUIRE_ALL=1: {what} may not skip (or xfail unless "
                       f"strict) in CI; it did: {reason}")


def _strict_xfail(item):
    marker = item.get_closest_marker("xfail")
    if marker is None:                        # pytest.xfail() called in the test
        return False
    return bool(marker.kwargs.get("strict", item.config.getini("xfail_strict")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        if hasattr(report, "wasxfail") and _strict_xfail(item):
            return
        _as_failure(report, "this test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        _as_failure(report, "this module")


def pytest_report_header(config):
    if REQUIRE_ALL:
        return "LSTMC_REQUIRE_ALL=1: every skip and non-strict xfail counts as a failure"
    return "LSTMC_REQUIRE_ALL not set: tests of missing optional frameworks skip"
