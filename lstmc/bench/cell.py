"""The cell section: ``lstmc.LSTM``, one step of (N, D, H), against the NumPy
reference, ``torch.nn.LSTMCell`` and the BLAS floor."""
import numpy as np

import lstmc
from lstmc import reference
from lstmc.bench import contenders as cont
from lstmc.bench.compare import Comparison

__all__ = ["SECTION"]


def _contenders(env, label, shape, dtype, rng):
    N, D, H = shape
    weights = cont.weights(rng, D, H, dtype)
    x = rng.standard_normal((N, D)).astype(dtype)
    h = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    c = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    ones = (np.ones((N, H), dtype),) * 2
    out = (np.empty((N, H), dtype), np.empty((N, H), dtype))
    cs, want = cont.layer_contenders(env, label, lstmc.LSTM, reference.LSTM, weights,
                                     (x, h, c), ones, dict(out=out, train=False), dtype)
    if env.torch is not None:
        module = env.torch.nn.LSTMCell(D, H, bias=True)
        cs += cont.torch_contenders(env, label, module, lambda x, h, c: module(x, (h, c)),
                                    (x, h, c), weights, want, dtype)
    if env.floor is not None:
        cs += cont.floor_contenders(env, "cell", N, D, H, dtype)
    return cont.in_run_order(cs)


SECTION = Comparison(
    name="cell",
    title="== Cell: lstmc.LSTM, one step (N, D, H) ==",
    note="median µs per call; inf = forward(train=False, out=), f+b = forward(train) + "
         "backward(ones, ones)",
    shape_head="(N,D,H)",
    cases=((1, 32, 32), (1, 256, 256), (16, 128, 128), (64, 512, 512)),
    quick_cases=((1, 32, 32),),
    dtypes=(np.float32, np.float64),
    columns=(("lstmc.LSTM", ("fwd", "inf", "bwd", "f+b")),
             ("NumPy", ("numpy fwd", "numpy f+b")),
             ("torch LSTMCell", ("torch inf", "torch f+b")),
             ("BLAS floor", ("floor fwd", "floor bwd")),
             ("lstmc n=1", ("n=1 inf", "n=1 bwd")),
             ("floor n=1", ("floor n=1 fwd", "floor n=1 bwd"))),
    ratios={"torch inf/fwd": ("torch inf", "fwd"), "torch inf/inf": ("torch inf", "inf"),
            "numpy/fwd": ("numpy fwd", "fwd"), "torch f+b/f+b": ("torch f+b", "f+b"),
            "numpy f+b/f+b": ("numpy f+b", "f+b"), "fwd/floor": ("fwd", "floor fwd"),
            "inf/floor": ("inf", "floor fwd"), "bwd/floor": ("bwd", "floor bwd"),
            "inf/floor n=1": ("n=1 inf", "floor n=1 fwd"),
            "bwd/floor n=1": ("n=1 bwd", "floor n=1 bwd")},
    targets={
        (1, 32, 32): (("torch inf/fwd", ">=", 8), ("numpy/fwd", ">=", 5),
                      ("torch f+b/f+b", ">=", 10)),
        (1, 256, 256): (("torch inf/fwd", ">=", 2), ("torch f+b/f+b", ">=", 3)),
        (16, 128, 128): (("torch inf/fwd", ">=", 3), ("torch f+b/f+b", ">=", 3)),
        (64, 512, 512): (("torch inf/fwd", ">=", 2.5), ("torch f+b/f+b", ">=", 2.5),
                         ("fwd/floor", "<=", 1.15), ("bwd/floor", "<=", 1.15)),
    },
    targets_title="Cell targets",
    seed=1,
    contenders=_contenders,
)
