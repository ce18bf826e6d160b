"""Tests of ``lstmc.TimeLSTM`` against the book's TimeLSTM loop over the reference cell."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import lstmc
from reference import (
    LAYOUTS, RefTimeLSTM, Snapshot, assert_close, assert_grad_close, cell_forward,
    check_dtype_message, check_shape_message, numerical_gradient, random_weights,
    time_backward, time_forward, with_layout,
)

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_seq(rng, N, T, D, H, dtype):
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    return xs, dhs


def make_state(rng, N, H, dtype):
    h = np.tanh(rng.standard_normal((N, H))).astype(dtype)
    c = rng.standard_normal((N, H)).astype(dtype)
    return h, c


def make_time(rng, D, H, dtype, stateful=False):
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    return lstmc.TimeLSTM(Wx, Wh, b, stateful=stateful), (Wx, Wh, b)


def reference_run(params, xs, dhs, h0=None, c0=None):
    Wx, Wh, b = params
    hs, h, c, caches = time_forward(xs, Wx, Wh, b, h0, c0)
    dxs, dWx, dWh, db, dh0, _ = time_backward(dhs, caches, Wx, Wh)
    return dict(hs=hs, h=h, c=c, dxs=dxs, dWx=dWx, dWh=dWh, db=db, dh=dh0)


def check_forward(layer, hs, ref, dtype):
    assert_close(hs, ref["hs"], dtype, "hs")
    assert_close(layer.h, ref["h"], dtype, "h")
    assert_close(layer.c, ref["c"], dtype, "c")


def check_backward(layer, dxs, ref, dtype):
    assert_close(dxs, ref["dxs"], dtype, "dxs")
    assert_close(layer.grads[0], ref["dWx"], dtype, "dWx")
    assert_close(layer.grads[1], ref["dWh"], dtype, "dWh")
    assert_close(layer.grads[2], ref["db"], dtype, "db")
    assert_close(layer.dh, ref["dh"], dtype, "dh")


def other_dtype(dtype):
    return np.dtype(np.float64 if np.dtype(dtype) == np.float32 else np.float32)


SHAPES = [  # (N, T, D, H)
    (1, 1, 1, 1), (2, 1, 3, 5), (0, 3, 2, 4), (0, 1, 5, 3), (3, 5, 4, 7),
    (4, 7, 8, 17), (2, 3, 33, 33), (3, 4, 16, 64), (5, 2, 1, 9), (2, 300, 3, 5),
    (1, 40, 7, 3),
]


# --------------------------------------------------------------------------
# construction and basic parity
# --------------------------------------------------------------------------


def test_construct_attributes(rng, dtype):
    Wx, Wh, b = random_weights(rng, 3, 4, dtype)
    layer = lstmc.TimeLSTM(Wx, Wh, b)
    assert layer.stateful is False
    assert isinstance(layer.params, list)
    assert layer.params[0] is Wx and layer.params[1] is Wh and layer.params[2] is b
    assert isinstance(layer.grads, list) and len(layer.grads) == 3
    for g, p in zip(layer.grads, (Wx, Wh, b)):
        assert g.shape == p.shape and g.dtype == dtype and not np.any(g)
    assert layer.h is None and layer.c is None and layer.dh is None
    assert lstmc.TimeLSTM(Wx, Wh, b, stateful=True).stateful is True


@pytest.mark.parametrize("params", [
    lambda r, d: [p.astype(np.int64) for p in random_weights(r, 3, 2)],
    lambda r, d: [random_weights(r, 3, 2, d)[0], *random_weights(r, 3, 2, other_dtype(d))[1:]],
])
def test_construct_bad_dtypes(rng, dtype, params):
    with pytest.raises(TypeError):
        lstmc.TimeLSTM(*params(rng, dtype))


@pytest.mark.parametrize("shapes", [
    ((3, 8), (2, 8), (9,)), ((3, 8), (3, 8), (8,)), ((3, 12), (2, 8), (8,)),
    ((3, 7), (2, 7), (7,)), ((24,), (2, 8), (8,)),
])
def test_construct_bad_shapes(dtype, shapes):
    with pytest.raises(ValueError):
        lstmc.TimeLSTM(*[np.zeros(s, dtype) for s in shapes])


@pytest.mark.parametrize("N,T,D,H", SHAPES)
def test_matches_reference(rng, dtype, N, T, D, H):
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    ref = reference_run(params, xs, dhs)
    hs = layer.forward(xs)
    assert hs.shape == (N, T, H) and hs.dtype == dtype
    check_forward(layer, hs, ref, dtype)
    np.testing.assert_array_equal(layer.h, hs[:, -1, :])
    dxs = layer.backward(dhs)
    assert dxs.shape == (N, T, D) and dxs.dtype == dtype
    assert layer.dh.shape == (N, H) and layer.dh.dtype == dtype
    check_backward(layer, dxs, ref, dtype)


def test_empty_batch_zeroes_grads(rng, dtype):
    D, H, T = 3, 4, 5
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, 2, T, D, H, dtype)
    layer.forward(xs)
    layer.backward(dhs)
    assert all(np.any(g) for g in layer.grads)
    grads = list(layer.grads)
    xs, dhs = make_seq(rng, 0, T, D, H, dtype)
    hs = layer.forward(xs)
    assert hs.shape == (0, T, H) and layer.h.shape == (0, H) and layer.c.shape == (0, H)
    dxs = layer.backward(dhs)
    assert dxs.shape == (0, T, D) and layer.dh.shape == (0, H)
    for g, g0 in zip(layer.grads, grads):
        assert g is g0 and not np.any(g)


def test_gradient_check_through_time(rng):
    N, T, D, H = 2, 4, 3, 3
    Wx, Wh, b = random_weights(rng, D, H, scale=0.8)
    layer = lstmc.TimeLSTM(Wx, Wh, b)
    xs, _ = make_seq(rng, N, T, D, H, np.float64)
    R = rng.standard_normal((N, T, H))

    def loss():
        return np.sum(layer.forward(xs, train=False) * R)

    layer.forward(xs)
    dxs = layer.backward(R)
    analytic = [dxs.copy()] + [g.copy() for g in layer.grads]
    for name, arr, g in zip(("xs", "Wx", "Wh", "b"), (xs, Wx, Wh, b), analytic):
        assert_grad_close(g, numerical_gradient(loss, arr), name)


def test_gradient_check_initial_state(rng):
    """dh is the gradient with respect to the h given by set_state (stateful)."""
    N, T, D, H = 2, 3, 2, 4
    Wx, Wh, b = random_weights(rng, D, H, scale=0.8)
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    xs, _ = make_seq(rng, N, T, D, H, np.float64)
    h0, c0 = make_state(rng, N, H, np.float64)
    R = rng.standard_normal((N, T, H))

    def loss():
        layer.set_state(h0.copy(), c0.copy())
        return np.sum(layer.forward(xs, train=False) * R)

    layer.set_state(h0.copy(), c0.copy())
    layer.forward(xs)
    dxs = layer.backward(R)
    dh = layer.dh.copy()
    analytic = [dxs.copy()] + [g.copy() for g in layer.grads]
    assert_grad_close(dh, numerical_gradient(loss, h0), "initial h")
    for name, arr, g in zip(("xs", "Wx", "Wh", "b"), (xs, Wx, Wh, b), analytic):
        assert_grad_close(g, numerical_gradient(loss, arr), name)
    # and the same thing against the reference
    ref = reference_run((Wx, Wh, b), xs, R, h0, c0)
    assert_close(dh, ref["dh"], np.float64, "dh")


def test_dh_without_state_is_gradient_wrt_zero_state(rng, dtype):
    N, T, D, H = 3, 4, 2, 5
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    layer.forward(xs)
    layer.backward(dhs)
    ref = reference_run(params, xs, dhs)
    assert np.any(ref["dh"])
    assert_close(layer.dh, ref["dh"], dtype, "dh")


# --------------------------------------------------------------------------
# state semantics (the book's)
# --------------------------------------------------------------------------


def test_non_stateful_starts_from_zeros_every_call(rng, dtype):
    N, T, D, H = 3, 4, 2, 5
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    ref = reference_run(params, xs, dhs)
    hs1 = layer.forward(xs).copy()
    hs2 = layer.forward(xs)
    np.testing.assert_array_equal(hs1, hs2)
    # set_state on a non-stateful layer would be ignored by forward: it raises
    # instead (the initial state of one call is forward's h0= / c0=), changing nothing
    h0, c0 = make_state(rng, N, H, dtype)
    h_before = layer.h
    with pytest.raises(ValueError, match="stateful=True"):
        layer.set_state(h0, c0)
    assert layer.h is h_before
    check_forward(layer, layer.forward(xs), ref, dtype)
    # and a different batch size is fine when not stateful
    xs5, dhs5 = make_seq(rng, 5, T, D, H, dtype)
    check_forward(layer, layer.forward(xs5), reference_run(params, xs5, dhs5), dtype)


def test_stateful_over_several_calls(rng, dtype):
    N, D, H = 3, 4, 6
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    ref = RefTimeLSTM(*params, stateful=True)
    for T in (4, 1, 7):
        xs, dhs = make_seq(rng, N, T, D, H, dtype)
        hs = layer.forward(xs)
        rhs = ref.forward(xs)
        assert_close(hs, rhs, dtype, f"hs T={T}")
        assert_close(layer.h, ref.h, dtype, "h")
        assert_close(layer.c, ref.c, dtype, "c")
        dxs = layer.backward(dhs)
        rdxs = ref.backward(dhs)
        assert_close(dxs, rdxs, dtype, "dxs")
        assert_close(layer.dh, ref.dh, dtype, "dh")
        for g, rg in zip(layer.grads, ref.grads):
            assert_close(g, rg, dtype, "grads")


def test_set_state_with_and_without_c(rng, dtype):
    N, T, D, H = 2, 5, 3, 4
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)

    layer.set_state(h0)
    assert layer.c is None
    np.testing.assert_array_equal(layer.h, h0)
    ref = reference_run(params, xs, dhs, h0, None)
    check_forward(layer, layer.forward(xs), ref, dtype)
    check_backward(layer, layer.backward(dhs), ref, dtype)

    layer.set_state(h0, c0)
    np.testing.assert_array_equal(layer.c, c0)
    ref = reference_run(params, xs, dhs, h0, c0)
    check_forward(layer, layer.forward(xs), ref, dtype)
    check_backward(layer, layer.backward(dhs), ref, dtype)
    # c matters: the run from (h0, c0) differs from the run from (h0, 0)
    assert not np.allclose(ref["hs"], reference_run(params, xs, dhs, h0)["hs"])


def test_set_state_does_not_modify_callers_arrays(rng, dtype):
    N, T, D, H = 2, 3, 3, 4
    layer, _ = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)
    h_keep, c_keep = h0.copy(), c0.copy()
    layer.set_state(h0, c0)
    layer.forward(xs)
    layer.backward(dhs)
    layer.forward(xs)
    np.testing.assert_array_equal(h0, h_keep)
    np.testing.assert_array_equal(c0, c_keep)


def test_returned_and_held_arrays_not_overwritten_later(rng, dtype):
    """hs, dxs, and a held h/c/dh a user kept are not reused as buffers by later calls."""
    N, T, D, H = 2, 3, 3, 4
    layer, _ = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    hs1 = layer.forward(xs)
    h1, c1 = layer.h, layer.c
    dxs1 = layer.backward(dhs)
    dh1 = layer.dh
    keep = [a.copy() for a in (hs1, h1, c1, dxs1, dh1)]
    xs2, dhs2 = make_seq(rng, N, T, D, H, dtype)
    hs2 = layer.forward(xs2)
    dxs2 = layer.backward(dhs2)
    assert hs2 is not hs1 and dxs2 is not dxs1
    for a, k in zip((hs1, h1, c1, dxs1, dh1), keep):
        np.testing.assert_array_equal(a, k)


def test_reset_state(rng, dtype):
    N, T, D, H = 3, 4, 2, 5
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    layer.forward(xs)
    assert layer.h is not None and layer.c is not None
    layer.reset_state()
    assert layer.h is None and layer.c is None
    ref = reference_run(params, xs, dhs)
    check_forward(layer, layer.forward(xs), ref, dtype)
    # after a reset a new batch size is fine
    layer.reset_state()
    xs7, dhs7 = make_seq(rng, 7, T, D, H, dtype)
    ref7 = reference_run(params, xs7, dhs7)
    check_forward(layer, layer.forward(xs7), ref7, dtype)
    check_backward(layer, layer.backward(dhs7), ref7, dtype)


@pytest.mark.parametrize("chunks", [(5, 1, 6), (1,) * 12, (12,), (2, 10)])
def test_chunks_equal_whole(rng, dtype, chunks):
    N, D, H = 3, 4, 5
    T = sum(chunks)
    Wx, Wh, b = random_weights(rng, D, H, dtype)
    whole = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    parts = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    xs, _ = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)
    whole.set_state(h0, c0)
    parts.set_state(h0, c0)
    hs_whole = whole.forward(xs)
    got, t = [], 0
    for k in chunks:
        got.append(parts.forward(xs[:, t:t + k]))
        t += k
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-14)
    np.testing.assert_allclose(np.concatenate(got, axis=1), hs_whole, rtol=rtol, atol=atol)
    np.testing.assert_allclose(parts.h, whole.h, rtol=rtol, atol=atol)
    np.testing.assert_allclose(parts.c, whole.c, rtol=rtol, atol=atol)
    ref = reference_run((Wx, Wh, b), xs, np.zeros((N, T, H)), h0, c0)
    assert_close(hs_whole, ref["hs"], dtype, "hs")
    assert_close(parts.c, ref["c"], dtype, "c")


def test_train_false(rng, dtype):
    N, T, D, H = 3, 6, 4, 5
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    ref = reference_run(params, xs, dhs)
    with pytest.raises(RuntimeError):
        layer.backward(dhs)                       # before any forward
    check_forward(layer, layer.forward(xs, train=False), ref, dtype)
    with pytest.raises(RuntimeError):
        layer.backward(dhs)
    check_forward(layer, layer.forward(xs), ref, dtype)
    check_backward(layer, layer.backward(dhs), ref, dtype)
    xs2, _ = make_seq(rng, N, T, D, H, dtype)
    layer.forward(xs2, train=False)
    snap = Snapshot(layer)
    with pytest.raises(RuntimeError):
        layer.backward(dhs)                       # the training cache is gone
    snap.assert_unchanged(layer)
    for g, name in zip(layer.grads, ("dWx", "dWh", "db")):
        assert_close(g, ref[name], dtype, name)   # grads still from the last backward
    assert_close(layer.dh, ref["dh"], dtype, "dh")


def test_train_false_stateful_advances_state(rng, dtype):
    N, D, H = 2, 3, 4
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    ref = RefTimeLSTM(*params, stateful=True)
    for T in (3, 2):
        xs, _ = make_seq(rng, N, T, D, H, dtype)
        assert_close(layer.forward(xs, train=False), ref.forward(xs), dtype, "hs")
        assert_close(layer.h, ref.h, dtype, "h")
        assert_close(layer.c, ref.c, dtype, "c")


def test_grads_overwritten_not_accumulated(rng, dtype):
    N, T, D, H = 2, 3, 4, 5
    layer, params = make_time(rng, D, H, dtype)
    grads = list(layer.grads)
    for _ in range(2):
        xs, dhs = make_seq(rng, N, T, D, H, dtype)
        ref = reference_run(params, xs, dhs)
        layer.forward(xs)
        check_backward(layer, layer.backward(dhs), ref, dtype)
        assert all(g is g0 for g, g0 in zip(layer.grads, grads))
    check_backward(layer, layer.backward(dhs), ref, dtype)   # twice: not doubled


def test_inplace_param_updates_and_sharing_with_cell(rng, dtype):
    N, T, D, H = 2, 3, 4, 5
    layer, params = make_time(rng, D, H, dtype)
    cell = lstmc.LSTM(*params)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    layer.forward(xs)
    layer.backward(dhs)
    for p, g in zip(layer.params, layer.grads):
        p -= dtype.type(0.05) * g
    ref = reference_run(params, xs, dhs)
    check_forward(layer, layer.forward(xs), ref, dtype)
    # the cell built on the same arrays sees the same update
    h, c = cell.forward(xs[:, 0, :], np.zeros((N, H), dtype), np.zeros((N, H), dtype))
    assert_close(h, ref["hs"][:, 0, :], dtype, "cell h")


def test_inputs_not_modified(rng, dtype):
    N, T, D, H = 2, 3, 4, 5
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    keep = [a.copy() for a in (xs, dhs) + params]
    layer.forward(xs)
    layer.backward(dhs)
    for a, k in zip((xs, dhs) + params, keep):
        np.testing.assert_array_equal(a, k)


# --------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------


def _time_layouts(a, kind):
    if kind == "every_other_step":          # xs[:, ::2]
        buf = np.full((a.shape[0], 2 * a.shape[1], a.shape[2]), np.nan, a.dtype)
        buf[:, ::2] = a
        return buf[:, ::2]
    if kind == "transposed_TND":            # a (T, N, D) array viewed as (N, T, D)
        return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
    if kind == "transposed_DTN":
        return np.ascontiguousarray(a.transpose(2, 1, 0)).transpose(2, 1, 0)
    return with_layout(a, kind)


TIME_LAYOUTS = LAYOUTS + ("every_other_step", "transposed_TND", "transposed_DTN")


@pytest.mark.parametrize("layout", TIME_LAYOUTS)
@pytest.mark.parametrize("which", ["xs", "dhs", "both"])
def test_any_strides(rng, dtype, layout, which):
    N, T, D, H = 3, 4, 5, 6
    layer, params = make_time(rng, D, H, dtype)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    ref = reference_run(params, xs, dhs)
    if which in ("xs", "both"):
        xs = _time_layouts(xs, layout)
    if which in ("dhs", "both"):
        dhs = _time_layouts(dhs, layout)
    check_forward(layer, layer.forward(xs), ref, dtype)
    check_backward(layer, layer.backward(dhs), ref, dtype)


def test_set_state_layouts(rng, dtype):
    N, T, D, H = 3, 2, 2, 5
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)
    ref = reference_run(params, xs, dhs, h0, c0)
    for kh, kc in [("F", "neg_rows"), ("col_stride", "readonly"), ("slice_mid", "neg_all")]:
        layer.set_state(with_layout(h0, kh), with_layout(c0, kc))
        check_forward(layer, layer.forward(xs), ref, dtype)
        check_backward(layer, layer.backward(dhs), ref, dtype)


def test_lists_go_through_asarray(rng):
    N, T, D, H = 2, 3, 2, 3
    layer, params = make_time(rng, D, H, np.float64, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, np.float64)
    h0, c0 = make_state(rng, N, H, np.float64)
    layer.set_state(h0.tolist(), c0.tolist())
    ref = reference_run(params, xs, dhs, h0, c0)
    check_forward(layer, layer.forward(xs.tolist()), ref, np.float64)
    check_backward(layer, layer.backward(dhs.tolist()), ref, np.float64)

    layer32, _ = make_time(rng, D, H, np.float32)
    with pytest.raises(TypeError) as ei:
        layer32.forward(xs.tolist())
    check_dtype_message(str(ei.value), "xs", np.float64, np.float32)


# --------------------------------------------------------------------------
# errors, and a failed call changes nothing
# --------------------------------------------------------------------------


@pytest.fixture
def primed(rng, dtype):
    """A stateful layer after set_state + forward + backward."""
    N, T, D, H = 3, 4, 2, 5
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)
    layer.set_state(h0, c0)
    layer.forward(xs)
    layer.backward(dhs)
    ref = reference_run(params, xs, dhs, h0, c0)
    return dict(layer=layer, params=params, xs=xs, dhs=dhs, ref=ref,
                N=N, T=T, D=D, H=H, dtype=dtype)


def _still_works(p):
    layer = p["layer"]
    check_backward(layer, layer.backward(p["dhs"]), p["ref"], p["dtype"])
    assert_close(layer.h, p["ref"]["h"], p["dtype"], "held h")
    assert_close(layer.c, p["ref"]["c"], p["dtype"], "held c")


def _fails(p, exc, fn):
    layer = p["layer"]
    snap = Snapshot(layer)
    with pytest.raises(exc) as ei:
        fn(layer)
    snap.assert_unchanged(layer)
    _still_works(p)
    return str(ei.value)


@pytest.mark.parametrize("bad", ["other_float", np.int64, np.float16])
def test_xs_wrong_dtype(primed, bad):
    p = primed
    bad = other_dtype(p["dtype"]) if bad == "other_float" else np.dtype(bad)
    msg = _fails(p, TypeError, lambda l: l.forward(p["xs"].astype(bad)))
    check_dtype_message(msg, "xs", bad, p["dtype"])


@pytest.mark.parametrize("shape,expected", [
    ((3, 4), None),                  # 2-D
    ((3, 4, 2, 1), None),            # 4-D
    ((3, 4, 3), (None, None, 2)),    # wrong D
    ((3, 4, 1), (None, None, 2)),
    ((12,), None),
])
def test_xs_wrong_shape(primed, shape, expected):
    p = primed
    msg = _fails(p, ValueError, lambda l: l.forward(np.zeros(shape, p["dtype"])))
    check_shape_message(msg, "xs", shape, expected)


def test_stateful_batch_mismatch(primed):
    p = primed
    for n in (p["N"] + 1, p["N"] - 1, 0):
        xs = np.zeros((n, 2, p["D"]), p["dtype"])
        msg = _fails(p, ValueError, lambda l: l.forward(xs))
        # Names the held state and the batch size that does not fit it.
        assert "h" in msg and f"batch size {n}" in msg, msg
        assert f"({n}, {p['H']})" in msg, msg


def test_stateful_batch_mismatch_from_set_state(rng, dtype):
    N, T, D, H = 2, 3, 2, 4
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    h0, c0 = make_state(rng, N, H, dtype)
    layer.set_state(h0, c0)
    snap = Snapshot(layer)
    with pytest.raises(ValueError):
        layer.forward(np.zeros((N + 1, T, D), dtype))
    snap.assert_unchanged(layer)
    layer.set_state(h0)                    # c missing: h alone must still match
    with pytest.raises(ValueError):
        layer.forward(np.zeros((N + 1, T, D), dtype))
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    ref = reference_run(params, xs, dhs, h0)
    check_forward(layer, layer.forward(xs), ref, dtype)


@pytest.mark.parametrize("kind", ["other_float", "int"])
def test_dhs_wrong_dtype(primed, kind):
    p = primed
    bad = other_dtype(p["dtype"]) if kind == "other_float" else np.dtype(np.int64)
    msg = _fails(p, TypeError, lambda l: l.backward(p["dhs"].astype(bad)))
    check_dtype_message(msg, "dhs", bad, p["dtype"])


@pytest.mark.parametrize("delta", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (-1, 0, 0), (0, -1, 0)])
def test_dhs_wrong_shape(primed, delta):
    p = primed
    N, T, H = p["N"], p["T"], p["H"]
    shape = (N + delta[0], T + delta[1], H + delta[2])
    msg = _fails(p, ValueError, lambda l: l.backward(np.zeros(shape, p["dtype"])))
    check_shape_message(msg, "dhs", shape, (N, T, H))


def test_dhs_wrong_ndim(primed):
    p = primed
    shape = (p["N"], p["T"] * p["H"])
    msg = _fails(p, ValueError, lambda l: l.backward(np.zeros(shape, p["dtype"])))
    check_shape_message(msg, "dhs", shape, (p["N"], p["T"], p["H"]))


@pytest.mark.parametrize("case", [
    # (name blamed, h shape, c shape or None, expected shape of the blamed one)
    ("h", (3, 6), None, (None, 5)),
    ("h", (3, 4), (3, 4), (None, 5)),
    ("h", (15,), None, None),
    ("h", (3, 5, 1), None, None),
    ("c", (3, 5), (3, 6), (3, 5)),
    ("c", (3, 5), (2, 5), (3, 5)),
    ("c", (3, 5), (15,), (3, 5)),
])
def test_set_state_wrong_shape(primed, case):
    p = primed
    name, sh, sc, expected = case
    dt = p["dtype"]
    h = np.zeros(sh, dt)
    c = None if sc is None else np.zeros(sc, dt)
    msg = _fails(p, ValueError, lambda l: l.set_state(h, c))
    check_shape_message(msg, name, {"h": sh, "c": sc}[name], expected)


@pytest.mark.parametrize("name", ["h", "c"])
@pytest.mark.parametrize("kind", ["other_float", "int"])
def test_set_state_wrong_dtype(primed, name, kind):
    p = primed
    dt, N, H = p["dtype"], p["N"], p["H"]
    bad = other_dtype(dt) if kind == "other_float" else np.dtype(np.int64)
    h = np.zeros((N, H), bad if name == "h" else dt)
    c = np.zeros((N, H), bad if name == "c" else dt)
    msg = _fails(p, TypeError, lambda l: l.set_state(h, c))
    check_dtype_message(msg, name, bad, dt)


def test_backward_before_forward(rng, dtype):
    layer, _ = make_time(rng, 3, 4, dtype)
    snap = Snapshot(layer)
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((2, 3, 4), dtype))
    snap.assert_unchanged(layer)
    assert layer.dh is None


# --------------------------------------------------------------------------
# the time loop is compiled
# --------------------------------------------------------------------------


def _python_events(fn):
    """Run fn() under sys.settrace; return the number of 'call' and 'line' events.

    Every Python frame reports its calls and, with a local trace function, one
    'line' event per line it executes: a time loop in Python (a for loop, a
    comprehension, a generator, a per-step call of a Python function) emits at
    least one event per step. Compiled code (Cython functions) emits none.
    """
    counts = {"call": 0, "line": 0}

    def tracer(frame, event, arg):
        if event in counts:
            counts[event] += 1
        return tracer

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(old)
    return counts["call"] + counts["line"]


def test_time_loop_does_not_enter_python_per_step(rng):
    """The Python work of a call does not grow with T (README: "the whole time
    loop in compiled code"; spec: "Python is not entered once per step")."""
    N, D, H = 2, 2, 3
    params = random_weights(rng, D, H)
    # The tracer sees a Python time loop: the reference runs one (positive control).
    xs_ref = rng.standard_normal((N, 50, D))
    assert _python_events(lambda: RefTimeLSTM(*params).forward(xs_ref)) >= 50

    events = {}
    for T in (8, 2000):
        layer = lstmc.TimeLSTM(*params, stateful=True)
        xs, dhs = make_seq(rng, N, T, D, H, np.float64)
        layer.forward(xs)          # warm up: buffers allocated, modules imported
        layer.backward(dhs)
        layer.forward(xs, train=False)
        layer.reset_state()
        events[T] = {
            "forward": _python_events(lambda: layer.forward(xs)),
            "backward": _python_events(lambda: layer.backward(dhs)),
            # stateful: the held state is validated and carried over too
            "forward(train=False)": _python_events(lambda: layer.forward(xs, train=False)),
        }
    for call, n in events[2000].items():
        # A per-step loop would add >= 1 event per step: 1992 more at T = 2000.
        assert n <= events[8][call] + 20, (call, events)
        assert n < 200, (call, events)


# --------------------------------------------------------------------------
# hypothesis
# --------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(N=st.integers(0, 4), T=st.integers(1, 6), D=st.integers(1, 6), H=st.integers(1, 11),
       dt=st.sampled_from([np.float32, np.float64]),
       lx=st.sampled_from(TIME_LAYOUTS), ld=st.sampled_from(TIME_LAYOUTS),
       init=st.sampled_from(["none", "h", "hc"]), calls=st.integers(1, 3),
       seed=st.integers(0, 2 ** 32 - 1))
def test_hypothesis_sequences(N, T, D, H, dt, lx, ld, init, calls, seed):
    dt = np.dtype(dt)
    rng = np.random.default_rng(seed)
    Wx, Wh, b = random_weights(rng, D, H, dt)
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    ref = RefTimeLSTM(Wx, Wh, b, stateful=True)
    if init != "none":
        h0, c0 = make_state(rng, N, H, dt)
        c0 = c0 if init == "hc" else None
        layer.set_state(h0, c0)
        ref.set_state(h0, c0)
    for k in range(calls):
        xs, dhs = make_seq(rng, N, T + k, D, H, dt)
        hs = layer.forward(_time_layouts(xs, lx))
        assert_close(hs, ref.forward(xs), dt, "hs")
        assert_close(layer.h, ref.h, dt, "h")
        assert_close(layer.c, ref.c, dt, "c")
    dxs = layer.backward(_time_layouts(dhs, ld))
    assert_close(dxs, ref.backward(dhs), dt, "dxs")
    assert_close(layer.dh, ref.dh, dt, "dh")
    for g, rg, name in zip(layer.grads, ref.grads, ("dWx", "dWh", "db")):
        assert_close(g, rg, dt, name)


@pytest.mark.parametrize("arg", ["xs", "dhs", "h", "c"])
def test_non_native_byte_order_is_a_type_error(rng, dtype, arg):
    """README: "Non-native byte order is a dtype mismatch (`TypeError`)", which
    names the argument, its dtype and the one expected; the call changes nothing."""
    N, T, D, H = 2, 3, 4, 5
    layer, params = make_time(rng, D, H, dtype, stateful=True)
    xs, dhs = make_seq(rng, N, T, D, H, dtype)
    h0, c0 = make_state(rng, N, H, dtype)
    ref = reference_run(params, xs, dhs, h0, c0)
    swapped = dtype.newbyteorder()
    assert swapped != dtype and swapped.name == dtype.name
    bad = {"xs": xs, "dhs": dhs, "h": h0, "c": c0}[arg].astype(swapped)
    calls = {
        "h": lambda l: l.set_state(bad, c0),
        "c": lambda l: l.set_state(h0, bad),
        "xs": lambda l: l.forward(bad),
        "dhs": lambda l: l.backward(bad),
    }
    layer.set_state(h0, c0)
    if arg == "dhs":
        layer.forward(xs)
    snap = Snapshot(layer)
    with pytest.raises(TypeError) as ei:
        calls[arg](layer)
    check_dtype_message(str(ei.value), arg, swapped, dtype)
    snap.assert_unchanged(layer)
    # and the layer still computes the right thing with native arrays
    layer.set_state(h0, c0)
    check_forward(layer, layer.forward(xs), ref, dtype)
    check_backward(layer, layer.backward(dhs), ref, dtype)


_CHUNKED_REFERENCE = {}


@pytest.mark.parametrize("layout", ["c", "strided", "time-major", "overlapping"])
def test_inference_in_several_chunks_matches_reference(layout):
    # train=False projects the inputs a chunk of steps at a time (bounded memory):
    # 32 MB of float64 gates at N*4H = 512*128 is 64 steps, so T = 130 takes
    # three near-equal chunks of 44 steps but the last (42). Batch-major rows
    # are gathered time-major first; time-major rows are read in place.
    rng = np.random.default_rng(7)
    N, T, D, H = 512, 130, 4, 32
    # A small Wh keeps the recurrence contractive: rounding differences do not
    # grow over the steps, so every step is compared at float64 precision.
    Wx, Wh, b = [(rng.standard_normal(s) * k)
                 for s, k in (((D, 4 * H), 0.5), ((H, 4 * H), 0.05), ((4 * H,), 0.2))]
    h0, c0 = rng.standard_normal((2, N, H))
    xs = rng.standard_normal((N, T, D))
    if layout == "strided":
        xs = np.repeat(xs, 2, axis=1)[:, ::2]
    elif layout == "time-major":
        xs = np.ascontiguousarray(xs.transpose(1, 0, 2)).transpose(1, 0, 2)
    elif layout == "overlapping":
        # Sliding windows: sequence n starts 2 elements after sequence n-1 and
        # steps 2N = 1024 >= D apart, so the (t, n) rows are evenly spaced (by
        # 2 < D) yet overlap: BLAS cannot read them in place.
        flat = rng.standard_normal(2 * N * T + D)
        xs = np.lib.stride_tricks.as_strided(flat, (N, T, D), (16, 16 * N, 8))
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
    layer.set_state(h0, c0)
    hs_inf = layer.forward(xs, train=False)
    h_inf, c_inf = layer.h, layer.c
    # Against the independent NumPy reference, step by step (a bug shared by
    # both compiled paths, e.g. in the step kernel, would pass a comparison
    # between them); the first three layouts hold the same values.
    key = layout == "overlapping"
    if key not in _CHUNKED_REFERENCE:
        want_hs = np.empty((N, T, H))
        want_h, want_c = h0, c0
        for t in range(T):
            want_h, want_c, _ = cell_forward(xs[:, t, :], want_h, want_c, Wx, Wh, b)
            want_hs[:, t, :] = want_h
        _CHUNKED_REFERENCE[key] = xs.copy(), want_hs, want_h, want_c
    want_xs, want_hs, want_h, want_c = _CHUNKED_REFERENCE[key]
    np.testing.assert_array_equal(xs, want_xs)
    assert_close(hs_inf, want_hs, np.float64, "hs, train=False")
    assert_close(h_inf, want_h, np.float64, "h, train=False")
    assert_close(c_inf, want_c, np.float64, "c, train=False")
    # ... and against the training forward, which projects all steps at once.
    layer.set_state(h0, c0)
    hs_train = layer.forward(xs)
    np.testing.assert_allclose(hs_inf, hs_train, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h_inf, layer.h, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c_inf, layer.c, rtol=1e-12, atol=1e-13)
