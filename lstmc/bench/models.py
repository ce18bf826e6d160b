"""The models section: a whole 2-layer bidirectional ``lstmc.StackedLSTM`` on a padded
batch (lengths uniform in 1 .. T), inference, against onnxruntime fed
``sequence_lens`` (the model written by ``StackedLSTM.to_onnx``) and torch's
``nn.LSTM`` on a ``pack_padded_sequence``; and the same lstmc model with every length T
and with no lengths, to show what lengths cost when they cut nothing."""
import functools

import numpy as np

import lstmc
from lstmc.bench import contenders as cont
from lstmc.bench.compare import Comparison
from lstmc.bench.timing import Contender, error_text, loop

__all__ = ["SECTION"]

LAYERS = 2


def _model(rng, D, H, dtype):
    """A 2-layer bidirectional StackedLSTM with N(0, 1/sqrt(H)) weights."""
    layers = []
    width = D
    for _ in range(LAYERS):
        layers.append(tuple(cont.weights(rng, width, H, dtype) for _ in range(2)))
        width = 2 * H
    return lstmc.StackedLSTM(layers)


def _torch_contender(env, label, model, xs, lengths, want, dtype):
    torch = env.torch
    try:
        N, T, D = xs.shape
        module = torch.nn.LSTM(D, model.hidden_size, num_layers=LAYERS, bidirectional=True,
                               batch_first=True).to(torch.float32 if dtype == np.float32
                                                    else torch.float64)
        module.load_state_dict({k: torch.from_numpy(v)
                                for k, v in model.to_torch_state_dict().items()})
        module.eval()
        x, n = torch.from_numpy(xs), torch.from_numpy(lengths)

        def infer():
            with torch.no_grad():
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, n, batch_first=True,
                                                                 enforce_sorted=False)
                out, _ = module(packed)
                return torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                              total_length=T)[0]

        got = infer().numpy()
    except Exception as exc:
        env.failed.append((label, "torch packed", error_text(exc)))
        return []
    cont.check(env, label, "torch", [got], [want], dtype)
    return [Contender("torch packed", loop(infer))]


def _ort_contender(env, label, model, xs, lengths, want, dtype):
    ort = env.ort
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = env.ort_threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model.to_onnx().SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        N = xs.shape[0]
        zeros = np.zeros((LAYERS * 2, N, model.hidden_size), dtype)
        feed = {"X": xs, "sequence_lens": lengths.astype(np.int32), "initial_h": zeros,
                "initial_c": zeros}
        got = sess.run(["Y"], feed)[0]
    except Exception as exc:
        env.failed.append((label, "ort lens", error_text(exc)))
        return []
    cont.check(env, label, "onnxruntime", [got], [want], dtype)
    return [Contender("ort lens", loop(functools.partial(sess.run, ["Y"], feed)))]


def _contenders(env, label, shape, dtype, rng):
    N, T, D, H = shape
    model = _model(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)
    full = np.full(N, T)
    infer = functools.partial(model.forward, xs, train=False)
    want = infer(lengths=lengths)
    cs = [Contender("lens", loop(functools.partial(infer, lengths=lengths))),
          Contender("full", loop(functools.partial(infer, lengths=full))),
          Contender("none", loop(infer))]
    if env.ort is not None:
        cs += _ort_contender(env, label, model, xs, lengths, want, dtype)
    if env.torch is not None:
        cs += _torch_contender(env, label, model, xs, lengths, want, dtype)
    return cs


SECTION = Comparison(
    name="models",
    title="== Whole models: a 2-layer bidirectional StackedLSTM, inference on a padded "
          "batch (lengths uniform in 1..T) ==",
    note="median µs per call of forward(train=False): lens = with the lengths, full = "
         "lengths all T, none = no lengths; ORT runs StackedLSTM.to_onnx() with "
         "sequence_lens, torch nn.LSTM a pack_padded_sequence (unsorted)",
    shape_head="(N,T,D,H)",
    cases=((64, 100, 128, 128),),
    quick_cases=((8, 12, 16, 16),),
    dtypes=(np.float32,),
    columns=(("lstmc.StackedLSTM", ("lens", "full", "none")),
             ("ORT", ("ort lens",)),
             ("torch", ("torch packed",))),
    ratios={"ort/lens": ("ort lens", "lens"), "torch/lens": ("torch packed", "lens"),
            "full/none": ("full", "none"), "lens/none": ("lens", "none")},
    targets={(64, 100, 128, 128): (("ort/lens", ">=", 1.0), ("torch/lens", ">=", 1.5),
                                   ("full/none", "<=", 1.03))},
    targets_title="Whole-model targets",
    seed=4,
    contenders=_contenders,
)
