"""One run of the demo, from checked options to exit code: build the model,
train it within its budget, save it, evaluate it, sample from it and plot.

Training is truncated backpropagation through time on a batch of parallel
streams cut from one long text, with Adam, gradient-norm clipping and a cosine
learning-rate decay over the budget.

Reproducibility: the seed fixes the initial weights and the sampling RNG, and the
batches are cut deterministically, so two runs with the same arguments and
``--steps`` print the same losses and the same sample (timings aside). A time
budget only ever applies when ``--steps`` is not given.
"""

import contextlib
import math
import os
import sys
import time

import numpy as np

import lstmc
from lstmc import save
from lstmc._cli import unwritable
from lstmc.charlm import report
from lstmc.charlm.config import (EMBED_MAX, LR_FLOOR, MAX_GRAD_NORM, PRIME, VALID_MAX_CHARS,
                                 UsageError)
from lstmc.charlm.corpus import load_corpus
from lstmc.charlm.model import Adam, CharLM, clip_grads

__all__ = ["run", "train"]


def lstmc_threads(requested):
    """``(n, label)``: the threads lstmc runs the LSTM on while training (n None:
    lstmc's default, the cores this process may use) and how the header names them.

    NumPy's and SciPy's BLAS pools are left as they are: lstmc holds SciPy's at one
    thread while its own calls run (its threads take the batch's rows), and the
    affine layer's products stay with NumPy's. Nothing here needs threadpoolctl.
    """
    n = lstmc.get_num_threads() if not requested else requested
    return (requested or None), "%d lstmc thread%s" % (n, "" if n == 1 else "s")


def check_output_path(option, path):
    reason = unwritable(path)
    if reason:
        raise UsageError("%s %s: %s" % (option, path, reason))


def physical_memory():
    """Bytes of physical memory of this machine, or None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(cfg, vocab_size, available=None):
    """UsageError, before anything is allocated, when the model and one training
    step cannot fit in the machine's memory (``available`` bytes; default: all
    of it). The estimate is a lower bound: the weights, their gradients and
    Adam's two moments, and the activations of one batch."""
    available = physical_memory() if available is None else available
    V, H = vocab_size, cfg.hidden
    D = min(EMBED_MAX, H)
    params = V * D + D * 4 * H + H * 4 * H + 4 * H + H * V + V
    activations = cfg.batch * cfg.bptt * (D + 8 * H + 2 * V)
    need = (4 * params + activations) * cfg.dtype.itemsize
    if available and need > available:
        raise UsageError(
            "--hidden %d (with --batch %d, --bptt %d) needs at least %s of memory for the "
            "weights, their gradients, Adam's moments and one batch, more than the %s of "
            "this machine" % (H, cfg.batch, cfg.bptt, report.fmt_bytes(need),
                              report.fmt_bytes(available)))


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


def sample(model, corpus, cfg):
    """``(prime, text)``: text sampled after the prime, the prime included. The
    prime is PRIME when the corpus has its characters, else its first character."""
    index = {ch: k for k, ch in enumerate(corpus.chars)}
    prime = PRIME if all(ch in index for ch in PRIME) else corpus.chars[int(corpus.train[0])]
    rng = np.random.default_rng([cfg.seed, 1])
    ids = model.generate([index[ch] for ch in prime], cfg.length, cfg.temperature, rng)
    return prime, prime + "".join(corpus.chars[k] for k in ids)


def run(cfg, out=None, err=None, prog="lstmc"):
    """Train, evaluate and sample; return the process exit code. Raises UsageError,
    before training starts, for options or a corpus that cannot work; notes and
    errors that come later go to ``err`` as lines starting with ``prog``."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    def say(lines):
        for line in lines:
            print(line, file=out, flush=True)

    def warn(line):
        print("%s: %s" % (prog, line), file=err, flush=True)

    n_threads, threads_label = lstmc_threads(cfg.threads)
    with lstmc.threads(n_threads) if n_threads else contextlib.nullcontext():
        return _run(cfg, say, warn, err, threads_label)


def _run(cfg, say, warn, err, threads_label):
    # Everything that can be wrong with the arguments is found before training starts.
    if cfg.save:
        check_output_path("--save", cfg.save)
    plot = cfg.plot
    if plot:
        check_output_path("--plot", plot)
        if not report.have_matplotlib():
            warn("note: --plot needs matplotlib, which is not installed "
                 "(pip install matplotlib); no plot will be written")
            plot = None
    corpus = load_corpus(cfg.corpus, cfg.batch, cfg.bptt)

    V, H = len(corpus.chars), cfg.hidden
    check_memory(cfg, V)
    # Character frequencies of the training text (add-one smoothed): the unigram
    # baseline, and the starting point of the output bias.
    counts = np.bincount(corpus.train, minlength=V).astype(np.float64) + 1.0
    logq = np.log(counts / counts.sum())
    model = CharLM(V, min(EMBED_MAX, H), H, cfg.dtype, np.random.default_rng(cfg.seed),
                   log_prior=logq)
    say(report.header(cfg, corpus, model, threads_label))

    progress = report.Progress(err, cfg.max_steps, cfg.max_seconds)
    losses, seconds, interrupted = train(model, corpus.train, cfg, progress)
    if not losses:
        warn("interrupted before the first step")
        return 130
    status = 0
    if cfg.save:  # first: a Ctrl-C during evaluation or sampling keeps the model
        status |= _write("--save", cfg.save, lambda: save(cfg.save, model.lstm),
                         "saved     TimeLSTM weights (Wx, Wh, b) to %s (read back with "
                         "lstmc.load)" % cfg.save, say, warn)

    val_loss, targets = model.evaluate(corpus.valid[:VALID_MAX_CHARS + 1])
    unigram_loss = -float(logq[targets].mean())  # on the very targets the model saw
    say(report.results(cfg, losses, seconds, interrupted, val_loss, unigram_loss,
                       len(targets), len(corpus.valid)))
    say(report.sample(cfg, *sample(model, corpus, cfg)))

    if plot:
        say([""])
        title = "lstmc char-LM, hidden %d, %s: validation perplexity %.2f" % (
            H, cfg.dtype.name, math.exp(val_loss))
        status |= _write("--plot", plot, lambda: report.write_plot(
            plot, np.array(losses), val_loss, unigram_loss, title),
            "plot      loss curve written to %s" % plot, say, warn)
    return status


def _write(option, path, write, done, say, warn):
    """Call write(); say ``done`` and return 0, or warn and return 1 if it fails."""
    try:
        write()
    except OSError as exc:
        warn("error: cannot write %s %s: %s" % (option, path, exc.strerror or exc))
        return 1
    say([done])
    return 0
