"""``python -m lstmc bench``: how fast lstmc is, next to what a user would otherwise run.

Method
------
Everything is measured in ONE process. For each case every contender (lstmc's calls,
the NumPy implementation below, torch, onnxruntime, the compiled BLAS floor) is first
calibrated to a batch of repetitions lasting about ``--target-ms`` (one call at least),
then the batches run in alternating rounds: round r times every contender once, the
order rotated by one every two rounds and reversed every other round, so slow drifts
of the machine (other processes, frequency changes) hit all contenders alike. The times
reported are the medians over the rounds of the per-call time of each batch. A ratio
is the median over the rounds of the ratio within each round (both batches timed in
the same round, seconds apart), not a ratio of two medians: on a shared machine an
absolute time means little, and a ratio taken in the same round cancels the load of
that moment. The pairs whose ratio the targets use most are listed next to each other
(lstmc's forward beside its floor, inference beside onnxruntime, backward beside its
floor), so that in most rounds they run back to back. ``--json`` writes every sample.
Batches that drift far from the target length are re-sized between rounds, and a
time budget (``--max-minutes``) is shared out among the cases: a case stops after
its share (but never before 3 rounds), and the tables say how many rounds ran.
The "noise" lines give the round-to-round spread, the header the load average.
Whenever the next batch belongs to another thread pool (SciPy's OpenBLAS, NumPy's
OpenBLAS, torch, onnxruntime) the rounds pause ``SETTLE`` seconds first: OpenBLAS's
idle threads spin for ~0.1 s after each call and would otherwise slow down
whichever library is timed next.

After each section, the issues' targets (issue 3 for the cell, issue 4 for the
sequence; float32, stated for the OpenBLAS variables unset) are listed with the
measured ratio and ok/MISS. The exit code is 0 unless a contender failed or
computed something other than lstmc (each is checked once before timing).

Contenders
----------
* lstmc: ``LSTM.forward`` (train), ``forward(train=False, out=...)`` (inference, no
  allocation), ``backward`` (upstream gradients of ones), forward+backward; the same
  for ``TimeLSTM`` (``train=False`` without out=).
* NumPy: the classic implementation (the book's ``LSTM`` and ``TimeLSTM``, with the
  seed's two bugs fixed), written below.
* torch (when installed): ``nn.LSTMCell`` / ``nn.LSTM(batch_first=True)`` on the same
  weights (``lstmc.convert.to_torch``); inference is a batch of calls inside one
  ``torch.inference_mode()`` block; forward+backward is forward then
  ``torch.autograd.grad`` of the outputs with gradients of ones with respect to the
  inputs, states and all parameters: the same gradients lstmc's backward produces.
* onnxruntime (when onnx and onnxruntime are installed): one ONNX ``LSTM`` node
  (opset 14, ``lstmc.convert.to_onnx`` weights) on the CPU provider. ORT supports
  only ``layout=0`` (T, N, D), so its input is transposed once before timing.
* floor: ``lstmc._floor.floor``, the very BLAS calls an lstmc call makes, looped in a
  nogil C loop: what lstmc adds beyond it is argument checking, gate loops and
  allocation.

The threads section runs K independent ``TimeLSTM`` inferences on one Python thread
and on two (OpenBLAS pinned to one thread with threadpoolctl), and reports the
speed-up; for reference also on one Python thread with OpenBLAS's own threads.
"""

import functools
import gc
import itertools
import json
import os
import platform
import shlex
import sys
import threading
import time

import numpy as np

import lstmc
from lstmc._cli import Parser, positive
from lstmc import convert

__all__ = ["main", "NumpyLSTM", "NumpyTimeLSTM"]

PROG = "python -m lstmc bench"

CELL_CASES = ((1, 32, 32), (1, 256, 256), (16, 128, 128), (64, 512, 512))
SEQ_CASES = ((1, 1000, 64, 64), (32, 50, 128, 128), (64, 50, 512, 512))
THREADS_CASE = (8, (8, 100, 128, 128))           # K layers, (N, T, D, H) each
QUICK_CELL_CASES = ((1, 32, 32),)
QUICK_SEQ_CASES = ((2, 20, 32, 32),)
QUICK_THREADS_CASE = (4, (4, 20, 32, 32))

DEFAULT_ROUNDS = 9
QUICK_ROUNDS = 3
DEFAULT_TARGET_MS = 20.0
QUICK_TARGET_MS = 3.0
MAX_REPS = 1_000_000
MIN_ROUNDS = 3                 # never fewer, whatever the time budget
DEFAULT_MAX_MINUTES = 4.0

ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
OTHER_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OPENBLAS_VERBOSE", "OMP_NUM_THREADS",
                  "MKL_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

# Targets of the issues (float32, OpenBLAS variables unset); (ratio column, op, bound).
CELL_TARGETS = {
    (1, 32, 32): (("torch inf/fwd", ">=", 8), ("numpy/fwd", ">=", 5),
                  ("torch f+b/f+b", ">=", 10)),
    (1, 256, 256): (("torch inf/fwd", ">=", 2), ("torch f+b/f+b", ">=", 3)),
    (16, 128, 128): (("torch inf/fwd", ">=", 3), ("torch f+b/f+b", ">=", 3)),
    (64, 512, 512): (("torch inf/fwd", ">=", 2.5), ("torch f+b/f+b", ">=", 2.5),
                     ("fwd/floor", "<=", 1.15), ("bwd/floor", "<=", 1.15)),
}
_SEQ_COMMON = (("fwd/floor", "<=", 1.2), ("bwd/floor", "<=", 1.3))
SEQ_TARGETS = {
    (1, 1000, 64, 64): _SEQ_COMMON + (("ort/inf", ">=", 1.0), ("torch inf/inf", ">=", 5),
                                      ("torch f+b/f+b", ">=", 4), ("numpy/fwd", ">=", 20)),
    (32, 50, 128, 128): _SEQ_COMMON + (("ort/inf", ">=", 0.8), ("torch inf/inf", ">=", 1.5),
                                       ("torch f+b/f+b", ">=", 1.2)),
    (64, 50, 512, 512): _SEQ_COMMON + (("ort/inf", ">=", 0.8), ("torch inf/inf", ">=", 1.3),
                                       ("torch f+b/f+b", ">=", 1.1)),
}


# --------------------------------------------------------------------------- NumPy
# The classic NumPy LSTM (Deep Learning from Scratch 2, common/time_layers.py), with
# the seed's two bugs fixed (g sliced by columns; the cache holds the real c_prev).

def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class NumpyLSTM:
    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

    def forward(self, x, h_prev, c_prev):
        Wx, Wh, b = self.params
        N, H = h_prev.shape

        A = np.dot(x, Wx) + np.dot(h_prev, Wh) + b

        f = A[:, :H]
        g = A[:, H:2 * H]
        i = A[:, 2 * H:3 * H]
        o = A[:, 3 * H:]

        f = sigmoid(f)
        g = np.tanh(g)
        i = sigmoid(i)
        o = sigmoid(o)

        c_next = f * c_prev + g * i
        h_next = o * np.tanh(c_next)

        self.cache = (x, h_prev, c_prev, i, f, g, o, c_next)
        return h_next, c_next

    def backward(self, dh_next, dc_next):
        Wx, Wh, b = self.params
        x, h_prev, c_prev, i, f, g, o, c_next = self.cache

        tanh_c_next = np.tanh(c_next)

        ds = dc_next + (dh_next * o) * (1 - tanh_c_next ** 2)

        dc_prev = ds * f

        di = ds * g
        df = ds * c_prev
        do = dh_next * tanh_c_next
        dg = ds * i

        di *= i * (1 - i)
        df *= f * (1 - f)
        do *= o * (1 - o)
        dg *= (1 - g ** 2)

        dA = np.hstack((df, dg, di, do))

        dWh = np.dot(h_prev.T, dA)
        dWx = np.dot(x.T, dA)
        db = dA.sum(axis=0)

        self.grads[0][...] = dWx
        self.grads[1][...] = dWh
        self.grads[2][...] = db

        dx = np.dot(dA, Wx.T)
        dh_prev = np.dot(dA, Wh.T)

        return dx, dh_prev, dc_prev


class NumpyTimeLSTM:
    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.layers = None

        self.h, self.c = None, None
        self.dh = None
        self.stateful = stateful

    def forward(self, xs):
        Wx, Wh, b = self.params
        N, T, D = xs.shape
        H = Wh.shape[0]

        self.layers = []
        hs = np.empty((N, T, H), dtype=Wx.dtype)

        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=Wx.dtype)
        if not self.stateful or self.c is None:
            self.c = np.zeros((N, H), dtype=Wx.dtype)

        for t in range(T):
            layer = NumpyLSTM(*self.params)
            self.h, self.c = layer.forward(xs[:, t, :], self.h, self.c)
            hs[:, t, :] = self.h

            self.layers.append(layer)

        return hs

    def backward(self, dhs):
        Wx, Wh, b = self.params
        N, T, H = dhs.shape
        D = Wx.shape[0]

        dxs = np.empty((N, T, D), dtype=Wx.dtype)
        dh, dc = 0, 0

        grads = [0, 0, 0]
        for t in reversed(range(T)):
            layer = self.layers[t]
            dx, dh, dc = layer.backward(dhs[:, t, :] + dh, dc)
            dxs[:, t, :] = dx
            for i, grad in enumerate(layer.grads):
                grads[i] += grad

        for i, grad in enumerate(grads):
            self.grads[i][...] = grad
        self.dh = dh
        return dxs


# --------------------------------------------------------------------------- timing

class Contender:
    """One thing to time: ``batch(reps)`` runs it ``reps`` times, returns s per call."""

    def __init__(self, key, batch):
        self.key = key
        self.batch = batch
        self.reps = None
        self.samples = []      # seconds per call, one per round
        self.rounds = []       # the round of each sample
        self.error = None


def loop(fn, context=None):
    """A batch function calling ``fn()`` reps times (GC off, like timeit)."""

    def batch(reps):
        it = itertools.repeat(None, reps)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if context is None:
                t0 = time.perf_counter()
                for _ in it:
                    fn()
                t1 = time.perf_counter()
            else:
                with context():
                    t0 = time.perf_counter()
                    for _ in it:
                        fn()
                    t1 = time.perf_counter()
        finally:
            if gc_was_enabled:
                gc.enable()
        return (t1 - t0) / reps

    return batch


def calibrate(c, target):
    """Warm up, then choose reps so that one batch takes about ``target`` seconds."""
    c.batch(1)
    per = c.batch(1)
    if per * 20 < target:
        k = max(1, min(MAX_REPS, int(target / 10 / max(per, 1e-9))))
        per = c.batch(k)
    c.reps = max(1, min(MAX_REPS, int(round(target / max(per, 1e-9)))))


class Budget:
    """The run's time limit, shared out among the cases still to run: a case may go
    on past MIN_ROUNDS only while it is within its share. On a quiet machine no case
    needs its share; on a loaded one the run still ends near the limit."""

    def __init__(self, seconds, cases):
        self.deadline = None if not seconds else time.perf_counter() + seconds
        self.cases_left = max(1, cases)

    def case_deadline(self):
        if self.deadline is None:
            return None
        now = time.perf_counter()
        share = max(0.0, self.deadline - now) / self.cases_left
        self.cases_left = max(1, self.cases_left - 1)
        return now + share


# After a call, OpenBLAS's worker threads spin for about 0.1 s (measured here:
# 0.106 s of CPU consumed during a 0.2 s sleep after one sgemm; torch's OpenMP
# threads spin ~8 ms). A contender timed right after another library's call
# would share its cores with those spinning threads, so the rounds pause this
# long whenever the thread pool changes (SciPy's OpenBLAS: lstmc and the floor;
# NumPy's OpenBLAS; torch; onnxruntime).
SETTLE = 0.15


def _pool(c):
    for name in ("numpy", "torch", "ort"):
        if c.key.startswith(name):
            return name
    return "scipy"


def run_rounds(contenders, rounds, target, progress=None, deadline=None):
    """Calibrate, then time every contender once per round (order rotated by one every
    two rounds, reversed every other round);
    stop early (after MIN_ROUNDS) when ``deadline`` (perf_counter seconds) has passed.
    Returns the number of rounds run."""
    live = []
    for c in contenders:
        try:
            calibrate(c, target)
            live.append(c)
        except Exception as exc:  # reported, not fatal: the other contenders still run
            c.error = "%s: %s" % (type(exc).__name__, exc)
    n = len(live)
    last_pool = None
    for r in range(rounds):
        k = (r // 2) % n if n else 0
        order = live[k:] + live[:k]
        if r % 2:                          # each order once forward, once backward:
            order.reverse()                # neighbours take turns going first
        for c in order:
            if c.error is not None:
                continue
            if _pool(c) != last_pool:
                time.sleep(SETTLE)
                last_pool = _pool(c)
            try:
                per = c.batch(c.reps)
            except Exception as exc:
                c.error = "%s: %s" % (type(exc).__name__, exc)
                continue
            c.samples.append(per)
            c.rounds.append(r)
            # Keep batches near the target when the machine's speed changes under us
            # (other processes): bounds the run time, and a batch never spans minutes.
            wall = per * c.reps
            if (wall > 3 * target and c.reps > 1) or wall * 3 < target:
                c.reps = max(1, min(MAX_REPS, int(round(target / max(per, 1e-9)))))
        gc.collect()
        if progress:
            progress(r + 1, rounds)
        if deadline is not None and r + 1 >= MIN_ROUNDS and time.perf_counter() > deadline:
            if progress:
                progress(rounds, rounds)
            return r + 1
    return rounds


def median(c):
    if c is None or c.error is not None or not c.samples:
        return None
    return float(np.median(c.samples))


def spread(c):
    """Interquartile range over median of a contender's samples."""
    if c is None or c.error is not None or len(c.samples) < 3:
        return None
    q1, q2, q3 = np.percentile(c.samples, [25, 50, 75])
    return (q3 - q1) / q2 if q2 > 0 else None


# --------------------------------------------------------------------------- formatting

def fmt_us(seconds):
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us < 10:
        return "%.2f" % us
    if us < 100:
        return "%.1f" % us
    return "{:,.0f}".format(us)


def fmt_ratio(r):
    if r is None:
        return "-"
    if r < 10:
        return "%.2fx" % r
    return "%.1fx" % r


def ratio(num, den):
    if num is None or den is None or den <= 0:
        return None
    return num / den


def paired_ratio(num, den):
    """Median over the rounds of num's time / den's time in the same round; the
    ratio of the medians when the two have no round in common."""
    if median(num) is None or median(den) is None:
        return None
    by_round = dict(zip(den.rounds, den.samples))
    rs = [a / by_round[r] for r, a in zip(num.rounds, num.samples)
          if by_round.get(r, 0) > 0]
    if not rs:
        return ratio(median(num), median(den))
    return float(np.median(rs))


def table(headers, rows, groups=None, left=1):
    """Fixed-width text table: the first ``left`` columns left-aligned, others right.

    ``groups`` is an optional list of (title, number of columns) printed above the
    headers, each title centred over its columns.
    """
    cols = len(headers)
    widths = [max(len(str(headers[j])), *(len(str(r[j])) for r in rows)) if rows
              else len(str(headers[j])) for j in range(cols)]
    sep = "  "
    lines = []
    if groups:
        start = 0
        spans = []
        for title, span in groups:
            w = sum(widths[start:start + span]) + len(sep) * (span - 1)
            if span and len(title) > w:  # widen the last column of the group
                widths[start + span - 1] += len(title) - w
                w = len(title)
            spans.append((title, w))
            start += span
        lines.append(sep.join(t.center(w) if t else " " * w for t, w in spans).rstrip())

    def line(cells):
        out = []
        for j, cell in enumerate(cells):
            cell = str(cell)
            out.append(cell.ljust(widths[j]) if j < left else cell.rjust(widths[j]))
        return sep.join(out).rstrip()

    lines.append(line(headers))
    lines.append(sep.join("-" * w for w in widths))
    lines.extend(line(r) for r in rows)
    return "\n".join(lines)


def say(*args):
    print(*args, flush=True)


# --------------------------------------------------------------------------- environment

class Env:
    """Optional frameworks, their threads, and what was skipped and why."""

    def __init__(self, args):
        self.cores = _cores()
        self.load_start = _load()
        self.skipped = []          # (contender, reason)
        self.failed = []           # (case, contender, error)
        self.torch = None
        self.ort = None
        self.onnx = None
        self.floor = None
        self.torch_threads = None
        self.ort_threads = None
        try:
            from lstmc import _floor
            self.floor = _floor.floor
        except ImportError as exc:
            self.skipped.append(("floor", "lstmc._floor not importable (%s)" % exc))
        if args.section == "threads":
            pass  # lstmc only
        elif args.no_torch:
            self.skipped.append(("torch", "--no-torch"))
        else:
            try:
                import torch
                self.torch = torch
                self.torch_threads = args.torch_threads or self.cores
                torch.set_num_threads(self.torch_threads)
            except ImportError:
                self.skipped.append(("torch", "not installed"))
        if args.no_onnxruntime:
            self.skipped.append(("onnxruntime", "--no-onnxruntime"))
        elif args.section in ("seq", "all"):
            try:
                import onnx
                import onnxruntime
                self.onnx, self.ort = onnx, onnxruntime
                self.ort_threads = args.ort_threads or self.cores
            except ImportError as exc:
                self.skipped.append(("onnxruntime", "not installed (%s)" % exc.name))
        try:
            import threadpoolctl
            self.threadpoolctl = threadpoolctl
        except ImportError:
            self.threadpoolctl = None
            self.skipped.append(("threadpoolctl", "not installed: BLAS info unknown and "
                                 "the threads section cannot pin OpenBLAS to one thread"))

    def blas_info(self):
        if self.threadpoolctl is None:
            return []
        return self.threadpoolctl.threadpool_info()


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_text():
    load = _load()
    return "" if load is None else ", load average %.2f" % load


def _owner(path):
    p = path.replace("\\", "/")
    for name in ("scipy", "numpy", "torch", "onnxruntime"):
        if "/%s.libs/" % name in p or "/%s/" % name in p:
            return name
    return "?"


def header(env, args):
    lines = ["lstmc benchmark  (%s)" % time.strftime("%Y-%m-%d %H:%M:%S")]
    vers = ["lstmc %s" % lstmc.__version__, "Python %s" % platform.python_version(),
            "numpy %s" % np.__version__]
    try:
        import scipy
        vers.append("scipy %s" % scipy.__version__)
    except ImportError:
        pass
    vers.append("torch %s" % (env.torch.__version__ if env.torch else "-"))
    vers.append("onnxruntime %s" % (env.ort.__version__ if env.ort else "-"))
    if env.onnx:
        vers.append("onnx %s" % env.onnx.__version__)
    lines.append("versions:  " + ", ".join(vers))
    lines.append("machine:   %s, %s, %d cores available to this process%s"
                 % (platform.platform(), platform.machine(), env.cores, _load_text()))
    info = env.blas_info()
    if env.threadpoolctl is None:
        lines.append("BLAS:      threadpoolctl not installed, libraries unknown")
    rows = []
    for lib in info:
        path = lib.get("filepath") or "?"
        owner = _owner(path)
        used = owner == "scipy" and lib.get("user_api") == "blas"
        rows.append([lib.get("user_api", "?"), lib.get("internal_api", "?"),
                     lib.get("version") or "-", "kernel " + (lib.get("architecture") or "-"),
                     "%s threads" % lib.get("num_threads", "?"),
                     "%s (%s%s)" % (os.path.basename(path), owner,
                                    ", used by lstmc" if used else "")])
    if rows:
        widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]
        for r in rows:
            lines.append(("BLAS:      " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
                         .rstrip())
    env_vals = ["%s=%s" % (k, os.environ.get(k, "unset")) for k in ENV_VARS]
    env_vals += ["%s=%s" % (k, os.environ[k]) for k in OTHER_ENV_VARS if k in os.environ]
    lines.append("env:       " + "  ".join(env_vals))
    thr = ["torch.set_num_threads(%d)" % env.torch_threads if env.torch else "torch -"]
    thr.append("onnxruntime intra_op_num_threads=%d" % env.ort_threads if env.ort
               else "onnxruntime -")
    lines.append("threads:   " + ", ".join(thr) + "; OpenBLAS as listed above "
                 "(pinned to 1 only in the threads section)")
    lines.append("method:    %d alternating rounds (at least %d within a %s budget), "
                 "batches of ~%g ms, median per call;\n"
                 "           ratios > 1 favour lstmc except x/floor (lstmc / its BLAS floor)"
                 % (args.rounds, min(MIN_ROUNDS, args.rounds),
                    "%g min" % args.max_minutes if args.max_minutes > 0 else "no time",
                    args.target_ms))
    if env.skipped:
        lines.append("skipped:   " + "; ".join("%s (%s)" % s for s in env.skipped))
    return "\n".join(lines)


def reproduce_command(argv, environ=None):
    """The command line that reruns this benchmark, with the environment variables
    that matter as they were when it started (Dask's workers set some later)."""
    environ = os.environ if environ is None else environ
    parts = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(lstmc.__file__)))
    installed = "site-packages" in root or "dist-packages" in root
    prefix = "" if installed else "cd %s && " % shlex.quote(root)
    env = ["%s=%s" % (k, shlex.quote(environ[k])) for k in ENV_VARS + OTHER_ENV_VARS
           if k in environ]
    if not installed:
        env.append("PYTHONPATH=.")
    parts.extend(env)
    parts.append(shlex.quote(sys.executable))
    parts.extend(["-m", "lstmc", "bench"])
    parts.extend(shlex.quote(a) for a in argv)
    cmd = prefix + " ".join(parts)
    lines = ["How to reproduce: " + cmd]
    if any(k in environ for k in ENV_VARS):
        unset = " ".join("-u %s" % k for k in ENV_VARS if k in environ)
        lines.append("  (the issues' targets assume the OpenBLAS variables unset: "
                     "prefix the command with `env %s`)" % unset)
    return "\n".join(lines)


# --------------------------------------------------------------------------- cases

def _weights(rng, D, H, dtype):
    s = 1.0 / np.sqrt(H)
    Wx = (rng.uniform(-s, s, (D, 4 * H))).astype(dtype)
    Wh = (rng.uniform(-s, s, (H, 4 * H))).astype(dtype)
    b = (rng.uniform(-s, s, 4 * H)).astype(dtype)
    return Wx, Wh, b


def _tolerance(dtype):
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


def _check(env, label, name, got, want, dtype):
    """Sanity check before timing: a contender computing something else is a bug."""
    err = max(float(np.max(np.abs(np.asarray(g, dtype=np.float64) -
                                  np.asarray(w, dtype=np.float64)), initial=0.0))
              for g, w in zip(got, want))
    if not err <= _tolerance(dtype):
        env.failed.append((label, name, "results differ from lstmc by %.3g" % err))
        say("  WARNING %s: %s results differ from lstmc by %.3g" % (label, name, err))


def _torch_dtype(torch, dtype):
    return torch.float32 if np.dtype(dtype) == np.float32 else torch.float64


# The order contenders run in within a round: lstmc's forward beside its floor and
# beside inference, inference beside onnxruntime, backward beside its floor, so that
# in most rounds (not where the rotation cuts a pair) those run back to back.
# Each thread pool's contenders are also kept together: a pause (SETTLE) comes only
# where the pool changes.
RUN_ORDER = ("fwd", "floor fwd", "inf", "ort inf", "torch inf", "torch f+b", "numpy fwd",
             "numpy f+b", "f+b", "bwd", "floor bwd")


def _in_run_order(cs):
    rank = {k: i for i, k in enumerate(RUN_ORDER)}
    return sorted(cs, key=lambda c: rank.get(c.key, len(rank)))


def cell_contenders(env, N, D, H, dtype, rng):
    label = "cell (%d,%d,%d) %s" % (N, D, H, np.dtype(dtype).name)
    Wx, Wh, b = _weights(rng, D, H, dtype)
    x = rng.standard_normal((N, D)).astype(dtype)
    h = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    c = (rng.standard_normal((N, H)) * 0.5).astype(dtype)
    ones = np.ones((N, H), dtype)
    out = (np.empty((N, H), dtype), np.empty((N, H), dtype))

    cells = [lstmc.LSTM(Wx, Wh, b) for _ in range(4)]
    fwd_cell, inf_cell, bwd_cell, fb_cell = cells
    bwd_cell.forward(x, h, c)

    def fb():
        fb_cell.forward(x, h, c)
        fb_cell.backward(ones, ones)

    ref = NumpyLSTM(Wx, Wh, b)
    ref_fb_layer = NumpyLSTM(Wx, Wh, b)

    def np_fb():
        ref_fb_layer.forward(x, h, c)
        ref_fb_layer.backward(ones, ones)

    cs = [Contender("fwd", loop(functools.partial(fwd_cell.forward, x, h, c))),
          Contender("inf", loop(functools.partial(inf_cell.forward, x, h, c, out=out,
                                                  train=False))),
          Contender("bwd", loop(functools.partial(bwd_cell.backward, ones, ones))),
          Contender("f+b", loop(fb)),
          Contender("numpy fwd", loop(functools.partial(ref.forward, x, h, c))),
          Contender("numpy f+b", loop(np_fb))]

    want = fwd_cell.forward(x, h, c)
    _check(env, label, "numpy", ref.forward(x, h, c), want, dtype)

    torch = env.torch
    if torch is not None:
        tdt = _torch_dtype(torch, dtype)
        tcell = torch.nn.LSTMCell(D, H, bias=True).to(tdt)
        with torch.no_grad():
            for p, a in zip((tcell.weight_ih, tcell.weight_hh, tcell.bias_ih, tcell.bias_hh),
                            convert.to_torch(Wx, Wh, b)):
                p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
        xt, ht, ct = (torch.from_numpy(a.copy()) for a in (x, h, c))
        xr, hr, cr = (t.clone().requires_grad_(True) for t in (xt, ht, ct))
        tones = torch.ones((N, H), dtype=tdt)
        wrt = [xr, hr, cr] + list(tcell.parameters())

        def t_inf():
            tcell(xt, (ht, ct))

        def t_fb():
            hn, cn = tcell(xr, (hr, cr))
            torch.autograd.grad((hn, cn), wrt, (tones, tones))

        cs.append(Contender("torch inf", loop(t_inf, torch.inference_mode)))
        cs.append(Contender("torch f+b", loop(t_fb)))
        with torch.inference_mode():
            got = tcell(xt, (ht, ct))
        _check(env, label, "torch", [g.numpy() for g in got], want, dtype)

    if env.floor is not None:
        floor = env.floor
        cs.append(Contender("floor fwd", lambda reps: floor("cell_forward", N, D, H,
                                                            dtype=dtype, reps=reps)))
        cs.append(Contender("floor bwd", lambda reps: floor("cell_backward", N, D, H,
                                                            dtype=dtype, reps=reps)))
    return _in_run_order(cs)


def _onnx_session(env, Wx, Wh, b, T, N, D, H, dtype):
    onnx, ort = env.onnx, env.ort
    from onnx import TensorProto, helper, numpy_helper
    W, R, B = convert.to_onnx(Wx, Wh, b)
    et = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    node = helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y"], hidden_size=H,
                            direction="forward", layout=0)
    graph = helper.make_graph(
        [node], "lstmc_bench",
        [helper.make_tensor_value_info("X", et, [T, N, D])],
        [helper.make_tensor_value_info("Y", et, [T, 1, N, H])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a), n)
                     for a, n in ((W, "W"), (R, "R"), (B, "B"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = env.ort_threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def seq_contenders(env, N, T, D, H, dtype, rng):
    label = "seq (%d,%d,%d,%d) %s" % (N, T, D, H, np.dtype(dtype).name)
    Wx, Wh, b = _weights(rng, D, H, dtype)
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    ones = np.ones((N, T, H), dtype)

    layers = [lstmc.TimeLSTM(Wx, Wh, b) for _ in range(4)]
    fwd_l, inf_l, bwd_l, fb_l = layers
    bwd_l.forward(xs)

    def fb():
        fb_l.forward(xs)
        fb_l.backward(ones)

    ref = NumpyTimeLSTM(Wx, Wh, b)
    ref_fb = NumpyTimeLSTM(Wx, Wh, b)

    def np_fb():
        ref_fb.forward(xs)
        ref_fb.backward(ones)

    cs = [Contender("fwd", loop(functools.partial(fwd_l.forward, xs))),
          Contender("inf", loop(functools.partial(inf_l.forward, xs, train=False))),
          Contender("bwd", loop(functools.partial(bwd_l.backward, ones))),
          Contender("f+b", loop(fb)),
          Contender("numpy fwd", loop(functools.partial(ref.forward, xs))),
          Contender("numpy f+b", loop(np_fb))]

    want = [fwd_l.forward(xs)]
    _check(env, label, "numpy", [ref.forward(xs)], want, dtype)
    _check(env, label, "lstmc train=False", [inf_l.forward(xs, train=False)], want, dtype)

    torch = env.torch
    if torch is not None:
        tdt = _torch_dtype(torch, dtype)
        tl = torch.nn.LSTM(D, H, batch_first=True).to(tdt)
        with torch.no_grad():
            for p, a in zip((tl.weight_ih_l0, tl.weight_hh_l0, tl.bias_ih_l0, tl.bias_hh_l0),
                            convert.to_torch(Wx, Wh, b)):
                p.copy_(torch.from_numpy(np.ascontiguousarray(a)))
        xt = torch.from_numpy(xs.copy())
        xr = xt.clone().requires_grad_(True)
        tones = torch.ones((N, T, H), dtype=tdt)
        wrt = [xr] + list(tl.parameters())

        def t_inf():
            tl(xt)

        def t_fb():
            out, _ = tl(xr)
            torch.autograd.grad(out, wrt, tones)

        cs.append(Contender("torch inf", loop(t_inf, torch.inference_mode)))
        cs.append(Contender("torch f+b", loop(t_fb)))
        with torch.inference_mode():
            got = tl(xt)[0].numpy()
        _check(env, label, "torch", [got], want, dtype)

    if env.ort is not None:
        try:
            sess = _onnx_session(env, Wx, Wh, b, T, N, D, H, dtype)
            xs_tnd = np.ascontiguousarray(xs.transpose(1, 0, 2))
            feed = {"X": xs_tnd}
            cs.append(Contender("ort inf", loop(functools.partial(sess.run, ["Y"], feed))))
            got = sess.run(["Y"], feed)[0][:, 0].transpose(1, 0, 2)
            _check(env, label, "onnxruntime", [got], want, dtype)
        except Exception as exc:
            env.failed.append((label, "ort inf", "%s: %s" % (type(exc).__name__, exc)))

    if env.floor is not None:
        floor = env.floor
        cs.append(Contender("floor fwd", lambda reps: floor("seq_forward", N, D, H, dtype=dtype,
                                                            T=T, reps=reps)))
        cs.append(Contender("floor bwd", lambda reps: floor("seq_backward", N, D, H, dtype=dtype,
                                                            T=T, reps=reps)))
    return _in_run_order(cs)


# --------------------------------------------------------------------------- sections

def _progress(label):
    if not sys.stderr.isatty():
        return None

    def show(r, rounds):
        sys.stderr.write("\r  %s: round %d/%d " % (label, r, rounds))
        if r == rounds:
            sys.stderr.write("\r" + " " * (len(label) + 24) + "\r")
        sys.stderr.flush()
    return show


def _record(label, shape, dtype, cs):
    return {"case": label, "shape": list(shape), "dtype": np.dtype(dtype).name,
            "median_us": {c.key: (median(c) * 1e6 if median(c) is not None else None)
                          for c in cs},
            "min_us": {c.key: (min(c.samples) * 1e6 if c.samples else None) for c in cs},
            "samples_us": {c.key: [s * 1e6 for s in c.samples] for c in cs},
            "sample_rounds": {c.key: list(c.rounds) for c in cs},
            "reps": {c.key: c.reps for c in cs},
            "errors": {c.key: c.error for c in cs if c.error}}


def _collect_errors(env, label, cs):
    for c in cs:
        if c.error:
            env.failed.append((label, c.key, c.error))


def _target_lines(targets, rows_by_case):
    """Lines 'case  ratio  wanted  measured  ok/MISS' for the issue's targets."""
    out = []
    for case, checks in targets.items():
        if case not in rows_by_case:
            continue
        ratios = rows_by_case[case]
        for col, op, bound in checks:
            r = ratios.get(col)
            if r is None:
                verdict, shown = "n/a", "-"
            else:
                ok = r >= bound if op == ">=" else r <= bound
                verdict, shown = ("ok" if ok else "MISS"), fmt_ratio(r)
            out.append([str(case).replace(" ", ""), col, "%s %s" % (op, bound), shown, verdict])
    return out


def _spread_line(results):
    vals = []
    for label, cs in results:
        for c in cs:
            s = spread(c)
            if s is not None:
                vals.append((s, label, c.key))
    if not vals:
        return None
    vals.sort()
    s_med = vals[len(vals) // 2][0]
    worst = vals[-1]
    return ("noise: round-to-round spread (IQR / median) %.0f%% typical, worst %.0f%% (%s, %s)"
            % (s_med * 100, worst[0] * 100, worst[2], worst[1]))


# Columns of the time tables, and each ratio as (numerator, denominator) keys.
CELL_TIME_KEYS = ("fwd", "inf", "bwd", "f+b", "numpy fwd", "numpy f+b",
                  "torch inf", "torch f+b", "floor fwd", "floor bwd")
CELL_RATIOS = {"torch inf/fwd": ("torch inf", "fwd"), "torch inf/inf": ("torch inf", "inf"),
               "numpy/fwd": ("numpy fwd", "fwd"), "torch f+b/f+b": ("torch f+b", "f+b"),
               "numpy f+b/f+b": ("numpy f+b", "f+b"), "fwd/floor": ("fwd", "floor fwd"),
               "inf/floor": ("inf", "floor fwd"), "bwd/floor": ("bwd", "floor bwd")}
SEQ_TIME_KEYS = ("fwd", "inf", "bwd", "f+b", "numpy fwd", "numpy f+b",
                 "torch inf", "torch f+b", "ort inf", "floor fwd", "floor bwd")
SEQ_RATIOS = {"fwd/floor": ("fwd", "floor fwd"), "inf/floor": ("inf", "floor fwd"),
              "bwd/floor": ("bwd", "floor bwd"), "ort/inf": ("ort inf", "inf"),
              "torch inf/inf": ("torch inf", "inf"), "torch f+b/f+b": ("torch f+b", "f+b"),
              "numpy/fwd": ("numpy fwd", "fwd"), "numpy f+b/f+b": ("numpy f+b", "f+b")}


def _case_rows(cs, shape, dtype, done, time_keys, ratio_specs, record, time_rows,
               ratio_rows, ratios_f32):
    """One case's medians and ratios: append its table rows, store the ratios in
    its JSON record, and keep float32 ratios for the targets."""
    by_key = {c.key: c for c in cs}
    g = {c.key: median(c) for c in cs}.get
    case = "(" + ",".join(str(n) for n in shape) + ")"
    dt = "f32" if np.dtype(dtype) == np.float32 else "f64"
    time_rows.append([case, dt] + [fmt_us(g(k)) for k in time_keys] + [done])
    r = {name: paired_ratio(by_key.get(a), by_key.get(b))
         for name, (a, b) in ratio_specs.items()}
    record["ratios"] = r
    if np.dtype(dtype) == np.float32:
        ratios_f32[shape] = r
    ratio_rows.append([case, dt] + [fmt_ratio(r[k]) for k in r])


def _ratios_and_targets(shape_head, ratio_specs, ratio_rows, targets, issue, ratios_f32,
                        results):
    """The end of a section: its ratio table (columns in ratio_specs' order, as
    _case_rows filled the rows), the issue's targets, the noise line."""
    say("")
    say("ratios (contender / lstmc: > 1 means lstmc is faster; x/floor: lstmc / its BLAS "
        "floor, 1.00x is the floor)")
    say(table([shape_head, "dtype"] + list(ratio_specs), ratio_rows, left=2))
    lines = _target_lines(targets, ratios_f32)
    if lines:
        say("")
        say("issue %d targets (float32; stated for the OpenBLAS variables unset):" % issue)
        say(table([shape_head, "ratio", "target", "measured", ""], lines, left=3))
    s = _spread_line(results)
    if s:
        say(s)


def section_cell(env, args, cases, dtypes, report):
    say("")
    say("== Cell: lstmc.LSTM, one step (N, D, H) ==")
    rng = np.random.default_rng(1)
    results = []
    time_rows, ratio_rows = [], []
    ratios_f32 = {}
    for dtype in dtypes:
        for (N, D, H) in cases:
            label = "cell (%d,%d,%d) %s" % (N, D, H, np.dtype(dtype).name)
            cs = cell_contenders(env, N, D, H, dtype, rng)
            done = run_rounds(cs, args.rounds, args.target_ms / 1e3, _progress(label),
                              env.budget.case_deadline())
            _collect_errors(env, label, cs)
            results.append((label, cs))
            report["cell"].append(_record(label, (N, D, H), dtype, cs))
            report["cell"][-1]["rounds"] = done
            _case_rows(cs, (N, D, H), dtype, done, CELL_TIME_KEYS, CELL_RATIOS,
                       report["cell"][-1], time_rows, ratio_rows, ratios_f32)
    say("median µs per call; inf = forward(train=False, out=), f+b = forward(train) + "
        "backward(ones, ones)")
    say(table(["(N,D,H)", "dtype", "fwd", "inf", "bwd", "f+b", "fwd", "f+b", "inf", "f+b",
               "fwd", "bwd", "rounds"], time_rows,
              groups=[("", 2), ("lstmc.LSTM", 4), ("NumPy", 2), ("torch LSTMCell", 2),
                      ("BLAS floor", 2), ("", 1)], left=2))
    _ratios_and_targets("(N,D,H)", CELL_RATIOS, ratio_rows, CELL_TARGETS, 3, ratios_f32,
                        results)


def section_seq(env, args, cases, dtypes, report):
    say("")
    say("== Sequence: lstmc.TimeLSTM (N, T, D, H) ==")
    rng = np.random.default_rng(2)
    results = []
    time_rows, ratio_rows = [], []
    ratios_f32 = {}
    for dtype in dtypes:
        for (N, T, D, H) in cases:
            label = "seq (%d,%d,%d,%d) %s" % (N, T, D, H, np.dtype(dtype).name)
            cs = seq_contenders(env, N, T, D, H, dtype, rng)
            done = run_rounds(cs, args.rounds, args.target_ms / 1e3, _progress(label),
                              env.budget.case_deadline())
            _collect_errors(env, label, cs)
            results.append((label, cs))
            report["seq"].append(_record(label, (N, T, D, H), dtype, cs))
            report["seq"][-1]["rounds"] = done
            _case_rows(cs, (N, T, D, H), dtype, done, SEQ_TIME_KEYS, SEQ_RATIOS,
                       report["seq"][-1], time_rows, ratio_rows, ratios_f32)
    say("median µs per call; inf = forward(train=False), f+b = forward(train) + "
        "backward(ones); ORT fed (T,N,D) (its only layout), transposed before timing")
    say(table(["(N,T,D,H)", "dtype", "fwd", "inf", "bwd", "f+b", "fwd", "f+b", "inf", "f+b",
               "inf", "fwd", "bwd", "rounds"], time_rows,
              groups=[("", 2), ("lstmc.TimeLSTM", 4), ("NumPy", 2), ("torch LSTM", 2),
                      ("ORT", 1), ("BLAS floor", 2), ("", 1)], left=2))
    _ratios_and_targets("(N,T,D,H)", SEQ_RATIOS, ratio_rows, SEQ_TARGETS, 4, ratios_f32,
                        results)


class _Workers:
    """n persistent threads; run(chunks, reps) gives chunk j to thread j and waits."""

    def __init__(self, n):
        self.n = n
        self.go = [threading.Event() for _ in range(n)]
        self.done = [threading.Event() for _ in range(n)]
        self.job = None
        self.errors = []
        self.threads = [threading.Thread(target=self._work, args=(j,), daemon=True)
                        for j in range(n)]
        for t in self.threads:
            t.start()

    def _work(self, j):
        while True:
            self.go[j].wait()
            self.go[j].clear()
            job = self.job
            if job is None:
                self.done[j].set()
                return
            fn, chunks, reps = job
            try:
                fn(chunks[j], reps)
            except Exception as exc:
                self.errors.append(exc)
            self.done[j].set()

    def run(self, fn, chunks, reps):
        self.job = (fn, chunks, reps)
        for e in self.go:
            e.set()
        for e in self.done:
            e.wait()
            e.clear()
        if self.errors:
            raise self.errors.pop()

    def close(self):
        self.job = None
        for e in self.go:
            e.set()
        for t in self.threads:
            t.join()


def section_threads(env, args, K, shape, dtype, report):
    N, T, D, H = shape
    say("")
    say("== Threads: K=%d independent TimeLSTM inferences, (N,T,D,H)=(%d,%d,%d,%d) %s =="
        % (K, N, T, D, H, np.dtype(dtype).name))
    rng = np.random.default_rng(3)
    layers, inputs = [], []
    for _ in range(K):
        layers.append(lstmc.TimeLSTM(*_weights(rng, D, H, dtype)))
        inputs.append(rng.standard_normal((N, T, D)).astype(dtype))
    jobs = list(zip(layers, inputs))

    def run_chunk(chunk, reps):
        for _ in range(reps):
            for layer, xs in chunk:
                layer.forward(xs, train=False)

    tpc = env.threadpoolctl
    pinned = tpc is not None

    def limited():
        return tpc.threadpool_limits(1) if pinned else _Null()

    def default_blas():
        return _Null()

    pools = {1: _Workers(1), 2: _Workers(2)}
    chunks = {1: [jobs], 2: [jobs[0::2], jobs[1::2]]}

    def batch_for(n, ctx):
        def batch(reps):
            with ctx():
                gc_was = gc.isenabled()
                gc.disable()
                try:
                    t0 = time.perf_counter()
                    pools[n].run(run_chunk, chunks[n], reps)
                    t1 = time.perf_counter()
                finally:
                    if gc_was:
                        gc.enable()
            return (t1 - t0) / reps
        return batch

    cs = [Contender("1 thread, BLAS 1", batch_for(1, limited)),
          Contender("2 threads, BLAS 1", batch_for(2, limited)),
          Contender("1 thread, BLAS default", batch_for(1, default_blas))]
    try:
        done = run_rounds(cs, args.rounds, args.target_ms / 1e3, _progress("threads"),
                          env.budget.case_deadline())
    finally:
        for p in pools.values():
            p.close()
    label = "threads K=%d (%d,%d,%d,%d) %s" % (K, N, T, D, H, np.dtype(dtype).name)
    _collect_errors(env, label, cs)
    rec = _record(label, (K, N, T, D, H), dtype, cs)
    m = {c.key: median(c) for c in cs}
    t1, t2, tb = m["1 thread, BLAS 1"], m["2 threads, BLAS 1"], m["1 thread, BLAS default"]
    rec["speedup_2_threads"] = ratio(t1, t2)
    rec["rounds"] = done
    report["threads"] = rec
    blas_threads = sorted({lib.get("num_threads") for lib in env.blas_info()
                           if lib.get("user_api") == "blas"}) or ["?"]
    rows = [["1 Python thread", "1" if pinned else "default", fmt_us(t1),
             fmt_us(t1 / K if t1 else None), "1.00x" if t1 else "-"],
            ["2 Python threads", "1" if pinned else "default", fmt_us(t2),
             fmt_us(t2 / K if t2 else None), fmt_ratio(ratio(t1, t2))],
            ["1 Python thread", "default (%s)" % ",".join(map(str, blas_threads)), fmt_us(tb),
             fmt_us(tb / K if tb else None), fmt_ratio(ratio(t1, tb))]]
    say("median µs for all K inferences over %d alternating rounds; speed-up relative to "
        "1 thread with OpenBLAS pinned to 1 (%d cores available, ideal 2-thread speed-up "
        "%.2fx)" % (done, env.cores, min(2, env.cores)))
    say(table(["Python threads", "OpenBLAS threads", "µs for K", "µs per layer", "speed-up"],
              rows, left=2))
    if not pinned:
        say("  (threadpoolctl is not installed: OpenBLAS could not be pinned to one thread)")
    s = _spread_line([(label, cs)])
    if s:
        say(s)


def section_dask(args, report):
    """Throughput of one scoring job on one process vs a two-worker LocalCluster
    (lstmc._bench_dask); skipped with a line when the dask extra is absent."""
    say("")
    say("== Dask: batch inference with lstmc.dask.predict ==")
    try:
        from lstmc import _bench_dask
        report["dask"] = _bench_dask.main(quick=args.quick)
    except ImportError as exc:
        say("skipped: %s" % exc)
        report["dask"] = None


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- main

def build_parser():
    p = Parser(
        prog=PROG,
        description="Benchmark lstmc.LSTM and lstmc.TimeLSTM against a NumPy "
        "implementation, torch and onnxruntime (when installed) and the compiled BLAS "
        "floor, in one process, in alternating rounds; print median times and ratios.")
    p.add_argument("--section", choices=("cell", "seq", "threads", "dask", "all"), default="all",
                   help="what to run (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="one small case per section, %d rounds, ~%g ms batches "
                   "(a smoke test, not a measurement)" % (QUICK_ROUNDS, QUICK_TARGET_MS))
    p.add_argument("--rounds", type=positive(int), metavar="N",
                   help="alternating rounds (default %d, %d with --quick)"
                   % (DEFAULT_ROUNDS, QUICK_ROUNDS))
    p.add_argument("--dtype", choices=("float32", "float64", "both"),
                   help="dtype(s) to run (default: cell both, seq and threads float32)")
    p.add_argument("--target-ms", type=positive(float), metavar="MS",
                   help="length of one timed batch (default %g, %g with --quick)"
                   % (DEFAULT_TARGET_MS, QUICK_TARGET_MS))
    p.add_argument("--max-minutes", type=float, default=DEFAULT_MAX_MINUTES, metavar="M",
                   help="time budget of the whole run (default %(default)s; 0: none): when "
                   "the machine is slow, cases stop after " + str(MIN_ROUNDS) + " rounds "
                   "or at their share of the budget (the 'rounds' column says how many ran)")
    p.add_argument("--json", metavar="PATH", help="write the medians and raw samples as JSON")
    p.add_argument("--torch-threads", type=positive(int), metavar="N",
                   help="torch.set_num_threads (default: the number of cores)")
    p.add_argument("--ort-threads", type=positive(int), metavar="N",
                   help="onnxruntime intra-op threads (default: the number of cores)")
    p.add_argument("--no-torch", action="store_true", help="skip torch even if installed")
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="skip onnxruntime even if installed")
    return p


def _dtypes(choice, default):
    if choice is None:
        return default
    if choice == "both":
        return (np.float32, np.float64)
    return (np.dtype(choice).type,)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.target_ms is None:
        args.target_ms = QUICK_TARGET_MS if args.quick else DEFAULT_TARGET_MS
    if hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except Exception:
            pass
    start = time.perf_counter()
    env = Env(args)
    sec = args.section
    n_cases = 0
    if sec in ("cell", "all"):
        n_cases += len(QUICK_CELL_CASES if args.quick else CELL_CASES) * \
            len(_dtypes(args.dtype, (np.float32, np.float64)))
    if sec in ("seq", "all"):
        n_cases += len(QUICK_SEQ_CASES if args.quick else SEQ_CASES) * \
            len(_dtypes(args.dtype, (np.float32,)))
    if sec in ("threads", "all"):
        n_cases += 1
    # Half a minute is kept back for imports, calibration and the framework set-up.
    env.budget = Budget(max(0.0, args.max_minutes * 60 - 30) if args.max_minutes > 0
                        else None, n_cases)
    say(header(env, args))
    report = {"meta": {"argv": argv, "rounds": args.rounds, "target_ms": args.target_ms,
                       "lstmc": lstmc.__version__, "numpy": np.__version__,
                       "torch": env.torch.__version__ if env.torch else None,
                       "onnxruntime": env.ort.__version__ if env.ort else None,
                       "torch_threads": env.torch_threads, "ort_threads": env.ort_threads,
                       "cores": env.cores,
                       "env": {k: os.environ.get(k) for k in ENV_VARS + OTHER_ENV_VARS},
                       "blas": env.blas_info(), "skipped": env.skipped,
                      "max_minutes": args.max_minutes},
              "cell": [], "seq": [], "threads": None, "dask": None}
    if sec in ("cell", "all"):
        section_cell(env, args, QUICK_CELL_CASES if args.quick else CELL_CASES,
                     _dtypes(args.dtype, (np.float32, np.float64)), report)
    if sec in ("seq", "all"):
        section_seq(env, args, QUICK_SEQ_CASES if args.quick else SEQ_CASES,
                    _dtypes(args.dtype, (np.float32,)), report)
    if sec in ("threads", "all"):
        K, shape = QUICK_THREADS_CASE if args.quick else THREADS_CASE
        section_threads(env, args, K, shape, _dtypes(args.dtype, (np.float32,))[0], report)
    if sec in ("dask", "all"):
        section_dask(args, report)
    say("")
    loads = [x for x in (env.load_start, _load()) if x is not None]
    if loads and max(loads) > 0.5 * env.cores:
        say("WARNING: load average %s on %d cores: other processes competed for the CPU "
            "during this run, so single figures are unreliable (see the noise lines; "
            "--json has every sample)." % (" -> ".join("%.2f" % x for x in loads), env.cores))
    if env.failed:
        say("FAILURES (these contenders were not timed, or computed something else):")
        for label, key, err in env.failed:
            say("  %s, %s: %s" % (label, key, err))
    report["meta"]["failed"] = env.failed
    report["meta"]["seconds"] = time.perf_counter() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        say("raw medians and samples written to %s" % args.json)
    say("total time %.0f s" % (time.perf_counter() - start))
    say(reproduce_command(argv, environ))
    return 1 if env.failed else 0


if __name__ == "__main__":
    sys.exit(main())
