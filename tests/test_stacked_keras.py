"""lstmc.StackedLSTM.from_keras against real Keras 3 (on the torch backend).

Keras models of stacked ``LSTM(return_sequences=True)`` and
``Bidirectional(LSTM(...))`` layers are converted and run by lstmc; Keras's
own ``predict`` is the reference (float32, 1e-5). Keras comes through
``optional.require`` (pip install keras); KERAS_BACKEND defaults to torch.
"""

import os

import numpy as np
import pytest

from lstmc import StackedLSTM, convert
from optional import require

os.environ.setdefault("KERAS_BACKEND", "torch")

TOL = dict(rtol=1e-5, atol=1e-5)

# Keras 3 on NumPy 2 warns about its own __array__; nothing of lstmc's.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:keras")


@pytest.fixture(scope="module")
def keras():
    return require("keras")


def randomize(model, rng):
    """Weights (biases included) well away from Keras's initializers."""
    for layer in model.layers:
        ws = layer.get_weights()
        if ws:
            layer.set_weights([(0.5 * rng.standard_normal(w.shape)).astype(w.dtype)
                               for w in ws])
    return model


def predict(model, xs):
    return np.asarray(model.predict(xs, verbose=0))


def lstm(keras, H, **kw):
    return keras.layers.LSTM(H, return_sequences=kw.pop("return_sequences", True), **kw)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_sequential_stack_matches_keras(keras, rng, num_layers, bidirectional):
    D, H, N, T = 3, 4, 5, 6
    wrap = keras.layers.Bidirectional if bidirectional else (lambda layer: layer)
    model = keras.Sequential([keras.Input((T, D))]
                             + [wrap(lstm(keras, H)) for _ in range(num_layers)])
    randomize(model, rng)
    stack = StackedLSTM.from_keras(model)
    assert (stack.num_layers, stack.bidirectional, stack.dtype) == \
        (num_layers, bidirectional, np.float32)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    np.testing.assert_allclose(stack.forward(xs), predict(model, xs), **TOL)
    # per layer, the weights are lstmc.convert.from_keras's
    first = model.layers[0].forward_layer if bidirectional else model.layers[0]
    want = convert.from_keras(*first.get_weights())
    got = stack.layers[0][0] if bidirectional else stack.layers[0]
    for a, b in zip(got.params, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_last_layer_returning_its_state(keras, rng, bidirectional):
    """A last LSTM with return_sequences=False gives the final h: lstmc's h rows."""
    D, H, N, T = 2, 3, 4, 5
    wrap = keras.layers.Bidirectional if bidirectional else (lambda layer: layer)
    model = keras.Sequential([keras.Input((T, D)), wrap(lstm(keras, H)),
                              wrap(lstm(keras, H, return_sequences=False))])
    randomize(model, rng)
    stack = StackedLSTM.from_keras(model)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    stack.forward(xs)
    last = stack.h[2:] if bidirectional else stack.h[1:]
    np.testing.assert_allclose(np.concatenate(list(last), axis=-1), predict(model, xs), **TOL)


def test_functional_model_with_other_layers_around(keras, rng):
    """Input and Dense layers outside the LSTM run are skipped; the layers are
    also accepted as a list."""
    D, H, T = 3, 4, 5
    inp = keras.Input((T, D))
    seq = keras.layers.Bidirectional(lstm(keras, H, name="one"))(inp)
    seq = keras.layers.Dropout(0.3)(seq)
    seq = keras.layers.Bidirectional(lstm(keras, H, name="two"))(seq)
    out = keras.layers.Dense(2)(seq)
    model = randomize(keras.Model(inp, out), rng)
    lstm_part = keras.Model(inp, seq)
    xs = rng.standard_normal((3, T, D)).astype(np.float32)
    for arg in (model, model.layers):
        stack = StackedLSTM.from_keras(arg)
        np.testing.assert_allclose(stack.forward(xs), predict(lstm_part, xs), **TOL)


def test_masked_keras_matches_lengths(keras, rng):
    """Keras's masking of post-padded steps is lstmc's lengths at the valid steps
    (Keras repeats the last output at masked steps where lstmc writes zeros)."""
    D, H, N, T = 3, 4, 4, 6
    model = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0),
                              keras.layers.Bidirectional(lstm(keras, H)),
                              keras.layers.Bidirectional(lstm(keras, H))])
    randomize(model, rng)
    lengths = np.array([6, 2, 4, 1])
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    for i, n in enumerate(lengths):
        xs[i, n:] = 0
    stack = StackedLSTM.from_keras(model)
    hs = stack.forward(xs, lengths=lengths)
    want = predict(model, xs)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(hs[i, :n], want[i, :n], err_msg=f"row {i}", **TOL)
        assert not np.any(hs[i, n:])


@pytest.mark.parametrize("make, words", [
    (lambda k: [lstm(k, 4, activation="relu", name="bad_act")], "bad_act.*activation"),
    (lambda k: [lstm(k, 4, recurrent_activation="hard_sigmoid", name="bad_rec")],
     "bad_rec.*recurrent_activation"),
    (lambda k: [k.layers.Bidirectional(lstm(k, 4), merge_mode="sum", name="bisum")],
     "bisum.*merge_mode"),
    (lambda k: [lstm(k, 4, go_backwards=True, name="back")], "back.*go_backwards"),
    (lambda k: [lstm(k, 4, name="a"), k.layers.Dense(4, name="mid"), lstm(k, 4)],
     "mid.*between"),
    (lambda k: [k.layers.GRU(4, return_sequences=True)], "no LSTM"),
    (lambda k: [k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True), name="bg")],
     "bg.*GRU"),
])
def test_refusals_name_the_layer(keras, make, words):
    layers = make(keras)
    model = keras.Sequential([keras.Input((5, 3))] + layers)
    model(np.zeros((1, 5, 3), np.float32))              # build
    with pytest.raises(ValueError, match=words):
        StackedLSTM.from_keras(model)


def test_refuses_a_stack_fed_by_a_final_state(keras):
    early = lstm(keras, 4, return_sequences=False, name="early")
    early.build((None, 5, 3))
    late = lstm(keras, 4)
    late.build((None, 5, 4))
    with pytest.raises(ValueError, match="early.*return_sequences"):
        StackedLSTM.from_keras([early, late])
