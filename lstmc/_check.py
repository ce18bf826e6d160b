"""``python -m lstmc check``: a self-test of the installed build.

What lives here and why
-----------------------
A user who installed a wheel (or built one against an unusual BLAS) wants one
command that says whether the compiled layers compute the right thing on *this*
machine, and what they run on. So this module

* prints build information: lstmc, Python, platform, NumPy, SciPy, and the BLAS
  libraries loaded in the process (through threadpoolctl when it is installed);
* compares ``lstmc.LSTM`` and ``lstmc.TimeLSTM`` forward and backward passes with
  the plain NumPy implementation in ``lstmc.reference``, in float32 and float64;
* checks the float64 gradients against central differences of a scalar loss.

The reference shares no code with the compiled layers and is always evaluated in
float64 here, so a float32 layer is judged against the exact math of its data.
Exit code 0 when every check passes, 1 otherwise.
"""

import importlib.machinery
import os
import platform
import sys
import traceback

import numpy as np

from lstmc import _blas_threads, reference
from lstmc._cli import Parser, nonnegative_int

__all__ = ["main"]

# Largest error allowed, relative to the largest magnitude of the reference result.
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
GRADCHECK_TOLERANCE = 1e-6


# --------------------------------------------------------------------------- reference

# The backward step the checks call, by a name of this module: a test replaces it
# with a wrong one to show that the check then fails.
ref_step_backward = reference.cell_backward


# --------------------------------------------------------------------------- checks

class CheckFailed(Exception):
    pass


def _rel_err(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise CheckFailed("shape %s, expected %s" % (got.shape, want.shape))
    if want.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(want))), 1e-300)
    return float(np.max(np.abs(got - want))) / scale


def _compare(pairs, tol, against="NumPy"):
    """Largest relative error over named (got, want) pairs; raise past tol."""
    worst = 0.0
    for name, got, want in pairs:
        err = _rel_err(got, want)
        if not err <= tol:  # also catches NaN
            raise CheckFailed("%s differs from %s: relative error %.2g > %.0e"
                              % (name, against, err, tol))
        worst = max(worst, err)
    return worst


def _weights(rng, D, H, dtype):
    Wx = rng.standard_normal((D, 4 * H)) / np.sqrt(D)
    Wh = rng.standard_normal((H, 4 * H)) / np.sqrt(H)
    b = rng.standard_normal(4 * H) * 0.5
    return [w.astype(dtype) for w in (Wx, Wh, b)]


def _f64(*arrays):
    return [np.asarray(a, dtype=np.float64) for a in arrays]


def check_lstm(dtype, rng):
    """lstmc.LSTM forward (plain, out=, train=False) and backward against NumPy."""
    import lstmc

    N, D, H = 5, 7, 6
    Wx, Wh, b = _weights(rng, D, H, dtype)
    x = rng.standard_normal((N, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    dh = rng.standard_normal((N, H)).astype(dtype)
    dc = rng.standard_normal((N, H)).astype(dtype)
    W64 = _f64(Wx, Wh, b)
    h_ref, c_ref, cache = reference.cell_forward(*_f64(x, h0, c0), *W64)
    dx_ref, dhp_ref, dcp_ref, dWx_ref, dWh_ref, db_ref = ref_step_backward(
        *_f64(dh, dc), cache, W64[0], W64[1])

    layer = lstmc.LSTM(Wx, Wh, b)
    h_out, c_out = np.empty((N, H), dtype), np.empty((N, H), dtype)
    h2, c2 = layer.forward(x, h0, c0, out=(h_out, c_out), train=False)
    h3, c3 = layer.forward(x, h0, c0, train=False)
    h, c = layer.forward(x, h0, c0)
    dx, dh_prev, dc_prev = layer.backward(dh, dc)
    dWx, dWh, db = layer.grads
    for name, a in (("h", h), ("c", c), ("dx", dx), ("dWx", dWx)):
        if a.dtype != dtype:
            raise CheckFailed("%s has dtype %s, expected %s" % (name, a.dtype, dtype))
    if h2 is not h_out or c2 is not c_out:
        raise CheckFailed("forward(out=...) did not return the buffers it was given")
    return _compare([("h", h, h_ref), ("c", c, c_ref),
                     ("h (out=)", h2, h_ref), ("c (out=)", c2, c_ref),
                     ("h (train=False)", h3, h_ref), ("c (train=False)", c3, c_ref),
                     ("dx", dx, dx_ref), ("dh_prev", dh_prev, dhp_ref),
                     ("dc_prev", dc_prev, dcp_ref), ("dWx", dWx, dWx_ref),
                     ("dWh", dWh, dWh_ref), ("db", db, db_ref)], TOLERANCE[dtype])


def check_time_lstm(dtype, rng):
    """lstmc.TimeLSTM from zeros and, stateful, from a set state in two halves."""
    import lstmc

    N, T, D, H = 4, 9, 5, 6
    Wx, Wh, b = _weights(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    xs64, dhs64 = _f64(xs, dhs)
    W64 = _f64(Wx, Wh, b)
    pairs = []

    # Not stateful: starts from zeros, full backward.
    hs_ref, h_ref, c_ref, caches = reference.time_forward(xs64, *W64)
    dxs_ref, dWx_ref, dWh_ref, db_ref, dh0_ref, _ = reference.time_backward(
        dhs64, caches, W64[0], W64[1])
    layer = lstmc.TimeLSTM(Wx, Wh, b)
    hs_inf = layer.forward(xs, train=False)
    hs = layer.forward(xs)
    dxs = layer.backward(dhs)
    dWx, dWh, db = layer.grads
    pairs += [("hs", hs, hs_ref), ("hs (train=False)", hs_inf, hs_ref),
              ("h", layer.h, h_ref), ("c", layer.c, c_ref), ("dxs", dxs, dxs_ref),
              ("dh", layer.dh, dh0_ref), ("dWx", dWx, dWx_ref), ("dWh", dWh, dWh_ref),
              ("db", db, db_ref)]

    # Stateful: set_state(h0, c0), then the sequence in two calls equals one pass.
    h0 = rng.standard_normal((N, H)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    hs_ref, h_ref, c_ref, _ = reference.time_forward(xs64, *W64, *_f64(h0, c0))
    s = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    s.set_state(h0, c0)
    k = T // 2
    first = s.forward(np.ascontiguousarray(xs[:, :k]))
    second = s.forward(np.ascontiguousarray(xs[:, k:]))
    pairs += [("stateful hs[:, :k]", first, hs_ref[:, :k]),
              ("stateful hs[:, k:]", second, hs_ref[:, k:]),
              ("stateful h", s.h, h_ref), ("stateful c", s.c, c_ref)]
    s.reset_state()
    again = s.forward(xs)
    pairs.append(("hs after reset_state", again, reference.time_forward(xs64, *W64)[0]))
    return _compare(pairs, TOLERANCE[dtype])


def check_time_lengths(dtype, rng):
    """lstmc.TimeLSTM with lengths, h0, c0, both directions: each row against the
    NumPy reference run on that row's valid steps alone (reversed for reverse)."""
    import lstmc

    N, T, D, H = 5, 7, 4, 6
    Wx, Wh, b = _weights(rng, D, H, dtype)
    W64 = _f64(Wx, Wh, b)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    lengths = np.array([T, 0, 3, 1, 5])
    pairs = []
    for reverse in (False, True):
        layer = lstmc.TimeLSTM(Wx, Wh, b, reverse=reverse)
        hs = layer.forward(xs, lengths=lengths, h0=h0, c0=c0, train=False)
        way = "reverse" if reverse else "forward"
        for i, n in enumerate(lengths):
            steps = xs[i:i + 1, :n][:, ::-1] if reverse else xs[i:i + 1, :n]
            ref_hs, ref_h, ref_c, _ = reference.time_forward(
                *_f64(steps), *W64, *_f64(h0[i:i + 1], c0[i:i + 1]))
            if reverse:
                ref_hs = ref_hs[:, ::-1]
            want = np.zeros((1, T, H))
            want[:, :n] = ref_hs
            pairs += [("%s hs[%d]" % (way, i), hs[i:i + 1], want),
                      ("%s h[%d]" % (way, i), layer.h[i:i + 1], ref_h if n else h0[i:i + 1]),
                      ("%s c[%d]" % (way, i), layer.c[i:i + 1], ref_c if n else c0[i:i + 1])]
    return _compare(pairs, TOLERANCE[dtype])


def _gradcheck(loss, layer, analytic):
    """Compare (name, gradient, input) triples and the layer's grads with central
    differences of loss() with respect to each input and parameter."""
    analytic = analytic + [(n, np.array(g), p) for n, g, p in
                           zip(("dWx", "dWh", "db"), layer.grads, layer.params)]
    return _compare([(n, g, reference.numerical_gradient(loss, p)) for n, g, p in analytic],
                    GRADCHECK_TOLERANCE, "central differences")


def gradcheck_lstm(rng):
    """float64 LSTM: analytic gradients of sum(h*Rh + c*Rc) against central differences."""
    import lstmc

    N, D, H = 3, 4, 3
    Wx, Wh, b = _weights(rng, D, H, np.float64)
    x, h0, c0 = (rng.standard_normal(s) for s in ((N, D), (N, H), (N, H)))
    Rh, Rc = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    layer = lstmc.LSTM(Wx, Wh, b)

    def loss():
        h, c = layer.forward(x, h0, c0, train=False)
        return float(np.sum(h * Rh) + np.sum(c * Rc))

    layer.forward(x, h0, c0)
    dx, dh0, dc0 = layer.backward(Rh, Rc)
    return _gradcheck(loss, layer, [("dx", dx, x), ("dh_prev", dh0, h0), ("dc_prev", dc0, c0)])


def gradcheck_time_lstm(rng):
    """float64 TimeLSTM from a set state: gradients of sum(hs*R) by central differences."""
    import lstmc

    N, T, D, H = 2, 4, 3, 3
    Wx, Wh, b = _weights(rng, D, H, np.float64)
    xs = rng.standard_normal((N, T, D))
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    R = rng.standard_normal((N, T, H))
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)

    def loss():
        layer.set_state(h0.copy(), c0.copy())
        return float(np.sum(layer.forward(xs, train=False) * R))

    layer.set_state(h0.copy(), c0.copy())
    layer.forward(xs)
    dxs = layer.backward(R)
    return _gradcheck(loss, layer, [("dxs", dxs, xs), ("dh", np.array(layer.dh), h0)])


def _checks():
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    return [
        ("LSTM      float32  forward/backward vs NumPy", lambda r: check_lstm(f32, r)),
        ("LSTM      float64  forward/backward vs NumPy", lambda r: check_lstm(f64, r)),
        ("TimeLSTM  float32  forward/backward/state vs NumPy", lambda r: check_time_lstm(f32, r)),
        ("TimeLSTM  float64  forward/backward/state vs NumPy", lambda r: check_time_lstm(f64, r)),
        ("TimeLSTM  float32  lengths/h0/reverse vs NumPy", lambda r: check_time_lengths(f32, r)),
        ("TimeLSTM  float64  lengths/h0/reverse vs NumPy", lambda r: check_time_lengths(f64, r)),
        ("LSTM      float64  gradients vs central differences", gradcheck_lstm),
        ("TimeLSTM  float64  gradients vs central differences", gradcheck_time_lstm),
    ]


# --------------------------------------------------------------------------- build info

def _blas_lines():
    if not _blas_threads.available():
        return ["unknown (pip install threadpoolctl to see which BLAS is loaded)"]
    lines = []
    for pool in _blas_threads.pools():
        line = _blas_threads.describe(pool)
        if _blas_threads.owner(pool) == "scipy":
            line += ": the one lstmc calls"
        lines.append(line)
    return lines or ["none found by threadpoolctl"]


def build_info():
    import scipy

    import lstmc

    rows = []
    where = os.path.dirname(getattr(lstmc, "__file__", "") or "?")
    rows.append(("lstmc", "%s  %s" % (getattr(lstmc, "__version__", "?"), where)))
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    try:
        compiled = sorted(f for f in os.listdir(where) if f.endswith(suffixes))
    except OSError:
        compiled = []
    rows.append(("compiled", ", ".join(compiled) or "no compiled module found"))
    rows.append(("python", "%s (%s)" % (platform.python_version(),
                                        platform.python_implementation())))
    rows.append(("platform", "%s, %s CPUs" % (platform.platform(), os.cpu_count())))
    rows.append(("numpy", np.__version__))
    rows.append(("scipy", scipy.__version__))
    for k, line in enumerate(_blas_lines()):
        rows.append(("BLAS" if k == 0 else "", line))
    rows.append(("threads", _threads_line()))
    return rows


# The sequence shapes whose plans the self-check prints: the benchmark's.
PLAN_SHAPES = ((1, 1000, 64, 64), (32, 50, 128, 128), (64, 50, 512, 512), (128, 29, 16, 128))


def _threads_line():
    from lstmc import _threads, _work

    pool = _work.pool()
    blas = ("SciPy's BLAS held at 1 thread during calls" if pool["blas_bound"]
            else "SciPy's BLAS is not OpenBLAS: its threads are left alone")
    source = ("%s=%s" % (_threads.ENV_VAR, os.environ[_threads.ENV_VAR])
              if os.environ.get(_threads.ENV_VAR) else "the cores this process may use")
    return "lstmc %d (%s); %s" % (pool["threads"], source, blas)


def plan_lines(shapes=PLAN_SHAPES, dtype=np.float32):
    """One line per (N, T, D, H): the plan a TimeLSTM call of that shape runs on here
    (measuring the recurrent product's orientation if this process has not yet)."""
    from lstmc import _work

    lines = []
    for shape in shapes:
        plan = _work.plan_for(*shape, dtype=dtype)
        text = "%d thread%s, split by %s" % (plan["threads"], "" if plan["threads"] == 1
                                            else "s", plan["split"])
        if "block" in plan:
            text += " (%d task%s of %d rows)" % (plan["tasks"], "" if plan["tasks"] == 1 else "s",
                                                plan["block"])
        if plan.get("ahead"):
            text += ", the inputs projected ahead on another thread (%d steps a piece)" \
                % plan["ahead"]
        lines.append("(%s) %s: %s; recurrent product %s; backward's dA @ Wh.T %s"
                     % (",".join(map(str, shape)), np.dtype(dtype).name, text,
                        plan["recurrent"], plan["backward"]))
    return lines


# --------------------------------------------------------------------------- main

def main(argv=None, out=None):
    parser = Parser(prog="python -m lstmc check",
                     description="Self-test of the installed lstmc build: parity with a "
                     "NumPy implementation and a gradient check; exit 0 when all pass.")
    parser.add_argument("--seed", type=nonnegative_int, default=1234,
                        help="seed of the test data, an int >= 0 (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print a traceback for a check that raises")
    args = parser.parse_args([] if argv is None else argv)
    out = sys.stdout if out is None else out

    def say(s=""):
        print(s, file=out, flush=True)

    say("lstmc self-check")
    for key, value in build_info():
        say("  %-9s %s" % (key, value))
    for k, line in enumerate(plan_lines()):
        say("  %-9s %s" % ("plans" if k == 0 else "", line))
    say()
    checks = _checks()
    failed = 0
    for k, (title, fn) in enumerate(checks):
        rng = np.random.default_rng([args.seed, k])
        try:
            err = fn(rng)
        except Exception as exc:  # report every failure, then exit 1
            failed += 1
            msg = str(exc).splitlines()[0] if str(exc) else ""
            kind = "" if isinstance(exc, CheckFailed) else type(exc).__name__ + ": "
            say("  FAIL  %s: %s%s" % (title, kind, msg))
            if args.verbose and not isinstance(exc, CheckFailed):
                traceback.print_exc(file=out)
        else:
            say("  ok    %-52s max rel err %.1e" % (title, err))
    say()
    if failed:
        say("%d of %d checks FAILED" % (failed, len(checks)))
        return 1
    say("all %d checks passed" % len(checks))
    return 0
