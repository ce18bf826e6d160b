"""How each library is timed, for the cell and the sequence sections alike.

* lstmc: ``forward`` (train), ``forward(train=False, ...)`` (inference), ``backward``
  (upstream gradients of ones), forward+backward; each on its own layer, so that no
  contender's cache is another's.
* NumPy: the classic implementation, ``lstmc.reference`` (the book's ``LSTM`` and
  ``TimeLSTM``).
* torch: the same weights (``lstmc.convert.to_torch``); inference is a batch of calls
  inside one ``torch.inference_mode()`` block; forward+backward is forward then
  ``torch.autograd.grad`` of the outputs, with gradients of ones, with respect to the
  inputs, states and all parameters: the same gradients lstmc's backward produces.
* onnxruntime: one ONNX ``LSTM`` node (opset 14, ``lstmc.convert.to_onnx`` weights)
  on the CPU provider.
* floor: ``lstmc.bench._floor.floor``, the very BLAS calls an lstmc call makes, looped
  in C.

Every contender's result is checked against lstmc's once, before timing: one that
computes something else is recorded as a failure.
"""
import contextlib
import functools

import numpy as np

import lstmc
from lstmc import _threads, convert
from lstmc.bench.report import say
from lstmc.bench.timing import Contender, error_text, loop

__all__ = ["weights", "check", "in_run_order", "outputs", "layer_contenders",
           "torch_contenders", "onnxruntime_contenders", "floor_contenders"]

# The order contenders run in within a round: lstmc's contenders together, then the
# floor's, ORT's, torch's and NumPy's, each pool's together so that a pause (SETTLE)
# comes only where the pool changes, and in each the default threads before n=1.
RUN_ORDER = ("fwd", "inf", "f+b", "bwd", "n=1 inf", "n=1 bwd",
             "floor fwd", "floor bwd", "floor n=1 fwd", "floor n=1 bwd",
             "ort inf", "torch inf", "torch f+b", "numpy fwd", "numpy f+b")


def in_run_order(cs):
    rank = {k: i for i, k in enumerate(RUN_ORDER)}
    return sorted(cs, key=lambda c: rank.get(c.key, len(rank)))


def weights(rng, D, H, dtype):
    """Wx (D, 4H), Wh (H, 4H), b (4H,), uniform in +-1/sqrt(H) like torch's init."""
    s = 1.0 / np.sqrt(H)
    return tuple(rng.uniform(-s, s, shape).astype(dtype)
                 for shape in ((D, 4 * H), (H, 4 * H), (4 * H,)))


def _tolerance(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


def check(env, label, name, got, want, dtype):
    """Sanity check before timing: a contender computing something else is a bug."""
    err = max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) -
                                  np.asarray(w, dtype=np.float64)), initial=0.0))
              for g, w in zip(got, want))
    if not err <= _tolerance(dtype):
        env.failed.append((label, name, "results differ from lstmc by %.3g" % err))
        say("  WARNING %s: %s results differ from lstmc by %.3g" % (label, name, err))


def outputs(result):
    """A forward's result as a list of arrays: (h, c) for a cell, [hs] for a sequence."""
    return list(result) if isinstance(result, tuple) else [result]


def _forward_and_both(prefix, layer_class, weights, inputs, upstream):
    """'<prefix>fwd' and '<prefix>f+b', each on its own layer."""
    fwd_layer, fb_layer = layer_class(*weights), layer_class(*weights)

    def forward_backward():
        fb_layer.forward(*inputs)
        fb_layer.backward(*upstream)

    return [Contender(prefix + "fwd", loop(functools.partial(fwd_layer.forward, *inputs))),
            Contender(prefix + "f+b", loop(forward_backward))]


def layer_contenders(env, label, lstmc_class, reference_class, weights, inputs, upstream,
                     inference, dtype):
    """lstmc's fwd, inf, bwd and f+b, the NumPy reference's fwd and f+b, each on its
    own layer, so that no contender's cache is another's. ``inference``: the keyword
    arguments of lstmc's inference call. Returns the contenders and lstmc's forward
    outputs, which every other contender is checked against."""
    want = outputs(lstmc_class(*weights).forward(*inputs))
    check(env, label, "lstmc train=False",
          outputs(lstmc_class(*weights).forward(*inputs, **inference)), want, dtype)
    check(env, label, "numpy", outputs(reference_class(*weights).forward(*inputs)), want,
          dtype)
    inf_layer, bwd_layer = lstmc_class(*weights), lstmc_class(*weights)
    bwd_layer.forward(*inputs)
    cs = _forward_and_both("", lstmc_class, weights, inputs, upstream)
    cs += [Contender("inf", loop(functools.partial(inf_layer.forward, *inputs, **inference))),
           Contender("bwd", loop(functools.partial(bwd_layer.backward, *upstream)))]
    # The same at one thread (lstmc.threads(1): the caller's thread only).
    one = functools.partial(lstmc.threads, 1)
    inf1, bwd1 = lstmc_class(*weights), lstmc_class(*weights)
    with one():
        bwd1.forward(*inputs)
    cs += [Contender("n=1 inf", loop(functools.partial(inf1.forward, *inputs, **inference), one)),
           Contender("n=1 bwd", loop(functools.partial(bwd1.backward, *upstream), one))]
    return cs + _forward_and_both("numpy ", reference_class, weights, inputs, upstream), want


def torch_contenders(env, label, module, call, inputs, weights, want, dtype):
    """torch inf and torch f+b of ``module`` (an LSTMCell or an LSTM, whose parameters
    get lstmc's ``weights`` Wx, Wh, b); ``call(*inputs)`` returns its outputs as a
    tuple of tensors, compared with ``want``."""
    torch = env.torch
    module.to(torch.float32 if np.dtype(dtype) == np.float32 else torch.float64)
    params = list(module.parameters())        # weight_ih, weight_hh, bias_ih, bias_hh
    with torch.no_grad():
        for p, a in zip(params, convert.to_torch(*weights)):
            p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    ts = [torch.from_numpy(a.copy()) for a in inputs]
    wrt = [t.clone().requires_grad_(True) for t in ts]
    with torch.inference_mode():
        got = call(*ts)
    ones = [torch.ones(g.shape, dtype=g.dtype) for g in got]

    def forward_backward():
        torch.autograd.grad(call(*wrt), wrt + params, ones)

    check(env, label, "torch", [g.numpy() for g in got], want, dtype)
    return [Contender("torch inf", loop(functools.partial(call, *ts), torch.inference_mode)),
            Contender("torch f+b", loop(forward_backward))]


def onnxruntime_contenders(env, label, weights, xs, want, dtype):
    """ort inf: one ONNX LSTM node. ORT supports only ``layout=0`` (T, N, D), so its
    input is transposed once before timing."""
    try:
        sess = _onnx_session(env, *weights, xs.shape, dtype)
        feed = {"X": np.ascontiguousarray(xs.transpose(1, 0, 2))}
        got = sess.run(["Y"], feed)[0][:, 0].transpose(1, 0, 2)
    except Exception as exc:
        env.failed.append((label, "ort inf", error_text(exc)))
        return []
    check(env, label, "onnxruntime", [got], want, dtype)
    return [Contender("ort inf", loop(functools.partial(sess.run, ["Y"], feed)))]


def _onnx_session(env, Wx, Wh, b, shape, dtype):
    onnx, ort = env.onnx, env.ort
    from onnx import TensorProto, helper, numpy_helper
    N, T, D = shape
    H = Wh.shape[0]
    W, R, B = convert.to_onnx(Wx, Wh, b)
    et = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H,
                            direction="forward", layout=0)
    graph = helper.make_graph(
        [node], "lstmc_bench",
        [helper.make_tensor_value_info("X", et, [T, N, D])],
        [helper.make_tensor_value_info("Y", et, [T, 1, N, H])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), n)
                     for a, n in ((W, "W"), (R, "R"), (B, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = env.ort_threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def floor_contenders(env, kind, N, D, H, dtype, T=1):
    """floor fwd and floor bwd: the BLAS calls of lstmc's ``kind`` ('cell' or 'seq'),
    with SciPy's BLAS at its own thread count, and the same at one thread (n=1)."""
    floor = env.floor

    def batch(direction, threads=None):
        def run(reps):
            with (_threads.scipy_blas_threads(threads) if threads
                  else contextlib.nullcontext()):
                return floor("%s_%s" % (kind, direction), N, D, H, dtype=dtype, T=T,
                             reps=reps)
        return run

    return [Contender("floor fwd", batch("forward")),
            Contender("floor bwd", batch("backward")),
            Contender("floor n=1 fwd", batch("forward", 1)),
            Contender("floor n=1 bwd", batch("backward", 1))]
