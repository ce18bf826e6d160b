"""Batch inference on Dask: score more sequences than one machine holds.

lstmc builds no cluster of its own; it runs on Dask. ``predict`` turns an
(N, T, D) array, chunked along the batch axis, into a lazy array of hidden
states that any Dask scheduler computes: threads, processes, or a cluster.
Scoring a Zarr array, or a ``.npy`` file on a filesystem the workers share
(``from_npy`` opens it as a read-only memmap on each worker), on a cluster::

    import dask.array as da, lstmc, lstmc.dask
    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")        # Client() for a local cluster
    xs = da.from_zarr("s3://bucket/seqs.zarr")     # or lstmc.dask.from_npy("/shared/seqs.npy")
    lstmc.dask.predict(lstmc.load("model.npz"), xs, last_only=True).to_zarr("s3://bucket/h.zarr")

How the work is split. Each block of rows goes to ``model.forward(block,
lengths=block_lengths, train=False)`` (a TimeLSTM for a layer, a StackedLSTM for
a stack): sequences are independent (a layer's held state, if it is stateful,
is not used), so any split along the batch axis computes the same math. Padded
batches pass ``lengths``, a Dask array (N,) chunked like xs along the batch axis
(rechunked to xs's batch chunks if they differ) or an array-like::

    lengths = da.from_zarr("s3://bucket/lengths.zarr")   # (N,) ints, 0 <= length <= T
    lstmc.dask.predict(lstmc.load("stack.npz"), xs, lengths=lengths, last_only=True)

The whole-array forward and the blockwise one agree to the documented
tolerance (float64 ~1e-12 relative, float32 ~1e-5), not bit for bit: BLAS may
pick another kernel for another row count (and gemv for one row), and Dask
workers may run BLAS with another thread count, all of which round differently.

How the weights travel. ``predict`` copies the model's weights (a layer's
``(Wx, Wh, b)``, a stack's ``weights()`` list) once, so later training steps do
not change a lazy result, and puts that copy into the task graph once, under
its own key (``lstmc-weights-<hash of the weights>``); every block task names
that key instead of carrying the arrays.
This works with every scheduler because it is plain Dask graph structure:

- distributed: the graph goes to the scheduler with the weights in it once;
  the worker that materializes the key keeps it in memory and every other
  worker fetches it once, like any shared dependency (Dask's retry after a lost
  worker recomputes it like any other key);
- threads / synchronous: nothing is pickled; all blocks read the one copy;
- processes (``dask.multiprocessing``): that scheduler sends each task's inputs
  along with it, so there the weights travel with every block; prefer
  distributed (``Client(processes=True)``) for process-level parallelism.

The key is a one-chunk 0-d dask array rather than a ``dask.delayed`` object,
because Dask's array-expression backend (``array.query-planning``) drops a
delayed argument's graph in ``map_blocks``. Blocks do not share a layer object
(a layer serializes its own calls with a lock, and ``h`` would be shared): each
builds a TimeLSTM (or a StackedLSTM) on the shared read-only weights
(microseconds), so blocks run in parallel threads with the GIL released.

Threads. In a worker process of ``distributed``, lstmc runs at most
OMP_NUM_THREADS threads there, the native threads the worker's nanny gives each
process (1 unless configured), unless LSTMC_NUM_THREADS is set: two worker
processes on two cores would otherwise run four busy threads.

Needs the ``dask`` extra: ``pip install "lstmc[dask]"`` (Dask's array module;
``distributed`` for clusters). ``import lstmc`` never imports Dask.
"""
import math
import os

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "lstmc.dask needs Dask, which is not installed: "
        "pip install \"lstmc[dask]\" (dask[array] and distributed)") from exc

import lstmc
from ._layers import LSTM, TimeLSTM

__all__ = ["predict", "from_npy"]

# Rows per block when predict() or from_npy() chooses the chunks: about this
# many bytes of input or output per block. An LSTM block computes for a long
# time per byte (tens of ms for 16 MiB), which keeps Dask's per-task overhead
# negligible while leaving enough blocks to share among workers.
_BLOCK_BYTES = 16 * 2**20


def _even_chunks(n, rows):
    """n rows in blocks of at most `rows`, sizes as equal as possible (so no
    lone one-row block at the end when n > 1)."""
    if n == 0:
        return (0,)
    k = math.ceil(n / max(1, rows))
    q, r = divmod(n, k)
    return (q + 1,) * r + (q,) * (k - r)


def _rows_for(row_bytes):
    return max(1, _BLOCK_BYTES // max(1, row_bytes))


_budget_pid = None      # the process whose thread budget was looked at


def _follow_worker_budget():
    """In a process of a Dask distributed worker, once: lstmc's thread limit no
    higher than OMP_NUM_THREADS, the native threads its nanny gives each worker
    process (1 unless configured otherwise), as NumPy's and SciPy's BLAS do
    there; unless LSTMC_NUM_THREADS says how many. Two worker processes on two
    cores would otherwise run four busy threads."""
    global _budget_pid
    if _budget_pid == os.getpid():
        return
    _budget_pid = os.getpid()
    budget = os.environ.get("OMP_NUM_THREADS", "").strip()
    if os.environ.get("LSTMC_NUM_THREADS", "").strip() or not budget.isdigit():
        return
    try:
        from distributed import get_worker
        get_worker()
    except (ImportError, ValueError):
        return                                  # not a distributed worker's task
    if int(budget) >= 1:
        lstmc.set_num_threads(min(lstmc.get_num_threads(), int(budget)))


def _forward_block(xs, weights, lengths=None, *, last_only, stacked):
    """One block: hs (n, T, H·dirs), or the last valid h (n, H·dirs), for xs
    (n, T, D) and lengths (n, 1, 1) or None."""
    _follow_worker_budget()
    weights = weights.item() if isinstance(weights, np.ndarray) else weights
    if lengths is not None:
        lengths = lengths.reshape(-1)
    # A model of its own (its own scratch buffers); the weights are shared, read only.
    if stacked:
        model = lstmc.StackedLSTM(weights)
        hs = model.forward(xs, lengths=lengths, train=False)
        if not last_only:
            return hs
        # torch's h_n[-dirs:] joined: the top layer's forward final h (its
        # last valid output), then, for a bidirectional stack, the reverse
        # direction's final h (its output at step 0).
        dirs = model.num_directions
        top = model.h[-dirs:]                       # (dirs, n, H)
        return np.ascontiguousarray(top.transpose(1, 0, 2)).reshape(
            len(xs), dirs * model.hidden_size)
    model = TimeLSTM(*weights)
    hs = model.forward(xs, lengths=lengths, train=False)
    return model.h if last_only else hs


def _describe_model(model):
    """(stacked, weights copy, dtype, D, width of an output row) of a model
    predict() takes, else TypeError."""
    if isinstance(model, (TimeLSTM, LSTM)):
        weights = tuple(np.array(p, order="C", copy=True) for p in model.params)
        return False, weights, model.dtype, model.input_size, model.hidden_size
    if isinstance(model, lstmc.StackedLSTM):
        weights = [_copy_nested(entry) for entry in model.weights()]
        return (True, weights, model.dtype, model.input_size,
                model.hidden_size * model.num_directions)
    raise TypeError("predict() takes an lstmc.StackedLSTM or a layer, and a layer must be "
                    f"an lstmc.TimeLSTM or lstmc.LSTM; got {type(model).__name__}")


def _copy_nested(entry):
    """A C-contiguous copy of a StackedLSTM.weights() entry: a (Wx, Wh, b)
    triple, or a pair of them."""
    if isinstance(entry[0], (tuple, list)):
        return tuple(_copy_nested(e) for e in entry)
    return tuple(np.array(p, order="C", copy=True) for p in entry)


def _lengths(lengths, N, T, batch_chunks):
    """lengths as a dask array (N, 1, 1) of int64 chunked like xs along N;
    checked now when its values are at hand (ValueError, TypeError)."""
    if any(math.isnan(c) for c in batch_chunks):
        raise ValueError("xs has unknown chunk sizes along the batch axis; call "
                         "xs.compute_chunk_sizes() first to pass lengths")
    if not isinstance(lengths, da.Array):
        lengths = np.asarray(lengths)
    shape = tuple(lengths.shape)
    if lengths.dtype.kind not in "iu":
        raise TypeError(f"lengths has dtype {lengths.dtype}; expected integers")
    if len(shape) != 1 or shape[0] != N:
        raise ValueError(f"lengths has shape {shape}; expected (N,) = ({N},), one per row of xs")
    if isinstance(lengths, np.ndarray):
        if N and (lengths.min() < 0 or lengths.max() > T):
            bad = int(np.flatnonzero((lengths < 0) | (lengths > T))[0])
            raise ValueError(f"lengths[{bad}] is {lengths[bad]}; expected 0 <= length <= T = {T}")
        lengths = da.from_array(lengths, chunks=(batch_chunks,))
    if lengths.chunks[0] != batch_chunks:
        if any(math.isnan(c) for c in lengths.chunks[0]):
            raise ValueError("lengths has unknown chunk sizes; call "
                             "lengths.compute_chunk_sizes() first")
        lengths = lengths.rechunk((batch_chunks,))
    return lengths.astype(np.int64)[:, None, None]


def predict(model, xs, *, lengths=None, last_only=False):
    """Lazy hidden states of `model` over xs, computed block by block on Dask.

    model: a StackedLSTM, a TimeLSTM or an LSTM (its weights, run over the
        sequence); its weights are copied now, and a layer's held state is
        ignored (every sequence starts from zeros).
    xs: (N, T, D) of the model's dtype: a dask array chunked along N (T and D
        are rechunked to one chunk when they are split; the batch chunks are
        kept), or an array-like (NumPy array, Zarr array, ...) that is wrapped
        with ``dask.array.from_array`` in blocks of about 16 MiB. An in-memory
        NumPy array, or a ``numpy.memmap``, travels inside the graph: on a
        cluster, read the data where it lives (``dask.array.from_zarr``,
        ``from_npy``) instead.
    lengths: None (every row runs all T steps), or integers (N,), each
        0 <= lengths[i] <= T: row i runs steps 0 ... lengths[i]-1 only and
        hs[i, t] is 0 beyond (as ``forward(xs, lengths=...)``). A dask array
        chunked like xs along N (rechunked to xs's batch chunks if not), or an
        array-like (checked now; a dask array's values are checked when its
        blocks run).
    last_only: False -> hs (N, T, H·dirs); True -> each row's final hidden
        state (N, H·dirs), what a classifier reads: for a layer, and for a
        one-direction stack, the output at the row's last valid step (the top
        layer's, for a stack; zeros when the row's length, or T, is 0). For a
        bidirectional stack, the top layer's forward final h joined with its
        reverse final h (torch's ``h_n[-2:]`` joined; the reverse half is
        the reverse direction's output at step 0, which it reaches last).

    Returns a dask array of the model's dtype, chunked like xs along N; call
    ``.compute()`` (any scheduler), ``.to_zarr(...)``, ``.store(...)``.
    Raises TypeError for a wrong model or dtype, ValueError for a wrong shape
    (or lengths out of range, when known now), before anything runs.
    """
    stacked, params, dtype, D, H = _describe_model(model)

    if not isinstance(xs, da.Array) and not all(
            hasattr(xs, a) for a in ("shape", "dtype", "__getitem__")):
        xs = np.asarray(xs)
    shape = tuple(xs.shape)
    if np.dtype(xs.dtype) != dtype:
        raise TypeError(f"xs has dtype {xs.dtype}; expected {dtype}")
    if len(shape) != 3 or shape[2] != D:
        raise ValueError(f"xs has shape {shape}; expected (N, T, {D})")
    N, T = shape[:2]
    if not isinstance(xs, da.Array):
        rows = _rows_for(T * max(D, H) * dtype.itemsize)
        xs = da.from_array(xs, chunks=(_even_chunks(N, rows), T, D))
    if math.isnan(T):
        raise ValueError(f"xs has an unknown number of time steps (shape {shape}); "
                         "call xs.compute_chunk_sizes() first")
    if xs.numblocks[1] > 1 or xs.numblocks[2] > 1:
        xs = xs.rechunk({1: -1, 2: -1})
    # (N, 1, 1): map_blocks lines its blocks up with xs's by broadcasting
    extra = () if lengths is None else (_lengths(lengths, N, T, xs.chunks[0]),)

    # The structure is in the key too: one layer's triple and a one-layer
    # stack's list of it hold the same arrays but build different models.
    token = dask.base.tokenize("stack" if stacked else "layer", params)
    holder = np.empty((), dtype=object)
    holder[()] = params
    weights = da.from_array(holder, chunks=(), name=f"lstmc-weights-{token}")

    # A name of our own (not map_blocks' token=, deprecated in the array-expression
    # backend) so the blocks show as lstmc-predict-... on the dashboard.
    name = "lstmc-predict-" + dask.base.tokenize(
        xs.name, weights.name, *(e.name for e in extra), last_only)
    kwargs = dict(last_only=last_only, stacked=stacked, dtype=dtype, name=name)
    if last_only:
        return da.map_blocks(_forward_block, xs, weights, *extra, drop_axis=1,
                             chunks=(xs.chunks[0], (H,)),
                             meta=np.empty((0, 0), dtype), **kwargs)
    return da.map_blocks(_forward_block, xs, weights, *extra,
                         chunks=(xs.chunks[0], (T,), (H,)),
                         meta=np.empty((0, 0, 0), dtype), **kwargs)


class _NpyFile:
    """A .npy file, as an array-like that dask.array.from_array can slice.

    It pickles as its path, so a graph built on it carries no data: each read
    opens the file as a read-only memmap where the task runs and copies out the
    rows asked for.
    """

    def __init__(self, path):
        self.path = os.path.abspath(os.fspath(path))
        m = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype, self.ndim = m.shape, m.dtype, m.ndim
        st = os.stat(self.path)
        self._stamp = (self.path, st.st_size, st.st_mtime_ns)

    def __dask_tokenize__(self):
        return self._stamp

    def __getitem__(self, key):
        return np.array(np.load(self.path, mmap_mode="r")[key])


def from_npy(path, rows=None):
    """A dask array (N, ...) over a .npy file, read on the workers.

    Each block opens the file as a read-only memmap where it runs (the graph
    holds the path, not the data), so every worker must see the file at the
    same path (a shared filesystem). rows: rows per block; None chooses blocks
    of about 16 MiB, of nearly equal sizes.
    """
    f = _NpyFile(path)
    if f.ndim == 0:
        raise ValueError(f"{f.path!r} holds a 0-d array; expected (N, ...)")
    N = f.shape[0]
    if rows is None:
        rows = _rows_for(math.prod(f.shape[1:]) * f.dtype.itemsize)
    chunks = (_even_chunks(N, int(rows)),) + tuple(f.shape[1:])
    return da.from_array(f, chunks=chunks, name=f"lstmc-npy-{dask.base.tokenize(f)}",
                         meta=np.empty((0,) * f.ndim, f.dtype))
