"""The pipeline section: lstmc inside a whole model, not on its own.

A small language model in the style of *Deep Learning from Scratch 2*, written here
in plain NumPy: embedding lookup -> ``TimeLSTM`` -> time affine (H -> vocab) ->
softmax cross-entropy (mean over the N*T steps), backward through all of it, and an
Adam update of every parameter (embedding, Wx, Wh, b, affine W and b). Two copies
of the model, float32, from the same initial weights, differ only in their
``TimeLSTM``: the NumPy one (``lstmc.reference.TimeLSTM``) and lstmc's. Everything
around the LSTM is the same NumPy code in both, so the speed-up shown is what a
user of such a model gets from swapping the layer, Amdahl's law included.

Rows:

* training, one step (forward + backward + Adam) on one batch of random token ids
  and targets (fixed seed), at each (N, T, D, H, vocab) of ``SIZES``;
* inference (``INFERENCE``): a stateful model (embedding D=100 ->
  ``TimeLSTM(stateful=True)`` H=100 -> affine to a vocab of 10,000 -> softmax)
  generating 20 rows x 5 steps greedily: five ``forward(train=False)`` calls on
  (20, 1) inputs in a row, the state held between them and reset before each
  generation. The reference keeps the state the same way (``stateful``, ``h``,
  ``c``); it has no ``train`` argument and keeps its cache.

Each row runs twice: with the BLAS pools at their defaults ("defaults"), and with
NumPy's OpenBLAS pool alone pinned to one thread ("NumPy pinned": the NumPy model
then runs on one core; lstmc's threads are left at their default in both, and lstmc
holds SciPy's BLAS at one thread during its calls anyway). Pinning needs
threadpoolctl; without it the pinned rows are skipped with a line.

Before timing, each row is checked once: after one training step from identical
weights the two losses agree to ``LOSS_RTOL`` (relative), and the updated Wx, Wh, b
and the LSTM gradients to ``WEIGHT_RTOL`` (relative to the array's largest entry);
the generation gives the same tokens and last probabilities. A mismatch is listed
in the section (``check`` column) and among the run's failures.

The two models are timed in one process in alternating rounds (``run_rounds``: the
order reversed every other round, and the usual pause ``SETTLE`` before a batch of
the other model, so that the spinning OpenBLAS threads of the last one settle). A
batch is ``STEPS_PER_BATCH`` steps of the slower model, or ``--target-ms`` if
longer, but at most ``MAX_BATCH_SECONDS`` unless one step takes longer. Each row
and variant gets an equal share of what is left of ``SECTION_SECONDS`` (or of the
run's budget, if less) and stops after three rounds once it has used it. The table
gives medians in ms per step (per generation for the inference row) and the
speed-up numpy/lstmc: the median over the rounds of the ratio within each round.
"""
import contextlib
import functools
import os
import time

import numpy as np

import lstmc
from lstmc import _blas_threads, reference
from lstmc.bench.compare import collect_errors
from lstmc.bench.report import fmt_ratio, progress, say, spread_line, table, target_lines
from lstmc.bench.timing import Contender, loop, median, paired_ratio, run_rounds
from lstmc.charlm.model import Adam

__all__ = ["run", "n_cases", "SIZES", "INFERENCE", "GENERATE_STEPS", "TARGETS"]

SIZES = ((128, 29, 16, 128, 13), (64, 64, 128, 256, 100), (32, 100, 256, 512, 1000))
INFERENCE = (20, 1, 100, 100, 10000)   # the generating model's (N, T, D, H, vocab)
GENERATE_STEPS = 5
DTYPE = np.float32
LR = 1e-3
LOSS_RTOL = 1e-4
WEIGHT_RTOL = 1e-3
STEPS_PER_BATCH = 3              # a timed batch is this many steps of the slower model,
MAX_BATCH_SECONDS = 1.0          # unless that takes longer (then fewer, one at least)
SECTION_SECONDS = 150            # full mode's own cap, within the run's budget
QUICK_SECONDS = 10
SEED = 5

# Wanted speed-ups (numpy model / lstmc model), by case and variant.
TARGETS = {SIZES[0]: (("defaults", ">=", 1.4), ("NumPy pinned", ">=", 2.0)),
           SIZES[1]: (("defaults", ">=", 1.4),),
           SIZES[2]: (("defaults", ">=", 1.4),),
           INFERENCE: (("defaults", ">=", 1.0),)}
VARIANTS = ("defaults", "NumPy pinned")


# -- the model ---------------------------------------------------------------------

def _softmax(scores):
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class _LanguageModel:
    """Embedding -> TimeLSTM -> time affine -> softmax (cross-entropy when training).

    ``weights`` is (embedding (V, D), Wx, Wh, b, affine W (H, V), affine b (V,)),
    copied; ``lstm_class`` is ``lstmc.TimeLSTM`` or ``reference.TimeLSTM``.
    ``params`` and ``grads`` list all six, the LSTM's being the layer's own arrays.
    """

    def __init__(self, lstm_class, weights, stateful=False):
        E, Wx, Wh, b, W, bias = (w.copy() for w in weights)
        self.lstm = lstm_class(Wx, Wh, b, stateful=stateful)
        # Inference: lstmc keeps no cache; the reference has no such option.
        self._infer = (functools.partial(self.lstm.forward, train=False)
                       if isinstance(self.lstm, lstmc.TimeLSTM) else self.lstm.forward)
        self.E, self.W, self.bias = E, W, bias
        self.dE, self.dW, self.dbias = (np.zeros_like(a) for a in (E, W, bias))
        self.params = [E, *self.lstm.params, W, bias]
        self.grads = [self.dE, *self.lstm.grads, self.dW, self.dbias]
        self.optimizer = Adam(lr=LR, eps=1e-7)    # the book's Adam, the demo's code

    def _scores(self, ids, train):
        xs = self.E[ids]                                     # (N, T, D)
        hs = self.lstm.forward(xs) if train else self._infer(xs)
        N, T, H = hs.shape
        self._ids, self._hs2 = ids, hs.reshape(N * T, H)
        return self._hs2 @ self.W + self.bias                # (N*T, V)

    def loss(self, ids, targets):
        """Mean cross-entropy of the next tokens ``targets`` (N, T) after ``ids``."""
        p = _softmax(self._scores(ids, train=True))
        t = targets.reshape(-1)
        rows = np.arange(t.size)
        self._p, self._t = p, t
        return float(-np.log(p[rows, t] + 1e-7).mean())

    def backward(self):
        dscores = self._p
        dscores[np.arange(self._t.size), self._t] -= 1
        dscores /= self._t.size
        self.dW[...] = self._hs2.T @ dscores
        self.dbias[...] = dscores.sum(axis=0)
        N, T = self._ids.shape
        dhs = (dscores @ self.W.T).reshape(N, T, -1)
        dxs = self.lstm.backward(dhs)
        self.dE[...] = 0
        np.add.at(self.dE, self._ids, dxs)

    def train_step(self, ids, targets):
        loss = self.loss(ids, targets)
        self.backward()
        self.optimizer.update(self.params, self.grads)
        return loss

    def generate(self, start, steps):
        """Greedy generation from ``start`` (rows,) ids: (rows, steps) ids and the last
        step's probabilities."""
        self.lstm.reset_state()
        ids = start.reshape(-1, 1)
        out = []
        for _ in range(steps):
            p = _softmax(self._scores(ids, train=False))
            ids = p.argmax(axis=1).reshape(-1, 1)
            out.append(ids)
        return np.hstack(out), p


def _weights(rng, D, H, V):
    """The book's initialisation: embedding N(0, 0.01), LSTM and affine weights
    N(0, 1/fan_in), zero biases; float32."""
    def normal(shape, scale):
        return (rng.standard_normal(shape) * scale).astype(DTYPE)

    return (normal((V, D), 0.01), normal((D, 4 * H), 1 / np.sqrt(D)),
            normal((H, 4 * H), 1 / np.sqrt(H)), np.zeros(4 * H, DTYPE),
            normal((H, V), 1 / np.sqrt(H)), np.zeros(V, DTYPE))


# -- checks ------------------------------------------------------------------------

def _rel(got, want):
    """max |got - want| over max |want|."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def _check_training(models, ids, targets):
    """One step on each model; the mismatches as text ([] when they agree)."""
    numpy_model, lstmc_model = models
    want, got = numpy_model.train_step(ids, targets), lstmc_model.train_step(ids, targets)
    problems = []
    if not abs(got - want) <= LOSS_RTOL * abs(want):
        problems.append("loss %.7g vs NumPy's %.7g" % (got, want))
    for name, a, b in zip(("Wx", "Wh", "b", "dWx", "dWh", "db"),
                          lstmc_model.lstm.params + lstmc_model.lstm.grads,
                          numpy_model.lstm.params + numpy_model.lstm.grads):
        if not _rel(a, b) <= WEIGHT_RTOL:
            problems.append("%s differs by %.3g (relative)" % (name, _rel(a, b)))
    return problems


def _check_generation(models, start, steps):
    (want_ids, want_p), (got_ids, got_p) = (m.generate(start, steps) for m in models)
    problems = []
    if not np.array_equal(got_ids, want_ids):
        problems.append("generated other tokens than NumPy")
    if not _rel(got_p, want_p) <= LOSS_RTOL:
        problems.append("probabilities differ by %.3g (relative)" % _rel(got_p, want_p))
    return problems


# -- pinning NumPy's pool ----------------------------------------------------------

def _numpy_pool():
    """(filepath of NumPy's BLAS library, None) or (None, why it cannot be pinned)."""
    if not _blas_threads.available():
        return None, "threadpoolctl is not installed"
    pools = _blas_threads.pools()
    mine = [p for p in pools if _blas_threads.owner(p) == "numpy"]
    if not mine:
        return None, "NumPy's BLAS pool was not found"
    path = mine[0]["filepath"]
    if any(p["filepath"] == path for p in pools if _blas_threads.owner(p) != "numpy"):
        return None, "NumPy shares its BLAS library with SciPy (lstmc's)"
    return path, None


def _pin_numpy(path):
    """A context manager holding the BLAS library at ``path`` alone at one thread."""
    import threadpoolctl

    return threadpoolctl.ThreadpoolController().select(filepath=path).limit(limits=1)


# -- the section ---------------------------------------------------------------------

def n_cases(quick):
    """How many timed cases the section runs (for the run's budget): each row twice,
    or once when NumPy's pool cannot be pinned."""
    return (len(_sizes(quick)) + 1) * (1 if _numpy_pool()[0] is None else 2)


def _sizes(quick):
    return SIZES[:1] if quick else SIZES


def _train(ids, targets, model):
    model.train_step(ids, targets)


def _generate(start, steps, model):
    model.generate(start, steps)


def _rows(quick):
    """(case, what, [numpy model, lstmc model], step(model), check()) per row."""
    rng = np.random.default_rng(SEED)
    rows = []
    for N, T, D, H, V in _sizes(quick):
        weights = _weights(rng, D, H, V)
        ids, targets = (rng.integers(0, V, (N, T)) for _ in range(2))
        models = [_LanguageModel(cls, weights) for cls in (reference.TimeLSTM, lstmc.TimeLSTM)]
        rows.append(((N, T, D, H, V), "train step", models,
                     functools.partial(_train, ids, targets),
                     functools.partial(_check_training, models, ids, targets)))
    N, _, D, H, V = INFERENCE
    weights = _weights(rng, D, H, V)
    start = rng.integers(0, V, N)
    models = [_LanguageModel(cls, weights, stateful=True)
              for cls in (reference.TimeLSTM, lstmc.TimeLSTM)]
    rows.append((INFERENCE, "generate %dx%d" % (N, GENERATE_STEPS), models,
                 functools.partial(_generate, start, GENERATE_STEPS),
                 functools.partial(_check_generation, models, start, GENERATE_STEPS)))
    return rows


def _case_name(case):
    return "(" + ",".join(map(str, case)) + ")"


def _deadline(env, stop, cases_left):
    """The end of this case: its share of the run's budget, and of the section's own."""
    now = time.perf_counter()
    mine = now + max(0.0, stop - now) / cases_left
    theirs = env.budget.case_deadline()
    return mine if theirs is None else min(mine, theirs)


def _time(models, step, args, deadline, context, label):
    """The two models' steps in alternating rounds, inside ``context()``: the numpy and
    lstmc Contenders and the number of rounds run. A batch lasts ``--target-ms``, or
    (but with --quick) STEPS_PER_BATCH steps of the slower model (timed once here) if
    longer, but not over MAX_BATCH_SECONDS unless one step takes longer."""
    with context():
        slowest = 0.0
        for m in models:
            t0 = time.perf_counter()
            step(m)
            slowest = max(slowest, time.perf_counter() - t0)
        steps = 1 if args.quick else STEPS_PER_BATCH
        target = max(args.target_ms / 1e3, min(steps * slowest, MAX_BATCH_SECONDS))
        cs = [Contender(key, loop(functools.partial(step, m)))
              for key, m in zip(("numpy", "lstmc"), models)]
        done = run_rounds(cs, args.rounds, target, progress(label), deadline)
    return cs, done


def _ms(seconds):
    return None if seconds is None else seconds * 1e3


def _fmt_ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return "%.3f" % ms if ms < 1 else "%.2f" % ms if ms < 100 else "%.0f" % ms


def run(env, args, report):
    """Print the section; its rows, the targets and the settings go to report["pipeline"]."""
    say("")
    say("== Pipeline: a NumPy language model (embedding, TimeLSTM, affine, softmax "
        "cross-entropy, Adam), float32, with NumPy's or lstmc's TimeLSTM ==")
    path, why_not = _numpy_pool()
    variants = [("defaults", contextlib.nullcontext)]
    if path is not None:
        variants.append(("NumPy pinned", functools.partial(_pin_numpy, path)))
    rows = _rows(args.quick)
    stop = time.perf_counter() + (QUICK_SECONDS if args.quick else SECTION_SECONDS)
    cases_left = len(rows) * len(variants)
    results, table_rows, ratios, noise = [], [], {}, []
    for case, what, models, step, check in rows:
        name = _case_name(case)
        label = "pipeline %s" % name
        problems = check()
        for problem in problems:
            env.failed.append((label, "check", problem))
            say("  FAILED %s: %s" % (label, problem))
        entry = dict(case=name, what=what, check="FAIL" if problems else "ok",
                     problems=problems, variants={})
        cells = []
        for variant, context in variants:
            cs, done = _time(models, step, args, _deadline(env, stop, cases_left), context,
                             "%s %s" % (label, variant))
            cases_left -= 1
            collect_errors(env, "%s %s" % (label, variant), cs)
            noise.append(("%s %s" % (name, variant), cs))
            speedup = paired_ratio(*cs)
            ratios.setdefault(name, {})[variant] = speedup
            entry["variants"][variant] = dict(
                ms={c.key: _ms(median(c)) for c in cs}, speedup=speedup,
                rounds=done, steps_per_batch={c.key: c.reps for c in cs},
                samples_ms={c.key: [s * 1e3 for s in c.samples] for c in cs},
                errors={c.key: c.error for c in cs if c.error})
            cells += [_fmt_ms(median(cs[0])), _fmt_ms(median(cs[1])), fmt_ratio(speedup)]
        cells += ["-"] * (3 * (len(VARIANTS) - len(variants)))
        table_rows.append([name, what] + cells + [entry["check"]])
        results.append(entry)
    targets = target_lines({_case_name(c): t for c, t in TARGETS.items()}, ratios)
    _print(table_rows, targets, noise, why_not)
    report["pipeline"] = dict(
        rows=results, lstmc_threads=lstmc.get_num_threads(), numpy_pinned=path is not None,
        pinned_skipped=why_not,
        targets=[dict(case=case, variant=variant, target=want,
                      speedup=ratios[case].get(variant), verdict=verdict)
                 for case, variant, want, _, verdict in targets])


def _print(table_rows, targets, noise, why_not):
    say("ms per training step (forward + backward + Adam) or per generation; speed-up = "
        "numpy/lstmc, the median of the ratios within a round; lstmc at its default %d "
        "threads in both" % lstmc.get_num_threads())
    if why_not:
        say("NumPy pinned rows skipped: %s" % why_not)
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        say("(NumPy's idle OpenBLAS threads spin for a while after each NumPy call and take "
            "a core from lstmc's threads in the defaults rows; OPENBLAS_THREAD_TIMEOUT=4 "
            "in the environment makes them sleep sooner: README, Threads)")
    say(table(["(N,T,D,H,vocab)", "row"] + ["NumPy", "lstmc", "speed-up"] * len(VARIANTS)
              + ["check"], table_rows, left=2,
              groups=[("", 2)] + [(v, 3) for v in VARIANTS] + [("", 1)]))
    if targets:
        say("")
        say("Pipeline targets (speed-up numpy/lstmc):")
        say(table(["case", "variant", "target", "measured", ""], targets, left=2))
    line = spread_line(noise)
    if line:
        say(line)
