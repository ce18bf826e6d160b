"""lstmc.convert against the real frameworks.

PyTorch and ONNX Runtime, when installed, are the references: their layers run
on weights that are then converted for lstmc, and outputs, final states and
gradients must agree (float64 to 1e-10, float32 to 1e-5).  Keras is not
installed in the test environment, so the Keras layout is checked against a
NumPy transcription of Keras's documented LSTM math (``_keras_lstm`` below).
The round-trip and error tests need no framework. Without PyTorch or ONNX
Runtime their tests skip; under LSTMC_REQUIRE_ALL=1 (CI, which installs them)
they fail instead (``optional.require``).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lstmc
from lstmc import convert
from optional import require

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


def _np(a):
    """A framework tensor (or ndarray) as a NumPy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def assert_close(actual, expected, dtype):
    tol = TOL[dtype]
    np.testing.assert_allclose(_np(actual), _np(expected), rtol=tol, atol=tol)


def _random_lstmc(rng, D, H, dtype, scale=0.5):
    """Random lstmc weights ``(Wx, Wh, b)``."""
    return (scale * rng.standard_normal((D, 4 * H))).astype(dtype), \
        (scale * rng.standard_normal((H, 4 * H))).astype(dtype), \
        (scale * rng.standard_normal(4 * H)).astype(dtype)


def _run_time(Wx, Wh, b, xs, h0=None, c0=None):
    """lstmc.TimeLSTM over ``xs`` from ``(h0, c0)`` (zeros when None)."""
    layer = lstmc.TimeLSTM(Wx, Wh, b, stateful=h0 is not None)
    if h0 is not None:
        layer.set_state(h0.copy(), c0.copy())
    hs = layer.forward(xs)
    return layer, hs


# ---------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    """PyTorch: its tests skip without it, and fail under LSTMC_REQUIRE_ALL=1 (CI)."""
    return require("torch", "lstmc[interop]")


def _tdtype(torch, dtype):
    return {np.float32: torch.float32, np.float64: torch.float64}[dtype]


def _leaf(torch, a):
    return torch.tensor(a, requires_grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_lstmcell_forward_backward(torch, dtype):
    N, D, H = 3, 5, 4
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(D, H).to(_tdtype(torch, dtype))
    rng = np.random.default_rng(1)
    x, h0, c0, gh, gc = (rng.standard_normal(s).astype(dtype)
                         for s in [(N, D), (N, H), (N, H), (N, H), (N, H)])
    tx, th0, tc0 = _leaf(torch, x), _leaf(torch, h0), _leaf(torch, c0)
    th, tc = cell(tx, (th0, tc0))
    ((th * torch.from_numpy(gh)).sum()
     + (tc * torch.from_numpy(gc)).sum()).backward()

    # The parameters require grad: the converter must detach them itself.
    Wx, Wh, b = convert.from_torch(cell.weight_ih, cell.weight_hh,
                                   cell.bias_ih, cell.bias_hh)
    assert Wx.dtype == Wh.dtype == b.dtype == dtype
    layer = lstmc.LSTM(Wx, Wh, b)
    h, c = layer.forward(x, h0, c0)
    assert_close(h, th, dtype)
    assert_close(c, tc, dtype)

    dx, dh0, dc0 = layer.backward(gh, gc)
    assert_close(dx, tx.grad, dtype)
    assert_close(dh0, th0.grad, dtype)
    assert_close(dc0, tc0.grad, dtype)
    # The converters are linear, so they map gradients like weights.
    dw_ih, dw_hh, db_ih, db_hh = convert.to_torch(*layer.grads)
    assert_close(dw_ih, cell.weight_ih.grad, dtype)
    assert_close(dw_hh, cell.weight_hh.grad, dtype)
    assert_close(db_ih, cell.bias_ih.grad, dtype)  # both biases get the
    assert_close(db_ih, cell.bias_hh.grad, dtype)  # same gradient
    assert not db_hh.any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_torch_lstm_sequence_forward_backward(torch, dtype, with_state):
    N, T, D, H = 3, 6, 5, 4
    torch.manual_seed(2)
    lstm = torch.nn.LSTM(D, H, batch_first=True).to(_tdtype(torch, dtype))
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    txs = _leaf(torch, xs)
    if with_state:
        h0, c0 = (rng.standard_normal((N, H)).astype(dtype) for _ in "hc")
        th0, tc0 = _leaf(torch, h0[None]), _leaf(torch, c0[None])
        out, (hn, cn) = lstm(txs, (th0, tc0))
    else:
        h0 = c0 = None
        out, (hn, cn) = lstm(txs)
    (out * torch.from_numpy(dhs)).sum().backward()

    Wx, Wh, b = convert.from_torch_state_dict(lstm.state_dict())
    layer, hs = _run_time(Wx, Wh, b, xs, h0, c0)
    assert_close(hs, out, dtype)
    assert_close(layer.h, hn[0], dtype)
    assert_close(layer.c, cn[0], dtype)

    dxs = layer.backward(dhs)
    assert_close(dxs, txs.grad, dtype)
    if with_state:
        assert_close(layer.dh, th0.grad[0], dtype)
    dw_ih, dw_hh, db_ih, _ = convert.to_torch(*layer.grads)
    assert_close(dw_ih, lstm.weight_ih_l0.grad, dtype)
    assert_close(dw_hh, lstm.weight_hh_l0.grad, dtype)
    assert_close(db_ih, lstm.bias_ih_l0.grad, dtype)
    assert_close(db_ih, lstm.bias_hh_l0.grad, dtype)


def _bidirectional_forward(stack, xs):
    """Run ``[(forward, reverse), ...]`` TimeLSTM pairs like nn.LSTM does.

    The reverse direction reads the time-reversed input and its outputs are
    flipped back; each layer feeds ``[forward, reverse]`` to the next.
    """
    inp = xs
    for fwd, rev in stack:
        hs_f = fwd.forward(inp)
        hs_r = rev.forward(inp[:, ::-1])[:, ::-1]
        inp = np.concatenate([hs_f, hs_r], axis=-1)
    return inp


def _bidirectional_backward(stack, dout, H):
    d = dout
    for fwd, rev in reversed(stack):
        dx_f = fwd.backward(d[..., :H])
        dx_r = rev.backward(d[..., H:][:, ::-1])[:, ::-1]
        d = dx_f + dx_r
    return d


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_two_layer_bidirectional_from_time_lstms(torch, dtype):
    N, T, D, H, L = 2, 5, 3, 4, 2
    torch.manual_seed(4)
    lstm = torch.nn.LSTM(D, H, num_layers=L, bidirectional=True,
                         batch_first=True).to(_tdtype(torch, dtype))
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    dout = rng.standard_normal((N, T, 2 * H)).astype(dtype)
    txs = _leaf(torch, xs)
    out, (hn, cn) = lstm(txs)
    (out * torch.from_numpy(dout)).sum().backward()

    sd = lstm.state_dict()
    stack = [tuple(lstmc.TimeLSTM(*convert.from_torch_state_dict(
        sd, layer=k, reverse=r)) for r in (False, True)) for k in range(L)]
    assert stack[1][0].params[0].shape == (2 * H, 4 * H)

    ours = _bidirectional_forward(stack, xs)
    assert_close(ours, out, dtype)
    # h_n, c_n are ordered (layer 0 fwd, layer 0 rev, layer 1 fwd, ...).
    for k, (fwd, rev) in enumerate(stack):
        assert_close(fwd.h, hn[2 * k], dtype)
        assert_close(rev.h, hn[2 * k + 1], dtype)
        assert_close(fwd.c, cn[2 * k], dtype)
        assert_close(rev.c, cn[2 * k + 1], dtype)

    dxs = _bidirectional_backward(stack, dout, H)
    assert_close(dxs, txs.grad, dtype)
    for k, pair in enumerate(stack):
        for layer, sfx in zip(pair, ("", "_reverse")):
            dw_ih, dw_hh, db_ih, _ = convert.to_torch(*layer.grads)
            assert_close(dw_ih, getattr(lstm, f"weight_ih_l{k}{sfx}").grad, dtype)
            assert_close(dw_hh, getattr(lstm, f"weight_hh_l{k}{sfx}").grad, dtype)
            assert_close(db_ih, getattr(lstm, f"bias_ih_l{k}{sfx}").grad, dtype)
            assert_close(db_ih, getattr(lstm, f"bias_hh_l{k}{sfx}").grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_torch_loads_into_nn_lstm(torch, dtype):
    N, T, D, H = 3, 4, 2, 5
    rng = np.random.default_rng(6)
    Wx, Wh, b = _random_lstmc(rng, D, H, dtype)
    w_ih, w_hh, b_ih, b_hh = convert.to_torch(Wx, Wh, b)
    lstm = torch.nn.LSTM(D, H, batch_first=True).to(_tdtype(torch, dtype))
    lstm.load_state_dict({  # strict: the keys and shapes must fit exactly
        "weight_ih_l0": torch.from_numpy(w_ih),
        "weight_hh_l0": torch.from_numpy(w_hh),
        "bias_ih_l0": torch.from_numpy(b_ih),
        "bias_hh_l0": torch.from_numpy(b_hh),
    })
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    with torch.no_grad():
        out, (hn, cn) = lstm(torch.from_numpy(xs))
    layer, hs = _run_time(Wx, Wh, b, xs)
    assert_close(hs, out, dtype)
    assert_close(layer.h, hn[0], dtype)
    assert_close(layer.c, cn[0], dtype)
    # ... and back out of the state dict: exactly the weights we started from.
    for got, want in zip(convert.from_torch_state_dict(lstm.state_dict()),
                         (Wx, Wh, b)):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_to_torch_loads_into_lstmcell(torch):
    rng = np.random.default_rng(7)
    Wx, Wh, b = _random_lstmc(rng, 3, 2, np.float64)
    cell = torch.nn.LSTMCell(3, 2).double()
    cell.load_state_dict(dict(zip(
        ("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
        map(torch.from_numpy, convert.to_torch(Wx, Wh, b)))))
    x, h0, c0 = (rng.standard_normal(s) for s in [(4, 3), (4, 2), (4, 2)])
    with torch.no_grad():
        th, tc = cell(torch.from_numpy(x),
                      (torch.from_numpy(h0), torch.from_numpy(c0)))
    h, c = lstmc.LSTM(Wx, Wh, b).forward(x, h0, c0)
    assert_close(h, th, np.float64)
    assert_close(c, tc, np.float64)


def test_torch_without_bias(torch):
    torch.manual_seed(8)
    lstm = torch.nn.LSTM(3, 2, bias=False, batch_first=True).double()
    sd = lstm.state_dict()
    assert "bias_ih_l0" not in sd
    Wx, Wh, b = convert.from_torch_state_dict(sd)
    assert b.shape == (8,) and not b.any()
    xs = np.random.default_rng(9).standard_normal((2, 4, 3))
    with torch.no_grad():
        out, _ = lstm(torch.from_numpy(xs))
    assert_close(_run_time(Wx, Wh, b, xs)[1], out, np.float64)
    # from_torch with the biases left out agrees
    for got, want in zip(convert.from_torch(sd["weight_ih_l0"],
                                            sd["weight_hh_l0"]), (Wx, Wh, b)):
        np.testing.assert_array_equal(got, want)


def test_from_torch_detaches_and_copies(torch):
    w_ih = torch.randn(8, 3, dtype=torch.float32, requires_grad=True)
    w_hh = torch.randn(8, 2, dtype=torch.float32, requires_grad=True)
    before = w_ih.detach().clone()
    Wx, Wh, b = convert.from_torch(w_ih, w_hh)
    assert isinstance(Wx, np.ndarray) and Wx.dtype == np.float32
    assert Wx.flags.c_contiguous and Wh.flags.c_contiguous
    Wx[...] = 0  # the result is a copy: the tensor is untouched
    assert torch.equal(w_ih.detach(), before)


def test_from_torch_state_dict_rejects_projection(torch):
    lstm = torch.nn.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=r"weight_hr_l0.*proj_size"):
        convert.from_torch_state_dict(lstm.state_dict())


def test_from_torch_state_dict_missing_keys(torch):
    sd = torch.nn.LSTM(3, 4).state_dict()
    with pytest.raises(ValueError) as info:
        convert.from_torch_state_dict(sd, layer=1)
    msg = str(info.value)
    assert "weight_ih_l1" in msg and "weight_hh_l1" in msg  # what is missing
    assert "weight_ih_l0" in msg and "bias_hh_l0" in msg  # what exists
    with pytest.raises(ValueError, match=r"weight_ih_l0_reverse"):
        convert.from_torch_state_dict(sd, reverse=True)
    del sd["bias_hh_l0"]
    with pytest.raises(ValueError, match=r"bias_hh_l0"):
        convert.from_torch_state_dict(sd)


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_rt():
    """onnx and onnxruntime: skip without them, fail under LSTMC_REQUIRE_ALL=1 (CI)."""
    return require("onnx", "lstmc[interop]"), require("onnxruntime", "lstmc[interop]")


def _run_onnx_lstm(onnx_rt, W, R, B, xs, h0, c0, direction="forward"):
    """One ONNX ``LSTM`` node (opset 14, layout 0) run by onnxruntime.

    ``xs`` is lstmc's (N, T, D); ONNX layout 0 wants (T, N, D).  ``h0``,
    ``c0`` are (num_directions, N, H).  Returns Y (T, num_dir, N, H), Y_h, Y_c.
    """
    onnx, ort = onnx_rt
    from onnx import TensorProto, helper, numpy_helper

    num_dir, n4, D = W.shape
    H = n4 // 4
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", "", "initial_h", "initial_c"],
        ["Y", "Y_h", "Y_c"], hidden_size=H, direction=direction, layout=0)
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "lstm",
        [helper.make_tensor_value_info("X", f32, ["T", "N", D]),
         helper.make_tensor_value_info("initial_h", f32, [num_dir, "N", H]),
         helper.make_tensor_value_info("initial_c", f32, [num_dir, "N", H])],
        [helper.make_tensor_value_info("Y", f32, ["T", num_dir, "N", H]),
         helper.make_tensor_value_info("Y_h", f32, [num_dir, "N", H]),
         helper.make_tensor_value_info("Y_c", f32, [num_dir, "N", H])],
        [numpy_helper.from_array(a, name)
         for a, name in ((W, "W"), (R, "R"), (B, "B"))])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": np.ascontiguousarray(xs.transpose(1, 0, 2)),
                           "initial_h": h0, "initial_c": c0})


def _onnx_case(rng, N, H, num_dir):
    dtype = np.float32
    h0, c0 = ((0.5 * rng.standard_normal((num_dir, N, H))).astype(dtype)
              for _ in "hc")
    return h0, c0


def test_from_onnx_matches_onnxruntime(onnx_rt):
    N, T, D, H = 3, 5, 4, 3
    rng = np.random.default_rng(10)
    W = (0.5 * rng.standard_normal((1, 4 * H, D))).astype(np.float32)
    R = (0.5 * rng.standard_normal((1, 4 * H, H))).astype(np.float32)
    B = (0.5 * rng.standard_normal((1, 8 * H))).astype(np.float32)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    h0, c0 = _onnx_case(rng, N, H, 1)
    Y, Y_h, Y_c = _run_onnx_lstm(onnx_rt, W, R, B, xs, h0, c0)

    Wx, Wh, b = convert.from_onnx(W, R, B)
    assert Wx.dtype == np.float32
    layer, hs = _run_time(Wx, Wh, b, xs, h0[0], c0[0])
    assert_close(hs, Y[:, 0].transpose(1, 0, 2), np.float32)
    assert_close(layer.h, Y_h[0], np.float32)
    assert_close(layer.c, Y_c[0], np.float32)
    # one direction without the leading axis: the same weights
    for got, want in zip(convert.from_onnx(W[0], R[0], B[0]), (Wx, Wh, b)):
        np.testing.assert_array_equal(got, want)


def test_to_onnx_loads_into_onnxruntime(onnx_rt):
    N, T, D, H = 2, 6, 3, 4
    rng = np.random.default_rng(11)
    Wx, Wh, b = _random_lstmc(rng, D, H, np.float32)
    W, R, B = convert.to_onnx(Wx, Wh, b)
    assert (W.shape, R.shape, B.shape) == ((1, 4 * H, D), (1, 4 * H, H),
                                           (1, 8 * H))
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    h0, c0 = _onnx_case(rng, N, H, 1)
    Y, Y_h, Y_c = _run_onnx_lstm(onnx_rt, W, R, B, xs, h0, c0)
    layer, hs = _run_time(Wx, Wh, b, xs, h0[0], c0[0])
    assert_close(hs, Y[:, 0].transpose(1, 0, 2), np.float32)
    assert_close(layer.h, Y_h[0], np.float32)
    assert_close(layer.c, Y_c[0], np.float32)


def test_from_onnx_bidirectional_directions(onnx_rt):
    N, T, D, H = 2, 4, 3, 2
    rng = np.random.default_rng(12)
    W = (0.5 * rng.standard_normal((2, 4 * H, D))).astype(np.float32)
    R = (0.5 * rng.standard_normal((2, 4 * H, H))).astype(np.float32)
    B = (0.5 * rng.standard_normal((2, 8 * H))).astype(np.float32)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    h0, c0 = _onnx_case(rng, N, H, 2)
    Y, Y_h, Y_c = _run_onnx_lstm(onnx_rt, W, R, B, xs, h0, c0,
                                 direction="bidirectional")

    fwd, hs_f = _run_time(*convert.from_onnx(W, R, B), xs, h0[0], c0[0])
    rev, hs_r = _run_time(*convert.from_onnx(W, R, B, direction=1),
                          xs[:, ::-1], h0[1], c0[1])
    assert_close(hs_f, Y[:, 0].transpose(1, 0, 2), np.float32)
    assert_close(hs_r[:, ::-1], Y[:, 1].transpose(1, 0, 2), np.float32)
    assert_close(fwd.h, Y_h[0], np.float32)
    assert_close(rev.h, Y_h[1], np.float32)
    assert_close(fwd.c, Y_c[0], np.float32)
    assert_close(rev.c, Y_c[1], np.float32)


# ---------------------------------------------------------------------------
# Keras (not installed: a NumPy transcription of its documented math)
# ---------------------------------------------------------------------------

def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _keras_lstm(xs, kernel, recurrent_kernel, bias, h0, c0):
    """keras.layers.LSTM(H, return_sequences=True) with its defaults.

    Keras is not installed here, so this follows Keras's LSTMCell:
    ``z = x @ kernel + h @ recurrent_kernel + bias``, cut into four column
    blocks z0, z1, z2, z3; ``i = sigmoid(z0)``, ``f = sigmoid(z1)``,
    ``c = f * c + i * tanh(z2)``, ``o = sigmoid(z3)``, ``h = o * tanh(c)``
    (recurrent_activation="sigmoid", activation="tanh").
    """
    H = recurrent_kernel.shape[0]
    h, c = h0, c0
    hs = []
    for t in range(xs.shape[1]):
        z = xs[:, t] @ kernel + h @ recurrent_kernel + bias
        i = _sigmoid(z[:, :H])
        f = _sigmoid(z[:, H:2 * H])
        c = f * c + i * np.tanh(z[:, 2 * H:3 * H])
        o = _sigmoid(z[:, 3 * H:])
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs, axis=1), h, c


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_keras_matches_keras_math(dtype):
    N, T, D, H = 3, 5, 4, 3
    rng = np.random.default_rng(13)
    kernel, rec, bias = _random_lstmc(rng, D, H, dtype)  # same shapes
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h0, c0 = (rng.standard_normal((N, H)).astype(dtype) for _ in "hc")
    want_hs, want_h, want_c = _keras_lstm(xs, kernel, rec, bias, h0, c0)

    Wx, Wh, b = convert.from_keras(kernel, rec, bias)
    assert Wx.dtype == dtype
    layer, hs = _run_time(Wx, Wh, b, xs, h0, c0)
    assert_close(hs, want_hs, dtype)
    assert_close(layer.h, want_h, dtype)
    assert_close(layer.c, want_c, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_keras_matches_keras_math(dtype):
    N, T, D, H = 2, 4, 3, 5
    rng = np.random.default_rng(14)
    Wx, Wh, b = _random_lstmc(rng, D, H, dtype)
    kernel, rec, bias = convert.to_keras(Wx, Wh, b)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    zeros = np.zeros((N, H), dtype)
    want_hs, _, _ = _keras_lstm(xs, kernel, rec, bias, zeros, zeros)
    assert_close(_run_time(Wx, Wh, b, xs)[1], want_hs, dtype)


def test_from_keras_without_bias():
    rng = np.random.default_rng(15)
    kernel, rec, _ = _random_lstmc(rng, 3, 2, np.float64)
    Wx, Wh, b = convert.from_keras(kernel, rec)
    assert b.shape == (8,) and b.dtype == np.float64 and not b.any()
    xs = rng.standard_normal((2, 3, 3))
    zeros = np.zeros((2, 2))
    want_hs, _, _ = _keras_lstm(xs, kernel, rec, 0.0, zeros, zeros)
    assert_close(_run_time(Wx, Wh, b, xs)[1], want_hs, np.float64)


# ---------------------------------------------------------------------------
# Round trips (exact: the converters only move numbers)
# ---------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=7)
dtypes = st.sampled_from(DTYPES)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray)
        assert g.dtype == w.dtype
        assert g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)


@settings(max_examples=40, deadline=None)
@given(D=sizes, H=sizes, dtype=dtypes, seed=seeds)
def test_round_trips_from_lstmc(D, H, dtype, seed):
    lw = _random_lstmc(np.random.default_rng(seed), D, H, dtype)
    _assert_same(convert.from_torch(*convert.to_torch(*lw)), lw)
    _assert_same(convert.from_keras(*convert.to_keras(*lw)), lw)
    _assert_same(convert.from_onnx(*convert.to_onnx(*lw)), lw)
    # PyTorch and Keras both order i, f, g(c), o: only the transpose differs.
    w_ih, w_hh, b_ih, b_hh = convert.to_torch(*lw)
    _assert_same(convert.to_keras(*lw), (w_ih.T, w_hh.T, b_ih))
    assert not b_hh.any()


@settings(max_examples=40, deadline=None)
@given(D=sizes, H=sizes, dtype=dtypes, seed=seeds)
def test_round_trips_to_lstmc(D, H, dtype, seed):
    rng = np.random.default_rng(seed)
    w_ih = rng.standard_normal((4 * H, D)).astype(dtype)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
    b_ih = rng.standard_normal(4 * H).astype(dtype)
    zeros = np.zeros(4 * H, dtype)
    _assert_same(convert.to_torch(*convert.from_torch(w_ih, w_hh, b_ih)),
                 (w_ih, w_hh, b_ih, zeros))
    _assert_same(convert.to_keras(*convert.from_keras(w_ih.T, w_hh.T, b_ih)),
                 (np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T),
                  b_ih))
    W, R = w_ih[None], w_hh[None]
    B = np.concatenate([b_ih, zeros])[None]
    _assert_same(convert.to_onnx(*convert.from_onnx(W, R, B)), (W, R, B))
    # Split biases come back summed into the input bias.
    b_hh = rng.standard_normal(4 * H).astype(dtype)
    _assert_same(
        convert.to_torch(*convert.from_torch(w_ih, w_hh, b_ih, b_hh))[2:],
        (b_ih + b_hh, zeros))
    B2 = np.concatenate([b_ih, b_hh])[None]
    _assert_same(convert.to_onnx(*convert.from_onnx(W, R, B2))[2:],
                 (np.concatenate([b_ih + b_hh, zeros])[None],))


@settings(max_examples=25, deadline=None)
@given(D=sizes, H=sizes, seed=seeds)
def test_gate_blocks_land_in_lstmc_order(D, H, seed):
    """Each framework's named gate block ends up in lstmc's f, g, i, o slot."""
    rng = np.random.default_rng(seed)
    blocks = {g: rng.standard_normal((H, D)) for g in "ifgo"}  # rows
    lstmc_cols = np.concatenate([blocks[g].T for g in "fgio"], axis=1)
    orders = {"torch": "ifgo", "onnx": "iofg"}  # documented row orders
    rows = {k: np.concatenate([blocks[g] for g in v]) for k, v in orders.items()}
    hh = np.zeros((4 * H, H))
    np.testing.assert_array_equal(
        convert.from_torch(rows["torch"], hh)[0], lstmc_cols)
    np.testing.assert_array_equal(
        convert.from_onnx(rows["onnx"], hh)[0], lstmc_cols)
    np.testing.assert_array_equal(  # Keras: columns i, f, c, o
        convert.from_keras(rows["torch"].T, hh.T)[0], lstmc_cols)


# ---------------------------------------------------------------------------
# Inputs, dtypes and errors
# ---------------------------------------------------------------------------

class _ArrayLike:
    """Not an ndarray, but has ``__array__`` (like a framework tensor)."""

    def __init__(self, a):
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


def test_accepts_array_likes_and_any_layout():
    rng = np.random.default_rng(16)
    Wx, Wh, b = _random_lstmc(rng, 3, 2, np.float32)
    want = convert.to_torch(Wx, Wh, b)
    got = convert.to_torch(_ArrayLike(Wx), np.asfortranarray(Wh),
                           b.tolist())
    # a list of Python floats is dtype-neutral: float32 from the others
    _assert_same(got, tuple(a.astype(np.float32) for a in want))
    strided = np.zeros((3, 16), np.float32)[:, ::2]
    strided[...] = Wx
    _assert_same(convert.to_torch(strided, Wh[::-1].copy()[::-1], b), want)


def test_integer_inputs_give_float64():
    Wx, Wh, b = convert.from_keras([[1, 2, 3, 4]], [[0, 1, 0, 0]], None)
    assert Wx.dtype == Wh.dtype == b.dtype == np.float64
    # columns i, f, c, o -> f, g, i, o
    np.testing.assert_array_equal(Wx, [[2.0, 3.0, 1.0, 4.0]])


def test_outputs_do_not_alias_inputs():
    rng = np.random.default_rng(17)
    Wx, Wh, b = _random_lstmc(rng, 2, 1, np.float64)
    saved = [a.copy() for a in (Wx, Wh, b)]
    for out in (convert.to_torch(Wx, Wh, b), convert.to_keras(Wx, Wh, b),
                convert.to_onnx(Wx, Wh, b)):
        for a in out:
            a[...] = -1
    _assert_same((Wx, Wh, b), saved)


def test_mixed_float_dtypes_raise_type_error():
    Wx = np.zeros((3, 8), np.float32)
    Wh = np.zeros((2, 8), np.float64)
    with pytest.raises(TypeError, match=r"Wh.*float64.*Wx.*float32"):
        convert.to_torch(Wx, Wh, np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="complex"):
        convert.from_keras(np.zeros((3, 8), complex), np.zeros((2, 8)), None)
    with pytest.raises(TypeError, match="weight_ih"):
        convert.from_torch(None, np.zeros((8, 2)))


@pytest.mark.parametrize("call, name", [
    (lambda: convert.from_torch(np.zeros((7, 3)), np.zeros((7, 2))),
     "weight_ih"),
    (lambda: convert.from_torch(np.zeros((8, 3, 1)), np.zeros((8, 2))),
     "weight_ih"),
    (lambda: convert.from_torch(np.zeros((8, 3)), np.zeros((8, 3))),
     "weight_hh"),
    (lambda: convert.from_torch(np.zeros((8, 3)), np.zeros((8, 2)),
                                np.zeros(8), np.zeros(4)), "bias_hh"),
    (lambda: convert.to_torch(np.zeros((3, 6)), np.zeros((1, 6)), None), "Wx"),
    (lambda: convert.to_torch(np.zeros((3, 8)), np.zeros((8, 2)), None), "Wh"),
    (lambda: convert.to_keras(np.zeros((3, 8)), np.zeros((2, 8)),
                              np.zeros((1, 8))), "b"),
    (lambda: convert.to_onnx(np.zeros(8), np.zeros((2, 8)), None), "Wx"),
    (lambda: convert.from_keras(np.zeros((3, 8)), np.zeros((3, 8))),
     "recurrent_kernel"),
    (lambda: convert.from_keras(np.zeros((3, 8)), np.zeros((2, 8)),
                                np.zeros(16)), "bias"),
    (lambda: convert.from_keras(np.zeros((3, 5)), np.zeros((2, 8))),
     "kernel"),
    (lambda: convert.from_onnx(np.zeros((1, 8, 3)), np.zeros((1, 8, 1))), "R"),
    (lambda: convert.from_onnx(np.zeros((1, 8, 3)), np.zeros((1, 8, 2)),
                               np.zeros((1, 8))), "B"),
    (lambda: convert.from_onnx(np.zeros((1, 8, 3, 1)), np.zeros((1, 8, 2))),
     "W"),
    (lambda: convert.from_onnx(np.zeros((2, 8, 3)), np.zeros((1, 8, 2))),
     "num_directions"),
    (lambda: convert.from_onnx(np.zeros((2, 8, 3)), np.zeros((8, 2))),
     "num_directions"),
    (lambda: convert.from_onnx(np.zeros((1, 8, 3)), np.zeros((1, 8, 2)),
                               direction=1), "direction"),
])
def test_bad_shapes_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_state_dict_argument_checks():
    sd = {"weight_ih_l0": np.zeros((8, 3)), "weight_hh_l0": np.zeros((8, 2))}
    assert convert.from_torch_state_dict(sd)[0].shape == (3, 8)
    with pytest.raises(ValueError, match="layer"):
        convert.from_torch_state_dict(sd, layer=-1)
    with pytest.raises(TypeError, match="layer"):
        convert.from_torch_state_dict(sd, layer="0")
    sd["weight_hr_l0"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="proj_size"):
        convert.from_torch_state_dict(sd)


def test_needs_no_framework(monkeypatch):
    import importlib.util
    import sys

    for name in ("torch", "onnx", "onnxruntime", "keras", "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)  # importing them fails
    spec = importlib.util.spec_from_file_location("_convert_alone",
                                                  convert.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Wx, Wh, b = module.from_torch(np.ones((8, 3)), np.ones((8, 2)))
    assert Wx.shape == (3, 8)
    assert module.to_onnx(Wx, Wh, b)[0].shape == (1, 8, 3)
