"""The C-level API: another Cython extension cimports lstmc's step kernels.

Builds a tiny extension against the *installed* lstmc (its lstmc/_cell.pxd) in
a temporary folder, runs an LSTM loop inside its own nogil block, and checks
the result against lstmc.LSTM.

The installed package must ship lstmc/_cell.pxd (a packaging promise of the
spec): without it these tests fail, they do not skip. Cython and setuptools
(both in the ``test`` extra) build the user extension; without them the build
tests skip, and fail under LSTMC_REQUIRE_ALL=1 (CI).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lstmc
import lstmc._cell
from optional import require

PXD = os.path.join(os.path.dirname(lstmc._cell.__file__), "_cell.pxd")


def _assert_pxd_installed():
    assert os.path.isfile(PXD), (
        f"{PXD} is missing: the installed lstmc does not ship its C-level API "
        "(package-data *.pxd in pyproject.toml; an in-place or editable build "
        "does not install it either)")


def test_pxd_is_installed_next_to_the_extension():
    _assert_pxd_installed()
    with open(PXD, encoding="utf-8") as f:
        text = f.read()
    assert "lstm_step_forward" in text and "lstm_step_backward" in text


PYX = textwrap.dedent('''
    # cython: language_level=3
    from lstmc._cell cimport lstm_step_forward, lstm_step_backward
    import numpy as np

    def run_steps(const double[:, :, ::1] xs, const double[:, ::1] Wx,
                  const double[:, ::1] Wh, const double[::1] b):
        """h, c after running xs (N, T, D) step by step, all inside nogil."""
        cdef Py_ssize_t N = xs.shape[0], T = xs.shape[1], D = xs.shape[2]
        cdef Py_ssize_t H = Wh.shape[0], t
        cdef double[:, ::1] h = np.zeros((N, H))
        cdef double[:, ::1] c = np.zeros((N, H))
        cdef double[:, ::1] gates = np.empty((N, 4 * H))
        cdef int status = 0
        with nogil:
            for t in range(T):
                status |= lstm_step_forward(
                    N, D, H, &xs[0, t, 0], T * D, &h[0, 0], H, &c[0, 0], H,
                    &Wx[0, 0], &Wh[0, 0], &b[0], &gates[0, 0], 4 * H,
                    &h[0, 0], H, &c[0, 0], H, <double *> NULL, 0)
        return status, np.asarray(h), np.asarray(c)

    def step_grads(const float[:, ::1] x, const float[:, ::1] h, const float[:, ::1] c,
                   const float[:, ::1] Wx, const float[:, ::1] Wh, const float[::1] b,
                   const float[:, ::1] dh, const float[:, ::1] dc):
        """One float32 forward + backward step through the C API."""
        cdef Py_ssize_t N = x.shape[0], D = x.shape[1], H = h.shape[1]
        cdef float[:, ::1] gates = np.empty((N, 4 * H), np.float32)
        cdef float[:, ::1] tc = np.empty((N, H), np.float32)
        cdef float[:, ::1] hn = np.empty((N, H), np.float32)
        cdef float[:, ::1] cn = np.empty((N, H), np.float32)
        cdef float[:, ::1] dA = np.empty((N, 4 * H), np.float32)
        cdef float[:, ::1] dx = np.empty((N, D), np.float32)
        cdef float[:, ::1] dhp = np.empty((N, H), np.float32)
        cdef float[:, ::1] dcp = np.empty((N, H), np.float32)
        cdef float[:, ::1] dWx = np.empty((D, 4 * H), np.float32)
        cdef float[:, ::1] dWh = np.empty((H, 4 * H), np.float32)
        cdef float[::1] db = np.empty(4 * H, np.float32)
        with nogil:
            lstm_step_forward(N, D, H, &x[0, 0], D, &h[0, 0], H, &c[0, 0], H,
                              &Wx[0, 0], &Wh[0, 0], &b[0], &gates[0, 0], 4 * H,
                              &hn[0, 0], H, &cn[0, 0], H, &tc[0, 0], H)
            lstm_step_backward(N, D, H, &dh[0, 0], H, &dc[0, 0], H, &x[0, 0], D,
                               &h[0, 0], H, &c[0, 0], H, &Wx[0, 0], &Wh[0, 0],
                               &gates[0, 0], 4 * H, &tc[0, 0], H, &dA[0, 0], 4 * H,
                               &dx[0, 0], D, &dhp[0, 0], H, &dcp[0, 0], H,
                               &dWx[0, 0], &dWh[0, 0], &db[0])
        return [np.asarray(hn), np.asarray(cn), np.asarray(dx), np.asarray(dhp),
                np.asarray(dcp), np.asarray(dWx), np.asarray(dWh), np.asarray(db)]
''')

SETUP = textwrap.dedent('''
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension, setup
    setup(ext_modules=cythonize([Extension("user_ext", ["user_ext.pyx"],
                                           include_dirs=[numpy.get_include()])]),
          script_args=["build_ext", "--inplace"])
''')


@pytest.fixture(scope="module")
def user_ext(tmp_path_factory):
    _assert_pxd_installed()
    require("Cython", "lstmc[test]")
    require("setuptools", "lstmc[test]")
    d = tmp_path_factory.mktemp("capi")
    (d / "user_ext.pyx").write_text(PYX)
    (d / "setup.py").write_text(SETUP)
    # Run from the temporary folder so that the installed lstmc (and its .pxd)
    # is what Cython and the import find, never a source checkout.
    env = dict(os.environ, PYTHONPATH="")
    proc = subprocess.run([sys.executable, "setup.py"], cwd=d, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sys.path.insert(0, str(d))
    try:
        import user_ext
        yield user_ext
    finally:
        sys.path.remove(str(d))


def _weights(rng, D, H, dtype):
    return [(rng.standard_normal(s) * 0.3).astype(dtype) for s in ((D, 4 * H), (H, 4 * H), (4 * H,))]


def test_user_loop_matches_timelstm(user_ext):
    rng = np.random.default_rng(1)
    N, T, D, H = 3, 7, 5, 6
    Wx, Wh, b = _weights(rng, D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    status, h, c = user_ext.run_steps(xs, Wx, Wh, b)
    assert status == 0
    layer = lstmc.TimeLSTM(Wx, Wh, b)
    layer.forward(xs)
    np.testing.assert_allclose(h, layer.h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c, layer.c, rtol=1e-12, atol=1e-14)


def test_user_step_grads_match_lstm(user_ext):
    rng = np.random.default_rng(2)
    N, D, H = 4, 3, 5
    Wx, Wh, b = _weights(rng, D, H, np.float32)
    x, h, c, dh, dc = [rng.standard_normal(s).astype(np.float32)
                       for s in ((N, D), (N, H), (N, H), (N, H), (N, H))]
    got = user_ext.step_grads(x, h, c, Wx, Wh, b, dh, dc)
    cell = lstmc.LSTM(Wx, Wh, b)
    hn, cn = cell.forward(x, h, c)
    dx, dhp, dcp = cell.backward(dh, dc)
    want = [hn, cn, dx, dhp, dcp] + cell.grads
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
