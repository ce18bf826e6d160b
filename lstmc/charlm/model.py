"""The demo's network, in the style of *Deep Learning from Scratch 2*
(``ch06/train_rnnlm.py``): every layer has ``params``, ``grads``, ``forward``
and ``backward``; the model is

    TimeEmbedding (V, D) -> lstmc.TimeLSTM (D -> H, stateful) -> TimeAffine (H, V)
    -> softmax cross-entropy

and Adam and gradient-norm clipping train it. Only the recurrent layer comes
from the compiled package; everything else is plain NumPy, so the demo shows
how ``TimeLSTM`` drops into code written for the book's pure-NumPy layers.
"""

import math

import numpy as np

from lstmc import TimeLSTM

__all__ = ["CharLM", "Adam", "clip_grads"]


class TimeEmbedding:
    """Rows of ``W`` picked by character id: (N, T) ints -> (N, T, D)."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.idx = None

    def forward(self, idx):
        self.idx = idx
        return self.params[0][idx]

    def backward(self, dout):
        dW = self.grads[0]
        dW[...] = 0
        np.add.at(dW, self.idx.ravel(), dout.reshape(-1, dW.shape[1]))  # dW[idx] += dout


class TimeAffine:
    """One matrix product for all time steps: (N, T, H) -> (N, T, V)."""

    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None

    def forward(self, x):
        N, T, H = x.shape
        self.x = x
        W, b = self.params
        return (x.reshape(N * T, H) @ W + b).reshape(N, T, -1)

    def backward(self, dout):
        N, T, H = self.x.shape
        W, _ = self.params
        dout = dout.reshape(N * T, -1)
        rx = self.x.reshape(N * T, H)
        np.matmul(rx.T, dout, out=self.grads[0])  # dW = x.T @ dout
        np.sum(dout, axis=0, out=self.grads[1])
        return (dout @ W.T).reshape(N, T, H)


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def target_log_probs(logp, t):
    """logp[k, t[k]] for each row k, in float64 (sums of many float32 terms drift)."""
    return logp[np.arange(len(t)), t].astype(np.float64)


class TimeSoftmaxWithLoss:
    """Mean cross-entropy of the next character over all N*T positions."""

    def __init__(self):
        self.cache = None

    def forward(self, xs, ts):
        N, T, V = xs.shape
        logp = log_softmax(xs.reshape(N * T, V))
        t = ts.reshape(N * T)
        self.cache = (logp, t)
        return -float(target_log_probs(logp, t).mean())

    def backward(self):
        logp, t = self.cache
        dx = np.exp(logp)  # softmax
        dx[np.arange(len(t)), t] -= 1
        dx /= len(t)
        return dx


class Adam:
    """Adam (Kingma & Ba), updating each parameter array in place."""

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.iter = 0
        self.m = self.v = None

    def update(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2 ** self.iter) / (1.0 - self.beta1 ** self.iter)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m += (1 - self.beta1) * (g - m)
            v += (1 - self.beta2) * (g * g - v)
            # In place: the LSTM layer keeps these very arrays and must see the update.
            p -= lr_t * m / (np.sqrt(v) + self.eps)


def clip_grads(grads, max_norm):
    """Scale all gradients down together when their global L2 norm exceeds max_norm."""
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
    if total > max_norm:
        rate = max_norm / (total + 1e-6)
        for g in grads:
            g *= rate
    return total


def glorot(rng, fan_in, fan_out, shape, dtype):
    """Xavier/Glorot uniform initialisation (drawn in float64 so dtypes start alike)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


class CharLM:
    """Embedding -> lstmc.TimeLSTM -> Affine -> softmax cross-entropy, over a
    vocabulary of V characters embedded in D dimensions, with H hidden units."""

    def __init__(self, vocab_size, embed, hidden, dtype, rng, log_prior=None):
        V, D, H = vocab_size, embed, hidden
        embed_W = (rng.standard_normal((V, D)) * 0.1).astype(dtype)
        Wx = glorot(rng, D, 4 * H, (D, 4 * H), dtype)
        Wh = glorot(rng, H, 4 * H, (H, 4 * H), dtype)
        b = np.zeros(4 * H, dtype=dtype)
        b[:H] = 1.0  # forget gate (first in f, g, i, o) starts open: remember by default
        affine_W = glorot(rng, H, V, (H, V), dtype)
        # Output bias at the log character frequencies: the untrained model already
        # predicts the unigram distribution, so training is spent on context.
        affine_b = (np.zeros(V) if log_prior is None else log_prior).astype(dtype)

        self.sizes = (V, D, H)
        self.embed = TimeEmbedding(embed_W)
        self.lstm = TimeLSTM(Wx, Wh, b, stateful=True)
        self.affine = TimeAffine(affine_W, affine_b)
        self.loss_layer = TimeSoftmaxWithLoss()
        self.layers = [self.embed, self.lstm, self.affine]
        self.params = [p for layer in self.layers for p in layer.params]
        self.dtype = np.dtype(dtype)

    @property
    def grads(self):
        return [g for layer in self.layers for g in layer.grads]

    def forward(self, xs, ts):
        h = self.embed.forward(xs)
        h = self.lstm.forward(h)
        return self.loss_layer.forward(self.affine.forward(h), ts)

    def backward(self):
        d = self.loss_layer.backward()
        d = self.affine.backward(d)
        d = self.lstm.backward(d)
        self.embed.backward(d)

    def _inference(self):
        """(E, lstm, W, b): the embedding, a second TimeLSTM on the very same weight
        arrays but with its own state (training's state stays untouched), and the
        output affine layer's weights."""
        W, b = self.affine.params
        return self.embed.params[0], TimeLSTM(*self.lstm.params, stateful=True), W, b

    def evaluate(self, ids, streams=64, chunk=256):
        """Mean cross-entropy (nats) of predicting ids[1:] from ids[:-1], and the targets.

        The text is cut into ``streams`` parallel rows (one large matrix product per
        time step instead of a vector product), each read from a zero state; the few
        characters past a whole number of rows are left out.
        """
        n = min(streams, len(ids) - 1)
        L = (len(ids) - 1) // n
        xs = ids[: n * L].reshape(n, L)
        ts = ids[1: n * L + 1].reshape(n, L)
        E, lstm, W, b = self._inference()
        total = 0.0
        for s in range(0, L, chunk):
            hs = lstm.forward(E[xs[:, s: s + chunk]], train=False)
            logp = log_softmax(hs.reshape(-1, hs.shape[2]) @ W + b)
            total -= float(target_log_probs(logp, ts[:, s: s + chunk].reshape(-1)).sum())
        return total / (n * L), ts.ravel()

    def generate(self, prime_ids, length, temperature, rng):
        """Sample ``length`` ids after feeding ``prime_ids`` (temperature sampling)."""
        E, lstm, W, b = self._inference()
        x = np.empty((1, 1, E.shape[1]), dtype=self.dtype)
        out = []
        ids = list(prime_ids)
        i = 0
        while len(out) < length:
            x[0, 0] = E[ids[i] if i < len(ids) else out[-1]]
            h = lstm.forward(x, train=False)[0, 0]
            i += 1
            if i < len(ids):
                continue  # still reading the prime
            # Shift before dividing: the largest logit gives exp(0) = 1 at any
            # temperature, so a tiny one tends to argmax instead of inf / inf.
            logits = (h @ W + b).astype(np.float64)
            with np.errstate(over="ignore", under="ignore"):
                p = np.exp((logits - logits.max()) / temperature)
            cdf = np.cumsum(p)
            k = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            out.append(min(k, len(cdf) - 1))
        return out
