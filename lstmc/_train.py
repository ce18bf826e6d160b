"""The demo behind ``python -m lstmc``: a character-level language model.

What lives here and why
-----------------------
A small, complete language model in the style of *Deep Learning from Scratch 2*
(``ch06/train_rnnlm.py``): every layer has ``params``, ``grads``, ``forward`` and
``backward``; the network is

    TimeEmbedding (V, D) -> lstmc.TimeLSTM (D -> H, stateful) -> TimeAffine (H, V)
    -> softmax cross-entropy

trained by truncated backpropagation through time on a batch of parallel streams
cut from one long text, with Adam and gradient-norm clipping. Only the recurrent
layer comes from the compiled package; everything else is plain NumPy, so the demo
shows how ``TimeLSTM`` drops into code written for the book's pure-NumPy layers.

The default corpus is the English text of the standard library's
``pydoc_data.topics`` (the pages ``help("if")`` shows), so the demo needs no
download. Any UTF-8 file can be used instead with ``--corpus``.

Reproducibility: the seed fixes the initial weights and the sampling RNG, and the
batches are cut deterministically, so two runs with the same arguments and
``--steps`` print the same losses and the same sample (timings aside). A time
budget only ever applies when ``--steps`` is not given.
"""

import math
import os
import sys
import time

import numpy as np

__all__ = ["UsageError", "Config", "run"]

# Defaults sized so that the whole run (training, validation, sampling) ends within
# about a minute on a two-core laptop: the step budget is what a typical machine
# reaches, the time budget stops a slow one.
DEFAULT_HIDDEN = 128
DEFAULT_STEPS = 2000
DEFAULT_SECONDS = 45.0
DEFAULT_BATCH = 32  # parallel streams
DEFAULT_BPTT = 32  # characters per stream per step (truncation length)
EMBED_MAX = 64
LEARNING_RATE = 0.01
LR_FLOOR = 0.1  # the rate decays to this fraction of LEARNING_RATE by the end
MAX_GRAD_NORM = 5.0
VALID_FRACTION = 0.10
VALID_MAX_CHARS = 200_000  # validation reads at most this much of the held-out text
PRIME = "The "


class UsageError(Exception):
    """A problem with the arguments or the corpus: one line on stderr, exit code 2."""


class Config:
    """Options of one training run (the command-line flags, already checked)."""

    def __init__(self, corpus=None, hidden=DEFAULT_HIDDEN, steps=None, seconds=None,
                 seed=0, dtype="float32", save=None, plot=None, batch=DEFAULT_BATCH,
                 bptt=DEFAULT_BPTT, lr=LEARNING_RATE, temperature=0.8, length=320,
                 threads=None):
        self.corpus = corpus
        self.hidden = hidden
        self.seed = seed
        self.dtype = np.dtype(dtype)
        self.save = save
        self.plot = plot
        self.batch = batch
        self.bptt = bptt
        self.lr = lr
        self.temperature = temperature
        self.length = length
        self.threads = threads
        self.seconds_ignored = steps is not None and seconds is not None
        if steps is None and seconds is None:
            self.max_steps, self.max_seconds = DEFAULT_STEPS, DEFAULT_SECONDS
        elif steps is not None:
            # An explicit step count wins over time, so equal --steps give equal runs.
            self.max_steps, self.max_seconds = steps, None
        else:
            self.max_steps, self.max_seconds = None, seconds


# --------------------------------------------------------------------------- corpus

def load_corpus(path):
    """Return ``(text, description)``; raise UsageError on an unusable file."""
    if path is None:
        import pydoc_data.topics as topics

        text = "\n".join(topics.topics.values())
        ver = "%d.%d" % sys.version_info[:2]
        return text, "Python %s help topics (pydoc_data.topics, %d pages)" % (
            ver, len(topics.topics))
    try:
        with open(path, encoding="utf-8-sig") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise UsageError("corpus %s is not UTF-8 text (%s)" % (path, exc.reason))
    except OSError as exc:
        raise UsageError("cannot read corpus %s: %s" % (path, exc.strerror or exc))
    if not text:
        raise UsageError("corpus %s is empty" % path)
    return text, os.path.basename(path) or path


def split_corpus(text, cfg):
    """Character ids for training and validation (the last 10%), and the vocabulary."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # one code point each
    table, ids = np.unique(codes, return_inverse=True)
    ids = ids.reshape(-1).astype(np.intp)
    chars = [chr(c) for c in table]
    n_valid = max(2, int(round(len(ids) * VALID_FRACTION)))
    train, valid = ids[:-n_valid], ids[-n_valid:]
    need = cfg.batch * cfg.bptt + 1
    if len(train) < need:
        total = need + int(math.ceil(need * VALID_FRACTION / (1 - VALID_FRACTION)))
        raise UsageError(
            "corpus too short: %s characters, one batch of %d streams x %d characters "
            "needs about %s (lower --batch or --bptt)"
            % (fmt_int(len(text)), cfg.batch, cfg.bptt, fmt_int(total)))
    return train, valid, chars


# --------------------------------------------------------------------------- layers

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


class TimeSoftmaxWithLoss:
    """Mean cross-entropy of the next character over all N*T positions."""

    def __init__(self):
        self.cache = None

    def forward(self, xs, ts):
        N, T, V = xs.shape
        logp = log_softmax(xs.reshape(N * T, V))
        rows = np.arange(N * T)
        t = ts.reshape(N * T)
        self.cache = (logp, t, rows)
        return -float(logp[rows, t].astype(np.float64).mean())

    def backward(self):
        logp, t, rows = self.cache
        dx = np.exp(logp)  # softmax
        dx[rows, t] -= 1
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
    """Embedding -> lstmc.TimeLSTM -> Affine -> softmax cross-entropy."""

    def __init__(self, vocab_size, embed, hidden, dtype, rng, log_prior=None):
        import lstmc

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

        self.embed = TimeEmbedding(embed_W)
        self.lstm = lstmc.TimeLSTM(Wx, Wh, b, stateful=True)
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

    def inference_lstm(self):
        """A second TimeLSTM on the very same weight arrays, with its own state."""
        import lstmc

        return lstmc.TimeLSTM(*self.lstm.params, stateful=True)

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
        lstm = self.inference_lstm()
        W, b = self.affine.params
        E = self.embed.params[0]
        total = 0.0
        for s in range(0, L, chunk):
            hs = lstm.forward(E[xs[:, s: s + chunk]], train=False)
            logits = hs.reshape(-1, hs.shape[2]) @ W + b
            logp = log_softmax(logits)
            t = ts[:, s: s + chunk].reshape(-1)
            total -= float(logp[np.arange(len(t)), t].astype(np.float64).sum())
        return total / (n * L), ts.ravel()

    def generate(self, prime_ids, length, temperature, rng):
        """Sample ``length`` ids after feeding ``prime_ids`` (temperature sampling)."""
        lstm = self.inference_lstm()
        W, b = self.affine.params
        E = self.embed.params[0]
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
            logits = (h @ W + b).astype(np.float64) / temperature
            p = np.exp(logits - logits.max())
            cdf = np.cumsum(p)
            k = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            out.append(min(k, len(cdf) - 1))
        return out


# --------------------------------------------------------------------------- output

def fmt_int(n):
    return "{:,}".format(n)


def fmt_time(seconds):
    if seconds < 60:
        return "%.1f s" % seconds
    return "%d min %02d s" % divmod(int(round(seconds)), 60)


def printable(text):
    """Newlines kept; anything else that would not print shown as an escape."""
    return "".join(ch if ch.isprintable() or ch == "\n"
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def sample_lines(text, width=96):
    """Display lines of a sample: printable, right-stripped, long lines wrapped."""
    lines = []
    for line in printable(text).split("\n"):
        line = line.rstrip()
        while len(line) > width:
            cut = line.rfind(" ", width // 2, width + 1)  # prefer to wrap at a space
            if cut <= 0:
                cut = width
            lines.append(line[:cut].rstrip())
            line = line[cut:].lstrip(" ")
        lines.append(line)
    return lines


class Progress:
    """A one-line bar redrawn with \\r on a terminal; a line every 10% otherwise."""

    WIDTH = 20

    def __init__(self, stream, max_steps, max_seconds):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.next_mark = 0.1
        self.last_draw = 0.0
        self.window = []  # losses since the last printed line
        self.drawn = False

    def fraction(self, step, elapsed):
        f = 0.0
        if self.max_steps:
            f = max(f, step / self.max_steps)
        if self.max_seconds:
            f = max(f, elapsed / self.max_seconds)
        return min(f, 1.0)

    def line(self, step, elapsed, loss):
        frac = self.fraction(step, elapsed)
        fill = int(round(frac * self.WIDTH))
        total = ("/%d" % self.max_steps) if self.max_steps else ""
        width = len(str(self.max_steps)) if self.max_steps else 5
        return "  step %*d%s [%s%s] %3d%%  loss %.3f  ppl %6.2f  %5.1f s" % (
            width, step, total, "#" * fill, "." * (self.WIDTH - fill), int(frac * 100),
            loss, math.exp(min(loss, 50.0)), elapsed)

    def update(self, step, elapsed, loss, last=False):
        self.window.append(loss)
        frac = self.fraction(step, elapsed)
        if self.tty:
            self.window = self.window[-20:]
            if last or elapsed - self.last_draw >= 0.1 or step == 1:
                avg = sum(self.window) / len(self.window)
                self.stream.write("\r" + self.line(step, elapsed, avg))
                self.stream.flush()
                self.last_draw = elapsed
                self.drawn = True
            return
        if frac + 1e-12 >= self.next_mark or last:
            avg = sum(self.window) / len(self.window)
            self.stream.write(self.line(step, elapsed, avg) + "\n")
            self.stream.flush()
            self.window = []
            while self.next_mark <= frac + 1e-12:
                self.next_mark += 0.1

    def close(self):
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- run

def check_output_path(option, path):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError("%s %s: directory %s does not exist" % (option, path, parent))
    if os.path.isdir(path):
        raise UsageError("%s %s: is a directory" % (option, path))


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path, losses, val_loss, unigram_loss, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, lw=0.8, alpha=0.4, color="C0", label="training loss (per step)")
    k = max(1, len(losses) // 25)
    if len(losses) >= k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, color="C0", label="training loss (moving mean)")
    ax.axhline(val_loss, color="C2", ls="--", label="validation loss (end)")
    ax.axhline(unigram_loss, color="C3", ls=":", label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def blas_threads(n):
    """``(context manager, label, note)`` limiting BLAS to n threads while it is open.

    n None means 1 when threadpoolctl is installed and the BLAS default otherwise,
    quietly; n = 0 means the BLAS default. One thread is the default because the
    per-step matrices are small (32 x 128 by 128 x 512), where a second thread gains
    little, and because a step alternates between SciPy's BLAS (inside lstmc) and
    NumPy's (the affine layer): two OpenBLAS pools whose waiting threads spin
    against each other, which on a busy two-core machine made steps 10x slower.
    """
    import contextlib

    default = contextlib.nullcontext(), "BLAS default threads"
    if n == 0:
        return default + (None,)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        note = None if n is None else (
            "python -m lstmc: note: --threads needs threadpoolctl (pip install threadpoolctl); "
            "using the BLAS default")
        return default + (note,)
    n = 1 if n is None else n
    label = "%d BLAS thread%s" % (n, "" if n == 1 else "s")
    return threadpool_limits(limits=n, user_api="blas"), label, None


def run(cfg, out=None, err=None):
    """Train, evaluate and sample; return the process exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    limit, label, note = blas_threads(cfg.threads)
    if note:
        print(note, file=err, flush=True)
    with limit:
        return _run(cfg, out, err, label)


def describe_budget(cfg):
    if cfg.max_steps and cfg.max_seconds:
        return "up to %s steps or %s, whichever comes first" % (
            fmt_int(cfg.max_steps), fmt_time(cfg.max_seconds))
    if cfg.max_steps:
        text = "%s steps (no time limit)" % fmt_int(cfg.max_steps)
        if cfg.seconds_ignored:
            text += "; --seconds ignored because --steps is given"
        return text
    return "%s (no step limit)" % fmt_time(cfg.max_seconds)


def train(model, train_ids, cfg, progress):
    """The training loop; returns (per-step losses, seconds, interrupted)."""
    # Book-style batching: stream k reads the training text from offset k * jump on,
    # and each step continues where the previous one stopped (the LSTM is stateful).
    N, T = cfg.batch, cfg.bptt
    span = len(train_ids) - 1
    offsets = (np.arange(N) * (span // N))[:, None]
    cols = np.arange(T)[None, :]
    optimizer = Adam(lr=cfg.lr)
    losses = []
    start = time.perf_counter()
    try:
        while True:
            pos = (offsets + len(losses) * T + cols) % span
            loss = model.forward(train_ids[pos], train_ids[pos + 1])
            model.backward()
            grads = model.grads
            clip_grads(grads, MAX_GRAD_NORM)
            # Cosine decay to LR_FLOOR of the rate over the budget (steps or time).
            frac = progress.fraction(len(losses), time.perf_counter() - start)
            decay = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * frac))
            optimizer.lr = cfg.lr * decay
            optimizer.update(model.params, grads)
            losses.append(loss)
            elapsed = time.perf_counter() - start
            done = ((cfg.max_steps is not None and len(losses) >= cfg.max_steps)
                    or (cfg.max_seconds is not None and elapsed >= cfg.max_seconds))
            progress.update(len(losses), elapsed, loss, last=done)
            if done:
                return losses, elapsed, False
    except KeyboardInterrupt:
        return losses, time.perf_counter() - start, True
    finally:
        progress.close()


def _run(cfg, out, err, threads_label):
    import lstmc

    def say(line=""):
        print(line, file=out, flush=True)

    def warn(line):
        print("python -m lstmc: " + line, file=err, flush=True)

    # Everything that can be wrong with the arguments is found before training starts.
    if cfg.save:
        check_output_path("--save", cfg.save)
    plot = cfg.plot
    if plot:
        check_output_path("--plot", plot)
        if not have_matplotlib():
            warn("note: --plot needs matplotlib, which is not installed "
                 "(pip install matplotlib); no plot will be written")
            plot = None
    text, source = load_corpus(cfg.corpus)
    train_ids, valid_ids, chars = split_corpus(text, cfg)

    V, H = len(chars), cfg.hidden
    D = min(EMBED_MAX, H)
    # Character frequencies of the training text (add-one smoothed): the unigram
    # baseline, and the starting point of the output bias.
    counts = np.bincount(train_ids, minlength=V).astype(np.float64) + 1.0
    logq = np.log(counts / counts.sum())
    model = CharLM(V, D, H, cfg.dtype, np.random.default_rng(cfg.seed), log_prior=logq)

    say("lstmc %s - character-level language model demo" % getattr(lstmc, "__version__", ""))
    say("  corpus    %s: %s characters, %d distinct" % (source, fmt_int(len(text)), V))
    say("  split     %s to train on, %s held out for validation (the last %d%%)"
        % (fmt_int(len(train_ids)), fmt_int(len(valid_ids)), round(VALID_FRACTION * 100)))
    say("  model     embedding %dx%d -> lstmc.TimeLSTM %d->%d -> affine %dx%d, %s, %s parameters"
        % (V, D, D, H, H, V, cfg.dtype.name, fmt_int(sum(p.size for p in model.params))))
    say("  training  %d streams x %d characters per step (truncated BPTT), seed %d"
        % (cfg.batch, cfg.bptt, cfg.seed))
    say("  optimizer Adam, lr %g with cosine decay to %g, gradient-norm clip %g, %s"
        % (cfg.lr, cfg.lr * LR_FLOOR, MAX_GRAD_NORM, threads_label))
    say("  budget    " + describe_budget(cfg))
    say()

    progress = Progress(err, cfg.max_steps, cfg.max_seconds)
    losses, seconds, interrupted = train(model, train_ids, cfg, progress)
    if not losses:
        warn("interrupted before the first step")
        return 130
    steps = len(losses)

    val_loss, targets = model.evaluate(valid_ids[:VALID_MAX_CHARS + 1])
    unigram_loss = -float(logq[targets].mean())  # on the very targets the model saw

    head = min(10, steps)
    tail = min(max(10, steps // 10), steps)
    first, last = sum(losses[:head]) / head, sum(losses[-tail:]) / tail
    why = ("interrupted by Ctrl-C" if interrupted else "step budget reached"
           if cfg.max_steps and steps >= cfg.max_steps else "time budget reached")
    say("done      %s steps in %s (%s), %.1f steps/s, %s characters/s"
        % (fmt_int(steps), fmt_time(seconds), why, steps / seconds,
           fmt_int(int(steps * cfg.batch * cfg.bptt / seconds))))
    say("  training loss   %.3f -> %.3f   (perplexity %.2f -> %.2f; "
        "mean of first %d / last %d steps)"
        % (first, last, math.exp(first), math.exp(last), head, tail))
    val_ppl, uni_ppl = math.exp(val_loss), math.exp(unigram_loss)
    held_out = fmt_int(len(targets))
    if len(valid_ids) - 1 > VALID_MAX_CHARS:
        held_out += " of the %s" % fmt_int(len(valid_ids) - 1)
    say("  validation      perplexity %.2f on %s held-out characters (%.2f bits each)"
        % (val_ppl, held_out, val_loss / math.log(2)))
    say("  unigram         perplexity %.2f from character frequencies alone (%.2f bits each)"
        % (uni_ppl, unigram_loss / math.log(2)))
    if val_ppl < uni_ppl:
        say("  verdict         %.1fx better than the unigram baseline: on text it never saw, "
            "the model is" % (uni_ppl / val_ppl))
        say("                  about as unsure as a pick among %.1f equally likely characters, "
            "not %.1f" % (val_ppl, uni_ppl))
    else:
        say("  verdict         not better than the unigram baseline yet: train longer "
            "(--steps, --seconds)")

    index = {ch: k for k, ch in enumerate(chars)}
    prime = PRIME if all(ch in index for ch in PRIME) else chars[int(train_ids[0])]
    sample_rng = np.random.default_rng([cfg.seed, 1])
    gen = model.generate([index[ch] for ch in prime], cfg.length, cfg.temperature, sample_rng)
    say()
    say("sample (temperature %g, seed %d, primed with %r):" % (cfg.temperature, cfg.seed, prime))
    for line in sample_lines(prime + "".join(chars[k] for k in gen)):
        say("  | " + line)

    status = 0
    if cfg.save or plot:
        say()
    if cfg.save:
        from lstmc._io import save

        try:
            save(cfg.save, model.lstm)
        except OSError as exc:
            warn("error: cannot write --save %s: %s" % (cfg.save, exc.strerror or exc))
            status = 1
        else:
            say("saved     TimeLSTM weights (Wx, Wh, b) to %s (read back with lstmc.load)"
                % cfg.save)
    if plot:
        try:
            write_plot(plot, np.array(losses), val_loss, unigram_loss,
                       "lstmc char-LM, hidden %d, %s: validation perplexity %.2f"
                       % (H, cfg.dtype.name, val_ppl))
        except OSError as exc:
            warn("error: cannot write --plot %s: %s" % (plot, exc.strerror or exc))
            status = 1
        else:
            say("plot      loss curve written to %s" % plot)
    return status
