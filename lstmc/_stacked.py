"""StackedLSTM: a whole multi-layer, optionally bidirectional LSTM.

What ``torch.nn.LSTM(num_layers=L, bidirectional=...)``, a stack of ONNX
``LSTM`` nodes or of Keras ``LSTM`` / ``Bidirectional(LSTM)`` layers compute,
built from TimeLSTMs: one per layer and direction. Layer k > 0 reads the
output of layer k - 1 (width H, or 2H when bidirectional: the forward half
first, as torch concatenates them). A bidirectional layer runs a forward and a
``reverse=True`` TimeLSTM over the same input and lengths.

Initial and final states are stacked as torch's ``h_0``/``h_n``: shape
(L * dirs, N, H), row ``k * dirs + d`` for layer k and direction d (0 forward,
1 reverse). Inputs are always batch-major (N, T, D): a ``batch_first=False``
torch model computes the same function on ``xs.transpose(1, 0, 2)``.

This module holds the wiring only: the numbers are computed by the TimeLSTMs
(their compiled kernels); whole stacks to and from torch, ONNX and Keras are
lstmc._frameworks' (the per-layer weight layouts lstmc.convert's). No
framework is imported except inside ``from_onnx``/``to_onnx`` (onnx);
``from_torch`` and ``from_keras`` only read the objects they are given.
"""
import os
import queue
import threading

import numpy as np

from . import _frameworks, _threads, _validate
from ._frameworks import layer_name
from ._layers import TimeLSTM, _backward, _forward

__all__ = ["StackedLSTM"]

# The two directions of a bidirectional layer are independent: when lstmc may
# use two threads or more and a direction has this many multiply-adds, they run
# side by side, each on its share of the threads (each over the whole batch, so
# its per-step products keep all the rows still running), rather than one
# after the other, each split over all threads.
SIDE_BY_SIDE_MACS = 1e7


class _SideThread:
    """One persistent thread that runs a function beside the caller (the reverse
    direction while the caller runs the forward one). A forked child starts a
    new one."""

    def __init__(self):
        self._reset()

    def _reset(self):
        self._lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._thread = None

    def _loop(self):
        while True:
            fn, box, done = self._jobs.get()
            try:
                box.append((True, fn()))
            except BaseException as exc:       # handed to the caller
                box.append((False, exc))
            done.set()

    def run(self, here, beside):
        """(here(), beside()), beside() running on the side thread meanwhile."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lstmc-side",
                                                daemon=True)
                self._thread.start()
        box, done = [], threading.Event()
        self._jobs.put((beside, box, done))
        try:
            mine = here()
        finally:
            done.wait()
        ok, theirs = box[0]
        if not ok:
            raise theirs
        return mine, theirs


_SIDE = _SideThread()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_SIDE._reset)


def _shares(row, N, T):
    """(threads of the forward direction, of the reverse) when a bidirectional
    layer's two directions run side by side, else None."""
    n = _threads.get_num_threads()
    layer = row[0]
    D, H = layer.input_size, layer.hidden_size
    if len(row) < 2 or n < 2 or N * T * 4.0 * H * (D + H) < SIDE_BY_SIDE_MACS:
        return None
    return n - n // 2, n // 2


def _is_triple(entry):
    return isinstance(entry, (tuple, list)) and len(entry) == 3


def _parse_layers(layers):
    """The constructor's argument as a list of tuples of (Wx, Wh, b) triples
    (one tuple per layer, one triple per direction), and the direction count."""
    if isinstance(layers, np.ndarray) or not isinstance(layers, (list, tuple)):
        raise TypeError("layers must be a list with one entry per layer, each (Wx, Wh, b) or "
                        f"((Wx, Wh, b), (Wx, Wh, b)); got {type(layers).__name__}")
    if not layers:
        raise ValueError("layers is empty; a StackedLSTM needs at least one layer")
    parsed = []
    for k, entry in enumerate(layers):
        if _is_triple(entry):
            parsed.append((tuple(entry),))
        elif (isinstance(entry, (tuple, list)) and len(entry) == 2
              and all(_is_triple(e) for e in entry)):
            parsed.append((tuple(entry[0]), tuple(entry[1])))
        else:
            raise ValueError(
                f"layers[{k}] must be a triple (Wx, Wh, b) or a pair of triples "
                f"((Wx, Wh, b), (Wx, Wh, b)) for (forward, reverse); got "
                f"{type(entry).__name__}"
                + (f" of length {len(entry)}" if isinstance(entry, (tuple, list)) else ""))
    dirs = len(parsed[0])
    for k, entry in enumerate(parsed):
        if len(entry) != dirs:
            kinds = {1: "a (Wx, Wh, b) triple", 2: "a (forward, reverse) pair"}
            raise ValueError(f"layers[{k}] is {kinds[len(entry)]} but layers[0] is "
                             f"{kinds[dirs]}; all layers must be alike (all bidirectional "
                             "or none)")
    return parsed, dirs


def _build(parsed, dirs):
    """The TimeLSTMs, checked to form one stack: one dtype, one H, and each
    layer's input width the previous layer's output width."""
    built = []
    dtype = H = None
    for k, entry in enumerate(parsed):
        row = []
        for d, (Wx, Wh, b) in enumerate(entry):
            name = layer_name(k, d, dirs)
            try:
                layer = TimeLSTM(Wx, Wh, b, reverse=bool(d))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{name}: {exc}") from exc
            if dtype is None:
                dtype, H = layer.dtype, layer.hidden_size
            if layer.dtype != dtype:
                raise TypeError(f"{name} has dtype {layer.dtype}; expected {dtype}, the dtype "
                                f"of layer 0 (all layers must share one dtype)")
            if layer.hidden_size != H:
                raise ValueError(f"{name} has hidden size H={layer.hidden_size} (Wh of shape "
                                 f"{layer.params[1].shape}); expected H={H}, that of layer 0")
            if k > 0 and layer.input_size != H * dirs:
                raise ValueError(
                    f"{name}: Wx has shape {layer.params[0].shape}; expected {(H * dirs, 4 * H)}"
                    f": layer {k} reads the output of layer {k - 1}, of width "
                    + ("2*H" if dirs == 2 else "H") + f" = {H * dirs}")
            row.append(layer)
        built.append(tuple(row))
    return built


class StackedLSTM:
    """A multi-layer, optionally bidirectional LSTM (torch.nn.LSTM's function).

    StackedLSTM(layers): ``layers`` has one entry per layer, either a
    ``(Wx, Wh, b)`` triple or, for a bidirectional stack, a pair of triples
    ``((Wx, Wh, b), (Wx, Wh, b))`` = (forward, reverse); all entries alike.
    Layer 0 has Wx (D, 4H); layer k > 0 has Wx (H * dirs, 4H); every layer has
    Wh (H, 4H), b (4H,) and one dtype (float32 or float64). C-contiguous arrays
    of that dtype are kept as the very objects passed, as by TimeLSTM.

    forward(xs, lengths=, h0=, c0=) -> hs (N, T, H * dirs); afterwards ``h``
    and ``c`` are the final states (L * dirs, N, H) in torch's order.
    backward(dhs) -> dxs, writes ``grads`` in place and sets ``dh``, ``dc``
    (gradients of h0 and c0, shaped like them). ``params`` and ``grads`` are
    flat lists [Wx, Wh, b, ...] of the TimeLSTMs' very arrays, layer by layer
    (forward direction first), so the book's optimizers update them in place.

    Not stateful: every forward starts from h0/c0 (zeros when None).
    """

    def __init__(self, layers):
        parsed, dirs = _parse_layers(layers)
        self._layers = _build(parsed, dirs)
        self.h = self.c = self.dh = self.dc = None
        self._batch = None          # (N, T) of the last forward kept for backward

    # ------------------------------------------------------------ structure

    @property
    def num_layers(self):
        """L, the number of layers."""
        return len(self._layers)

    @property
    def num_directions(self):
        """2 for a bidirectional stack, else 1."""
        return len(self._layers[0])

    @property
    def bidirectional(self):
        """Whether each layer has a reverse direction."""
        return self.num_directions == 2

    @property
    def input_size(self):
        """D, the width of an input row."""
        return self._layers[0][0].input_size

    @property
    def hidden_size(self):
        """H, the width of each direction's hidden and cell states."""
        return self._layers[0][0].hidden_size

    @property
    def dtype(self):
        """float32 or float64, the dtype of every weight and input."""
        return self._layers[0][0].dtype

    @property
    def layers(self):
        """The TimeLSTMs: one per layer, or a (forward, reverse) pair per layer."""
        return [row if len(row) == 2 else row[0] for row in self._layers]

    def _all(self):
        """Every TimeLSTM in torch's order (layer 0 forward, layer 0 reverse, ...)."""
        return [layer for row in self._layers for layer in row]

    @property
    def params(self):
        """[Wx, Wh, b] of every TimeLSTM in torch's order, flat: the arrays they hold."""
        return [p for layer in self._all() for p in layer.params]

    @property
    def grads(self):
        """[dWx, dWh, db] of every TimeLSTM, flat, aligned with ``params``."""
        return [g for layer in self._all() for g in layer.grads]

    def weights(self):
        """The constructor's argument: ``StackedLSTM(m.weights())`` shares m's arrays
        (copy them first for an independent model)."""
        return [tuple(tuple(layer.params) for layer in row) if len(row) == 2
                else tuple(row[0].params) for row in self._layers]

    def __repr__(self):
        return (f"StackedLSTM(num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"D={self.input_size}, H={self.hidden_size}, dtype={self.dtype})")

    # Pickle and deepcopy keep weights, gradients and the last states; what
    # backward needs is dropped with the TimeLSTMs' caches.
    def __getstate__(self):
        return dict(self.__dict__, _batch=None)

    # ------------------------------------------------------------ compute

    def _initial_state(self, a, name, N):
        """h0 or c0 checked as (L * dirs, N, H): a list of (N, H) rows or Nones."""
        count = self.num_layers * self.num_directions
        if a is None:
            return [None] * count
        a = _validate.as_array(a, name, self.dtype, (count, N, self.hidden_size))
        return list(a)

    def forward(self, xs, *, lengths=None, h0=None, c0=None, train=True):
        """hs (N, T, H * dirs) for xs (N, T, D).

        lengths: integers (N,) in 0..T; row i runs steps 0 .. lengths[i] - 1
        only (the reverse direction from its last valid step back to 0), hs is 0
        past a row's length, and h, c hold each row's state after its last
        valid step. h0, c0: (L * dirs, N, H) initial states in torch's order
        (None: zeros; c0 may come without h0). train=False keeps nothing for
        backward. Every argument is checked before any layer runs.
        """
        xs = _validate.as_array(xs, "xs", self.dtype, (None, None, self.input_size))
        N, T, _ = xs.shape
        if lengths is not None:
            lengths = _validate.lengths(lengths, N, T)
        h0s = self._initial_state(h0, "h0", N)
        c0s = self._initial_state(c0, "c0", N)

        self._batch = None
        dirs = self.num_directions
        hn, cn = [], []
        for k, row in enumerate(self._layers):
            j = k * dirs
            shares = _shares(row, N, T)
            if shares is None:
                outs = [_forward(layer, xs, lengths, h0s[j + d], c0s[j + d], train)
                        for d, layer in enumerate(row)]
            else:
                outs = _SIDE.run(
                    lambda: _forward(row[0], xs, lengths, h0s[j], c0s[j], train, shares[0]),
                    lambda: _forward(row[1], xs, lengths, h0s[j + 1], c0s[j + 1], train,
                                     shares[1]))
            hn += [layer.h for layer in row]
            cn += [layer.c for layer in row]
            xs = outs[0] if dirs == 1 else np.concatenate(outs, axis=-1)
        self.h, self.c = np.stack(hn), np.stack(cn)
        if train:
            self._batch = (N, T)
        return xs

    def backward(self, dhs):
        """dxs (N, T, D) for dhs (N, T, H * dirs) of the last forward (train=True).

        Writes every layer's grads in place and sets dh, dc (L * dirs, N, H): the
        gradients of h0 and c0. dhs at padded steps is ignored; dxs is 0 there.
        """
        if self._batch is None:
            raise RuntimeError("backward needs a forward(..., train=True) first")
        N, T = self._batch
        H, dirs = self.hidden_size, self.num_directions
        dhs = _validate.as_array(dhs, "dhs", self.dtype, (N, T, H * dirs))
        dh = [None] * (self.num_layers * dirs)
        dc = [None] * len(dh)
        for k in range(self.num_layers - 1, -1, -1):
            row = self._layers[k]
            halves = [dhs[..., d * H:(d + 1) * H] for d in range(dirs)]
            shares = _shares(row, N, T)
            if shares is None:
                parts = [_backward(layer, half) for layer, half in zip(row, halves)]
            else:
                parts = _SIDE.run(lambda: _backward(row[0], halves[0], shares[0]),
                                  lambda: _backward(row[1], halves[1], shares[1]))
            for d, layer in enumerate(row):
                dh[k * dirs + d], dc[k * dirs + d] = layer.dh, layer.dc
            dhs = parts[0] if dirs == 1 else parts[0] + parts[1]
        self.dh, self.dc = np.stack(dh), np.stack(dc)
        return dhs

    # ------------------------------------------------------------ PyTorch

    @classmethod
    def from_torch(cls, module_or_state_dict):
        """A StackedLSTM with the weights of a ``torch.nn.LSTM`` or its state_dict.

        Any num_layers, bidirectional, bias on or off; batch_first changes no
        weight (lstmc takes (N, T, D) either way). A state_dict may hold the LSTM
        under a prefix (``"encoder.lstm.weight_ih_l0"``) when it holds one LSTM.
        Dropout between layers is a training-time feature of torch's module:
        lstmc computes the module in eval() mode. proj_size > 0 raises
        ValueError. The dtype is the tensors' (float32 or float64).
        """
        return cls(_frameworks.torch_layers(module_or_state_dict))

    def to_torch_state_dict(self, *, bias=True):
        """torch.nn.LSTM's state_dict as NumPy arrays, in torch's key order.

        Load with ``lstm.load_state_dict({k: torch.from_numpy(v) for k, v in
        sd.items()})`` into ``nn.LSTM(D, H, num_layers=L, bidirectional=...)``
        (any batch_first). All of b goes into bias_ih and bias_hh is zeros.
        bias=False leaves the bias keys out, for a module built with bias=False;
        it raises ValueError if a b is not zero.
        """
        return _frameworks.torch_state_dict(self, bias)

    # ------------------------------------------------------------ ONNX

    @classmethod
    def from_onnx(cls, path_or_model):
        """A StackedLSTM from the LSTM nodes of an ONNX model (a path or a ModelProto).

        Reads the models ``torch.onnx.export`` writes for nn.LSTM (one node per
        layer; any layers, bidirectional, batch_first) and single-node LSTM
        models. The nodes are taken in graph order and must form one chain:
        node k's X is computed from node k-1's Y (through the Transpose,
        Reshape, ... that exporters insert). W, R and B must be constants
        (initializers, Constant nodes, or either behind Identity). The model's
        initial_h, initial_c and sequence_lens are run-time inputs, not weights:
        pass them to forward as h0, c0 and lengths.
        Peepholes (P), clip, input_forget=1, activations other than
        (Sigmoid, Tanh, Tanh) and layout=1 raise ValueError naming the attribute.
        """
        return cls(_frameworks.onnx_layers(path_or_model))

    def to_onnx(self, path=None, *, dtype=None, opset=17):
        """Write (and return) an ONNX model that onnxruntime runs as forward().

        Inputs: X (N, T, D) batch-major, of the model's dtype; sequence_lens
        (N,) int32 (T for full rows); initial_h and initial_c (L * dirs, N, H)
        in torch's order (zeros for forward's None). Outputs: Y (N, T, H * dirs),
        Y_h and Y_c (L * dirs, N, H): forward's hs, h and c. Inside, one ONNX
        LSTM node per layer (layout 0, time-major), with Transpose/Reshape
        between; a row of length 0 gets its initial state as Y_h, Y_c (as from
        forward), where a bare onnxruntime LSTM node gives zeros.
        path=None only returns the onnx.ModelProto.

        dtype: the model's tensors' dtype, float32 or float64 (default: this
        stack's). ONNX allows both, but onnxruntime's LSTM kernel runs float32
        only: a float64 stack meant for onnxruntime needs dtype=np.float32.
        """
        return _frameworks.onnx_model(self, path, dtype, opset)

    # ------------------------------------------------------------ Keras

    @classmethod
    def from_keras(cls, model_or_layers):
        """A StackedLSTM from the LSTM layers of a Keras model (or a list of layers).

        Takes ``keras.layers.LSTM`` layers and ``Bidirectional(LSTM(...))``
        with merge_mode="concat", in order (all layers alike); InputLayer,
        Masking and Dropout around them are skipped (dropout is a training
        feature). Each LSTM must have the default activation="tanh" and
        recurrent_activation="sigmoid" and must not go backwards on its own;
        any other layer between two LSTMs raises. Every LSTM but the last must
        have return_sequences=True. Keras is not imported: the layers are read.
        A Masking layer over post-padded rows corresponds to forward's lengths
        (at the valid steps: Keras repeats the last output past a row's end,
        lstmc writes zeros).
        """
        return cls(_frameworks.keras_layers(model_or_layers))
