"""Tests of ``lstmc.LSTM`` (one time step) against the NumPy reference."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from reference import (
    LAYOUTS, Snapshot, _name_re, assert_close, assert_grad_close, cell_backward,
    cell_forward, check_dtype_message, check_shape_message, numerical_gradient,
    random_weights, with_layout,
)

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_inputs(rng, N, D, H, dtype):
    """x, h_prev, c_prev, dh_next, dc_next of the given dtype."""
    x = rng.standard_normal((N, D)).astype(dtype)
    h = np.tanh(rng.standard_normal((N, H))).astype(dtype)
    c = rng.standard_normal((N, H)).astype(dtype)
    dh = rng.standard_normal((N, H)).astype(dtype)
    dc = rng.standard_normal((N, H)).astype(dtype)
    return x, h, c, dh, dc


def make_layer(rng, D, H, dtype):
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    return lstmc.LSTM(Wx, Wh, b), (Wx, Wh, b)


def reference_step(params, x, h, c, dh, dc):
    Wx, Wh, b = params
    h1, c1, cache = cell_forward(x, h, c, Wx, Wh, b)
    dx, dhp, dcp, dWx, dWh, db = cell_backward(dh, dc, cache, Wx, Wh)
    return dict(h=h1, c=c1, dx=dx, dh_prev=dhp, dc_prev=dcp, dWx=dWx, dWh=dWh, db=db)


def check_forward(out, ref, dtype):
    h1, c1 = out
    assert_close(h1, ref["h"], dtype, "h_next")
    assert_close(c1, ref["c"], dtype, "c_next")


def check_backward(layer, out, ref, dtype):
    dx, dhp, dcp = out
    assert_close(dx, ref["dx"], dtype, "dx")
    assert_close(dhp, ref["dh_prev"], dtype, "dh_prev")
    assert_close(dcp, ref["dc_prev"], dtype, "dc_prev")
    assert_close(layer.grads[0], ref["dWx"], dtype, "dWx")
    assert_close(layer.grads[1], ref["dWh"], dtype, "dWh")
    assert_close(layer.grads[2], ref["db"], dtype, "db")


def other_dtype(dtype):
    return np.dtype(np.float64 if np.dtype(dtype) == np.float32 else np.float32)


SHAPES = [  # (N, D, H)
    (0, 3, 4), (1, 1, 1), (1, 5, 3), (2, 3, 7), (4, 7, 3), (5, 8, 17),
    (3, 33, 33), (6, 16, 64), (7, 10, 1), (1, 64, 33), (9, 2, 31),
]


# --------------------------------------------------------------------------
# the reference itself
# --------------------------------------------------------------------------


def test_reference_sigmoid_stable():
    from reference import sigmoid
    a = np.array([-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, np.nan])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise"):
        warnings.simplefilter("error")
        s = sigmoid(a)
    assert s[0] == 0.0 and s[6] == 1.0 and s[3] == 0.5 and np.isnan(s[7])
    np.testing.assert_allclose(s[1:6], 1 / (1 + np.exp(-a[1:6])), rtol=1e-15)


def test_reference_gradients_match_central_differences(rng):
    """The reference backward is the derivative of the reference forward."""
    N, D, H = 3, 4, 5
    Wx, Wh, b = random_weights(rng, D, H)
    x, h, c, _, _ = make_inputs(rng, N, D, H, np.float64)
    R1, R2 = rng.standard_normal((2, N, H))

    def loss():
        h1, c1, _ = cell_forward(x, h, c, Wx, Wh, b)
        return np.sum(h1 * R1) + np.sum(c1 * R2)

    _, _, cache = cell_forward(x, h, c, Wx, Wh, b)
    dx, dhp, dcp, dWx, dWh, db = cell_backward(R1, R2, cache, Wx, Wh)
    for name, arr, g in [("x", x, dx), ("h_prev", h, dhp), ("c_prev", c, dcp),
                         ("Wx", Wx, dWx), ("Wh", Wh, dWh), ("b", b, db)]:
        assert_grad_close(g, numerical_gradient(loss, arr), name)


def test_reference_uses_intended_math_not_seed_bugs():
    """g comes from columns H:2H of A (seed: rows), backward sees the real c_prev."""
    H = 2
    Wx = np.zeros((1, 4 * H))
    Wh = np.zeros((H, 4 * H))
    b = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])   # f=.5, g=tanh(1), i=.5, o=.5
    x = np.zeros((3, 1))
    h = np.zeros((3, H))
    c = np.full((3, H), 2.0)
    h1, c1, cache = cell_forward(x, h, c, Wx, Wh, b)
    np.testing.assert_allclose(c1, 0.5 * 2.0 + np.tanh(1.0) * 0.5)
    np.testing.assert_array_equal(cache["c_prev"], c)


# --------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------


def test_construct_attributes(rng, dtype):
    D, H = 3, 5
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    layer = lstmc.LSTM(Wx, Wh, b)
    assert isinstance(layer.params, list) and len(layer.params) == 3
    assert layer.params[0] is Wx and layer.params[1] is Wh and layer.params[2] is b
    assert isinstance(layer.grads, list) and len(layer.grads) == 3
    for g, p in zip(layer.grads, (Wx, Wh, b)):
        assert g.shape == p.shape and g.dtype == dtype
        assert not np.any(g)
        assert g is not p
    assert layer.cache is None
    assert layer.dtype == dtype
    assert isinstance(layer.dtype, np.dtype)


def test_construct_noncontiguous_and_readonly_weights(rng, dtype):
    N, D, H = 4, 5, 3
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    layer = lstmc.LSTM(with_layout(Wx, "F"), with_layout(Wh, "row_stride"),
                       with_layout(b, "neg_rows"))
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    ref = reference_step((Wx, Wh, b), x, h, c, dh, dc)
    check_forward(layer.forward(x, h, c), ref, dtype)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)

    ro = [with_layout(p, "readonly") for p in (Wx, Wh, b)]
    layer = lstmc.LSTM(*ro)
    check_forward(layer.forward(x, h, c), ref, dtype)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)


@pytest.mark.parametrize("bad", [np.int64, np.int32, np.float16, np.complex128, bool])
def test_construct_unsupported_dtype(rng, bad):
    Wx, Wh, b = random_weights(rng, 3, 2)
    with pytest.raises(TypeError):
        lstmc.LSTM(Wx.astype(bad), Wh.astype(bad), b.astype(bad))


@pytest.mark.parametrize("which", [0, 1, 2])
def test_construct_mixed_dtypes(rng, dtype, which):
    params = list(random_weights(rng, 3, 2, dtype))
    params[which] = params[which].astype(other_dtype(dtype))
    with pytest.raises(TypeError):
        lstmc.LSTM(*params)


@pytest.mark.parametrize("shapes", [
    ((3, 8), (2, 8), (9,)),        # b too long
    ((3, 8), (2, 8), (4,)),        # b too short
    ((3, 8), (2, 8), (1, 8)),      # b 2-D
    ((3, 8), (3, 8), (8,)),        # Wh rows != H
    ((3, 8), (2, 12), (8,)),       # Wh columns != 4H
    ((3, 12), (2, 8), (8,)),       # Wx columns != 4H
    ((3, 6), (2, 6), (6,)),        # 4H not a multiple of 4... and Wh (2, 6)
    ((3, 7), (2, 7), (7,)),        # columns not a multiple of 4
    ((24,), (2, 8), (8,)),         # Wx 1-D
    ((3, 8, 1), (2, 8), (8,)),     # Wx 3-D
    ((3, 8), (16,), (8,)),         # Wh 1-D
])
def test_construct_inconsistent_shapes(dtype, shapes):
    params = [np.zeros(s, dtype=dtype) for s in shapes]
    with pytest.raises(ValueError):
        lstmc.LSTM(*params)


# --------------------------------------------------------------------------
# parity with the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("N,D,H", SHAPES)
def test_forward_backward_match_reference(rng, dtype, N, D, H):
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    ref = reference_step(params, x, h, c, dh, dc)

    out = layer.forward(x, h, c)
    assert isinstance(out, tuple) and len(out) == 2
    check_forward(out, ref, dtype)
    assert layer.cache is not None

    bout = layer.backward(dh, dc)
    assert isinstance(bout, tuple) and len(bout) == 3
    check_backward(layer, bout, ref, dtype)
    # the results are fresh arrays, not the inputs
    for r in out + bout:
        assert r is not x and r is not h and r is not c and r is not dh and r is not dc


@pytest.mark.parametrize("N,D,H", [(0, 3, 4), (0, 1, 1), (0, 17, 33)])
def test_empty_batch(rng, dtype, N, D, H):
    layer, params = make_layer(rng, D, H, dtype)
    # make the grads non-zero first: N = 0 must overwrite them with zeros
    x1, h1, c1, dh1, dc1 = make_inputs(rng, 3, D, H, dtype)
    layer.forward(x1, h1, c1)
    layer.backward(dh1, dc1)
    assert all(np.any(g) for g in layer.grads)
    grads = list(layer.grads)

    x, h, c, dh, dc = make_inputs(rng, 0, D, H, dtype)
    h_next, c_next = layer.forward(x, h, c)
    assert h_next.shape == (0, H) and c_next.shape == (0, H)
    assert h_next.dtype == dtype and c_next.dtype == dtype
    dx, dhp, dcp = layer.backward(dh, dc)
    assert dx.shape == (0, D) and dhp.shape == (0, H) and dcp.shape == (0, H)
    assert dx.dtype == dhp.dtype == dcp.dtype == dtype
    for g, g0 in zip(layer.grads, grads):
        assert g is g0
        assert not np.any(g)


def test_float32_layer_keeps_float32(rng):
    layer, params = make_layer(rng, 4, 6, np.float32)
    x, h, c, dh, dc = make_inputs(rng, 3, 4, 6, np.float32)
    outs = layer.forward(x, h, c) + layer.backward(dh, dc)
    assert all(o.dtype == np.float32 for o in outs)
    assert all(g.dtype == np.float32 for g in layer.grads)


def test_gradient_check_central_differences(rng):
    """Package grads (float64) equal central differences of the package forward."""
    N, D, H = 3, 4, 5
    Wx, Wh, b = random_weights(rng, D, H)
    layer = lstmc.LSTM(Wx, Wh, b)
    x, h, c, _, _ = make_inputs(rng, N, D, H, np.float64)
    R1, R2 = rng.standard_normal((2, N, H))

    def loss():
        h1, c1 = layer.forward(x, h, c, train=False)
        return np.sum(h1 * R1) + np.sum(c1 * R2)

    layer.forward(x, h, c)
    dx, dhp, dcp = layer.backward(R1, R2)
    analytic = {"x": dx.copy(), "h_prev": dhp.copy(), "c_prev": dcp.copy(),
                "Wx": layer.grads[0].copy(), "Wh": layer.grads[1].copy(),
                "b": layer.grads[2].copy()}
    # the params are the very arrays passed in: perturbing them in place perturbs the layer
    for name, arr in [("x", x), ("h_prev", h), ("c_prev", c),
                      ("Wx", Wx), ("Wh", Wh), ("b", b)]:
        assert_grad_close(analytic[name], numerical_gradient(loss, arr), name)


def test_grads_overwritten_not_accumulated(rng, dtype):
    N, D, H = 4, 3, 5
    layer, params = make_layer(rng, D, H, dtype)
    grads = list(layer.grads)
    ids = [id(g) for g in layer.grads]
    first = make_inputs(rng, N, D, H, dtype)
    second = make_inputs(rng, N + 2, D, H, dtype)
    for inputs in (first, second, first):
        x, h, c, dh, dc = inputs
        ref = reference_step(params, x, h, c, dh, dc)
        layer.forward(x, h, c)
        check_backward(layer, layer.backward(dh, dc), ref, dtype)
        assert [id(g) for g in layer.grads] == ids
        assert all(g is g0 for g, g0 in zip(layer.grads, grads))
    # backward twice on the same cache gives the same grads (not twice them)
    out1 = [a.copy() for a in layer.backward(dh, dc)]
    g1 = [g.copy() for g in layer.grads]
    out2 = layer.backward(dh, dc)
    for a, b_ in zip(out1, out2):
        np.testing.assert_array_equal(a, b_)
    for g, g0 in zip(layer.grads, g1):
        np.testing.assert_array_equal(g, g0)
    check_backward(layer, out2, ref, dtype)


def test_results_are_new_arrays_each_call(rng, dtype):
    N, D, H = 3, 4, 5
    layer, params = make_layer(rng, D, H, dtype)
    a = make_inputs(rng, N, D, H, dtype)
    bb = make_inputs(rng, N, D, H, dtype)
    h1, c1 = layer.forward(*a[:3])
    dx1, dh1, dc1 = layer.backward(*a[3:])
    saved = [o.copy() for o in (h1, c1, dx1, dh1, dc1)]
    h2, c2 = layer.forward(*bb[:3])
    dx2, dh2, dc2 = layer.backward(*bb[3:])
    for o1, o2 in zip((h1, c1, dx1, dh1, dc1), (h2, c2, dx2, dh2, dc2)):
        assert o1 is not o2
        assert not np.shares_memory(o1, o2)
    for o, s in zip((h1, c1, dx1, dh1, dc1), saved):
        np.testing.assert_array_equal(o, s)


def test_inputs_not_modified(rng, dtype):
    N, D, H = 3, 4, 5
    layer, params = make_layer(rng, D, H, dtype)
    inputs = make_inputs(rng, N, D, H, dtype)
    saved = [a.copy() for a in inputs]
    psaved = [p.copy() for p in params]
    layer.forward(*inputs[:3])
    layer.backward(*inputs[3:])
    for a, s in zip(inputs + params, saved + psaved):
        np.testing.assert_array_equal(a, s)


def test_inplace_param_updates_are_seen(rng, dtype):
    N, D, H = 3, 4, 5
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    saved = [p.copy() for p in params]
    layer.forward(x, h, c)
    layer.backward(dh, dc)
    for p, g in zip(layer.params, layer.grads):
        p -= dtype.type(0.1) * g          # SGD step in place
    assert all(p is q for p, q in zip(layer.params, params))
    assert not np.array_equal(params[0], saved[0])
    check_forward(layer.forward(x, h, c), reference_step(params, x, h, c, dh, dc), dtype)

    for p, s in zip(layer.params, saved):
        p[...] = s                          # restore in place
    check_forward(layer.forward(x, h, c), reference_step(saved, x, h, c, dh, dc), dtype)

    layer.params[2][:] = 0                  # only the bias
    zb = [saved[0], saved[1], np.zeros_like(saved[2])]
    ref = reference_step(zb, x, h, c, dh, dc)
    check_forward(layer.forward(x, h, c), ref, dtype)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)


def test_two_layers_share_weights(rng, dtype):
    N, D, H = 2, 3, 4
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    a, bl = lstmc.LSTM(Wx, Wh, b), lstmc.LSTM(Wx, Wh, b)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    Wx *= 2
    Wh[0] = 1
    ref = reference_step((Wx, Wh, b), x, h, c, dh, dc)
    check_forward(a.forward(x, h, c), ref, dtype)
    check_forward(bl.forward(x, h, c), ref, dtype)
    # but each has its own grads
    a.backward(dh, dc)
    bl.backward(2 * dh, 2 * dc)
    assert a.grads[0] is not bl.grads[0]
    np.testing.assert_allclose(bl.grads[0], 2 * a.grads[0], rtol=1e-5)


# --------------------------------------------------------------------------
# memory layouts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arg", ["x", "h_prev", "c_prev", "dh_next", "dc_next", "all"])
def test_any_strides(rng, dtype, arg, layout):
    N, D, H = 5, 6, 7
    layer, params = make_layer(rng, D, H, dtype)
    inputs = dict(zip(["x", "h_prev", "c_prev", "dh_next", "dc_next"],
                      make_inputs(rng, N, D, H, dtype)))
    ref = reference_step(params, *inputs.values())
    for k in inputs:
        if arg in (k, "all"):
            inputs[k] = with_layout(inputs[k], layout)
    check_forward(layer.forward(inputs["x"], inputs["h_prev"], inputs["c_prev"]), ref, dtype)
    check_backward(layer, layer.backward(inputs["dh_next"], inputs["dc_next"]), ref, dtype)


def test_sequence_slices_streamed(rng, dtype):
    """x = xs[:, t, :] (row stride T*D), state fed back step by step."""
    N, T, D, H = 4, 6, 5, 3
    layer, params = make_layer(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h = np.zeros((N, H), dtype)
    c = np.zeros((N, H), dtype)
    rh, rc = h.astype(np.float64), c.astype(np.float64)
    for t in range(T):
        x = xs[:, t, :]
        assert not x.flags.c_contiguous
        h, c = layer.forward(x, h, c)
        rh, rc, _ = cell_forward(xs[:, t, :], rh, rc, *params)
        assert_close(h, rh, dtype, f"h at t={t}")
        assert_close(c, rc, dtype, f"c at t={t}")
    # also a transposed (T, N, D) -> per-step (N, D) with column stride
    xt = np.ascontiguousarray(xs.transpose(1, 0, 2)).transpose(1, 0, 2)
    dh = rng.standard_normal((N, T, H)).astype(dtype)
    h0 = np.zeros((N, H), dtype)
    out = layer.forward(xt[:, 2, :], h0, h0)
    ref = reference_step(params, xs[:, 2, :], h0, h0, dh[:, 1, :], dh[:, 3, :])
    check_forward(out, ref, dtype)
    check_backward(layer, layer.backward(dh[:, 1, :], dh[:, 3, :]), ref, dtype)


def test_broadcast_zero_stride_inputs(rng, dtype):
    N, D, H = 4, 3, 5
    layer, params = make_layer(rng, D, H, dtype)
    x = np.broadcast_to(rng.standard_normal(D).astype(dtype), (N, D))
    h = np.broadcast_to(np.zeros(H, dtype), (N, H))
    c = np.broadcast_to(rng.standard_normal((N, 1)).astype(dtype), (N, H))
    dh = np.broadcast_to(np.ones(H, dtype), (N, H))
    dc = np.broadcast_to(np.ones((1, 1), dtype), (N, H))
    ref = reference_step(params, x, h, c, dh, dc)
    check_forward(layer.forward(x, h, c), ref, dtype)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)


def test_lists_go_through_asarray(rng):
    N, D, H = 2, 3, 4
    layer, params = make_layer(rng, D, H, np.float64)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, np.float64)
    ref = reference_step(params, x, h, c, dh, dc)
    check_forward(layer.forward(x.tolist(), h.tolist(), c.tolist()), ref, np.float64)
    check_backward(layer, layer.backward(dh.tolist(), dc.tolist()), ref, np.float64)

    layer32, _ = make_layer(rng, D, H, np.float32)
    x32, h32, c32 = x.astype(np.float32), h.astype(np.float32), c.astype(np.float32)
    with pytest.raises(TypeError) as ei:
        layer32.forward(x.tolist(), h32, c32)      # a list of Python floats is float64
    check_dtype_message(str(ei.value), "x", np.float64, np.float32)
    with pytest.raises(TypeError) as ei:
        layer32.forward(x32, h32, c.tolist())
    check_dtype_message(str(ei.value), "c_prev", np.float64, np.float32)


# --------------------------------------------------------------------------
# errors, and a failed call changes nothing
# --------------------------------------------------------------------------


@pytest.fixture
def primed(rng, dtype):
    """A layer after one training forward + backward, with everything to redo it."""
    N, D, H = 3, 4, 5
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    layer.forward(x, h, c)
    layer.backward(dh, dc)
    ref = reference_step(params, x, h, c, dh, dc)
    return dict(layer=layer, params=params, x=x, h=h, c=c, dh=dh, dc=dc, ref=ref,
                N=N, D=D, H=H, dtype=dtype)


def _still_works(p):
    """The cache kept by the last successful forward is intact."""
    layer = p["layer"]
    check_backward(layer, layer.backward(p["dh"], p["dc"]), p["ref"], p["dtype"])


@pytest.mark.parametrize("arg", ["x", "h_prev", "c_prev"])
@pytest.mark.parametrize("bad", ["other_float", np.int64, np.float16, np.complex128])
def test_forward_wrong_dtype(primed, arg, bad):
    p = primed
    args = {"x": p["x"], "h_prev": p["h"], "c_prev": p["c"]}
    bad = other_dtype(p["dtype"]) if bad == "other_float" else np.dtype(bad)
    args[arg] = args[arg].astype(bad)
    snap = Snapshot(p["layer"])
    with pytest.raises(TypeError) as ei:
        p["layer"].forward(args["x"], args["h_prev"], args["c_prev"])
    check_dtype_message(str(ei.value), arg, bad, p["dtype"])
    snap.assert_unchanged(p["layer"])
    _still_works(p)


@pytest.mark.parametrize("case", [
    # (argument blamed, shape of x, h_prev, c_prev, expected shape of the blamed one)
    ("x", (3, 5), (3, 5), (3, 5), (None, 4)),          # x has D + 1 columns
    ("x", (3, 3), (3, 5), (3, 5), (None, 4)),
    ("x", (12,), (3, 5), (3, 5), None),                # x 1-D
    ("x", (3, 4, 1), (3, 5), (3, 5), None),            # x 3-D
    ("h_prev", (3, 4), (3, 6), (3, 5), (None, 5)),     # h_prev has H + 1 columns
    ("h_prev", (3, 4), (15,), (3, 5), None),
    ("c_prev", (3, 4), (3, 5), (3, 4), (None, 5)),
    ("c_prev", (3, 4), (3, 5), (4, 5), (3, 5)),        # c_prev batch differs
    ("c_prev", (3, 4), (3, 5), (3, 5, 1), None),
])
def test_forward_wrong_shape(primed, case):
    p = primed
    name, sx, sh, sc, expected = case
    dt = p["dtype"]
    args = [np.zeros(s, dt) for s in (sx, sh, sc)]
    got = {"x": sx, "h_prev": sh, "c_prev": sc}[name]
    snap = Snapshot(p["layer"])
    with pytest.raises(ValueError) as ei:
        p["layer"].forward(*args)
    check_shape_message(str(ei.value), name, got, expected)
    snap.assert_unchanged(p["layer"])
    _still_works(p)


def test_forward_batch_mismatch_between_x_and_state(primed):
    p = primed
    dt = p["dtype"]
    snap = Snapshot(p["layer"])
    with pytest.raises(ValueError) as ei:
        p["layer"].forward(np.zeros((2, 4), dt), np.zeros((3, 5), dt), np.zeros((3, 5), dt))
    msg = str(ei.value)
    assert "(2, 4)" in msg or "(3, 5)" in msg, msg
    snap.assert_unchanged(p["layer"])
    _still_works(p)


@pytest.mark.parametrize("arg", ["dh_next", "dc_next"])
def test_backward_wrong_dtype_and_shape(primed, arg):
    p = primed
    layer, dt, N, H = p["layer"], p["dtype"], p["N"], p["H"]
    for bad in (other_dtype(dt), np.dtype(np.int64)):
        args = {"dh_next": p["dh"], "dc_next": p["dc"]}
        args[arg] = args[arg].astype(bad)
        snap = Snapshot(layer)
        with pytest.raises(TypeError) as ei:
            layer.backward(args["dh_next"], args["dc_next"])
        check_dtype_message(str(ei.value), arg, bad, dt)
        snap.assert_unchanged(layer)
    for shape, expected in [((N + 1, H), (N, H)), ((N, H + 1), (N, H)),
                            ((N - 1, H), (N, H)), ((N * H,), None), ((N, H, 1), None)]:
        args = {"dh_next": p["dh"], "dc_next": p["dc"]}
        args[arg] = np.zeros(shape, dt)
        snap = Snapshot(layer)
        with pytest.raises(ValueError) as ei:
            layer.backward(args["dh_next"], args["dc_next"])
        check_shape_message(str(ei.value), arg, shape, expected)
        snap.assert_unchanged(layer)
    _still_works(p)


def test_backward_before_forward_raises(rng, dtype):
    layer, _ = make_layer(rng, 3, 4, dtype)
    _, _, _, dh, dc = make_inputs(rng, 2, 3, 4, dtype)
    snap = Snapshot(layer)
    with pytest.raises(RuntimeError):
        layer.backward(dh, dc)
    snap.assert_unchanged(layer)
    assert layer.cache is None


def test_failed_backward_before_forward_with_bad_args_still_runtime_or_value(rng, dtype):
    """Bad arguments before any forward: some error, and nothing changes."""
    layer, _ = make_layer(rng, 3, 4, dtype)
    snap = Snapshot(layer)
    with pytest.raises((RuntimeError, ValueError, TypeError)):
        layer.backward(np.zeros((2, 9), dtype), np.zeros((2, 4), dtype))
    snap.assert_unchanged(layer)


def test_train_false(rng, dtype):
    N, D, H = 4, 3, 6
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    ref = reference_step(params, x, h, c, dh, dc)
    check_forward(layer.forward(x, h, c, train=False), ref, dtype)
    grads = [g.copy() for g in layer.grads]
    with pytest.raises(RuntimeError):
        layer.backward(dh, dc)
    for g, g0 in zip(layer.grads, grads):
        np.testing.assert_array_equal(g, g0)

    # a training forward then an inference forward: the cache is gone
    layer.forward(x, h, c)
    layer.backward(dh, dc)
    x2, h2, c2, _, _ = make_inputs(rng, N, D, H, dtype)
    check_forward(layer.forward(x2, h2, c2, train=False),
                  reference_step(params, x2, h2, c2, dh, dc), dtype)
    snap = Snapshot(layer)
    with pytest.raises(RuntimeError):
        layer.backward(dh, dc)
    snap.assert_unchanged(layer)
    # the grads still hold the last successful backward
    for g, name in zip(layer.grads, ("dWx", "dWh", "db")):
        assert_close(g, ref[name], dtype, name)

    # train=True again restores training
    layer.forward(x, h, c, train=True)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)


# --------------------------------------------------------------------------
# out=
# --------------------------------------------------------------------------


@pytest.mark.parametrize("N", [0, 1, 5])
@pytest.mark.parametrize("train", [True, False])
def test_out_buffers(rng, dtype, N, train):
    D, H = 4, 6
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    ref = reference_step(params, x, h, c, dh, dc)
    h_out = np.full((N, H), np.nan, dtype)
    c_out = np.full((N, H), np.nan, dtype)
    res = layer.forward(x, h, c, out=(h_out, c_out), train=train)
    assert res[0] is h_out and res[1] is c_out
    check_forward(res, ref, dtype)
    h_alloc, c_alloc = layer.forward(x, h, c, train=train)
    np.testing.assert_array_equal(h_out, h_alloc)
    np.testing.assert_array_equal(c_out, c_alloc)
    if train:
        check_backward(layer, layer.backward(dh, dc), ref, dtype)
    else:
        with pytest.raises(RuntimeError):
            layer.backward(dh, dc)


# README: "`out=` arrays must be writable with a contiguous last axis" (results
# are written in place and the arrays themselves returned; never a silent copy).
# Rows BLAS cannot reach through a leading dimension (negative or odd row
# stride, unaligned) are computed in scratch and copied in.


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("layout,accepted", [
    ("C", True),
    ("row_stride", True),           # every other row: contiguous last axis
    ("slice_mid", True),            # like hs[:, t, :]
    ("F", False),                   # last axis not contiguous
    ("col_stride", False),
    ("neg_cols", False),
    ("neg_all", False),
    ("readonly", False),            # not writable
    ("neg_rows", True),
    ("unaligned", True),
    ("odd_stride", True),
])
def test_out_layouts_written_in_place_or_refused(rng, dtype, layout, accepted, which):
    """An out= array with a contiguous last axis is written in place and returned;
    one without (or read-only) is refused with a ValueError naming out, and the
    failed call changes nothing."""
    N, D, H = 4, 3, 5
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    ref = reference_step(params, x, h, c, dh, dc)
    out = [np.zeros((N, H), dtype), np.zeros((N, H), dtype)]
    out[which] = with_layout(out[which], layout)
    out = tuple(out)
    # the README's rule, applied to this array
    assert (out[which].flags.writeable and out[which].strides[-1] == dtype.itemsize) == accepted
    snap = Snapshot(layer)
    if not accepted:
        with pytest.raises(ValueError) as ei:
            layer.forward(x, h, c, out=out)
        assert _name_re("out").search(str(ei.value)), str(ei.value)
        snap.assert_unchanged(layer)
        assert not np.any(out[0]) and not np.any(out[1])
        return
    res = layer.forward(x, h, c, out=out)
    assert res is out or (res[0] is out[0] and res[1] is out[1])
    check_forward(out, ref, dtype)
    check_backward(layer, layer.backward(dh, dc), ref, dtype)


@pytest.mark.parametrize("train", [True, False])
def test_out_is_the_input_state_streaming(rng, dtype, train):
    N, T, D, H = 3, 5, 4, 6
    layer, params = make_layer(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h = np.tanh(rng.standard_normal((N, H))).astype(dtype)
    c = rng.standard_normal((N, H)).astype(dtype)
    rh, rc = h.astype(np.float64), c.astype(np.float64)
    hb, cb = h, c
    for t in range(T):
        h_prev_val, c_prev_val = h.copy(), c.copy()
        res = layer.forward(xs[:, t, :], h, c, out=(h, c), train=train)
        assert res[0] is hb and res[1] is cb
        rh, rc, _ = cell_forward(xs[:, t, :], rh, rc, *params)
        assert_close(h, rh, dtype, f"h at t={t}")
        assert_close(c, rc, dtype, f"c at t={t}")
    if train:
        # backward must use the state before it was overwritten in place
        dh, dc = rng.standard_normal((2, N, H)).astype(dtype)
        ref = reference_step(params, xs[:, T - 1, :], h_prev_val, c_prev_val, dh, dc)
        check_backward(layer, layer.backward(dh, dc), ref, dtype)


def test_out_errors_change_nothing(primed):
    p = primed
    layer, dt, N, H = p["layer"], p["dtype"], p["N"], p["H"]
    good = np.empty((N, H), dt)
    for bad_h, bad_c, exc in [
        (np.empty((N, H), other_dtype(dt)), good, TypeError),
        (good, np.empty((N, H), np.int64), TypeError),
        (np.empty((N + 1, H), dt), good, ValueError),
        (good, np.empty((N, H + 1), dt), ValueError),
        (good, np.empty((N * H,), dt), ValueError),
        (with_layout(np.empty((N, H), dt), "readonly"), good, ValueError),
    ]:
        h_keep, c_keep = bad_h.copy(), bad_c.copy()
        snap = Snapshot(layer)
        with pytest.raises(exc) as ei:
            layer.forward(p["x"], p["h"], p["c"], out=(bad_h, bad_c))
        got = bad_h if bad_h is not good else bad_c
        if exc is TypeError:
            check_dtype_message(str(ei.value), "out", got.dtype, dt)
        elif got.flags.writeable:
            check_shape_message(str(ei.value), "out", got.shape, (N, H))
        else:
            assert "out" in str(ei.value)
        snap.assert_unchanged(layer)
        np.testing.assert_array_equal(bad_h, h_keep)
        np.testing.assert_array_equal(bad_c, c_keep)
    _still_works(p)


# --------------------------------------------------------------------------
# extreme values, NaN, Inf
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mag", [1e3, 1e4])
def test_saturated_gates_are_exact(rng, dtype, mag):
    """f = 1, g = 1, i = 0, o = 1 exactly: c_next == c_prev, h_next == tanh(c_prev)."""
    N, D, H = 3, 2, 5
    Wx = np.zeros((D, 4 * H), dtype)
    Wh = np.zeros((H, 4 * H), dtype)
    b = np.concatenate([np.full(H, mag), np.full(H, mag),
                        np.full(H, -mag), np.full(H, mag)]).astype(dtype)
    layer = lstmc.LSTM(Wx, Wh, b)
    x = rng.standard_normal((N, D)).astype(dtype)
    h = rng.standard_normal((N, H)).astype(dtype)
    c = rng.standard_normal((N, H)).astype(dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise",
                                                divide="raise"):
        warnings.simplefilter("error")
        h1, c1 = layer.forward(x, h, c)
        dx, dhp, dcp = layer.backward(np.ones((N, H), dtype), np.ones((N, H), dtype))
    np.testing.assert_array_equal(c1, c)                     # f*c + g*i with f=1, i=0
    np.testing.assert_allclose(h1, np.tanh(c), rtol=4 * np.finfo(dtype).eps)
    for a in (dx, dhp, dcp) + tuple(layer.grads):
        assert np.all(np.isfinite(a))
    # saturated gates pass no gradient to A: all pre-activation grads are exactly 0
    # except the g slot (dg = ds * i * (1-g^2) = 0 since i = 0) -> everything 0
    assert not np.any(layer.grads[2]) and not np.any(layer.grads[0])
    assert not np.any(dx) and not np.any(dhp)
    # dc_prev = ds * f = ds = dc + dh * o * (1 - tanh(c)^2)
    np.testing.assert_allclose(dcp, 1 + (1 - np.tanh(c.astype(np.float64)) ** 2),
                               rtol=1e-4 if dtype == np.float32 else 1e-12)

    # the opposite saturation: f = 0, i = 1, g = -1, o = 0 -> c = -1, h = 0
    b[:] = np.concatenate([np.full(H, -mag), np.full(H, -mag),
                           np.full(H, mag), np.full(H, -mag)])
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise",
                                                divide="raise"):
        warnings.simplefilter("error")
        h1, c1 = layer.forward(x, h, c)
        layer.backward(np.ones((N, H), dtype), np.ones((N, H), dtype))
    np.testing.assert_array_equal(c1, -np.ones((N, H), dtype))
    np.testing.assert_array_equal(h1, np.zeros((N, H), dtype))
    assert all(np.all(np.isfinite(g)) for g in layer.grads)


def test_huge_random_preactivations_match_reference(rng, dtype):
    """|A| up to ~1e4 through the matmuls: finite, no warnings, equal to the stable
    reference at the dtype's usual tolerance, forward and backward.

    All inputs are small dyadic fractions, so every product and partial sum of
    A = x @ Wx + h @ Wh + b is exact in float32 as in float64, whatever the BLAS's
    order of summation: the float32 layer sees the same A as the reference, and
    only its gate functions and the backward's products round. A quarter of the
    columns has small weights, so some gates sit on their slopes (|A| < 8); in
    the others |A| >= 40, where float64 gates are 0 or 1 to 1e-17 (a gate near
    saturation, |A| ~ 10, has a float32 slope g*(1-g) off by a percent: times
    weights of 3e3, that is not the layer's error but the data's)."""
    N, D, H = 6, 5, 7
    G4 = 4 * H
    small = np.zeros(G4, bool)
    small[rng.choice(G4, G4 // 4, replace=False)] = True
    x = (rng.integers(-8, 9, size=(N, D)) / 4.0).astype(dtype)       # multiples of 1/4
    h = (rng.integers(-4, 5, size=(N, H)) / 4.0).astype(dtype)
    for _ in range(100):
        big_w = rng.integers(-3000, 3001, size=(D + H, G4)).astype(np.float64)
        small_w = rng.integers(-8, 9, size=(D + H, G4)) / 8.0
        W = np.where(small, small_w, big_w)
        b = np.where(small, rng.integers(-8, 9, size=G4) / 8.0,
                     rng.integers(-1000, 1001, size=G4).astype(np.float64))
        Wx, Wh, b = W[:D].astype(dtype), W[D:].astype(dtype), b.astype(dtype)
        A = x.astype(np.float64) @ Wx + h.astype(np.float64) @ Wh + b
        if np.all(np.abs(A[:, ~small]) >= 40):
            break
    else:
        raise AssertionError("no weights with |A| >= 40 in the big columns")
    layer = lstmc.LSTM(Wx, Wh, b)
    _, _, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    # exactness: multiples of 1/32 below 2**19 in magnitude, partial sums included
    assert np.all(A * 32 == np.round(A * 32))
    assert (np.abs(x) @ np.abs(Wx) + np.abs(h) @ np.abs(Wh) + np.abs(b)).max() < 2 ** 19
    assert np.abs(A).max() > 3e3 and np.sum(np.abs(A) < 8) >= N
    ref = reference_step((Wx, Wh, b), x, h, c, dh, dc)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise",
                                                divide="raise"):
        warnings.simplefilter("error")
        out = layer.forward(x, h, c)
        bout = layer.backward(dh, dc)
    for a in out + bout + tuple(layer.grads):
        assert np.all(np.isfinite(a))
    assert np.any(bout[0]) and np.any(layer.grads[0])    # gradients flow through the slopes
    check_forward(out, ref, dtype)
    check_backward(layer, bout, ref, dtype)


def test_nan_propagates(rng, dtype):
    N, D, H = 4, 3, 5
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, dh, dc = make_inputs(rng, N, D, H, dtype)
    x[1, 0] = np.nan          # poisons row 1 of everything
    c[2, 3] = np.nan          # poisons c[2, 3] and h[2, 3]
    with np.errstate(all="ignore"):
        ref = reference_step(params, x, h, c, dh, dc)
    h1, c1 = layer.forward(x, h, c)
    assert np.all(np.isnan(h1[1])) and np.all(np.isnan(c1[1]))
    assert np.isnan(h1[2, 3]) and np.isnan(c1[2, 3])
    assert np.isnan(h1).sum() == H + 1 and np.isnan(c1).sum() == H + 1
    check_forward((h1, c1), ref, dtype)         # assert_allclose: NaN where the reference has NaN
    dx, dhp, dcp = layer.backward(dh, dc)
    assert np.all(np.isnan(dx[1])) and not np.any(np.isnan(dx[[0, 3]]))
    assert np.all(np.isnan(layer.grads[2]))     # db sums over the poisoned row
    check_backward(layer, (dx, dhp, dcp), ref, dtype)

    # NaN in a weight reaches every row
    layer.params[0][0, 0] = np.nan
    h1, c1 = layer.forward(x, h, c)
    assert np.all(np.isnan(h1[:, 0])) and np.all(np.isnan(c1[:, 0]))


def test_inf_in_state_propagates_like_numpy(rng, dtype):
    N, D, H = 3, 2, 4
    layer, params = make_layer(rng, D, H, dtype)
    x, h, c, _, _ = make_inputs(rng, N, D, H, dtype)
    c[0, 1] = np.inf
    c[2, 2] = -np.inf
    with np.errstate(all="ignore"):
        ref_h, ref_c, _ = cell_forward(x, h, c, *params)
    h1, c1 = layer.forward(x, h, c)
    assert c1[0, 1] == np.inf and c1[2, 2] == -np.inf
    assert np.all(np.isfinite(h1))
    check_forward((h1, c1), {"h": ref_h, "c": ref_c}, dtype)


# --------------------------------------------------------------------------
# hypothesis: shapes and layouts
# --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(N=st.integers(0, 6), D=st.integers(1, 9), H=st.integers(1, 19),
       dt=st.sampled_from([np.float32, np.float64]),
       layouts=st.lists(st.sampled_from(LAYOUTS), min_size=5, max_size=5),
       use_out=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_hypothesis_shapes_and_layouts(N, D, H, dt, layouts, use_out, seed):
    dt = np.dtype(dt)
    rng = np.random.default_rng(seed)
    layer, params = make_layer(rng, D, H, dt)
    inputs = make_inputs(rng, N, D, H, dt)
    ref = reference_step(params, *inputs)
    x, h, c, dh, dc = (with_layout(a, k) for a, k in zip(inputs, layouts))
    if use_out:
        out = (np.empty((N, H), dt), np.empty((N, H), dt))
        res = layer.forward(x, h, c, out=out)
        assert res[0] is out[0] and res[1] is out[1]
    else:
        res = layer.forward(x, h, c)
    check_forward(res, ref, dt)
    check_backward(layer, layer.backward(dh, dc), ref, dt)


# (Threads and the GIL: test_threads.py. Leaks: test_leaks.py.)


# --------------------------------------------------------------------------
# non-native byte order: README "Non-native byte order is a dtype mismatch (`TypeError`)"
# --------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["x", "h_prev", "c_prev", "dh_next", "dc_next", "out"])
def test_non_native_byte_order_is_a_type_error(rng, dtype, arg):
    """Refused with a TypeError naming the argument, its (byte-swapped) dtype and
    the one expected; the failed call changes nothing (nor the out= arrays)."""
    N, D, H = 3, 4, 5
    layer, params = make_layer(rng, D, H, dtype)
    inputs = dict(zip(["x", "h_prev", "c_prev", "dh_next", "dc_next"],
                      make_inputs(rng, N, D, H, dtype)))
    ref = reference_step(params, *inputs.values())
    swapped = dtype.newbyteorder()
    assert swapped != dtype and swapped.name == dtype.name
    args = dict(inputs)
    out = None
    if arg == "out":
        out = (np.zeros((N, H), swapped), np.zeros((N, H), dtype))
    else:
        args[arg] = inputs[arg].astype(swapped)
    if arg in ("dh_next", "dc_next"):
        check_forward(layer.forward(inputs["x"], inputs["h_prev"], inputs["c_prev"]), ref, dtype)
    snap = Snapshot(layer)
    with pytest.raises(TypeError) as ei:
        if arg in ("dh_next", "dc_next"):
            layer.backward(args["dh_next"], args["dc_next"])
        else:
            layer.forward(args["x"], args["h_prev"], args["c_prev"], out=out)
    check_dtype_message(str(ei.value), arg, swapped, dtype)
    snap.assert_unchanged(layer)
    if out is not None:
        assert not np.any(out[0]) and not np.any(out[1])
    # and the layer still computes the right thing (backward: from the cache of
    # the forward before the failed call)
    if arg not in ("dh_next", "dc_next"):
        check_forward(layer.forward(inputs["x"], inputs["h_prev"], inputs["c_prev"]), ref, dtype)
    check_backward(layer, layer.backward(inputs["dh_next"], inputs["dc_next"]), ref, dtype)
