"""How the benchmark times things: contenders, batches, alternating rounds, and the
statistics taken over the rounds (medians, spreads, ratios within a round).

A contender is timed in batches of repetitions lasting about a target length; the
batches of all contenders of a case run in rounds, one batch each per round, in an
order that changes from round to round, so that slow drifts of the machine (other
processes, frequency changes) hit all contenders alike.
"""
import contextlib
import gc
import itertools
import time

import numpy as np

__all__ = ["Contender", "batched", "loop", "calibrate", "Budget", "run_rounds", "SETTLE",
           "MIN_ROUNDS", "median", "spread", "ratio", "paired_ratio", "error_text"]

MAX_REPS = 1_000_000
MIN_ROUNDS = 3                 # never fewer, whatever the time budget

# OpenBLAS's idle worker threads keep spinning for a while after each call (torch's
# OpenMP threads too, more briefly). A contender timed right after another library's
# call would share its cores with those spinning threads, so the rounds pause this
# long, more than the spin lasts, whenever the thread pool changes.
SETTLE = 0.15

# Each thread pool a contender's calls run on, by the prefix of its key: the floor
# runs on SciPy's OpenBLAS threads, lstmc (any other key) on its own (SciPy's
# OpenBLAS held at one thread meanwhile), so the two are separated by a pause too.
POOLS = ("numpy", "torch", "ort", "floor")


class Contender:
    """One thing to time: ``batch(reps)`` runs it ``reps`` times, returns s per call."""

    def __init__(self, key, batch):
        self.key = key
        self.batch = batch
        self.reps = None
        self.samples = []      # seconds per call, one per round
        self.rounds = []       # the round of each sample
        self.error = None

    @property
    def pool(self):
        return next((name for name in POOLS if self.key.startswith(name)), "lstmc")


def batched(run, context=None):
    """A batch function: seconds per call of ``run(reps)``, which makes ``reps`` calls,
    timed with GC off (like timeit) and inside ``context()`` when given."""

    def batch(reps):
        with context() if context is not None else contextlib.nullcontext():
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                t0 = time.perf_counter()
                run(reps)
                t1 = time.perf_counter()
            finally:
                if gc_was_enabled:
                    gc.enable()
        return (t1 - t0) / reps

    return batch


def loop(fn, context=None):
    """A batch function calling ``fn()`` reps times."""

    def run(reps):
        for _ in itertools.repeat(None, reps):
            fn()

    return batched(run, context)


def _reps_for(target, per):
    return max(1, min(MAX_REPS, int(round(target / max(per, 1e-9)))))


def calibrate(c, target):
    """Warm up, then choose reps so that one batch takes about ``target`` seconds."""
    c.batch(1)
    per = c.batch(1)
    if per * 20 < target:
        per = c.batch(max(1, min(MAX_REPS, int(target / 10 / max(per, 1e-9)))))
    c.reps = _reps_for(target, per)


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


def error_text(exc):
    """'TypeError: message', as the tables and the JSON report a failure."""
    return "%s: %s" % (type(exc).__name__, exc)


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
            c.error = error_text(exc)
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
            if c.pool != last_pool:
                time.sleep(SETTLE)
                last_pool = c.pool
            try:
                per = c.batch(c.reps)
            except Exception as exc:
                c.error = error_text(exc)
                continue
            c.samples.append(per)
            c.rounds.append(r)
            # Keep batches near the target when the machine's speed changes under us
            # (other processes): bounds the run time, and a batch never spans minutes.
            wall = per * c.reps
            if (wall > 3 * target and c.reps > 1) or wall * 3 < target:
                c.reps = _reps_for(target, per)
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
