"""The sequence section: ``lstmc.TimeLSTM`` over (N, T, D, H), against the NumPy
reference, ``torch.nn.LSTM(batch_first=True)``, onnxruntime and the BLAS floor."""
import numpy as np

import lstmc
from lstmc import reference
from lstmc.bench import contenders as cont
from lstmc.bench.compare import Comparison

__all__ = ["SECTION"]


def _contenders(env, label, shape, dtype, rng):
    N, T, D, H = shape
    weights = cont.weights(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    ones = (np.ones((N, T, H), dtype),)
    cs, want = cont.layer_contenders(env, label, lstmc.TimeLSTM, reference.TimeLSTM,
                                     weights, (xs,), ones, dict(train=False), dtype)
    if env.torch is not None:
        module = env.torch.nn.LSTM(D, H, batch_first=True)
        cs += cont.torch_contenders(env, label, module, lambda xs: module(xs)[:1], (xs,),
                                    weights, want, dtype)
    if env.ort is not None:
        cs += cont.onnxruntime_contenders(env, label, weights, xs, want, dtype)
    if env.floor is not None:
        cs += cont.floor_contenders(env, "seq", N, D, H, dtype, T=T)
    return cont.in_run_order(cs)


_FLOOR_TARGETS = (("fwd/floor", "<=", 1.2), ("bwd/floor", "<=", 1.3),
                  ("inf/floor", "<=", 1.15), ("inf/floor n=1", "<=", 1.15),
                  ("torch f+b/f+b", ">=", 1.2))

SECTION = Comparison(
    name="seq",
    title="== Sequence: lstmc.TimeLSTM (N, T, D, H) ==",
    note="median µs per call; inf = forward(train=False), f+b = forward(train) + "
         "backward(ones); ORT fed (T,N,D) (its only layout), transposed before timing",
    shape_head="(N,T,D,H)",
    cases=((1, 1000, 64, 64), (32, 50, 128, 128), (64, 50, 512, 512)),
    quick_cases=((2, 20, 32, 32),),
    dtypes=(np.float32,),
    columns=(("lstmc.TimeLSTM", ("fwd", "inf", "bwd", "f+b")),
             ("NumPy", ("numpy fwd", "numpy f+b")),
             ("torch LSTM", ("torch inf", "torch f+b")),
             ("ORT", ("ort inf",)),
             ("BLAS floor", ("floor fwd", "floor bwd")),
             ("lstmc n=1", ("n=1 inf", "n=1 bwd")),
             ("floor n=1", ("floor n=1 fwd", "floor n=1 bwd"))),
    ratios={"fwd/floor": ("fwd", "floor fwd"), "inf/floor": ("inf", "floor fwd"),
            "bwd/floor": ("bwd", "floor bwd"), "inf/floor n=1": ("n=1 inf", "floor n=1 fwd"),
            "bwd/floor n=1": ("n=1 bwd", "floor n=1 bwd"), "ort/inf": ("ort inf", "inf"),
            "torch inf/inf": ("torch inf", "inf"), "torch f+b/f+b": ("torch f+b", "f+b"),
            "numpy/fwd": ("numpy fwd", "fwd"), "numpy f+b/f+b": ("numpy f+b", "f+b")},
    targets={
        (1, 1000, 64, 64): _FLOOR_TARGETS + (
            ("ort/inf", ">=", 1.2), ("torch inf/inf", ">=", 5), ("torch f+b/f+b", ">=", 4),
            ("numpy/fwd", ">=", 20)),
        (32, 50, 128, 128): _FLOOR_TARGETS + (
            ("ort/inf", ">=", 0.9), ("torch inf/inf", ">=", 1.5)),
        (64, 50, 512, 512): _FLOOR_TARGETS + (
            ("ort/inf", ">=", 0.95), ("torch inf/inf", ">=", 1.3)),
    },
    targets_title="Sequence targets",
    seed=2,
    contenders=_contenders,
)
