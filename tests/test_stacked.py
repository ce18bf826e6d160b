"""lstmc.StackedLSTM against real PyTorch and ONNX Runtime.

torch.nn.LSTM (num_layers 1-3, bidirectional or not, batch_first either way,
bias on or off, padded batches through pack_padded_sequence) and onnxruntime
(models from torch.onnx.export and from StackedLSTM.to_onnx, with
sequence_lens) are the references: outputs and final states to 1e-5 in
float32, gradients of the whole stack against torch autograd to 1e-9 in
float64. torch's pack_padded_sequence refuses rows of length 0, so such rows
are compared on their own: their output is zeros and their final state is
their initial state. The structure, error and pickling tests need no
framework. Frameworks come through ``optional.require``.
"""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmc
from lstmc import StackedLSTM, convert
from optional import require
from reference import (LAYOUTS, Snapshot, check_dtype_message, check_shape_message,
                       with_layout)

F32_TOL = dict(rtol=1e-5, atol=1e-5)
F64_GRAD_TOL = dict(rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def torch():
    return require("torch", "lstmc[interop]")


@pytest.fixture(scope="module")
def onnx_rt():
    return require("onnx", "lstmc[interop]"), require("onnxruntime", "lstmc[interop]")


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def random_stack(rng, D, H, num_layers, bidirectional, dtype=np.float64, scale=0.6):
    """Constructor-form weights of a random stack."""
    dirs = 2 if bidirectional else 1
    layers = []
    for k in range(num_layers):
        d_in = D if k == 0 else H * dirs
        triples = [tuple((scale * rng.standard_normal(s)).astype(dtype)
                         for s in ((d_in, 4 * H), (H, 4 * H), (4 * H,)))
                   for _ in range(dirs)]
        layers.append(tuple(triples) if bidirectional else triples[0])
    return layers


def torch_lstm(torch, D, H, num_layers, bidirectional, *, bias=True, batch_first=False,
               dtype=np.float32, seed=0):
    """A torch.nn.LSTM with random weights larger than torch's default init."""
    torch.manual_seed(seed)
    module = torch.nn.LSTM(D, H, num_layers=num_layers, bidirectional=bidirectional,
                           bias=bias, batch_first=batch_first)
    module = module.to({np.float32: torch.float32, np.float64: torch.float64}[dtype])
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)
    return module.eval()


def run_torch(torch, module, xs, lengths=None, h0=None, c0=None, *, grad_out=None):
    """torch's (hs (N, T, H*dirs), h_n, c_n) for batch-major NumPy xs, padded
    with zeros past each row's length. Rows of length 0 are left out of torch's
    run (it refuses them): their outputs are zeros and their h_n, c_n their h0, c0.

    With grad_out (N, T, H*dirs), also backpropagates sum(hs * grad_out) and
    returns (hs, h_n, c_n, grads) with grads a dict: 'xs', 'h0', 'c0', and the
    module's parameter gradients under their names.
    """
    N, T, _ = xs.shape
    dirs = 2 if module.bidirectional else 1
    H, LD = module.hidden_size, module.num_layers * dirs
    dtype = xs.dtype
    h0 = np.zeros((LD, N, H), dtype) if h0 is None else h0
    c0 = np.zeros((LD, N, H), dtype) if c0 is None else c0
    lengths = np.full(N, T) if lengths is None else np.asarray(lengths)
    run = np.flatnonzero(lengths > 0)

    tx = torch.tensor(xs[run], requires_grad=True)
    th0 = torch.tensor(h0[:, run], requires_grad=True)
    tc0 = torch.tensor(c0[:, run], requires_grad=True)
    module.zero_grad()
    inp = tx if module.batch_first else tx.transpose(0, 1)
    if (lengths[run] == T).all():
        out, (hn, cn) = module(inp, (th0, tc0))
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            inp, torch.tensor(lengths[run], dtype=torch.int64),
            batch_first=module.batch_first, enforce_sorted=False)
        out, (hn, cn) = module(packed, (th0, tc0))
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=module.batch_first, total_length=T)
    out_bm = out if module.batch_first else out.transpose(0, 1)

    hs = np.zeros((N, T, H * dirs), dtype)
    h_n, c_n = h0.copy(), c0.copy()
    hs[run] = out_bm.detach().numpy()
    h_n[:, run] = hn.detach().numpy()
    c_n[:, run] = cn.detach().numpy()
    if grad_out is None:
        return hs, h_n, c_n
    (out_bm * torch.tensor(grad_out[run])).sum().backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    for name, t, full in (("xs", tx, xs), ("h0", th0, h0), ("c0", tc0, c0)):
        g = np.zeros_like(full)
        if name == "xs":
            g[run] = t.grad.numpy()
        else:
            g[:, run] = t.grad.numpy()
        grads[name] = g
    return hs, h_n, c_n, grads


def assert_padded_zero(a, lengths):
    for i, n in enumerate(lengths):
        assert not np.any(a[i, n:]), f"row {i} is not zero past its length {n}"


def make_inputs(rng, N, T, D, H, LD, dtype):
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((LD, N, H))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((LD, N, H))).astype(dtype)
    return xs, h0, c0


# ---------------------------------------------------------------------------
# PyTorch: forward
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_forward_matches_torch_packed(torch, rng, num_layers, bidirectional, batch_first,
                                      bias):
    D, H, N, T = 3, 4, 6, 7
    module = torch_lstm(torch, D, H, num_layers, bidirectional, bias=bias,
                        batch_first=batch_first)
    model = StackedLSTM.from_torch(module)
    dirs = 2 if bidirectional else 1
    assert (model.num_layers, model.num_directions, model.dtype) == \
        (num_layers, dirs, np.float32)
    xs, h0, c0 = make_inputs(rng, N, T, D, H, num_layers * dirs, np.float32)
    lengths = np.array([3, 7, 0, 1, 5, 7])            # unsorted, with 0 and T
    want_hs, want_h, want_c = run_torch(torch, module, xs, lengths, h0, c0)

    hs = model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    assert hs.shape == (N, T, H * dirs) and hs.dtype == np.float32
    np.testing.assert_allclose(hs, want_hs, **F32_TOL)
    np.testing.assert_allclose(model.h, want_h, **F32_TOL)
    np.testing.assert_allclose(model.c, want_c, **F32_TOL)
    assert_padded_zero(hs, lengths)
    # the length-0 row: zeros out, its initial state back
    np.testing.assert_array_equal(hs[2], 0)
    np.testing.assert_array_equal(model.h[:, 2], h0[:, 2])
    np.testing.assert_array_equal(model.c[:, 2], c0[:, 2])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_forward_full_length_zero_state_float64(torch, rng, bidirectional):
    module = torch_lstm(torch, 5, 3, 2, bidirectional, dtype=np.float64)
    model = StackedLSTM.from_torch(module)
    assert model.dtype == np.float64
    xs = rng.standard_normal((4, 6, 5))
    want_hs, want_h, want_c = run_torch(torch, module, xs)
    hs = model.forward(xs)
    np.testing.assert_allclose(hs, want_hs, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(model.h, want_h, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(model.c, want_c, rtol=1e-11, atol=1e-12)
    # lengths all T is the same computation as no lengths
    np.testing.assert_array_equal(model.forward(xs, lengths=[6] * 4), hs)


def test_forward_c0_without_h0(torch, rng):
    module = torch_lstm(torch, 3, 4, 2, True)
    model = StackedLSTM.from_torch(module)
    xs, _, c0 = make_inputs(rng, 3, 5, 3, 4, 4, np.float32)
    want_hs, want_h, want_c = run_torch(torch, module, xs, [5, 2, 4], None, c0)
    hs = model.forward(xs, lengths=[5, 2, 4], c0=c0)
    np.testing.assert_allclose(hs, want_hs, **F32_TOL)
    np.testing.assert_allclose(model.h, want_h, **F32_TOL)
    np.testing.assert_allclose(model.c, want_c, **F32_TOL)


def test_forward_state_order_is_torchs(torch, rng):
    """h0 rows are (layer 0 fwd, layer 0 rev, layer 1 fwd, ...): a state given to one
    row only changes that layer and direction (and what reads from it)."""
    module = torch_lstm(torch, 3, 4, 2, True)
    model = StackedLSTM.from_torch(module)
    xs = rng.standard_normal((2, 4, 3)).astype(np.float32)
    base = model.forward(xs)
    for j in range(4):
        h0 = np.zeros((4, 2, 4), np.float32)
        h0[j] = 1.0
        want_hs, want_h, _ = run_torch(torch, module, xs, None, h0)
        hs = model.forward(xs, h0=h0)
        np.testing.assert_allclose(hs, want_hs, **F32_TOL)
        np.testing.assert_allclose(model.h, want_h, **F32_TOL)
        assert not np.allclose(hs, base)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_layers=st.integers(1, 3), bidirectional=st.booleans(),
       batch_first=st.booleans(), dims=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)), data=st.data())
def test_hypothesis_matches_torch(torch, num_layers, bidirectional, batch_first, dims, layouts,
                                  data):
    """Any layers, directions, lengths, and memory layouts of xs and h0."""
    D, H = dims
    N = data.draw(st.integers(1, 4), label="N")
    T = data.draw(st.integers(1, 5), label="T")
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=N, max_size=N),
                                 label="lengths"))
    with_state = data.draw(st.booleans(), label="h0/c0")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    module = torch_lstm(torch, D, H, num_layers, bidirectional, batch_first=batch_first,
                        seed=seed)
    model = StackedLSTM.from_torch(module)
    xs, h0, c0 = make_inputs(rng, N, T, D, H, model.num_layers * model.num_directions,
                             np.float32)
    if not with_state:
        h0 = c0 = None
    want_hs, want_h, want_c = run_torch(torch, module, xs, lengths, h0, c0)
    hs = model.forward(with_layout(xs, layouts[0]), lengths=lengths,
                       h0=None if h0 is None else with_layout(h0, layouts[1]), c0=c0)
    np.testing.assert_allclose(hs, want_hs, **F32_TOL)
    np.testing.assert_allclose(model.h, want_h, **F32_TOL)
    np.testing.assert_allclose(model.c, want_c, **F32_TOL)


# ---------------------------------------------------------------------------
# PyTorch: gradients
# ---------------------------------------------------------------------------

def _torch_param_grads(grads, num_layers, dirs):
    """torch's parameter gradients as lstmc (dWx, dWh, db), flat in params order.
    The converters are linear, so they map gradients as they map weights; b is
    bias_ih + bias_hh, so db is either one's gradient."""
    flat = []
    for k in range(num_layers):
        for d in range(dirs):
            s = f"_l{k}" + ("_reverse" if d else "")
            flat += convert.from_torch(grads["weight_ih" + s], grads["weight_hh" + s],
                                       grads.get("bias_ih" + s))
    return flat


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_backward_matches_torch_autograd(torch, rng, num_layers, bidirectional):
    D, H, N, T = 3, 4, 5, 6
    dirs = 2 if bidirectional else 1
    module = torch_lstm(torch, D, H, num_layers, bidirectional, dtype=np.float64,
                        batch_first=True)
    model = StackedLSTM.from_torch(module)
    xs, h0, c0 = make_inputs(rng, N, T, D, H, num_layers * dirs, np.float64)
    lengths = np.array([4, 6, 1, 3, 6])
    dhs = rng.standard_normal((N, T, H * dirs))
    want_hs, _, _, want = run_torch(torch, module, xs, lengths, h0, c0, grad_out=dhs)

    hs = model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    np.testing.assert_allclose(hs, want_hs, rtol=1e-11, atol=1e-12)
    grads_before = [g for g in model.grads]
    dxs = model.backward(dhs)
    np.testing.assert_allclose(dxs, want["xs"], **F64_GRAD_TOL)
    np.testing.assert_allclose(model.dh, want["h0"], **F64_GRAD_TOL)
    np.testing.assert_allclose(model.dc, want["c0"], **F64_GRAD_TOL)
    assert model.dh.shape == model.dc.shape == (num_layers * dirs, N, H)
    assert_padded_zero(dxs, lengths)
    got = model.grads
    assert all(a is b for a, b in zip(got, grads_before)), "grads must be written in place"
    for k, (g, w) in enumerate(zip(got, _torch_param_grads(want, num_layers, dirs))):
        np.testing.assert_allclose(g, w, err_msg=f"grads[{k}]", **F64_GRAD_TOL)


def test_backward_ignores_padded_dhs_and_zero_length_rows(torch, rng):
    module = torch_lstm(torch, 3, 4, 2, True, dtype=np.float64)
    model = StackedLSTM.from_torch(module)
    xs, h0, c0 = make_inputs(rng, 4, 5, 3, 4, 4, np.float64)
    lengths = np.array([5, 0, 2, 3])
    dhs = rng.standard_normal((4, 5, 8))
    clean = dhs.copy()
    for i, n in enumerate(lengths):
        clean[i, n:] = 0
    model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    dxs = model.backward(dhs)
    grads = [g.copy() for g in model.grads]
    dh, dc = model.dh.copy(), model.dc.copy()
    model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    np.testing.assert_array_equal(model.backward(clean), dxs)
    for a, b in zip(model.grads, grads):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.dh, dh)
    # a length-0 row passes no gradient anywhere
    np.testing.assert_array_equal(dxs[1], 0)
    np.testing.assert_array_equal(dh[:, 1], 0)
    np.testing.assert_array_equal(dc[:, 1], 0)
    # and the other rows match torch (run without the empty row)
    keep = [0, 2, 3]
    _, _, _, want = run_torch(torch, module, xs[keep], lengths[keep], h0[:, keep],
                              c0[:, keep], grad_out=dhs[keep])
    np.testing.assert_allclose(dxs[keep], want["xs"], **F64_GRAD_TOL)
    np.testing.assert_allclose(dh[:, keep], want["h0"], **F64_GRAD_TOL)
    np.testing.assert_allclose(dc[:, keep], want["c0"], **F64_GRAD_TOL)


def test_central_differences_dh0_dc0_float64(rng):
    """dh, dc (and a weight gradient) of the whole stack by central differences,
    with lengths: framework-free, so it runs everywhere."""
    model = StackedLSTM(random_stack(rng, 2, 3, 2, True))
    xs, h0, c0 = make_inputs(rng, 3, 4, 2, 3, 4, np.float64)
    lengths = np.array([4, 1, 3])
    dhs = rng.standard_normal((3, 4, 6))

    def loss():
        return float(np.sum(model.forward(xs, lengths=lengths, h0=h0, c0=c0) * dhs))

    model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    dxs = model.backward(dhs)
    analytic = {"h0": model.dh.copy(), "c0": model.dc.copy(), "xs": dxs,
                "Wh(layer 1 reverse)": model.grads[10].copy()}
    for name, arr in (("h0", h0), ("c0", c0), ("xs", xs),
                      ("Wh(layer 1 reverse)", model.params[10])):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + 1e-6
            up = loss()
            arr[idx] = old - 1e-6
            down = loss()
            arr[idx] = old
            num[idx] = (up - down) / 2e-6
        np.testing.assert_allclose(analytic[name], num, rtol=1e-6, atol=1e-8, err_msg=name)


# ---------------------------------------------------------------------------
# PyTorch: weights in and out
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_to_torch_state_dict_loads_into_torch(torch, rng, bias, bidirectional):
    model = StackedLSTM(random_stack(rng, 3, 4, 3, bidirectional, np.float32))
    if not bias:                              # a bias-free stack
        for layer in model.params[2::3]:
            layer[...] = 0
    sd = model.to_torch_state_dict(bias=bias)
    module = torch.nn.LSTM(3, 4, num_layers=3, bidirectional=bidirectional, bias=bias,
                           batch_first=True)
    assert list(sd) == list(module.state_dict())           # torch's keys, torch's order
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    xs = rng.standard_normal((3, 5, 3)).astype(np.float32)
    lengths = np.array([2, 5, 4])
    want_hs, want_h, want_c = run_torch(torch, module.eval(), xs, lengths)
    np.testing.assert_allclose(model.forward(xs, lengths=lengths), want_hs, **F32_TOL)
    np.testing.assert_allclose(model.h, want_h, **F32_TOL)
    np.testing.assert_allclose(model.c, want_c, **F32_TOL)
    # and back: the very same numbers
    again = StackedLSTM.from_torch(sd)
    for a, b in zip(again.params, model.params):
        np.testing.assert_array_equal(a, b)


def test_to_torch_state_dict_without_bias_refuses_nonzero_b(rng):
    model = StackedLSTM(random_stack(rng, 3, 4, 2, False))
    with pytest.raises(ValueError, match="layer 0"):
        model.to_torch_state_dict(bias=False)


def test_from_torch_state_dict_equals_module_and_accepts_prefix(torch):
    module = torch_lstm(torch, 3, 4, 2, True)
    a = StackedLSTM.from_torch(module)
    b = StackedLSTM.from_torch(module.state_dict())
    outer = torch.nn.Sequential()
    outer.add_module("encoder", module)
    c = StackedLSTM.from_torch(outer.state_dict())          # keys "encoder.weight_ih_l0"
    for x, y, z in zip(a.params, b.params, c.params):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    # per layer, from_torch is convert.from_torch_state_dict
    ref = convert.from_torch_state_dict(module.state_dict(), 1, reverse=True)
    for x, y in zip(a.layers[1][1].params, ref):
        np.testing.assert_array_equal(x, y)


def test_from_torch_refusals(torch):
    proj = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)
    for obj in (proj, proj.state_dict()):
        with pytest.raises(ValueError, match="proj_size"):
            StackedLSTM.from_torch(obj)
    with pytest.raises(ValueError, match="GRU"):
        StackedLSTM.from_torch(torch.nn.GRU(3, 4))
    with pytest.raises(ValueError, match="no LSTM weights"):
        StackedLSTM.from_torch({"linear.weight": torch.zeros(2, 2)})
    two = {**{"a." + k: v for k, v in torch.nn.LSTM(3, 4).state_dict().items()},
           **{"b." + k: v for k, v in torch.nn.LSTM(3, 4).state_dict().items()}}
    with pytest.raises(ValueError, match="several LSTMs"):
        StackedLSTM.from_torch(two)
    gap = dict(torch.nn.LSTM(3, 4, num_layers=3).state_dict())
    for k in [k for k in gap if k.endswith("_l1")]:
        del gap[k]
    with pytest.raises(ValueError, match="weight_ih_l1|_l2"):
        StackedLSTM.from_torch(gap)
    with pytest.raises(TypeError, match="module_or_state_dict"):
        StackedLSTM.from_torch(42)


# ---------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------

def _ort_run(onnx_rt, model_bytes, feeds):
    _, ort = onnx_rt
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _export(torch, module, xs_t, h0_t, c0_t):
    buf = io.BytesIO()
    with warnings.catch_warnings():         # the TorchScript exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (xs_t, (h0_t, c0_t)), buf, dynamo=False,
                          input_names=["x", "h0", "c0"], output_names=["y", "hn", "cn"],
                          dynamic_axes={"x": {0: "a", 1: "b"}, "h0": {1: "n"},
                                        "c0": {1: "n"}})
    return buf.getvalue()


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tmajor", "bfirst"])
def test_from_onnx_torch_export_matches_onnxruntime(torch, onnx_rt, rng, num_layers,
                                                    bidirectional, batch_first):
    onnx, _ = onnx_rt
    D, H, N, T = 3, 4, 3, 5
    dirs = 2 if bidirectional else 1
    module = torch_lstm(torch, D, H, num_layers, bidirectional, batch_first=batch_first)
    xs, h0, c0 = make_inputs(rng, N, T, D, H, num_layers * dirs, np.float32)
    x_in = xs if batch_first else np.ascontiguousarray(xs.transpose(1, 0, 2))
    blob = _export(torch, module, torch.from_numpy(x_in), torch.from_numpy(h0),
                   torch.from_numpy(c0))
    proto = onnx.load_from_string(blob)
    assert sum(n.op_type == "LSTM" for n in proto.graph.node) == num_layers

    model = StackedLSTM.from_onnx(proto)
    assert (model.num_layers, model.num_directions) == (num_layers, dirs)
    ref = StackedLSTM.from_torch(module)
    for a, b in zip(model.params, ref.params):            # the same weights as torch's
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    y, hn, cn = _ort_run(onnx_rt, blob, {"x": x_in, "h0": h0, "c0": c0})
    y = y if batch_first else y.transpose(1, 0, 2)
    hs = model.forward(xs, h0=h0, c0=c0)
    np.testing.assert_allclose(hs, y, **F32_TOL)
    np.testing.assert_allclose(model.h, hn, **F32_TOL)
    np.testing.assert_allclose(model.c, cn, **F32_TOL)


def test_from_onnx_reads_a_path(torch, onnx_rt, tmp_path):
    module = torch_lstm(torch, 3, 4, 2, True)
    x = torch.zeros(5, 2, 3)
    blob = _export(torch, module, x, torch.zeros(4, 2, 4), torch.zeros(4, 2, 4))
    path = tmp_path / "m.onnx"
    path.write_bytes(blob)
    for arg in (path, str(path)):
        m = StackedLSTM.from_onnx(arg)
        for a, b in zip(m.params, StackedLSTM.from_torch(module).params):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_to_onnx_runs_in_onnxruntime_with_sequence_lens(onnx_rt, rng, tmp_path, num_layers,
                                                        bidirectional, dtype):
    onnx, _ = onnx_rt
    D, H, N, T = 3, 4, 5, 6
    model = StackedLSTM(random_stack(rng, D, H, num_layers, bidirectional, dtype))
    LD = num_layers * model.num_directions
    xs, h0, c0 = make_inputs(rng, N, T, D, H, LD, dtype)
    lengths = np.array([6, 2, 0, 1, 6], np.int32)       # with an empty row
    path = tmp_path / "stack.onnx"
    proto = model.to_onnx(path)
    assert path.exists() and isinstance(proto, onnx.ModelProto)
    onnx.checker.check_model(onnx.load(str(path)))
    # and back: the same weights, the same dtype
    again = StackedLSTM.from_onnx(str(path))
    assert again.dtype == dtype
    for a, b in zip(again.params, model.params):
        np.testing.assert_array_equal(a, b)
    # onnxruntime's LSTM kernel is float32 only: a float64 stack is written as float32
    if dtype == np.float64:
        path = tmp_path / "stack32.onnx"
        model.to_onnx(path, dtype=np.float32)
    f32 = [a.astype(np.float32) for a in (xs, h0, c0)]
    y, yh, yc = _ort_run(onnx_rt, str(path), {"X": f32[0], "sequence_lens": lengths,
                                              "initial_h": f32[1], "initial_c": f32[2]})
    hs = model.forward(xs, lengths=lengths, h0=h0, c0=c0)
    np.testing.assert_allclose(hs, y, **F32_TOL)
    np.testing.assert_allclose(model.h, yh, **F32_TOL)
    np.testing.assert_allclose(model.c, yc, **F32_TOL)
    assert_padded_zero(y, lengths)


def _one_node_model(onnx, W, R, B, direction="forward", P=None, **attrs):
    """A single-node ONNX LSTM model (opset 17), weights as initializers."""
    from onnx import TensorProto, helper, numpy_helper
    nd, n4, D = W.shape
    H = n4 // 4
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
             numpy_helper.from_array(B, "B")]
    inputs = ["X", "W", "R", "B", "", "", ""]
    if P is not None:
        inits.append(numpy_helper.from_array(P, "P"))
        inputs.append("P")
    node = helper.make_node("LSTM", inputs, ["Y", "Y_h", "Y_c"], direction=direction,
                            hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], "one",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_from_onnx_single_node_matches_onnxruntime(onnx_rt, rng, direction):
    onnx, _ = onnx_rt
    nd = 2 if direction == "bidirectional" else 1
    D, H = 3, 4
    W = (0.5 * rng.standard_normal((nd, 4 * H, D))).astype(np.float32)
    R = (0.5 * rng.standard_normal((nd, 4 * H, H))).astype(np.float32)
    B = (0.5 * rng.standard_normal((nd, 8 * H))).astype(np.float32)
    proto = _one_node_model(onnx, W, R, B, direction)
    model = StackedLSTM.from_onnx(proto)
    xs = rng.standard_normal((2, 5, D)).astype(np.float32)
    y, yh, yc = _ort_run(onnx_rt, proto.SerializeToString(),
                         {"X": np.ascontiguousarray(xs.transpose(1, 0, 2))})
    hs = model.forward(xs)
    # ONNX Y is (T, dirs, N, H)
    np.testing.assert_allclose(hs, y.transpose(2, 0, 1, 3).reshape(2, 5, nd * H), **F32_TOL)
    np.testing.assert_allclose(model.h, yh, **F32_TOL)
    np.testing.assert_allclose(model.c, yc, **F32_TOL)


@pytest.mark.parametrize("attr, kwargs", [
    ("P", dict(P=np.ones((1, 12), np.float32))),
    ("clip", dict(clip=3.0)),
    ("input_forget", dict(input_forget=1)),
    ("activations", dict(activations=["Sigmoid", "Relu", "Tanh"])),
    ("layout", dict(layout=1)),
    ("reverse", dict(direction="reverse")),
])
def test_from_onnx_refuses_what_lstmc_does_not_model(onnx_rt, rng, attr, kwargs):
    onnx, _ = onnx_rt
    W = rng.standard_normal((1, 16, 3)).astype(np.float32)
    R = rng.standard_normal((1, 16, 4)).astype(np.float32)
    B = rng.standard_normal((1, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=attr):
        StackedLSTM.from_onnx(_one_node_model(onnx, W, R, B, **kwargs))


def test_from_onnx_accepts_default_activations_and_zero_peepholes(onnx_rt, rng):
    onnx, _ = onnx_rt
    W = rng.standard_normal((1, 16, 3)).astype(np.float32)
    R = rng.standard_normal((1, 16, 4)).astype(np.float32)
    B = rng.standard_normal((1, 32)).astype(np.float32)
    proto = _one_node_model(onnx, W, R, B, P=np.zeros((1, 12), np.float32),
                            activations=["sigmoid", "tanh", "Tanh"])
    got = StackedLSTM.from_onnx(proto).params
    for a, b in zip(got, convert.from_onnx(W, R, B)):
        np.testing.assert_array_equal(a, b)


def test_from_onnx_reads_constant_nodes_and_identity(onnx_rt, rng):
    """Weights as Constant nodes, or behind Identity, are weights too."""
    onnx, _ = onnx_rt
    from onnx import helper
    model = StackedLSTM(random_stack(rng, 3, 4, 2, True, np.float32))
    proto = model.to_onnx()
    graph = proto.graph
    moved = [t for t in graph.initializer if t.name.endswith(("_W", "_R", "_B"))]
    assert len(moved) == 6
    nodes = []
    for k, t in enumerate(moved):
        if k % 2:                                   # Constant -> Identity -> LSTM
            inner = helper.make_tensor(t.name + "_raw", t.data_type, t.dims, t.raw_data,
                                       raw=True)
            nodes += [helper.make_node("Constant", [], [t.name + "_raw"], value=inner),
                      helper.make_node("Identity", [t.name + "_raw"], [t.name])]
        else:                                       # Constant -> LSTM
            nodes.append(helper.make_node("Constant", [], [t.name], value=t))
    for t in moved:
        graph.initializer.remove(t)
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old_nodes)
    onnx.checker.check_model(proto)
    again = StackedLSTM.from_onnx(proto)
    for a, b in zip(again.params, model.params):
        np.testing.assert_array_equal(a, b)
    xs = rng.standard_normal((2, 4, 3)).astype(np.float32)
    zeros = np.zeros((4, 2, 4), np.float32)
    y, _, _ = _ort_run(onnx_rt, proto.SerializeToString(),
                       {"X": xs, "sequence_lens": np.array([4, 2], np.int32),
                        "initial_h": zeros, "initial_c": zeros})
    np.testing.assert_allclose(again.forward(xs, lengths=[4, 2]), y, **F32_TOL)


def test_from_onnx_other_errors(onnx_rt, rng):
    onnx, _ = onnx_rt
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "none",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="no LSTM node"):
        StackedLSTM.from_onnx(helper.make_model(graph))
    with pytest.raises(TypeError, match="path_or_model"):
        StackedLSTM.from_onnx(3.5)
    # weights fed at run time are not a model's weights
    proto = _one_node_model(onnx, *(rng.standard_normal(s).astype(np.float32)
                                    for s in ((1, 16, 3), (1, 16, 4), (1, 32))))
    del proto.graph.initializer[1]                  # R
    proto.graph.input.append(helper.make_tensor_value_info("R", TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="R"):
        StackedLSTM.from_onnx(proto)


def test_from_onnx_two_unchained_nodes_refused(onnx_rt, rng):
    """Two LSTM nodes that both read the model's X are not a stack."""
    onnx, _ = onnx_rt
    from onnx import helper, numpy_helper
    W, R, B = (rng.standard_normal(s).astype(np.float32)
               for s in ((1, 16, 3), (1, 16, 4), (1, 32)))
    proto = _one_node_model(onnx, W, R, B)
    W2 = rng.standard_normal((1, 16, 4)).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(W2, "W2"))
    proto.graph.node.append(helper.make_node("LSTM", ["X", "W2", "R", "B"], ["Y2"],
                                             hidden_size=4))
    with pytest.raises(ValueError, match="stack"):
        StackedLSTM.from_onnx(proto)


# ---------------------------------------------------------------------------
# Structure, params, errors (no framework)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_structure_and_params_are_the_layers_arrays(rng, bidirectional):
    weights = random_stack(rng, 3, 4, 2, bidirectional)
    model = StackedLSTM(weights)
    dirs = 2 if bidirectional else 1
    assert (model.num_layers, model.bidirectional, model.num_directions) == \
        (2, bidirectional, dirs)
    assert (model.input_size, model.hidden_size, model.dtype) == (3, 4, np.float64)
    assert "num_layers=2" in repr(model)
    layers = model.layers
    assert len(layers) == 2
    flat = []
    for row in layers:
        row = row if bidirectional else (row,)
        assert [t.reverse for t in row] == [False, True][:dirs]
        flat += row
    assert all(isinstance(t, lstmc.TimeLSTM) for t in flat)
    # params: the very arrays passed, held by the TimeLSTMs, torch's order
    passed = [a for entry in weights for a in (entry if not bidirectional
                                               else entry[0] + entry[1])]
    assert len(model.params) == len(model.grads) == 6 * dirs
    assert all(p is a for p, a in zip(model.params, passed))
    assert all(p is q for p, q in zip(model.params, [p for t in flat for p in t.params]))
    assert all(g is q for g, q in zip(model.grads, [g for t in flat for g in t.grads]))
    # weights() rebuilds it, sharing the arrays
    again = StackedLSTM(model.weights())
    assert all(p is q for p, q in zip(again.params, model.params))
    for name in ("num_layers", "bidirectional", "num_directions", "input_size",
                 "hidden_size", "dtype", "layers"):
        with pytest.raises(AttributeError):
            setattr(model, name, 1)


def test_in_place_updates_are_seen_book_style(rng):
    """The book's SGD over the flat lists changes what forward computes."""
    model = StackedLSTM(random_stack(rng, 3, 4, 2, True))
    xs = rng.standard_normal((2, 5, 3))
    hs = model.forward(xs)
    model.backward(np.ones_like(hs))
    before = model.forward(xs)
    for p, g in zip(model.params, model.grads):
        p -= 0.1 * g
    after = model.forward(xs)
    assert np.sum(after) < np.sum(before)           # a step down the loss sum(hs)
    fresh = StackedLSTM([tuple(p.copy() for p in w) if not isinstance(w[0], tuple)
                         else tuple(tuple(a.copy() for a in t) for t in w)
                         for w in model.weights()])
    np.testing.assert_array_equal(fresh.forward(xs), after)


def test_empty_batch(rng):
    model = StackedLSTM(random_stack(rng, 3, 4, 2, True))
    hs = model.forward(np.zeros((0, 5, 3)), lengths=np.zeros(0, np.int64))
    assert hs.shape == (0, 5, 8)
    assert model.h.shape == model.c.shape == (4, 0, 4)
    dxs = model.backward(np.zeros((0, 5, 8)))
    assert dxs.shape == (0, 5, 3) and model.dh.shape == (4, 0, 4)


@pytest.mark.parametrize("layers, exc, words", [
    ([], ValueError, "empty"),
    ("abc", TypeError, "layers"),
    ([(1, 2)], ValueError, r"layers\[0\]"),
])
def test_constructor_rejects_malformed_layers(layers, exc, words):
    with pytest.raises(exc, match=words):
        StackedLSTM(layers)


def test_constructor_checks_that_layers_chain(rng):
    uni = random_stack(rng, 3, 4, 2, False)
    bi = random_stack(rng, 3, 4, 2, True)
    with pytest.raises(ValueError, match="alike"):
        StackedLSTM([uni[0], bi[1]])
    with pytest.raises(ValueError, match=r"layer 1.*\(8, 16\)"):
        StackedLSTM([bi[0], (uni[1], uni[1])])        # layer 1 reads 4, needs 8
    with pytest.raises(ValueError, match=r"layer 1.*\(4, 16\)"):
        StackedLSTM([uni[0], bi[1][0]])               # layer 1 reads 8, needs 4
    other_h = random_stack(rng, 4, 5, 1, False)
    with pytest.raises(ValueError, match="layer 1.*H=5"):
        StackedLSTM([uni[0], other_h[0]])
    f32 = tuple(a.astype(np.float32) for a in uni[1])
    with pytest.raises(TypeError, match="layer 1.*float32"):
        StackedLSTM([uni[0], f32])
    bad = (uni[0][0], uni[0][1][:2], uni[0][2])
    with pytest.raises(ValueError, match=r"layer 0 \(reverse\).*Wh"):
        StackedLSTM([(uni[0], bad)])


def _errors(model, N, T):
    LD, H, D, dt = model.num_layers * model.num_directions, model.hidden_size, \
        model.input_size, model.dtype
    other = np.float32 if dt == np.float64 else np.float64
    xs = np.zeros((N, T, D), dt)
    return [
        (dict(xs=np.zeros((N, T, D + 1), dt)), ValueError, "xs", (N, T, D + 1), (None, None, D)),
        (dict(xs=np.zeros((N, T, D), other)), TypeError, "xs", other, dt),
        (dict(xs=xs, lengths=[T + 1] + [1] * (N - 1)), ValueError, "lengths", None, None),
        (dict(xs=xs, lengths=[-1] + [1] * (N - 1)), ValueError, "lengths", None, None),
        (dict(xs=xs, lengths=[1] * (N + 1)), ValueError, "lengths", (N + 1,), (N,)),
        (dict(xs=xs, lengths=[1.0] * N), TypeError, "lengths", None, None),
        (dict(xs=xs, h0=np.zeros((LD - 1, N, H), dt)), ValueError, "h0", (LD - 1, N, H),
         (LD, N, H)),
        (dict(xs=xs, c0=np.zeros((LD, N + 1, H), dt)), ValueError, "c0", (LD, N + 1, H),
         (LD, N, H)),
        (dict(xs=xs, h0=np.zeros((LD, N, H), dt), c0=np.zeros((LD, N, H), other)),
         TypeError, "c0", other, dt),
    ]


@pytest.mark.parametrize("case", range(9))
def test_failed_forward_changes_nothing(rng, case):
    model = StackedLSTM(random_stack(rng, 3, 4, 2, True))
    N, T = 3, 5
    xs = rng.standard_normal((N, T, 3))
    dhs = rng.standard_normal((N, T, 8))
    model.forward(xs, lengths=[5, 2, 4])
    want_dxs = model.backward(dhs)
    snap = [Snapshot(t) for row in model.layers for t in row]
    state = {k: getattr(model, k).copy() for k in ("h", "c", "dh", "dc")}

    kwargs, exc, name, got, expected = _errors(model, N, T)[case]
    with pytest.raises(exc) as info:
        model.forward(**kwargs)
    msg = str(info.value)
    if exc is TypeError and got is not None:
        check_dtype_message(msg, name, got, expected)
    elif got is not None:
        check_shape_message(msg, name, got, expected)
    else:
        assert name in msg
    for s, t in zip(snap, [t for row in model.layers for t in row]):
        s.assert_unchanged(t)
    for k, v in state.items():
        np.testing.assert_array_equal(getattr(model, k), v)
    # the cache of the last good forward is still the one backward uses
    np.testing.assert_array_equal(model.backward(dhs), want_dxs)


def test_failed_backward_changes_nothing_and_needs_train(rng):
    model = StackedLSTM(random_stack(rng, 3, 4, 2, False))
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.zeros((1, 2, 4)))
    xs = rng.standard_normal((2, 4, 3))
    model.forward(xs)
    dhs = rng.standard_normal((2, 4, 4))
    want = model.backward(dhs)
    snap = [Snapshot(t) for t in model.layers]
    dh = model.dh.copy()
    for bad, exc in ((np.zeros((2, 4, 5)), ValueError), (np.zeros((2, 3, 4)), ValueError),
                     (dhs.astype(np.float32), TypeError)):
        with pytest.raises(exc, match="dhs"):
            model.backward(bad)
        for s, t in zip(snap, model.layers):
            s.assert_unchanged(t)
        np.testing.assert_array_equal(model.dh, dh)
    np.testing.assert_array_equal(model.backward(dhs), want)
    model.forward(xs, train=False)
    with pytest.raises(RuntimeError, match="train=True"):
        model.backward(dhs)


# ---------------------------------------------------------------------------
# pickle, deepcopy
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_pickle_and_deepcopy_round_trip(rng, how, dtype):
    model = StackedLSTM(random_stack(rng, 3, 4, 3, True, dtype))
    xs = rng.standard_normal((2, 5, 3)).astype(dtype)
    hs = model.forward(xs, lengths=[5, 3])
    model.backward(np.ones_like(hs))
    clone = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    assert type(clone) is StackedLSTM and clone.dtype == dtype
    for a, b in zip(clone.params + clone.grads, model.params + model.grads):
        assert a is not b
        np.testing.assert_array_equal(a, b)
    # the clone's flat lists are its own layers' arrays
    assert all(p is q for p, q in zip(clone.params,
                                      [p for row in clone.layers for t in row
                                       for p in t.params]))
    for k in ("h", "c", "dh", "dc"):
        np.testing.assert_array_equal(getattr(clone, k), getattr(model, k))
    with pytest.raises(RuntimeError):       # what backward needs is not kept
        clone.backward(np.ones_like(hs))
    np.testing.assert_array_equal(clone.forward(xs, lengths=[5, 3]),
                                  model.forward(xs, lengths=[5, 3]))
    clone.params[0][...] = 0                # independent weights
    assert np.any(model.params[0])


# --------------------------------------------------------------------------
# The two directions side by side (lstmc threads >= 2, big enough layers)
# --------------------------------------------------------------------------

@pytest.fixture
def side_by_side(monkeypatch):
    """Every bidirectional layer runs its directions side by side."""
    import lstmc._stacked as stacked
    monkeypatch.setattr(stacked, "SIDE_BY_SIDE_MACS", 0)
    with lstmc.threads(2):
        yield


def _bidirectional(rng, dtype, D=5, H=6, layers=2):
    return lstmc.StackedLSTM([
        tuple(tuple((rng.standard_normal(s) * 0.4).astype(dtype)
                    for s in ((D if k == 0 else 2 * H, 4 * H), (H, 4 * H), (4 * H,)))
              for _ in range(2))
        for k in range(layers)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_side_by_side_equals_one_after_the_other(side_by_side, dtype):
    rng = np.random.default_rng(11)
    model = _bidirectional(rng, dtype)
    N, T = 7, 9
    xs = rng.standard_normal((N, T, 5)).astype(dtype)
    lengths = rng.integers(0, T + 1, N)
    h0 = rng.standard_normal((4, N, 6)).astype(dtype)
    dhs = rng.standard_normal((N, T, 12)).astype(dtype)

    def run():
        hs = model.forward(xs, lengths=lengths, h0=h0)
        dxs = model.backward(dhs)
        return [hs, model.h, model.c, dxs, model.dh, model.dc] + [g.copy() for g in model.grads]

    side = run()
    again = run()
    with lstmc.threads(1):                   # one thread: one direction after the other
        serial = run()
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)
    for a, b, c in zip(side, again, serial):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, **tol)


def test_side_by_side_error_reaches_the_caller(side_by_side, monkeypatch):
    import lstmc._stacked as stacked
    rng = np.random.default_rng(12)
    model = _bidirectional(rng, np.float64, layers=1)
    calls = []

    def failing(layer, *args, **kwargs):
        calls.append(layer)
        if layer is model.layers[0][1]:
            raise RuntimeError("side failed")
        return real(layer, *args, **kwargs)

    real = stacked._forward
    monkeypatch.setattr(stacked, "_forward", failing)
    with pytest.raises(RuntimeError, match="side failed"):
        model.forward(rng.standard_normal((3, 4, 5)))
    assert len(calls) == 2
    monkeypatch.setattr(stacked, "_forward", real)
    assert model.forward(rng.standard_normal((3, 4, 5))).shape == (3, 4, 12)


def test_side_by_side_in_a_forked_child(side_by_side):
    """The side thread does not survive a fork: the child starts its own."""
    import multiprocessing
    rng = np.random.default_rng(13)
    model = _bidirectional(rng, np.float64, layers=1)
    xs = rng.standard_normal((3, 4, 5))
    want = model.forward(xs)                 # the parent's side thread is running now
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(model.forward, (xs,)).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def test_side_by_side_from_several_python_threads(side_by_side):
    """Four Python threads run their own bidirectional stacks at once (their side
    work shares the one side thread): each gets what it gets alone."""
    import threading
    rng = np.random.default_rng(14)
    models = [_bidirectional(rng, np.float64) for _ in range(4)]
    inputs = [rng.standard_normal((5, 6, 5)) for _ in range(4)]
    lengths = [rng.integers(0, 7, 5) for _ in range(4)]
    want = [m.forward(x, lengths=n, train=False) for m, x, n in zip(models, inputs, lengths)]
    got, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def work(k):
        try:
            barrier.wait()
            for _ in range(20):
                got[k] = models[k].forward(inputs[k], lengths=lengths[k], train=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
