"""lstmc.dask.predict with a StackedLSTM and with lengths: block by block, on
the threaded scheduler and on a distributed cluster (one worker, two threads,
in this process), it gives the in-memory ``model.forward(xs, lengths=...,
train=False)`` and torch's ``pack_padded_sequence``; ``last_only`` is each
row's last valid step (for a bidirectional stack: torch's ``h_n[-2:]``
joined); lengths chunked unlike xs are rechunked; the stack's weights are in
the graph once; bad lengths fail before anything runs when they can.

Blockwise results are compared with the whole-batch forward at the contract's
tolerance (reference.assert_close), as in test_dask.py: BLAS may round a block
of 13 rows differently from 60.
"""
import warnings

import numpy as np
import pytest

import lstmc
from optional import require
from reference import assert_close, random_weights
from test_dask import _CountingPickler, _optimized_graph  # the graph checks of test_dask

DASK_EXTRA = "lstmc[dask]"
TIMEOUT = 60
D, H = 5, 6


@pytest.fixture(scope="module")
def ldask():
    """lstmc.dask, once Dask is known to be installed (skip without it, fail in CI)."""
    require("dask.array", DASK_EXTRA)
    import lstmc.dask      # unguarded: an ImportError from here on is lstmc's fault
    return lstmc.dask


@pytest.fixture(scope="module")
def da(ldask):
    import dask.array
    return dask.array


@pytest.fixture(scope="module")
def client(ldask):
    """A distributed cluster in this process: one worker with two threads."""
    require("distributed", DASK_EXTRA)
    from distributed import Client, LocalCluster
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Port 8787 is already in use", UserWarning)
        cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=2,
                               dashboard_address=None)
    c = Client(cluster, timeout=TIMEOUT)
    try:
        yield c
    finally:
        c.close(timeout=TIMEOUT)
        cluster.close(timeout=TIMEOUT)


def _stack(num_layers, bidirectional, dtype, seed=0, D=D, H=H):
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    layers = []
    for k in range(num_layers):
        triples = [random_weights(rng, D if k == 0 else dirs * H, H, dtype)
                   for _ in range(dirs)]
        layers.append(tuple(triples) if bidirectional else triples[0])
    return lstmc.StackedLSTM(layers)


def _data(dtype, N=60, T=7, seed=1):
    """xs (N, T, D) and unsorted lengths that include 0, 1 and T."""
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    lengths = rng.integers(0, T + 1, N)
    lengths[:3] = [T, 0, 1]
    rng.shuffle(lengths)
    return xs, lengths


def _in_memory(model, xs, lengths):
    """The single-process answer: hs, and the last_only rows, from one forward."""
    hs = model.forward(xs, lengths=lengths, train=False)
    if isinstance(model, lstmc.StackedLSTM):
        top = model.h[-model.num_directions:]             # torch's h_n[-dirs:]
        last = np.concatenate(list(top), axis=1)
    else:
        last = model.h
    return hs, np.array(last)


MODELS = [("stack", 1, False), ("stack", 2, False), ("stack", 2, True), ("stack", 3, True),
          ("TimeLSTM", 1, False), ("LSTM", 1, False)]


def _model(kind, num_layers, bidirectional, dtype):
    if kind == "stack":
        return _stack(num_layers, bidirectional, dtype)
    Wx, Wh, b = random_weights(np.random.default_rng(2), D, H, dtype)
    return lstmc.TimeLSTM(Wx, Wh, b) if kind == "TimeLSTM" else lstmc.LSTM(Wx, Wh, b)


# ---------------------------------------------------------------- the same numbers

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind, num_layers, bidirectional", MODELS,
                         ids=["-".join(map(str, m)) for m in MODELS])
def test_threaded_scheduler_equals_in_memory_forward(ldask, da, dtype, kind, num_layers,
                                                     bidirectional):
    model = _model(kind, num_layers, bidirectional, dtype)
    xs, lengths = _data(dtype)
    ref = lstmc.TimeLSTM(*model.params) if kind == "LSTM" else model
    hs, last = _in_memory(ref, xs, lengths)
    x = da.from_array(xs, chunks=(13, 7, D))
    lens = da.from_array(lengths, chunks=13)
    full = ldask.predict(model, x, lengths=lens)
    tail = ldask.predict(model, x, lengths=lens, last_only=True)
    width = H * (2 if bidirectional else 1)
    assert full.shape == (60, 7, width) and full.chunks[0] == x.chunks[0]
    assert tail.shape == (60, width) and tail.chunks[0] == x.chunks[0]
    got_full, got_tail = full.compute(scheduler="threads"), tail.compute(scheduler="threads")
    assert_close(got_full, hs, dtype)
    assert_close(got_tail, last, dtype)
    # What lengths mean: zeros past each row's length (and for a length 0 row).
    for i, n in enumerate(lengths):
        assert not got_full[i, n:].any()
        if n == 0:
            assert not got_tail[i].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_distributed_client_equals_in_memory_forward(ldask, da, client, dtype,
                                                     bidirectional):
    model = _stack(2, bidirectional, dtype, seed=5)
    xs, lengths = _data(dtype, N=80, seed=6)
    hs, last = _in_memory(model, xs, lengths)
    x = da.from_array(xs, chunks=(20, 7, D))
    lens = da.from_array(lengths, chunks=30)          # unlike xs: rechunked to 20s
    full = ldask.predict(model, x, lengths=lens)
    tail = ldask.predict(model, x, lengths=lens, last_only=True)
    assert full.chunks[0] == tail.chunks[0] == (20, 20, 20, 20)
    got_full, got_tail = (f.result(timeout=TIMEOUT) for f in client.compute([full, tail]))
    assert_close(got_full, hs, dtype)
    assert_close(got_tail, last, dtype)


def test_last_only_is_each_rows_last_valid_step(ldask):
    # What last_only reads, spelled out on the in-memory outputs.
    dtype = np.float64
    xs, lengths = _data(dtype, N=20)
    for bidirectional in (False, True):
        model = _stack(2, bidirectional, dtype, seed=7)
        hs = model.forward(xs, lengths=lengths, train=False)
        got = ldask.predict(model, xs, lengths=lengths, last_only=True).compute(
            scheduler="sync")
        for i, n in enumerate(lengths):
            if n == 0:
                np.testing.assert_array_equal(got[i], 0)
                continue
            # the forward direction's output at the last valid step ...
            assert_close(got[i, :H], hs[i, n - 1, :H], dtype)
            if bidirectional:   # ... and the reverse one's at step 0, which it reaches last
                assert_close(got[i, H:], hs[i, 0, H:], dtype)


def test_numpy_lengths_and_numpy_xs(ldask):
    # Array-likes are wrapped: one block of 20 rows, the very call _in_memory
    # makes, in this thread: bit for bit.
    model = _stack(2, True, np.float64, seed=8)
    xs, lengths = _data(np.float64, N=20)
    hs, last = _in_memory(model, xs, lengths)
    np.testing.assert_array_equal(
        ldask.predict(model, xs, lengths=list(lengths)).compute(scheduler="sync"), hs)
    np.testing.assert_array_equal(
        ldask.predict(model, xs, lengths=lengths.astype(np.int32),
                      last_only=True).compute(scheduler="sync"), last)


def test_without_lengths_every_row_runs_all_steps(ldask, da):
    model = _stack(2, True, np.float32, seed=9)
    xs, _ = _data(np.float32, N=30)
    hs, last = _in_memory(model, xs, None)
    got = ldask.predict(model, da.from_array(xs, chunks=(10, 4, 3)))   # T, D rechunked
    assert_close(got.compute(scheduler="threads"), hs, np.float32)
    assert_close(ldask.predict(model, xs, last_only=True).compute(), last, np.float32)


def test_stack_weights_are_a_snapshot(ldask):
    model = _stack(2, False, np.float64, seed=10)
    xs, lengths = _data(np.float64, N=10)
    hs, _ = _in_memory(model, xs, lengths)
    lazy = ldask.predict(model, xs, lengths=lengths)
    for layer in model.weights():
        for a in layer:
            a[...] = 0                                   # a later training step
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), hs)


def test_empty_batch_and_no_time_steps(ldask):
    model = _stack(2, True, np.float32)
    empty = ldask.predict(model, np.zeros((0, 4, D), np.float32),
                          lengths=np.zeros(0, np.int64)).compute()
    assert empty.shape == (0, 4, 2 * H) and empty.dtype == np.float32
    for lengths in (None, np.zeros(0, np.int64)):
        empty = ldask.predict(model, np.zeros((0, 4, D), np.float32), lengths=lengths,
                              last_only=True).compute()
        assert empty.shape == (0, 2 * H) and empty.dtype == np.float32
    last = ldask.predict(model, np.zeros((3, 0, D), np.float32), lengths=[0, 0, 0],
                         last_only=True).compute()
    np.testing.assert_array_equal(last, np.zeros((3, 2 * H), np.float32))


# ---------------------------------------------------------------- against torch

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True), (3, False)])
def test_against_torch_pack_padded_sequence(ldask, da, dtype, num_layers, bidirectional):
    torch = require("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(num_layers)
    net = torch.nn.LSTM(D, H, num_layers=num_layers, bidirectional=bidirectional,
                        batch_first=True)
    net = net.double() if dtype == np.float64 else net
    model = lstmc.StackedLSTM.from_torch(net)
    assert model.dtype == dtype
    N, T = 24, 6
    rng = np.random.default_rng(11)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, N)            # torch's packing refuses length 0
    lengths[:2] = [T, 1]
    with torch.no_grad():
        packed = pack_padded_sequence(torch.from_numpy(xs), torch.from_numpy(lengths),
                                      batch_first=True, enforce_sorted=False)
        out, (h_n, _) = net(packed)
        want, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    dirs = 2 if bidirectional else 1
    want_last = torch.cat(list(h_n[-dirs:]), dim=1).numpy()
    x, lens = da.from_array(xs, chunks=(7, T, D)), da.from_array(lengths, chunks=7)
    assert_close(ldask.predict(model, x, lengths=lens).compute(scheduler="threads"),
                 want.numpy(), dtype)
    assert_close(ldask.predict(model, x, lengths=lens, last_only=True)
                 .compute(scheduler="threads"), want_last, dtype)


# ---------------------------------------------------------------- the graph

@pytest.mark.parametrize("last_only", [False, True])
def test_stack_weights_are_in_the_graph_once(ldask, da, last_only):
    model = _stack(2, True, np.float64, seed=12, D=32, H=16)
    rng = np.random.default_rng(13)
    xs = rng.standard_normal((160, 3, 32))
    lengths = rng.integers(0, 4, 160)
    graph = _optimized_graph(ldask.predict(model, da.from_array(xs, chunks=(16, 3, 32)),
                                           lengths=da.from_array(lengths, chunks=16),
                                           last_only=last_only))
    assert len(graph) >= 10
    targets = [a for entry in model.weights() for triple in entry for a in triple]
    assert len(targets) == 12
    counts = [0] * len(targets)
    for task in graph.values():
        _CountingPickler(targets, counts).dump(task)
    assert counts == [1] * 12


# ---------------------------------------------------------------- errors

def test_bad_lengths_fail_before_anything_runs(ldask, da):
    model = _stack(2, True, np.float64)
    xs = np.zeros((4, 3, D))
    with pytest.raises(ValueError, match=r"lengths has shape \(3,\); expected \(N,\) = \(4,\)"):
        ldask.predict(model, xs, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match=r"lengths has shape \(4, 1\)"):
        ldask.predict(model, xs, lengths=np.ones((4, 1), int))
    with pytest.raises(ValueError, match=r"lengths\[2\] is 4; expected 0 <= length <= T = 3"):
        ldask.predict(model, xs, lengths=[1, 2, 4, 0])
    with pytest.raises(ValueError, match=r"lengths\[0\] is -1"):
        ldask.predict(model, xs, lengths=[-1, 2, 3, 0])
    with pytest.raises(TypeError, match=r"lengths has dtype float64; expected integers"):
        ldask.predict(model, xs, lengths=[1.0, 2, 3, 0])
    with pytest.raises(TypeError, match=r"lengths has dtype float32"):
        ldask.predict(model, xs, lengths=da.ones(4, dtype=np.float32, chunks=2))
    with pytest.raises(ValueError, match=r"lengths has shape \(5,\)"):
        ldask.predict(model, xs, lengths=da.ones(5, dtype=int, chunks=2))


def test_lengths_out_of_range_in_a_dask_array_fail_at_compute(ldask, da):
    model = _stack(1, False, np.float64)
    lazy = ldask.predict(model, np.zeros((4, 3, D)),
                         lengths=da.from_array(np.array([1, 2, 9, 0]), chunks=2))
    with pytest.raises(ValueError, match="length"):
        lazy.compute(scheduler="sync")


def test_bad_model_and_xs(ldask, da):
    model = _stack(2, False, np.float64)
    with pytest.raises(TypeError, match=r"xs has dtype float32; expected float64"):
        ldask.predict(model, np.zeros((4, 3, D), np.float32))
    with pytest.raises(ValueError, match=rf"xs has shape \(4, 3, 2\); expected \(N, T, {D}\)"):
        ldask.predict(model, da.zeros((4, 3, 2), chunks=2))
    with pytest.raises(TypeError, match=r"lstmc\.StackedLSTM.*got list"):
        ldask.predict(model.weights(), np.zeros((4, 3, D)))


def test_a_layer_and_a_one_layer_stack_on_the_same_weights_in_one_graph(ldask, da):
    # The same arrays build different models: their graphs must not share keys.
    import dask
    Wx, Wh, b = random_weights(np.random.default_rng(14), D, H, np.float64)
    layer, stack = lstmc.TimeLSTM(Wx, Wh, b), lstmc.StackedLSTM([(Wx, Wh, b)])
    xs, lengths = _data(np.float64, N=12)
    want_layer, want_stack = _in_memory(layer, xs, lengths), _in_memory(stack, xs, lengths)
    lazy = [ldask.predict(m, xs, lengths=lengths, last_only=last)
            for m in (layer, stack) for last in (False, True)]
    assert len({a.name for a in lazy}) == 4
    got = dask.compute(*lazy, scheduler="sync")
    for g, w in zip(got, want_layer + want_stack):
        np.testing.assert_array_equal(g, w)
